"""End-to-end GPU throughput: zarr in, zarr out, for a few batch / tile choices.

Reports output vox/s (3D) or px/s (2D), the fraction of the bf16 physical limit of the device
(FLOPs per output voxel of the network x vox/s / peak FLOP/s) and the peak GPU memory.  On a
machine without CUDA it runs the same code on the CPU at tiny sizes, so it cannot rot.

    .venv/bin/python benchmarks/gpu_throughput.py [--peak-tflops 790]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def flops_per_voxel(model, dims: int, tile: int = 64) -> float:
    """Multiply-adds x 2 per output voxel, counted with forward hooks on a tile."""
    import torch

    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            k = int(np.prod(m.kernel_size)) * m.in_channels // m.groups
            total += 2 * k * out.numel()
        elif isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            k = int(np.prod(m.kernel_size)) * m.out_channels
            total += 2 * k * inp[0].numel() // 1

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    x = torch.zeros(1, 1, *(tile,) * dims)
    with torch.no_grad():
        model.cpu()(x)
    for h in handles:
        h.remove()
    return total / tile**dims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="bf16 dense peak of the GPU (H100 SXM measured ~790)")
    args = parser.parse_args()
    import torch
    import zarr

    import napari_unet as nu

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    work = Path(tempfile.mkdtemp(prefix="nu-gpu-"))
    rows = []
    cases = {
        3: dict(shape=(256, 512, 512) if cuda else (32, 64, 64),
                model=dict(base_filters=32, depth=4) if cuda else dict(base_filters=4, depth=2),
                choices=[(128, 4), (128, 8), (192, 2), (None, "auto")] if cuda
                else [(32, 2), (None, "auto")]),
        2: dict(shape=(8192, 8192) if cuda else (256, 256),
                model=dict(base_filters=64, depth=4) if cuda else dict(base_filters=4, depth=2),
                choices=[(512, 8), (1024, 4), (2048, 1), (None, "auto")] if cuda
                else [(128, 2), (None, "auto")]),
    }
    try:
        for dims, case in cases.items():
            torch.manual_seed(0)
            model = nu.UNet(spatial_dims=dims, out_channels=2, **case["model"]).eval()
            fpv = flops_per_voxel(model, dims)
            src = work / f"in{dims}.zarr"
            z = zarr.create_array(str(src), shape=case["shape"], dtype="float32",
                                  chunks=(64,) * dims if dims == 3 else (1024, 1024))
            z[:] = np.random.default_rng(0).normal(0, 1, case["shape"]).astype(np.float32)
            for tile, batch in case["choices"]:
                out = work / f"out{dims}_{tile}_{batch}.zarr"
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                # (None, "auto"): the defaults -- tile and overlap from the model, as many
                # tiles per pass as fit the free GPU memory.
                opts = dict(mode="probabilities", batch_size=batch, device=device,
                            overwrite=True)
                if tile is not None:
                    opts.update(tile=(tile,) * dims, overlap=(8,) * dims)
                nu.predict(model, src, out, **opts)  # warm-up (cudnn autotune, allocator)
                t0 = time.perf_counter()
                nu.predict(model, src, out, **opts)
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                vox = int(np.prod(case["shape"]))
                rate = vox / seconds
                rows.append({
                    "dims": dims, "device": device, "tile": tile or "auto", "batch": batch,
                    "vox_per_s": rate, "gflop_per_vox": fpv / 1e9,
                    "fraction_of_bf16_peak": rate * fpv / (args.peak_tflops * 1e12),
                    "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda
                    else 0.0,
                })
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'dims':>4} {'device':>6} {'tile':>5} {'batch':>5} {'Mvox/s':>9} "
          f"{'MFLOP/vox':>9} {'of peak':>8} {'GPU GB':>7}")
    for r in rows:
        print(f"{r['dims']:>4} {r['device']:>6} {r['tile']:>5} {r['batch']:>5} "
              f"{r['vox_per_s'] / 1e6:>9.3f} {r['gflop_per_vox'] * 1e3:>9.3f} "
              f"{r['fraction_of_bf16_peak']:>8.1%} {r['peak_gpu_mem_gb']:>7.1f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
