"""Result chunk shapes for 3D labels: writing, reading one z plane (what napari does to draw
a slice) and reading everything, for cubic chunks, chunks thin in z, and zarr v3 shards of
64^3 with thin inner chunks.

    .venv/bin/python benchmarks/chunk_shapes.py [--shape 64,1024,1024]

Synthetic nuclei labels (uint32), the engine's result compressors, written in slabs of whole
chunks (or shards) as the engine's blocks are.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.inference.store import result_compressors

LAYOUTS = {
    "chunks 64x64x64 (the 3D default)": {"chunks": (64, 64, 64)},
    "chunks 1x256x256": {"chunks": (1, 256, 256)},
    "chunks 8x128x128": {"chunks": (8, 128, 128)},
    "chunks 16x128x128": {"chunks": (16, 128, 128)},
    "chunks 8x256x256": {"chunks": (8, 256, 256)},
    "shards 64^3, inner 1x64x64": {"shards": (64, 64, 64), "chunks": (1, 64, 64)},
    "shards 64^3, inner 8x64x64": {"shards": (64, 64, 64), "chunks": (8, 64, 64)},
    "shards 64x128x128, inner 1x128x128": {"shards": (64, 128, 128), "chunks": (1, 128, 128)},
}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,1024,1024")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    _, labels = synthetic_nuclei(shape, seed=0)
    labels = labels.astype(np.uint32)
    tmp = Path(tempfile.mkdtemp(prefix="nu-chunks-"))
    print(f"labels {shape}, {int(labels.max())} objects")
    print("| layout | write, s | one z plane, ms | everything, s | MB |")
    print("|---|---|---|---|---|")
    try:
        for name, kw in LAYOUTS.items():
            path = tmp / "a.zarr"
            shutil.rmtree(path, ignore_errors=True)
            a = zarr.create_array(str(path), shape=shape, dtype="uint32", fill_value=0,
                                  compressors=result_compressors("uint32"), **kw)
            slab = kw.get("shards", kw["chunks"])[1]
            t = time.perf_counter()
            for y in range(0, shape[1], slab):
                a[:, y:y + slab] = labels[:, y:y + slab]
            write = time.perf_counter() - t
            b = zarr.open_array(str(path), mode="r")
            planes = [shape[0] // 10, shape[0] // 2, shape[0] - 3]
            t = time.perf_counter()
            for z in planes:
                b[z]
            plane = (time.perf_counter() - t) / len(planes)
            t = time.perf_counter()
            assert (b[:] == labels).all()
            whole = time.perf_counter() - t
            print(f"| {name} | {write:.2f} | {plane * 1e3:.0f} | {whole:.2f} | "
                  f"{folder_mb(path):.1f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
