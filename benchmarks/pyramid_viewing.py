"""Large results in napari: multiscale pyramids against one full-resolution level.

1. **Viewing.** A 20 000 x 20 000 uint32 labels result (synthetic nuclei tiled, written chunk
   by chunk as the engine writes, 256^2 chunks, zstd) with its pyramid built by
   ``inference.pyramid.PyramidBuilder`` as blocks finish.  Under Xvfb, napari opens it as a
   single-scale labels layer (level 0 only) and as a multiscale layer (all levels): time to
   the first drawn frame with the whole image in view, then the time per frame of 12 pan
   steps at 1:1 zoom, and the process's peak memory; each in its own process.
2. **Cost.** The same ``predict`` run (built-in nuclei model, CPU) to a zarr store with and
   without the pyramid, side by side: the pyramid's share of the run, and of writing the
   synthetic result above (level 0 alone against level 0 plus pyramid).

    xvfb-run -a .venv/bin/python benchmarks/pyramid_viewing.py [--side 20000]
    xvfb-run -a .venv/bin/python benchmarks/pyramid_viewing.py --volume 512,2048,2048 \
        [--chunks 8,128,128]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "pyramid_viewing.json"
BLOCK = 2048


def write_result(path: Path, shape: tuple[int, ...], pyramid: bool,
                 chunks: tuple[int, ...] | None = None) -> float:
    """A synthetic labels result (2D, or 3D: the 2D pattern in slabs of 64 slices) written
    block by block through the engine's store and pyramid builder; returns the seconds."""
    from napari_unet.data.synthetic import synthetic_nuclei
    from napari_unet.inference.pyramid import PyramidBuilder, level_shapes
    from napari_unet.inference.store import OutputStore
    from napari_unet.ngff import multiscale_attrs

    three_d = len(shape) == 3
    side = BLOCK if not three_d else 512
    _, tile = synthetic_nuclei((side, side), seed=0)
    tile = tile.astype(np.uint32)
    block = (64, side, side) if three_d else (side, side)
    chunks = chunks or ((64, 64, 64) if three_d else (256, 256))
    lower = level_shapes(shape)[1:] if pyramid else []
    factors = [[1] * (len(shape) - 2) + [2**k, 2**k] for k in range(len(lower) + 1)]
    arrays = {"labels": dict(shape=shape, chunks=chunks, dtype="uint32", levels=lower)}
    grid = [-(-n // b) for n, b in zip(shape, block, strict=True)]
    blocks = [tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape,
                                                                         strict=True))
              for index in np.ndindex(*grid)]
    t0 = time.perf_counter()
    store = OutputStore.open_or_create(
        path, {"benchmark": list(shape), "pyramid": pyramid}, arrays, "labels", len(blocks),
        0, True, multiscale_attrs("ZYX"[-len(shape):], [1.0] * len(shape), "synthetic", True,
                                  len(lower) + 1, factors))
    builder = PyramidBuilder(store, 0)
    step = int(tile.max()) + 1
    for n, region in enumerate(blocks):
        h, w = (r.stop - r.start for r in region[-2:])
        data = np.where(tile[:h, :w] > 0, tile[:h, :w] + n * step, 0).astype(np.uint32)
        if three_d:
            data = np.broadcast_to(data, (region[0].stop - region[0].start, h, w))
        store.result[region] = data
        store.mark_block(n)
        builder.block_done((), region)
    list(builder.finish())
    return time.perf_counter() - t0


