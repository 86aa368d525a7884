"""The training loop: a generator of events that returns a :class:`TrainResult`.

A run directory holds everything needed to use or continue a run::

    best.safetensors   model with the best validation Dice (what to segment with)
    last.safetensors   model at the last save (epoch end or cancel)
    last_state.pt      optimiser, scheduler, RNG, counters (tensors and plain data only)
    config.yaml        the TrainConfig of the run
    history.csv        one row per epoch

Batches are drawn from seeds ``(seed, epoch, step)``, so a run is deterministic on the CPU
and ``resume=True`` continues exactly where a cancelled or killed run stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import postprocess
from ..config import TrainConfig
from ..events import EpochEnd, Progress, StageStarted
from ..inference.device import (
    autocast,
    exact_fp32,
    memory_format,
    release_memory,
    select_device,
    select_precision,
    too_large,
)
from ..io import InputError
from ..model.checkpoint import load_model, save_model
from ..model.unet import UNet
from .augment import Augmenter
from .augment_device import augment_batch
from .data import PatchSampler, class_weights, prepare_pairs, split_validation
from .losses import dice_score, make_loss, partial_scribble_loss
from .targets import (
    DISTANCE_CHANNELS,
    INSTANCE_CLASSES,
    grow_distance,
    levels_to_classes,
    n_classes_for,
)

__all__ = ["TrainResult", "train_iter"]

STATE_FILE = "last_state.pt"
# Seeds of a distance model before its threshold is chosen on the validation patches.
DEFAULT_SEED_THRESHOLD = 0.5


@dataclasses.dataclass
class TrainResult:
    """Outcome of a training run."""

    run_dir: Path
    best_model: Path
    last_model: Path
    history: list[EpochEnd]
    best_val_dice: float
    stopped: str  # "finished", "early stopping" or "cancelled"


def _save_state(path: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_history(path: Path, history: Sequence[EpochEnd]) -> None:
    fields = [f.name for f in dataclasses.fields(EpochEnd)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for e in history:
            w.writerow([getattr(e, f) for f in fields])
    os.replace(tmp, path)


def _lower_priority() -> None:
    """Run a patch thread below the training thread's priority (Linux: threads have their own
    nice value).  On a few cores the patch threads otherwise preempt torch's intra-op threads
    mid-operation and the others wait for them at the next barrier; at a lower priority they
    fill the gaps instead.  Ignored where the OS does not allow it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def patch_pipeline(device, cpus: int | None = None, on_device: bool = False
                   ) -> tuple[int, int]:
    """Threads that cut and augment patches, and how many batches they work ahead.

    On the CPU the model's own threads use every core during a step, so patch threads running
    alongside only take time from them (and hold up the others at their next barrier):
    measured on 2 cores, cutting each batch between steps, its patches spread over the cores,
    was faster than working ahead (3D, per round: 0.93-0.97 vs 0.87-0.92 of a bare loop).
    This assumes torch uses every core, as it does by default.  On a GPU the cores are idle
    while it computes, and a 3D batch of augmented patches costs about as much CPU time as
    several GPU steps, so one thread per spare core (up to 8) works ahead.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 2)
    if getattr(device, "type", str(device)) == "cpu":
        return int(min(8, max(1, cpus))), 0
    # Augmenting on the device, a thread only cuts regions (measured 2900 2D / 340 3D per
    # second and thread against the 1700 / 220 patches/s an H200 trains the benchmark models
    # on): a few threads suffice, and more only compete for the interpreter with the thread
    # that drives the GPU.
    threads = int(min(4 if on_device else 8, max(2, cpus - 1)))
    return threads, threads


def augment_on_device(device: torch.device, augmenter: Augmenter | None) -> bool:
    """Augment on the training device rather than in the patch threads: on a GPU, which
    resamples a batch in a few operations while the CPU threads would starve it (see
    :mod:`.augment_device`).  On the CPU the threads' scipy path is what was measured fastest."""
    return augmenter is not None and device.type == "cuda"


