"""Throughput of cluster prediction with 1 and 2 worker processes (1 thread each), and peak
memory per worker as the volume grows.

    .venv/bin/python benchmarks/distributed_scaling.py [--sizes 48 192] [--workers 1 2]

Each row starts a fresh LocalCluster; the model is compute-bound (3D U-Net, base 16, depth 3),
so on a 2-core machine two workers should approach 2x one worker.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 192],
                        help="z depth of 256x256 float32 volumes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import torch
    import zarr
    from distributed import Client, LocalCluster

    import napari_unet as nu

    work = Path(tempfile.mkdtemp(prefix="nu-dist-"))
    torch.manual_seed(0)
    model = nu.UNet(spatial_dims=3, depth=3, base_filters=16, out_channels=2).eval()
    rows = []
    try:
        for depth in args.sizes:
            shape = (depth, 256, 256)
            src = work / f"in{depth}.zarr"
            z = zarr.create_array(str(src), shape=shape, chunks=(32, 128, 128), dtype="float32")
            rng = np.random.default_rng(0)
            for k in range(0, depth, 32):
                z[k : k + 32] = rng.normal(0, 1, (min(32, depth - k), 256, 256))
            for n in args.workers:
                with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, Client(cluster) as client:
                    out = work / f"out{depth}_{n}.zarr"
                    t0 = time.perf_counter()
                    nu.predict(model, str(src), out, mode="probabilities", client=client,
                               tile=(32, 128, 128), block_shape=(32, 128, 128), device="cpu")
                    seconds = time.perf_counter() - t0
                    peaks = list(client.run(_peak_mb).values())
                rows.append({"voxels": int(np.prod(shape)), "workers": n,
                             "seconds": round(seconds, 2),
                             "mvox_per_s": round(np.prod(shape) / seconds / 1e6, 3),
                             "peak_worker_mb": round(max(peaks))})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'Mvoxels':>8} {'workers':>8} {'seconds':>8} {'Mvox/s':>8} {'speed-up':>9} "
          f"{'peak/worker MB':>15}")
    for r in rows:
        one = next(x for x in rows if x["voxels"] == r["voxels"] and x["workers"] == 1)
        print(f"{r['voxels'] / 1e6:>8.1f} {r['workers']:>8} {r['seconds']:>8} "
              f"{r['mvox_per_s']:>8} {r['mvox_per_s'] / one['mvox_per_s']:>9.2f} "
              f"{r['peak_worker_mb']:>15}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