def view(path: Path, multiscale: bool) -> dict:
    """In this process: open the result in napari and time what a user waits for."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet.io import open_volume

    # As the segment widget and the reader give them to napari: dask arrays over the levels
    # (napari indexes a multiscale level's non-displayed axes after its displayed ones: a
    # zarr array would be read whole along z first, a dask array only at the slice shown).
    level0, info = open_volume(path)
    levels = [level0, *info.multiscale]
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    app = QApplication.instance()

    def frame() -> float:
        t = time.perf_counter()
        app.processEvents()
        viewer.screenshot(canvas_only=True)
        return time.perf_counter() - t

    t0 = time.perf_counter()
    layer = viewer.add_labels(levels if multiscale else levels[0], name="result")
    viewer.reset_view()
    first = time.perf_counter() - t0 + frame()
    side = levels[0].shape[-1]
    viewer.camera.zoom = 1.0  # one screen pixel per voxel
    times = []
    for k in range(12):
        viewer.camera.center = (side * (0.2 + 0.05 * k), side * (0.3 + 0.04 * k))
        times.append(frame())
    out = {"multiscale": multiscale, "first_frame_s": first,
           "pan_frame_ms_mean": 1000 * float(np.mean(times)),
           "pan_frame_ms_max": 1000 * float(np.max(times)),
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
           "level_shown": int(layer.data_level)}
    viewer.close()
    return out


def run_cost(tmp: Path, side: int) -> dict:
    import napari_unet as nu
    from napari_unet.data.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((side, side), seed=1)
    rows = {}
    for mode in ("instances", "probabilities"):
        for pyramid in (False, True, False, True):  # interleaved: the machine is noisy
            out = tmp / f"cost-{mode}-{pyramid}.zarr"
            t = time.perf_counter()
            nu.predict(None, image, out, mode=mode, device="cpu", pyramid=pyramid,
                       overwrite=True)
            rows.setdefault(f"{mode} pyramid={pyramid}", []).append(time.perf_counter() - t)
            shutil.rmtree(out)
    best = {k: min(v) for k, v in rows.items()}
    return {"image": [side, side], "seconds": best,
            "share": {m: 1 - best[f"{m} pyramid=False"] / best[f"{m} pyramid=True"]
                      for m in ("instances", "probabilities")}}


def volume(shape: tuple[int, ...], chunks: tuple[int, ...] | None) -> None:
    """A large 3D result: written with its pyramid, validated, opened in napari."""
    import zarr
    from ome_zarr_models.v05 import ImageLabel

    tmp = Path(tempfile.mkdtemp(prefix="nu-pyramid3d-"))
    try:
        seconds = write_result(tmp / "volume.zarr", shape, pyramid=True, chunks=chunks)
        model = ImageLabel.from_zarr(zarr.open_group(str(tmp / "volume.zarr/labels"),
                                                     mode="r"))
        datasets = model.ome_attributes.multiscales[0].datasets
        group = zarr.open_group(str(tmp / "volume.zarr/labels"), mode="r")
        record = {"shape": list(shape), "chunks": list(group["0"].chunks), "write_s": seconds,
                  "ome_zarr_models": "valid",
                  "levels": [list(group[d.path].shape) for d in datasets]}
        proc = subprocess.run([sys.executable, __file__, "--view", str(tmp / "volume.zarr"),
                               "--multiscale"], capture_output=True, text=True, timeout=1800)
        record["view"] = (json.loads(proc.stdout.strip().splitlines()[-1])
                          if proc.returncode == 0 else {"error": proc.stderr[-500:]})
        print(json.dumps(record), flush=True)
        out = RESULTS.with_name("pyramid_viewing_3d_{}.json".format(
            "x".join(map(str, group["0"].chunks))))
        out.write_text(json.dumps(record, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--cost-side", type=int, default=4096)
    parser.add_argument("--view", type=Path, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--multiscale", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--volume", help="instead: write a 3D result of this shape (e.g. "
                                             "512,2048,2048), validate it with "
                                             "ome-zarr-models and open it multiscale")
    parser.add_argument("--chunks", help="--volume: chunk shape of the result (default "
                                         "64,64,64; e.g. 8,128,128: thin in z)")
    args = parser.parse_args()
    if args.view is not None:
        print(json.dumps(view(args.view, args.multiscale)))
        return
    if args.volume:
        volume(tuple(int(v) for v in args.volume.split(",")),
               tuple(int(v) for v in args.chunks.split(",")) if args.chunks else None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="nu-pyramid-"))
    try:
        record: dict = {"side": args.side}
        plain = write_result(tmp / "plain.zarr", (args.side, args.side), pyramid=False)
        shutil.rmtree(tmp / "plain.zarr")
        full = write_result(tmp / "result.zarr", (args.side, args.side), pyramid=True)
        record["write_s"] = {"level 0": plain, "level 0 + pyramid": full,
                             "pyramid share": 1 - plain / full}
        print(json.dumps(record["write_s"]), flush=True)
        record["view"] = []
        for multiscale in (True, False):
            cmd = [sys.executable, __file__, "--view", str(tmp / "result.zarr")]
            proc = subprocess.run(cmd + (["--multiscale"] if multiscale else []),
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode:
                row = {"multiscale": multiscale, "error": proc.stderr.strip()[-500:]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            record["view"].append(row)
        record["cost"] = run_cost(tmp, args.cost_side)
        print(json.dumps(record["cost"]), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
