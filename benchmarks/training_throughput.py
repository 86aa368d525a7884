"""Training steps/s of napari-unet's loop (lazy patches from zarr + augmentation) vs a bare
torch loop on in-memory tensors, same model, batch and precision; plus the data pipeline alone:
augmented patches/s of one patch thread (the CPU path) and regions/s (cut and normalised, with
their random choices: what a patch thread does when a GPU augments on the device).

    .venv/bin/python benchmarks/training_throughput.py [--dims 2 3] [--steps 30] [--rounds 3]
        [--device cuda]

The two loops run in alternation, ``--rounds`` times each; the ratio is the median of the
per-round ratios (on a shared machine single runs of either vary by +-10%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SETUPS = {
    2: dict(shape=(1024, 1024), patch=(128, 128), batch=16,
            model=dict(depth=4, base_filters=16)),
    3: dict(shape=(64, 256, 256), patch=(32, 64, 64), batch=2,
            model=dict(depth=3, base_filters=16)),
}


def bare_loop(dims, setup, steps, precision, device):
    import torch

    import napari_unet as nu
    from napari_unet.inference.device import autocast, memory_format
    from napari_unet.training.losses import make_loss

    torch.manual_seed(0)
    model = nu.UNet(spatial_dims=dims, out_channels=4, **setup["model"])  # as ours: 4 classes
    fmt = memory_format(dims)
    device = torch.device(device)
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(setup["batch"], 1, *setup["patch"], device=device).contiguous(
        memory_format=fmt)
    t = torch.randint(0, 4, (setup["batch"], *setup["patch"]), device=device)
    # The objective our loop trains instance labels with (cross-entropy with class weights +
    # soft Dice), so that both loops do the same work per step.
    loss_fn = make_loss("auto", binary=False, class_weights=torch.tensor([0.5, 1.0, 2.0, 4.0]))
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad()
        with autocast(device, precision):
            y = model(x)
        loss = loss_fn(y, t)
        loss.backward()
        opt.step()
        loss.item()  # as our loop does (and a sync point on a GPU)
        times.append(time.perf_counter() - t0)
    return 1.0 / float(np.median(times[3:]))


def our_loop(dims, setup, steps, precision, work, device, augment=True):
    import zarr

    import napari_unet as nu
    from napari_unet.data.synthetic import synthetic_nuclei
    from napari_unet.events import Progress

    image, labels = synthetic_nuclei(setup["shape"], seed=0,
                                     radius=(5, 10) if dims == 2 else (4, 8))
    zi = zarr.create_array(str(work / f"img{dims}.zarr"), shape=image.shape,
                           chunks=(64,) * dims, dtype=image.dtype, overwrite=True)
    zi[:] = image
    zl = zarr.create_array(str(work / f"lab{dims}.zarr"), shape=labels.shape,
                           chunks=(64,) * dims, dtype="uint32", overwrite=True)
    zl[:] = labels
    cfg = nu.TrainConfig(
        model=nu.ModelConfig(spatial_dims=dims, **setup["model"]), patch_size=setup["patch"],
        batch_size=setup["batch"], epochs=1, steps_per_epoch=steps + 3, val_patches=2,
        precision=precision, device=device, augment=augment)
    stamps = []
    import shutil

    shutil.rmtree(work / f"run{dims}", ignore_errors=True)
    nu.train([(zi, zl)], cfg, [(zi, zl)], run_dir=work / f"run{dims}",
             progress=lambda e: stamps.append(time.perf_counter())
             if isinstance(e, Progress) else None)
    gaps = np.diff(stamps)[2:]
    return 1.0 / float(np.median(gaps))


def pipeline(dims, setup, work, regions=False):
    import zarr

    from napari_unet.training.augment import Augmenter
    from napari_unet.training.data import PatchSampler, prepare_pairs

    zi = zarr.open_array(str(work / f"img{dims}.zarr"), mode="r")
    zl = zarr.open_array(str(work / f"lab{dims}.zarr"), mode="r")
    pairs, _ = prepare_pairs([(zi, zl)], dims, "instances", setup["patch"], (1, 99.8))
    sampler = PatchSampler(pairs, setup["patch"], "instances", 2, 0.33, Augmenter(dims))
    n = 4 * setup["batch"]
    t0 = time.perf_counter()
    for k in range(4):
        sampler.batch(setup["batch"], (0, 0, k), regions=regions)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 on a GPU and on a CPU that computes it natively")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--diagnose", action="store_true",
                        help="also time our loop without augmentation (the loop's own cost)")
    args = parser.parse_args()
    import torch

    from napari_unet.inference.device import select_precision

    # Both loops get the same resolved precision (the bare loop has no 'auto').
    args.precision = select_precision(args.precision, torch.device(args.device))
    work = Path(tempfile.mkdtemp(prefix="nu-train-bench-"))
    rows = []
    for dims in args.dims:
        setup = SETUPS[dims]
        bares, ourss, plains = [], [], []
        for _ in range(args.rounds):
            bares.append(bare_loop(dims, setup, args.steps, args.precision, args.device))
            ourss.append(our_loop(dims, setup, args.steps, args.precision, work, args.device))
            if args.diagnose:
                plains.append(our_loop(dims, setup, args.steps, args.precision, work,
                                       args.device, augment=False))
        bare, ours = float(np.median(bares)), float(np.median(ourss))
        ratio = float(np.median(np.array(ourss) / np.array(bares)))
        pps = pipeline(dims, setup, work)
        rps = pipeline(dims, setup, work, regions=True)
        rows.append({"dims": dims, "bare_steps_per_s": bare, "ours_steps_per_s": ours,
                     "ratio": ratio, "ratios": [o / b for o, b in zip(ourss, bares, strict=True)],
                     "pipeline_patches_per_s_1_thread": pps,
                     "regions_per_s_1_thread": rps,
                     "ours_without_augmentation_ratio": float(np.median(
                         np.array(plains) / np.array(bares))) if plains else None,
                     "model_patches_per_s": bare * setup["batch"]})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}, "
          f"device {args.device}")
    print(f"{'dims':>4} {'bare steps/s':>13} {'ours steps/s':>13} {'ratio':>6} "
          f"{'per round':>18} {'pipeline patch/s':>17} {'regions/s':>10} {'model patch/s':>14}")
    for r in rows:
        rounds = " ".join(f"{v:.2f}" for v in r["ratios"])
        print(f"{r['dims']:>4} {r['bare_steps_per_s']:>13.3f} {r['ours_steps_per_s']:>13.3f} "
              f"{r['ratio']:>6.2f} {rounds:>18} {r['pipeline_patches_per_s_1_thread']:>17.1f} "
              f"{r['regions_per_s_1_thread']:>10.1f} "
              f"{r['model_patches_per_s']:>14.1f}")
    if args.diagnose:
        print("ours without augmentation / bare: " + ", ".join(
            f"{r['dims']}D {r['ours_without_augmentation_ratio']:.2f}" for r in rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
