"""End-to-end GPU throughput: zarr in, zarr out, for a few batch / tile choices.

For each choice (tile, tiles per batch; "auto" is our defaults: tile and overlap from the
model, as many tiles per pass as fit the free GPU memory) it reports

  net/out    voxels the network computes per output voxel (overlap, tiles run twice)
  fwd        the network alone on a batch already on the GPU (bf16, the engine's folded
             channels-last copy): network voxels/s, and as a fraction of the bf16 peak;
             "fwd+bm" the same with cuDNN autotuning (``torch.backends.cudnn.benchmark``)
  e2e        ``predict`` from zarr to zarr (float16 probabilities): output voxels/s and the
             fraction of the bf16 physical limit (FLOPs per output voxel of the network x
             vox/s / peak FLOP/s); "e2e+bm" with cuDNN autotuning; "sem" writing uint8
             classes instead of probabilities
  GPU GB     peak GPU memory of the e2e run

and, for the defaults, where the time of one run goes (seconds summed over the threads that
spent them: reading + normalising blocks, the network + blending on the device, moving results
to the host, compressing + writing).  On a machine without CUDA it runs the same code on the
CPU at tiny sizes, so it cannot rot.

    .venv/bin/python benchmarks/gpu_throughput.py [--peak-tflops 790] [--dims 3 2] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import shutil
import tempfile
import threading
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
            total += 2 * k * inp[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    x = torch.zeros(1, 1, *(tile,) * dims)
    with torch.no_grad():
        model.cpu()(x)
    for h in handles:
        h.remove()
    return total / tile**dims


def plan_of(model, shape, dims, tile, batch, device):
    """The tile, tiles per pass and network voxels per output voxel that predict would use."""
    import napari_unet as nu
    from napari_unet.axes import Layout
    from napari_unet.inference.device import inference_module, measure_batch_size
    from napari_unet.inference.engine import plan_shapes, recommended_tile, resolve_model
    from napari_unet.inference.plan import Plan, tiles_per_batch

    spec = resolve_model(model)
    if batch == "auto":
        batch = measure_batch_size(inference_module(model, device, dims), recommended_tile(spec),
                                   1, device, "bf16")
    opts = dict(batch_size=batch)
    if tile is not None:
        opts.update(tile=(tile,) * dims, overlap=(8,) * dims)
    config = nu.PredictConfig(**opts)
    grid, block, chunk = plan_shapes(shape, spec, config)
    axes = "ZYX"[-dims:]
    plan = Plan(Layout(axes, "", axes, False), (), shape, grid, block, chunk)
    runs = sum(len(grid.tiles_touching(r)) for _, r in plan.units)
    return grid.tile, tiles_per_batch(grid, spec, config), runs * math.prod(grid.tile) / math.prod(
        shape)


def forward_rate(model, dims, tile, batch, device, seconds: float) -> float:
    """Network voxels/s of the folded bf16 model on a batch resident on the device."""
    import torch

    from napari_unet.inference.device import autocast, inference_module, memory_format

    module = inference_module(model, device, dims)
    x = torch.rand((batch, 1, *tile), device=device).contiguous(memory_format=memory_format(dims))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), autocast(device, "bf16" if device.type == "cuda" else "fp32"):
        for _ in range(2):
            module(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < seconds:
            module(x)
            n += 1
            if n % 4 == 0:
                sync()
        sync()
        elapsed = time.perf_counter() - t0
    return n * batch * math.prod(tile) / elapsed


class StageClock:
    """Seconds spent in the engine's stages, summed over threads (patched in for one run)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.lock = threading.Lock()

    def wrap(self, name, fn, sync=False):
        import torch

        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if sync and self.cuda:
                torch.cuda.synchronize()
            with self.lock:
                self.seconds[name] += time.perf_counter() - t0
            return out
        return timed

    def __enter__(self):
        from napari_unet.inference import blocks, executors

        # The local executor calls these by the names it imported.
        self.saved = (executors.read_block, executors.write_block, executors.block_arrays,
                      blocks.BlockRunner.__call__)
        executors.read_block = self.wrap("read+normalise", executors.read_block)
        executors.write_block = self.wrap("compress+write", executors.write_block)
        executors.block_arrays = self.wrap("to host", executors.block_arrays)
        blocks.BlockRunner.__call__ = self.wrap("network+blend", blocks.BlockRunner.__call__,
                                                sync=True)
        return self

    def __exit__(self, *exc):
        from napari_unet.inference import blocks, executors

        (executors.read_block, executors.write_block, executors.block_arrays,
         blocks.BlockRunner.__call__) = self.saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="bf16 dense peak of the GPU (H100/H200 SXM measured ~790)")
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 2])
    parser.add_argument("--quick", action="store_true", help="only our defaults (auto)")
    args = parser.parse_args()
    import torch
    import zarr

    import napari_unet as nu

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    work = Path(tempfile.mkdtemp(prefix="nu-gpu-"))
    cases = {
        3: dict(shape=(512, 512, 512) if cuda else (32, 64, 64),
                model=dict(base_filters=32, depth=4) if cuda else dict(base_filters=4, depth=2),
                choices=[(None, "auto"), (128, 8), (192, 4)] if cuda
                else [(None, "auto"), (32, 2)]),
        2: dict(shape=(16384, 8192) if cuda else (256, 256),
                model=dict(base_filters=64, depth=4) if cuda else dict(base_filters=4, depth=2),
                choices=[(None, "auto"), (1024, 4), (2048, 2)] if cuda
                else [(None, "auto"), (128, 2)]),
    }
    head = (f"{'dims':>4} {'tile':>5} {'batch':>5} {'net/out':>7} {'fwd Mv/s':>9} {'of peak':>7} "
            f"{'fwd+bm':>7} {'e2e Mv/s':>9} {'of peak':>7} {'e2e+bm':>7} {'sem':>7} {'GPU GB':>6}")
    rows = []
    try:
        for dims in args.dims:
            case = cases[dims]
            torch.manual_seed(0)
            model = nu.UNet(spatial_dims=dims, out_channels=2, **case["model"]).eval()
            fpv = flops_per_voxel(model, dims)
            peak = args.peak_tflops * 1e12
            src = work / f"in{dims}.zarr"
            shape = case["shape"]
            z = zarr.create_array(str(src), shape=shape, dtype="float32",
                                  chunks=(64,) * dims if dims == 3 else (1024, 1024))
            rng = np.random.default_rng(0)
            for i in range(0, shape[0], 64):  # in slabs: the input never sits in RAM twice
                z[i:i + 64] = rng.random((min(64, shape[0] - i), *shape[1:]), dtype=np.float32)
            vox = math.prod(shape)
            print(f"{dims}D {shape}: {fpv / 1e6:.3f} MFLOP per output voxel, bf16 limit "
                  f"{peak / fpv / 1e6:.0f} Mvox/s", flush=True)
            print(head, flush=True)
            for tile, batch in case["choices"][:1] if args.quick else case["choices"]:
                torch.backends.cudnn.benchmark = False
                run_tile, run_batch, redundancy = plan_of(model, shape, dims, tile, batch,
                                                          device)
                fwd = forward_rate(model, dims, run_tile, run_batch, device, 3.0 if cuda else 0.5)
                out = work / f"out{dims}.zarr"
                opts = dict(mode="probabilities", batch_size=batch, device=str(device))
                if tile is not None:
                    opts.update(tile=(tile,) * dims, overlap=(8,) * dims)

                def timed(model=model, src=src, out=out, opts=opts, vox=vox, **extra):
                    # A finished store of the same job would be resumed (nothing to do).
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    nu.predict(model, src, out, **{**opts, **extra})
                    if cuda:
                        torch.cuda.synchronize()
                    return vox / (time.perf_counter() - t0)

                timed()  # warm-up: allocator, pinned host buffers
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                if tile is None:
                    with StageClock(cuda) as clock:
                        e2e = timed()
                    stages = dict(clock.seconds)
                else:
                    e2e, stages = timed(), {}
                gpu_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
                sem = timed(mode="semantic")
                torch.backends.cudnn.benchmark = True
                fwd_bm = forward_rate(model, dims, run_tile, run_batch, device,
                                      3.0 if cuda else 0.5)
                timed()  # warm-up: cuDNN autotuning per shape
                e2e_bm = timed()
                torch.backends.cudnn.benchmark = False
                row = {"dims": dims, "device": device.type, "tile": list(run_tile),
                       "batch": run_batch, "choice": [tile or "auto", batch],
                       "net_per_out": redundancy, "mflop_per_vox": fpv / 1e6,
                       "fwd_vox_per_s": fwd, "fwd_bm_vox_per_s": fwd_bm,
                       "fwd_of_peak": fwd * fpv / peak, "fwd_bm_of_peak": fwd_bm * fpv / peak,
                       "e2e_vox_per_s": e2e, "e2e_of_peak": e2e * fpv / peak,
                       "e2e_bm_vox_per_s": e2e_bm, "e2e_bm_of_peak": e2e_bm * fpv / peak,
                       "semantic_vox_per_s": sem, "peak_gpu_mem_gb": gpu_gb,
                       "stage_seconds": stages, "e2e_seconds": vox / e2e}
                rows.append(row)
                print(f"{dims:>4} {str(tile or 'auto'):>5} {run_batch:>5} {redundancy:>7.2f} "
                      f"{fwd / 1e6:>9.1f} {row['fwd_of_peak']:>7.1%} "
                      f"{row['fwd_bm_of_peak']:>7.1%} {e2e / 1e6:>9.1f} {row['e2e_of_peak']:>7.1%} "
                      f"{row['e2e_bm_of_peak']:>7.1%} {sem / 1e6:>7.1f} {gpu_gb:>6.1f}",
                      flush=True)
                if stages:
                    print(f"     defaults, tile {run_tile}: {vox / e2e:.2f} s end to end; "
                          + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
