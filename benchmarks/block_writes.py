"""Host side of a block, the other end: compressing and writing its result to zarr.

On a GPU host this bounds end-to-end speed together with reading (H200 defaults: compress +
write 3.5 s (3D) / 6.1 s (2D) of thread time against 0.6 / 1.1 s of network).  Writes the
result arrays of a prediction block by block with the engine's own ``write_block`` (one
writing thread, as the engine has) under several zarr codecs, alternating, and prints the
write and read speed (MB of uncompressed data per second) and the compression ratio of each.
Reads matter too: labelling reads the class map and seeds back, and napari reads the result.

The data are real outputs: the built-in nuclei model's probabilities, classes and instance
labels of a synthetic 2D image, and a 3D analogue (class probabilities made by smoothing the
classes of synthetic 3D nuclei, as a network's outputs are smooth).

    .venv/bin/python benchmarks/block_writes.py [--size 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def outputs_2d(size: int) -> dict[str, np.ndarray]:
    import napari_unet as nu
    from napari_unet.data.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((size, size), seed=1)
    probs = nu.predict(None, image, mode="probabilities", device="cpu")
    labels = nu.predict(None, image, mode="instances", device="cpu")
    return {"probabilities": np.asarray(probs, dtype=np.float16),
            "semantic": np.asarray(probs).argmax(0).astype(np.uint8),
            "labels": np.asarray(labels, dtype=np.uint32)}


def outputs_3d(size: int) -> dict[str, np.ndarray]:
    from scipy import ndimage as ndi

    from napari_unet.data.synthetic import synthetic_nuclei
    from napari_unet.training.targets import make_target

    _, labels = synthetic_nuclei((size // 4, size // 4, size // 4), seed=1)
    classes = make_target(labels, "instances", 1, 0.3)
    onehot = np.stack([ndi.gaussian_filter((classes == c).astype(np.float32), 1.0)
                       for c in range(4)])
    onehot /= onehot.sum(0, keepdims=True)
    return {"probabilities": onehot.astype(np.float16),
            "semantic": classes.astype(np.uint8),
            "labels": labels.astype(np.uint32)}


ENGINE = "engine's choice"  # store.result_compressors(dtype), chosen per array


def codecs() -> dict[str, object]:
    from zarr.codecs import BloscCodec

    return {
        "zarr default (zstd 0)": "auto",
        ENGINE: None,
        "blosc lz4 shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        "blosc zstd 1 shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        "none": (),
    }


def main() -> None:
    import zarr

    from napari_unet.inference.blocks import write_block
    from napari_unet.inference.store import result_compressors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="2D image side (3D: size/4)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    table = codecs()
    cases = {"2D": (outputs_2d(args.size), 256, 1024), "3D": (outputs_3d(args.size), 64, 128)}
    rows: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for dims, (arrays, chunk, block) in cases.items():
                for name, data in arrays.items():
                    for label, compressors in table.items():
                        if label == ENGINE:
                            compressors = result_compressors(data.dtype)
                        path = Path(tmp) / f"{dims}-{name}.zarr"
                        lead = (data.shape[0],) if name == "probabilities" else ()
                        spatial = data.shape[len(lead):]
                        z = zarr.create_array(
                            str(path), shape=data.shape, dtype=data.dtype, fill_value=0,
                            chunks=(*lead, *(min(chunk, s) for s in spatial)),
                            compressors=compressors, overwrite=True)
                        store = {name: z}
                        mode = "probabilities" if name == "probabilities" else "semantic"
                        units = [((), tuple(slice(k * block, min((k + 1) * block, s))
                                            for k, s in zip(origin, spatial, strict=True)))
                                 for origin in np.ndindex(*(-(-s // block) for s in spatial))]
                        t0 = time.perf_counter()
                        for unit in units:
                            region = unit[1]
                            index = (slice(None), *region) if lead else region
                            write_block(store, unit, name, data[index], mode)
                        tw = time.perf_counter() - t0
                        t0 = time.perf_counter()
                        back = z[...]
                        tr = time.perf_counter() - t0
                        np.testing.assert_array_equal(back, data)
                        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                        rows.setdefault((dims, name, label), []).append(
                            (data.nbytes / tw / 1e6, data.nbytes / tr / 1e6,
                             data.nbytes / stored))
    print(f"median of {args.rounds} rounds; MB/s of uncompressed data, one writing thread")
    print(f"{'dims':4} {'array':14} {'dtype':8} {'codec':22} {'write':>7} {'read':>7} "
          f"{'ratio':>6} {'write vs default':>16}")
    for (dims, name, label), values in rows.items():
        dtype = cases[dims][0][name].dtype
        w, r, c = (float(np.median(v)) for v in zip(*values, strict=True))
        base = float(np.median([v[0] for v in rows[(dims, name, "zarr default (zstd 0)")]]))
        print(f"{dims:4} {name:14} {str(dtype):8} {label:22} {w:7.0f} {r:7.0f} {c:6.2f} "
              f"{w / base:16.2f}")


if __name__ == "__main__":
    main()