def _batches(sampler: PatchSampler, config: TrainConfig, epoch: int, first_step: int,
             pool: cf.ThreadPoolExecutor, ahead: int, regions: bool = False,
             pin: bool = False):
    """Batches of one epoch in step order (``regions``: see :meth:`PatchSampler.batch`).

    ``ahead = 0``: each batch is cut when it is needed, its patches in parallel on ``pool``;
    otherwise ``ahead`` batches are cut in advance, one per thread.  The content depends only
    on the seed, epoch and step.
    """
    steps = range(first_step, config.steps_per_epoch)
    if ahead == 0:
        for step in steps:
            yield step, sampler.batch(config.batch_size, (config.seed, epoch, step), pool,
                                      regions)
        return
    futures = []
    it = iter(steps)
    for step in it:
        futures.append((step, pool.submit(_cut, sampler, config.batch_size,
                                          (config.seed, epoch, step), regions, pin)))
        if len(futures) > ahead:
            break
    while futures:
        step, fut = futures.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            futures.append((nxt, pool.submit(_cut, sampler, config.batch_size,
                                             (config.seed, epoch, nxt), regions, pin)))
        yield step, fut.result()


def _cut(sampler: PatchSampler, batch_size: int, seed: tuple[int, ...], regions: bool,
         pin: bool) -> tuple[Any, ...]:
    """One batch, cut in a patch thread; with ``pin`` its arrays in pinned memory, so that
    copying them to the GPU does not wait for the step in flight."""
    batch = sampler.batch(batch_size, seed, None, regions)
    if not pin:
        return batch
    return (*(torch.from_numpy(a).pin_memory() for a in batch[:2]), *batch[2:])


def _out_of_memory(config: TrainConfig, device: torch.device, precision: str, epoch: int,
                   step: int, kept: Path | None) -> InputError:
    """The error for a step that did not fit the device: what to lower, and where the
    weights reached so far are (``kept``)."""
    smaller = ", or precision='bf16'" if precision == "fp32" else ""
    where = (f"; the weights so far are in {str(kept)!r} (start a new run with init_model "
             "set to that file, CLI --init, to go on)") if kept is not None else ""
    return InputError(
        f"training ran out of memory on {device} at epoch {epoch + 1}, step {step + 1} "
        f"(batch_size {config.batch_size} of {tuple(config.patch_size)} patches): choose a "
        f"smaller batch_size (e.g. {max(1, config.batch_size // 2)}) or patch_size"
        f"{smaller}{where}"
    )


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate after ``step`` of ``total`` steps, as a share of ``lr``, for the
    per-step schedules (``cosine``: 5 % linear warm-up, cosine decay to 0; ``onecycle``: from
    1/25 up over 30 %, cosine decay to 1/10^4)."""
    total = max(1, total)
    step = min(step, total)
    warm, start, end = (max(1, total // 20), 0.0, 0.0) if schedule == "cosine" else (
        max(1, int(0.3 * total)), 0.04, 1e-4)
    if step < warm:
        return start + (1.0 - start) * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    """The learning-rate scheduler of ``config.schedule`` (stepped per epoch with the
    validation Dice for ``plateau``, per step otherwise)."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=config.plateau_patience)
    total = config.epochs * config.steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config.schedule, step, total))


def _choose_seeds(path: Path, val_sampler: PatchSampler, config: TrainConfig,
                  grow_for: Callable[[float], int], device: torch.device, precision: str
                  ) -> None:
    """Store in the model at ``path`` the seed threshold that labels the validation patches
    best, and how far its seeds regrow."""
    from .seed_threshold import choose_seed_threshold

    model = load_model(path).to(device)
    patches = val_sampler.fixed_patches(config.val_patches, config.seed, labels=True)
    best, scores = choose_seed_threshold(model, patches, grow_for, device, precision)
    save_model(model.cpu(), path, seed_threshold=best, grow=grow_for(best),
               seed_threshold_scores={str(k): v for k, v in scores.items()})


