"""Peak memory of out-of-core prediction as the volume grows (it should stay flat).

Writes float32 zarr volumes of about 32 MB, 256 MB and 1 GB, segments each with a tiny 3D
U-Net in a fresh process (``napari-unet predict``), and reports the peak resident memory of
that process (its own ``ru_maxrss``) and the ratio largest / smallest.

    .venv/bin/python benchmarks/memory_scaling.py [--sizes-mb 32 256 1024] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_volume(path: Path, mb: int, seed: int = 0) -> tuple[int, ...]:
    import zarr

    side = 256
    depth = max(16, int(round(mb * 2**20 / 4 / side / side)))
    shape = (depth, side * 2, side * 2) if depth > 4 * side else (depth, side, side)
    if shape[0] * shape[1] * shape[2] * 4 / 2**20 > 1.5 * mb:
        shape = (depth // 4, side * 2, side * 2)
    arr = zarr.create_array(str(path), shape=shape, chunks=(32, 128, 128), dtype="float32")
    rng = np.random.default_rng(seed)
    for z in range(0, shape[0], 32):
        arr[z : z + 32] = rng.normal(100, 20, (min(32, shape[0] - z), *shape[1:]))
    return shape


def run(volume: Path, model: Path, out: Path, block: str) -> tuple[float, float]:
    code = (
        "import resource, sys, time\n"
        "from napari_unet.cli import main\n"
        "t = time.perf_counter()\n"
        f"rc = main(['--quiet', 'predict', {str(volume)!r}, {str(out)!r}, '--model', "
        f"{str(model)!r}, '--mode', 'probabilities', '--block', {block!r}, "
        "'--tile', '32,64,64', '--device', 'cpu'])\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    seconds, peak_kb = proc.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(peak_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--block", default="64,128,128")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    import napari_unet as nu

    work = Path(tempfile.mkdtemp(prefix="nu-mem-"))
    try:
        model = nu.UNet(spatial_dims=3, depth=2, base_filters=4, out_channels=2)
        nu.save_model(model.eval(), work / "tiny.safetensors")
        # Each size runs in a fresh process that reports its own peak (ru_maxrss).
        rows = []
        for mb in sorted(args.sizes_mb):
            vol = work / f"vol{mb}.zarr"
            shape = make_volume(vol, mb)
            seconds, peak = run(vol, work / "tiny.safetensors", work / f"out{mb}.zarr",
                                args.block)
            voxels = int(np.prod(shape))
            rows.append({"size_mb": round(voxels * 4 / 2**20), "shape": shape,
                         "seconds": round(seconds, 1), "peak_rss_mb": round(peak),
                         "mvox_per_s": round(voxels / seconds / 1e6, 2)})
            shutil.rmtree(vol)
            shutil.rmtree(work / f"out{mb}.zarr")
        print(f"{'input MB':>9} {'shape':>20} {'seconds':>8} {'Mvox/s':>7} {'peak RSS MB':>12}")
        for r in rows:
            print(f"{r['size_mb']:>9} {str(r['shape']):>20} {r['seconds']:>8} "
                  f"{r['mvox_per_s']:>7} {r['peak_rss_mb']:>12}")
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        grow = rows[-1]["size_mb"] / rows[0]["size_mb"]
        print(f"peak RSS largest / smallest: {ratio:.2f} for a {grow:.0f}x larger volume")
        print(json.dumps({"rows": rows, "rss_ratio": ratio, "volume_ratio": grow}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
