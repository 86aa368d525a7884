"""Host side of a block: reading its input region from zarr or TIFF and normalising it.

On a GPU the network is a small part of a block's time (H200, 512^3: network 0.6 s of
4.0 s; read + normalise 5.6 s of thread time), so this is what bounds end-to-end speed
there.  Times the engine's own ``read_block`` on blocks of a zarr volume the two ways the
engine can read them -- through the dask graph, chunk by chunk, or from the zarr array in one
call (``Layout.region``) with the normalisation done in place -- alternating, and prints MB/s
and the ratio.  Outputs are compared for equality.  ``--input tiff`` stores the volume as a
TIFF instead (one page per plane, uncompressed, in tiles of the chunks' last two sizes, or
in strips with ``--strips``), read through tifffile's zarr interface.

    .venv/bin/python benchmarks/block_reads.py [--shape 256 512 512] [--block 160 512 512]
        [--chunks 64 64 64] [--rounds 3] [--input zarr|tiff] [--strips]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import zarr

    import napari_unet as nu
    from napari_unet.axes import resolve_layout
    from napari_unet.config import PredictConfig
    from napari_unet.inference import blocks, engine
    from napari_unet.inference.plan import Plan
    from napari_unet.normalize import Normalization

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 512, 512])
    parser.add_argument("--block", type=int, nargs=3, default=[160, 512, 512])
    parser.add_argument("--chunks", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input", choices=["zarr", "tiff"], default="zarr")
    parser.add_argument("--strips", action="store_true", help="TIFF in strips, not tiles")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        step = args.chunks[0]
        if args.input == "zarr":
            path = Path(tmp) / "vol.zarr"
            z = zarr.create_array(str(path), shape=tuple(args.shape),
                                  chunks=tuple(args.chunks), dtype="float32")
            for k in range(0, args.shape[0], step):
                n = min(step, args.shape[0] - k)
                z[k : k + n] = rng.normal(100, 20, (n, *args.shape[1:])).astype(np.float32)
        else:
            import tifffile

            path = Path(tmp) / "vol.tif"
            volume = rng.normal(100, 20, tuple(args.shape)).astype(np.float32)
            tifffile.imwrite(path, volume, tile=None if args.strips else tuple(args.chunks[1:]))
            del volume

        model = nu.UNet(spatial_dims=3, depth=4, base_filters=32)
        spec = engine.resolve_model(model)
        array, info = nu.open_volume(path)
        layout = resolve_layout(tuple(array.shape), 3, 1, None, str(path), False)
        canonical = layout.canonical(array)
        config = PredictConfig(block_shape=tuple(args.block), device="cpu")
        grid, block, chunk = engine.plan_shapes(tuple(args.shape), spec, config)
        plan = Plan(layout, (), tuple(args.shape), grid, block, chunk)
        units = plan.units
        norm = Normalization((80.0,), (120.0,))
        direct = functools.partial(layout.region, info.reader)

        def run(how) -> tuple[float, float]:
            t0, nbytes = time.perf_counter(), 0
            for unit in units:
                x, _ = blocks.read_block(canonical, plan, norm, unit, str(path), how)
                nbytes += x.nbytes
            return time.perf_counter() - t0, nbytes

        for unit in units[:2]:  # the two ways give the same numbers
            a, _ = blocks.read_block(canonical, plan, norm, unit, str(path), None)
            b, _ = blocks.read_block(canonical, plan, norm, unit, str(path), direct)
            np.testing.assert_array_equal(a, b)
        rows = []
        for _ in range(args.rounds):
            rows.append((run(None), run(direct)))
        stored = ("TIFF in strips" if args.strips else
                  f"TIFF in tiles of {tuple(args.chunks[1:])}") if args.input == "tiff" \
            else f"zarr in chunks {tuple(args.chunks)}"
        print(f"volume {tuple(args.shape)} float32, {stored}; "
              f"{len(units)} blocks of {tuple(block)} (input regions with the halo)")
        print(f"{'round':>5} {'dask MB/s':>10} {'direct MB/s':>12} {'ratio':>6}")
        ratios = []
        for k, ((td, nb), (tz, _)) in enumerate(rows, 1):
            ratios.append(td / tz)
            print(f"{k:5d} {nb / td / 1e6:10.0f} {nb / tz / 1e6:12.0f} {td / tz:6.2f}")
        print(f"median ratio direct / dask: {float(np.median(ratios)):.2f}")


if __name__ == "__main__":
    main()