def train_mode(model: torch.nn.Module, freeze_norms: bool = False) -> None:
    """Training mode; with ``freeze_norms`` the batch norms keep the statistics they have
    (fine-tuning from a few strokes on one image: statistics of its patches alone would
    replace those of the data the model learnt on, and it forgets)."""
    model.train()
    if freeze_norms:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _evaluate(model, patches, loss_fn, device, precision, batch_size, distance=False,
              freeze_norms=False):
    model.eval()
    losses, inter, denom = [], 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(patches), batch_size):
            xs, ts = zip(*patches[i : i + batch_size], strict=True)
            x = torch.from_numpy(np.stack(xs)).to(device)
            x = x.contiguous(memory_format=memory_format(x.ndim - 2))
            t = torch.from_numpy(np.stack(ts)).to(device)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            losses.append(loss_fn(logits, t).item() * len(xs))
            a, b = dice_score(logits, t, distance)
            inter += a
            denom += b
    train_mode(model, freeze_norms)
    return sum(losses) / max(1, len(patches)), (inter / denom if denom > 0 else 1.0)


def train_iter(
    train_data: Sequence[Any],
    config: TrainConfig | None = None,
    val_data: Sequence[Any] | None = None,
    run_dir: str | os.PathLike = "napari-unet-run",
    resume: bool = False,
    cancel: Callable[[], bool] | None = None,
    metadata: dict[str, Any] | None = None,
    axes: str | None = None,
) -> Generator[Any, None, TrainResult]:
    """Train a U-Net; yields :class:`Progress` per step and :class:`EpochEnd` per epoch.

    Parameters
    ----------
    train_data : sequence of (image, labels)
        Arrays (numpy / dask / zarr) or paths (zarr / TIFF), 2D or 3D, any sizes.
    config : TrainConfig
        All settings.
    val_data : sequence of (image, labels), optional
        Validation pairs; by default a part of ``train_data`` is held out.
    run_dir : path
        Folder for checkpoints, config and history.
    resume : bool
        Continue the run saved in ``run_dir`` (same optimiser and scheduler state).
    cancel : callable, optional
        Polled every step; returning True saves the last checkpoint and stops.
    metadata : dict, optional
        Facts stored in the saved models besides the run's own, e.g. ``rgb_to_gray=True``
        for a model trained on the gray average of colour images (``predict`` then averages
        colour images too).
    axes : str, optional
        Axes of the images (letters from "TCZYX", e.g. "CYX", "ZYX"), the same for every
        pair; inferred from the labels' shape when omitted (:mod:`napari_unet.axes`).
    """
    config = config or TrainConfig()
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if resume and not state_path.exists():
        raise InputError(f"cannot resume: {str(state_path)!r} does not exist")
    if not resume and state_path.exists():
        raise InputError(
            f"{str(run_dir)!r} already holds a training run; pass resume=True (CLI: --resume) "
            "to continue it, or choose another run folder"
        )
    state = torch.load(state_path, weights_only=True) if resume else None
    if state is not None and "core" not in state["config"]:
        # A run from before core seeds (its interior reached the boundary ring) goes on so.
        state["config"]["core"] = 0.0
        config = config.replace(core=0.0)
    init = None
    if config.init_model is not None:
        from ..models import model_path

        init = load_model(model_path(config.init_model))
    norm_meta = (init.metadata.get("normalization") or {}) if init is not None else {}
    if norm_meta.get("kind") == "percentile":
        # Fine-tuning keeps the intensities the weights were trained on.
        config = config.replace(normalize=(float(norm_meta["low"]), float(norm_meta["high"])),
                                invert=str(norm_meta.get("invert", "never")))
    # Scribbles for a boundary model: its classes stay, strokes say background or object.
    partial = (config.label_mode == "scribbles" and init is not None
               and init.metadata.get("label_mode") == "instances"
               and postprocess.output_kind(init.metadata) == "classes")
    sd = config.model.spatial_dims
    patch = tuple(config.patch_size)
    yield StageStarted("prepare", message="checking and sampling the training data")
    train_pairs, stats = prepare_pairs(train_data, sd, config.label_mode, patch,
                                       config.normalize, "training", config.seed,
                                       invert=config.invert, axes=axes)
    if val_data is not None and len(val_data):
        val_pairs, vstats = prepare_pairs(val_data, sd, config.label_mode, patch,
                                          config.normalize, "validation", config.seed,
                                          invert=config.invert, axes=axes)
        split_note = f"{len(train_pairs)} training / {len(val_pairs)} validation pairs"
        max_label = max(stats.max_label, vstats.max_label)
    else:
        train_pairs, val_pairs, split_note = split_validation(
            train_pairs, config.val_fraction, config.seed, patch,
            sparse=config.label_mode == "scribbles")
        max_label = stats.max_label
    if config.label_mode == "scribbles" and max_label < 2:
        raise InputError(
            "scribbles need at least two classes: paint background with label 1 and "
            "foreground with label 2 (0 stays unlabelled)"
        )
    if partial and max_label > 2:
        raise InputError(
            f"init_model {config.init_model!r} is an instance model: its scribbles take two "
            f"values, 1 for background and 2 for objects (found up to {max_label})")
    if config.label_mode == "scribbles" and config.scribble_prior == "forest":
        from .pixel_classifier import forest_pseudo_labels

        yield StageStarted("forest", message="pixel classifier on the scribbles")
        try:
            train_pairs = forest_pseudo_labels(train_pairs, seed=config.seed)
        except ValueError as err:
            raise InputError(str(err)) from err
    n_classes = n_classes_for(config.label_mode, max_label)
    binary = n_classes == 2
    distance = config.target == "distance"
    out_channels = len(DISTANCE_CHANNELS) if distance else 1 if binary else n_classes
    model_cfg = config.model.replace(in_channels=int(train_pairs[0].image.shape[0]),
                                     out_channels=out_channels)
    if partial:
        model_cfg = model_cfg.replace(out_channels=init.config.out_channels)
    if init is not None:
        if (init.config.in_channels, init.config.out_channels) != (
                model_cfg.in_channels, model_cfg.out_channels):
            raise InputError(
                f"init_model {config.init_model!r} takes {init.config.in_channels} channel(s) "
                f"and predicts {init.config.out_channels}; these data need "
                f"{model_cfg.in_channels} and {model_cfg.out_channels}")
        model_cfg = init.config
    device = select_device(config.device)
    precision = select_precision(config.precision, device)

    torch.manual_seed(config.seed)
    model = UNet(model_cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
    augmenter = (Augmenter(sd, anisotropic=config.anisotropic, scale=config.zoom)
                 if config.augment else None)
    sampler = PatchSampler(train_pairs, patch, config.label_mode, config.boundary_width,
                           config.foreground_fraction, augmenter,
                           uniform=config.pair_sampling == "uniform", core=config.core,
                           target=config.target)
    val_sampler = PatchSampler(val_pairs, patch, config.label_mode, config.boundary_width,
                               config.foreground_fraction, None, core=config.core,
                               target=config.target)
    val_set = val_sampler.fixed_patches(config.val_patches, config.seed)
    weights = None
    if config.class_weights == "auto" and config.loss != "dice" and not (distance or partial):
        sample = sampler.fixed_patches(min(64, 4 * config.batch_size), config.seed + 1)
        # On the training device from the start: a copy per step would wait for the device.
        weights = torch.tensor(class_weights([t for _, t in sample], n_classes),
                               dtype=torch.float32, device=device)
    loss_fn = (partial_scribble_loss if partial
               else make_loss(config.loss, binary, weights, config.target))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = make_scheduler(optimizer, config)
    per_step = config.schedule != "plateau"
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    extra_metadata = dict(metadata or {})
    metadata = {
        **extra_metadata,
        "normalization": {"kind": "percentile", "low": config.normalize[0],
                          "high": config.normalize[1], "invert": config.invert},
        "label_mode": config.label_mode,
        "boundary_width": config.boundary_width,
        "core": config.core,
        "class_names": (list(DISTANCE_CHANNELS) if distance
                        else list(INSTANCE_CLASSES) if config.label_mode == "instances"
                        else [f"class {i}" for i in range(n_classes)]),
        "tile": [max(2 * p, 256 if sd == 2 else 96) for p in patch],
        "patch_size": list(patch),
        "train_config": config.to_dict(),
    }
    if partial:  # still the init model's kind of model: its classes, seeds and regrowth
        metadata.update({k: init.metadata[k] for k in (
            "label_mode", "boundary_width", "core", "class_names", "grow", "tile",
            "rgb_to_gray") if k in init.metadata})
    grow_for = None
    if config.label_mode == "instances" and (config.core > 0 or distance) and not partial:
        # Seeds of a core or distance model regrow further than the ring width: as far as its
        # targets need.  Whole targets where small (distance transforms cost ~20 bytes per
        # voxel), else training patches.
        whole = [t for t in sampler.targets if t is not None and t.size <= 2**24]
        if len(whole) < len(sampler.targets):
            whole += [t for _, t in sampler.fixed_patches(64, config.seed + 2)]

        def grow_for(threshold: float) -> int:
            return grow_distance([levels_to_classes(t, threshold) for t in whole]
                                 if distance else whole, config.boundary_width)

        if distance:
            metadata.update(output="distance", seed_threshold=DEFAULT_SEED_THRESHOLD)
        metadata["grow"] = grow_for(DEFAULT_SEED_THRESHOLD)
    history: list[EpochEnd] = []
    start_epoch, start_step, best, bad_epochs, global_step = 0, 0, -1.0, 0, 0
    elapsed0 = 0.0
    if resume:
        saved = TrainConfig.from_dict(state["config"])
        if saved.replace(epochs=config.epochs) != config:
            raise InputError(
                f"cannot resume {str(run_dir)!r} with different settings (only epochs may "
                "change); use the run's config.yaml"
            )
        last = load_model(run_dir / "last.safetensors")
        model.load_state_dict(last.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        best, bad_epochs = float(state["best"]), int(state["bad_epochs"])
        global_step, elapsed0 = int(state["global_step"]), float(state["elapsed"])
        history = [EpochEnd(**h) for h in state["history"]]
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.yaml")
    fmt = memory_format(sd)
    model.to(device, memory_format=fmt)
    train_mode(model, partial)
    # Move optimiser state onto the device after a resume.
    for st in optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)

    def save_last(epoch: int, step: int) -> None:
        save_model(model, run_dir / "last.safetensors", **metadata, epoch=epoch, step=step)
        _save_state(state_path, {
            "config": config.to_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step, "best": best,
            "bad_epochs": bad_epochs, "global_step": global_step,
            "elapsed": elapsed0 + time.perf_counter() - t0,
            "history": [dataclasses.asdict(h) for h in history],
        })

    yield StageStarted(
        "train", total=config.epochs * config.steps_per_epoch,
        message=f"{split_note}; {n_classes} classes ({config.label_mode}); device {device} "
                f"({precision}); model {model_cfg.depth} levels, {model_cfg.base_filters} "
                "base filters",
    )
    t0 = time.perf_counter()
    stopped = "finished"
    on_device = augment_on_device(device, augmenter)
    threads, ahead = patch_pipeline(device, on_device=on_device)
    pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nu-patches",
                                 initializer=_lower_priority if ahead else None)
    numerics = contextlib.ExitStack()  # fp32 on CUDA: no TF32, forward and backward
    numerics.enter_context(exact_fp32(device, precision))
    try:
        for epoch in range(start_epoch, config.epochs):
            if epoch != start_epoch or start_step == 0:
                # Re-seed per epoch (dropout); a mid-epoch resume restores the saved RNG instead.
                torch.manual_seed(config.seed * 100_003 + epoch)
            losses = []
            for step, batch in _batches(sampler, config, epoch, start_step, pool, ahead,
                                        on_device, device.type == "cuda"):
                if cancel is not None and cancel():
                    save_last(epoch, step)
                    stopped = "cancelled"
                    break
                stepping = False
                try:
                    x = torch.as_tensor(batch[0]).to(device, non_blocking=True)
                    t = torch.as_tensor(batch[1]).to(device, non_blocking=True)
                    if on_device:
                        x, t = augment_batch(x, t, batch[2], patch)
                    x = x.contiguous(memory_format=fmt)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast(device, precision):
                        logits = model(x)
                    loss = loss_fn(logits.float(), t)
                    scaler.scale(loss).backward()
                    stepping = True
                    scaler.step(optimizer)
                    scaler.update()
                    if per_step:
                        scheduler.step()
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not too_large(err):
                        raise
                    # The traceback keeps this frame alive: let go of the step's tensors.
                    x = t = logits = loss = batch = None
                    if not stepping:  # the weights are those after the previous step
                        save_last(epoch, step)
                    raise _out_of_memory(config, device, precision, epoch, step, None
                                         if stepping else run_dir / "last.safetensors") from err
                # Checked after the step, at the one wait for the device per step: a check
                # before backward would idle a GPU while the backward pass is launched.  A
                # diverged step only changes the weights in memory (nothing is saved).
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch + 1}, step {step + 1} (loss "
                        f"{value}); lower the learning rate (lr={config.lr})"
                    )
                global_step += 1
                losses.append(value)
                yield Progress("train", epoch * config.steps_per_epoch + step + 1,
                               config.epochs * config.steps_per_epoch,
                               f"epoch {epoch + 1} loss {losses[-1]:.4f}")
            if stopped == "cancelled":
                break
            start_step = 0
            val_loss, val_dice = _evaluate(model, val_set, loss_fn, device, precision,
                                           config.batch_size, distance, partial)
            if not per_step:
                scheduler.step(val_dice)
            improved = val_dice > best + 1e-6
            if improved:
                best, bad_epochs = val_dice, 0
                save_model(model, run_dir / "best.safetensors", **metadata, epoch=epoch + 1,
                           val_dice=val_dice)
            else:
                bad_epochs += 1
            event = EpochEnd(
                epoch=epoch + 1, step=global_step,
                train_loss=float(np.mean(losses)) if losses else math.nan,
                val_loss=val_loss, val_dice=val_dice, lr=optimizer.param_groups[0]["lr"],
                elapsed=elapsed0 + time.perf_counter() - t0,
            )
            history.append(event)
            save_last(epoch + 1, 0)
            _write_history(run_dir / "history.csv", history)
            yield event
            if bad_epochs >= config.patience:
                stopped = "early stopping"
                break
    finally:
        numerics.close()
        pool.shutdown(wait=True, cancel_futures=True)
        # An error's traceback keeps this frame (and so these) alive: the GPU memory they hold
        # is handed back now, so that napari need not be restarted.
        model.cpu()
        optimizer.state.clear()
        release_memory(device)
    best_path = run_dir / "best.safetensors"
    if not best_path.exists():  # cancelled before the first validation
        best_path = run_dir / "last.safetensors"
    elif distance and stopped != "cancelled":
        yield StageStarted("seeds", message="choosing the seed threshold on the validation "
                                            "patches")
        _choose_seeds(best_path, val_sampler, config, grow_for, device, precision)
    return TrainResult(run_dir, best_path, run_dir / "last.safetensors", history, best, stopped)
