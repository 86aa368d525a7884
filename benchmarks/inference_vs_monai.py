"""Tiled inference side by side: napari-unet vs MONAI ``sliding_window_inference`` vs a bare
forward pass, with the same weights, volume, tile, overlap and blending.

Rows, each in a fresh process (for its own peak RSS):
  pure forward   batches of tiles straight through the model as the engine runs it (batch
                 norms folded into the convolutions; the ceiling): network voxels/s over at
                 least 8 batches, so that one slow batch does not set the ceiling
  pure forward auto  the same at the precision our defaults choose ("auto"; bf16 on a CPU
                 with native bf16): the ceiling for the "defaults" rows
  monai          sliding_window_inference(roi, overlap, mode=BLENDING) on the model as given
  monai folded   the same on the engine's folded copy of the model: what the tiling alone
                 costs each tool (napari-unet's lead over "monai" is then the folding)
  napari-unet    predict(..., mode="logits", same tile / overlap / blending), in memory
  napari-unet zarr  the same, read from and written to zarr (end to end, out of core)

Prints output vox/s, tiling efficiency (output vox/s / pure-forward vox/s at the same
precision; overlapping tiles compute some voxels more than once, so this includes the overlap),
peak RSS and the max abs difference of the logits to MONAI's.  Then "defaults": our defaults vs
MONAI's defaults.

    .venv/bin/python benchmarks/inference_vs_monai.py [--dims 2 3] [--repeats 3] [--quick]
    .venv/bin/python benchmarks/inference_vs_monai.py --geometry

``--geometry`` prints, without running a network, the voxels each default grid computes per
output voxel (tiles that several blocks compute counted each time) for a range of volume
shapes: crop stitching vs Gaussian blending, the seed U-Nets' recommended tiles.

MONAI is a benchmark-only dependency: ``pip install monai`` (with torch already installed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETUPS = {
    2: dict(shape=(1024, 1024), tile=(256, 256), model=dict(base_filters=64, depth=4)),
    3: dict(shape=(96, 192, 192), tile=(64, 64, 64), model=dict(base_filters=32, depth=4)),
}
QUICK = {
    2: dict(shape=(512, 512), tile=(128, 128), model=dict(base_filters=16, depth=3)),
    3: dict(shape=(48, 96, 96), tile=(32, 32, 32), model=dict(base_filters=8, depth=3)),
}
OVERLAP = 0.25
BATCH = 4
# Identical-settings rows blend with constant weights: MONAI's Gaussian integrates the kernel
# over pixel bins (erf), ours samples it, so the two Gaussians differ slightly by design.
BLENDING = "constant"


def make_model(dims: int, model_kw: dict, path: Path):
    import torch

    import napari_unet as nu

    torch.manual_seed(0)
    model = nu.UNet(spatial_dims=dims, in_channels=1, out_channels=2, **model_kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    nu.save_model(model.eval(), path, normalization={"kind": "none"})


def row(kind: str, dims: int, setup: dict, work: Path, repeats: int, precision: str) -> dict:
    """Runs in a child process: times one implementation and saves its output."""
    import resource

    import torch

    import napari_unet as nu
    from napari_unet.inference.device import autocast, inference_module, memory_format

    torch.set_num_threads(torch.get_num_threads())
    model = nu.load_model(work / f"model{dims}.safetensors")
    x = np.load(work / f"input{dims}.npy")
    shape, tile = tuple(setup["shape"]), tuple(setup["tile"])
    fmt = memory_format(dims)
    device = torch.device("cpu")
    model = model.to(memory_format=fmt)
    if kind in ("pure forward", "pure forward auto", "monai folded"):
        model = inference_module(model, device, dims)
    out = None
    times = []
    for _ in range(repeats + 1):  # first run is warm-up
        t0 = time.perf_counter()
        if kind in ("pure forward", "pure forward auto"):
            from napari_unet.inference.device import select_precision

            prec = precision if kind == "pure forward" else select_precision("auto", device)
            n_batches = max(8, int(np.prod([s // t for s, t in zip(shape, tile, strict=True)]))
                            // BATCH)
            batch = torch.from_numpy(
                np.stack([x[tuple(slice(0, t) for t in tile)][None]] * BATCH)
            ).contiguous(memory_format=fmt)
            with torch.inference_mode(), autocast(device, prec):
                for _ in range(n_batches):
                    model(batch)
            voxels = n_batches * BATCH * int(np.prod(tile))
        elif kind in ("monai", "monai folded"):
            from monai.inferers import sliding_window_inference

            inp = torch.from_numpy(x[None, None]).contiguous(memory_format=fmt)
            with torch.inference_mode(), autocast(device, precision):
                out = sliding_window_inference(
                    inp, tile, BATCH, model, overlap=OVERLAP, mode=BLENDING,
                    padding_mode="reflect")
            out = out[0].float().numpy()
            voxels = int(np.prod(shape))
        elif kind == "monai defaults":
            from monai.inferers import sliding_window_inference

            inp = torch.from_numpy(x[None, None])
            with torch.inference_mode():
                out = sliding_window_inference(inp, tile, 1, model)  # overlap .25, constant
            out = out[0].numpy()
            voxels = int(np.prod(shape))
        elif kind == "napari-unet":
            out = nu.predict(model, x, mode="logits", tile=tile, overlap=OVERLAP,
                             blending=BLENDING, batch_size=BATCH, precision=precision,
                             device="cpu")
            voxels = int(np.prod(shape))
        elif kind in ("napari-unet zarr", "napari-unet defaults"):
            import shutil

            target = work / f"out{dims}.zarr"
            shutil.rmtree(target, ignore_errors=True)
            opts = dict(mode="logits", device="cpu")
            if kind == "napari-unet zarr":
                opts.update(tile=tile, overlap=OVERLAP, blending=BLENDING, batch_size=BATCH,
                            precision=precision)
            res = nu.predict(model, str(work / f"input{dims}.zarr"), target, **opts)
            out = res[:]
            voxels = int(np.prod(shape))
        times.append(time.perf_counter() - t0)
    if out is not None:
        np.save(work / f"out_{kind.replace(' ', '_')}_{dims}.npy", out.astype(np.float32))
    best = min(times[1:])
    return {"row": kind, "dims": dims, "precision": precision, "vox_per_s": voxels / best,
            "seconds_min": best, "seconds_median": float(np.median(times[1:])),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


GEOMETRY = {
    2: [(512, 512), (1024, 1024), (1500, 1500), (2048, 2048), (3000, 2000), (4096, 4096),
        (10000, 10000)],
    3: [(64, 256, 256), (96, 192, 192), (128, 512, 512), (200, 300, 400), (256, 1024, 1024),
        (1024, 512, 512)],
}


def geometry() -> None:
    """Voxels computed per output voxel by the default grids (no network runs)."""
    import math

    import napari_unet as nu
    from napari_unet.axes import Layout
    from napari_unet.inference.engine import plan_shapes, resolve_model
    from napari_unet.inference.plan import Plan

    print(f"{'dims':>4} {'shape':>20} {'crop tile':>18} {'crop':>6} {'gaussian tile':>18} "
          f"{'gaussian':>8} {'ratio':>6}")
    for dims, shapes in GEOMETRY.items():
        spec = resolve_model(nu.UNet(spatial_dims=dims, in_channels=1, out_channels=2,
                                     **SETUPS[dims]["model"]))
        axes = "YX" if dims == 2 else "ZYX"
        for shape in shapes:
            cost = {}
            for blending in ("crop", "gaussian"):
                grid, block, chunk = plan_shapes(shape, spec, nu.PredictConfig(blending=blending))
                plan = Plan(Layout(axes, "", axes, False), (), shape, grid, block, chunk)
                runs = sum(len(grid.tiles_touching(r)) for _, r in plan.units)
                cost[blending] = (grid.tile, runs * math.prod(grid.tile) / math.prod(shape))
            print(f"{dims:>4} {str(shape):>20} {str(cost['crop'][0]):>18} {cost['crop'][1]:>6.2f} "
                  f"{str(cost['gaussian'][0]):>18} {cost['gaussian'][1]:>8.2f} "
                  f"{cost['gaussian'][1] / cost['crop'][1]:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--geometry", action="store_true",
                        help="only the voxels computed per output voxel by the default grids")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.geometry:
        geometry()
        return
    setups = QUICK if args.quick else SETUPS
    if args.child:
        kind, dims, work = args.child
        print(json.dumps(row(kind, int(dims), setups[int(dims)], Path(work), args.repeats,
                             args.precision)))
        return

    import torch
    import zarr

    work = Path(tempfile.mkdtemp(prefix="nu-bench-"))
    results = []
    for dims in args.dims:
        setup = setups[dims]
        make_model(dims, setup["model"], work / f"model{dims}.safetensors")
        x = np.random.default_rng(0).normal(0, 1, setup["shape"]).astype(np.float32)
        np.save(work / f"input{dims}.npy", x)
        z = zarr.create_array(str(work / f"input{dims}.zarr"), shape=x.shape,
                              chunks=(64,) * dims, dtype="float32")
        z[:] = x
        kinds = ["pure forward", "monai", "monai folded", "napari-unet", "napari-unet zarr",
                 "pure forward auto", "monai defaults", "napari-unet defaults"]
        for kind in kinds:
            cmd = [sys.executable, __file__, "--child", kind, str(dims), str(work),
                   "--repeats", str(args.repeats), "--precision", args.precision]
            if args.quick:
                cmd.append("--quick")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        ref = np.load(work / f"out_monai_{dims}.npy")
        for r in results:
            f = work / f"out_{r['row'].replace(' ', '_')}_{dims}.npy"
            if r["dims"] == dims and f.exists() and "defaults" not in r["row"]:
                r["max_abs_diff_vs_monai"] = float(np.abs(np.load(f) - ref).max())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"precision {args.precision}, overlap {OVERLAP}, batch {BATCH}")
    head = (f"{'dims':>4} {'row':<22} {'kvox/s':>9} {'efficiency':>10} {'vs MONAI':>9} "
            f"{'peak RSS MB':>11} {'max|diff|':>10}")
    print(head)
    for dims in args.dims:
        rows = {r["row"]: r for r in results if r["dims"] == dims}
        pure = rows.get("pure forward", {}).get("vox_per_s", float("nan"))
        pure_auto = rows.get("pure forward auto", {}).get("vox_per_s", float("nan"))
        for name, r in rows.items():
            base = rows["monai defaults" if "defaults" in name else "monai"]["vox_per_s"]
            # MONAI's defaults run in fp32; ours in the "auto" precision.
            ceiling = pure_auto if name in ("napari-unet defaults", "pure forward auto") else pure
            diff = r.get("max_abs_diff_vs_monai", float("nan"))
            print(f"{dims:>4} {name:<22} {r['vox_per_s'] / 1e3:>9.1f} "
                  f"{r['vox_per_s'] / ceiling:>10.2f} {r['vox_per_s'] / base:>9.2f} "
                  f"{r['peak_rss_mb']:>11.0f} {diff:>10.2e}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
