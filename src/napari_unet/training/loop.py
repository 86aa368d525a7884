"""The training loop: a generator of events that returns a :class:`TrainResult`.

``train_iter`` puts the parts together: the run folder (:mod:`.run_folder`: checkpoints,
state, history), the run's setup (:mod:`.setup`: data, model, loss, optimiser), the patch
pipeline (:mod:`.batches`), one optimiser step at a time here, and validation after every
epoch (:mod:`.validation`).  Batches are drawn from seeds ``(seed, epoch, step)``, so a run
is deterministic on the CPU and ``resume=True`` continues exactly where a cancelled or killed
run stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import TrainingDivergedError
from ..events import EpochEnd, Progress, StageStarted
from ..inference.device import (
    autocast,
    exact_fp32,
    memory_format,
    release_memory,
    too_large,
)
from ..io import InputError
from ..model.checkpoint import load_model, save_model
from .augment_device import augment_batch
from .batches import augment_on_device, batches, lower_priority, patch_pipeline
from .run_folder import STATE_FILE, RunFolder
from .schedules import lr_factor
from .setup import Run, prepare_run
from .validation import choose_seeds, comparable, evaluate_patches, train_mode

__all__ = ["TrainResult", "train_iter", "STATE_FILE", "lr_factor"]


@dataclasses.dataclass
class TrainResult:
    """Outcome of a training run."""

    run_dir: Path
    best_model: Path
    last_model: Path
    history: list[EpochEnd]
    best_val_dice: float
    stopped: str  # "finished", "early stopping" or "cancelled"


@dataclasses.dataclass
class _Progress:
    """The counters a resumed run takes up again."""

    epoch: int = 0
    step: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    history: list[EpochEnd] = dataclasses.field(default_factory=list)


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


def _resume(run: Run, folder: RunFolder, state: dict[str, Any]) -> _Progress:
    """Load the weights, optimiser, schedule, RNG and counters of a saved run."""
    saved = TrainConfig.from_dict(state["config"])
    if comparable(saved) != comparable(run.config):
        raise InputError(
            f"cannot resume {str(folder.path)!r} with different settings (only epochs may "
            "change); use the run's config.yaml"
        )
    run.model.load_state_dict(load_model(folder.last).state_dict())
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return _Progress(int(state["epoch"]), int(state["step"]), float(state["best"]),
                     int(state["bad_epochs"]), int(state["global_step"]),
                     float(state["elapsed"]), [EpochEnd(**h) for h in state["history"]])


def _step(run: Run, batch: tuple[Any, ...], on_device: bool, fmt: torch.memory_format
          ) -> torch.Tensor:
    """One optimiser step on ``batch``; returns the loss (still on the device)."""
    x = torch.as_tensor(batch[0]).to(run.device, non_blocking=True)
    t = torch.as_tensor(batch[1]).to(run.device, non_blocking=True)
    if on_device:
        x, t = augment_batch(x, t, batch[2], tuple(run.config.patch_size))
    x = x.contiguous(memory_format=fmt)
    run.optimizer.zero_grad(set_to_none=True)
    with autocast(run.device, run.precision):
        logits = run.model(x)
        if run.teacher is not None:
            with torch.no_grad():
                teacher = run.teacher(x)
    loss = (run.loss_fn(logits.float(), t) if run.teacher is None
            else run.loss_fn(logits.float(), t, teacher.float()))
    run.scaler.scale(loss).backward()
    return loss


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
        Arrays (numpy / dask / zarr) or paths (zarr / TIFF / PNG ...), 2D or 3D, any sizes.
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
    folder = RunFolder(Path(run_dir))
    state = folder.open(resume)
    if state is not None and state.get("legacy_core"):
        config = config.replace(core=0.0)  # saved before core seeds: it trained without
    run = yield from prepare_run(train_data, val_data, config, axes, metadata)
    config = run.config
    progress = _resume(run, folder, state) if state is not None else _Progress()
    folder.path.mkdir(parents=True, exist_ok=True)
    config.save(folder.path / "config.yaml")
    fmt = memory_format(config.model.spatial_dims)
    run.model.to(run.device, memory_format=fmt)
    if run.teacher is not None:
        run.teacher.to(run.device, memory_format=fmt)
    train_mode(run.model, run.partial)
    for st in run.optimizer.state.values():  # a resumed optimiser's state onto the device
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(run.device)
    t0 = time.perf_counter()

    def save_last(epoch: int, step: int) -> None:
        save_model(run.model, folder.last, **run.metadata, epoch=epoch, step=step)
        folder.save_state({
            "config": config.to_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "epoch": epoch, "step": step,
            "best": progress.best, "bad_epochs": progress.bad_epochs,
            "global_step": progress.global_step,
            "elapsed": progress.elapsed + time.perf_counter() - t0,
            "history": [dataclasses.asdict(h) for h in progress.history],
        })

    mc = config.model
    yield StageStarted(
        "train", total=config.epochs * config.steps_per_epoch,
        message=f"{run.split_note}; {run.n_classes} classes ({config.label_mode}); device "
                f"{run.device} ({run.precision}); model {mc.depth} levels, "
                f"{mc.base_filters} base filters",
    )
    stopped = "finished"
    on_device = augment_on_device(run.device, run.augmenter)
    threads, ahead = patch_pipeline(run.device, on_device=on_device)
    pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nu-patches",
                                 initializer=lower_priority if ahead else None)
    numerics = contextlib.ExitStack()  # fp32 on CUDA: no TF32, forward and backward
    numerics.enter_context(exact_fp32(run.device, run.precision))
    try:
        for epoch in range(progress.epoch, config.epochs):
            if epoch != progress.epoch or progress.step == 0:
                # Re-seed per epoch (dropout); a mid-epoch resume restores the saved RNG instead.
                torch.manual_seed(config.seed * 100_003 + epoch)
            losses = []
            for step, batch in batches(run.sampler, config, epoch, progress.step, pool, ahead,
                                       on_device, run.device.type == "cuda"):
                if cancel is not None and cancel():
                    save_last(epoch, step)
                    stopped = "cancelled"
                    break
                stepping = False
                try:
                    loss = _step(run, batch, on_device, fmt)
                    stepping = True
                    run.scaler.step(run.optimizer)
                    run.scaler.update()
                    if run.per_step:
                        run.scheduler.step()
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not too_large(err):
                        raise
                    # The traceback keeps this frame alive: let go of the step's tensors.
                    loss = batch = None
                    if not stepping:  # the weights are those after the previous step
                        save_last(epoch, step)
                    raise _out_of_memory(config, run.device, run.precision, epoch, step,
                                         None if stepping else folder.last) from err
                # Checked after the step, at the one wait for the device per step: a check
                # before backward would idle a GPU while the backward pass is launched.  A
                # diverged step only changes the weights in memory (nothing is saved).
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"training diverged at epoch {epoch + 1}, step {step + 1} (loss "
                        f"{value}); lower the learning rate (lr={config.lr})"
                    )
                progress.global_step += 1
                losses.append(value)
                yield Progress("train", epoch * config.steps_per_epoch + step + 1,
                               config.epochs * config.steps_per_epoch,
                               f"epoch {epoch + 1} loss {losses[-1]:.4f}")
            if stopped == "cancelled":
                break
            progress.step = 0
            event = _end_epoch(run, folder, progress, epoch, losses,
                               progress.elapsed + time.perf_counter() - t0)
            save_last(epoch + 1, 0)
            folder.write_history(progress.history)
            yield event
            if progress.bad_epochs >= config.patience:
                stopped = "early stopping"
                break
    finally:
        numerics.close()
        pool.shutdown(wait=True, cancel_futures=True)
        # An error's traceback keeps this frame (and so these) alive: the GPU memory they hold
        # is handed back now, so that napari need not be restarted.
        run.model.cpu()
        run.optimizer.state.clear()
        release_memory(run.device)
    best_path = folder.best
    if not best_path.exists():  # cancelled before the first validation
        best_path = folder.last
    elif run.distance and stopped != "cancelled":
        yield StageStarted("seeds", message="choosing the seed threshold on the validation "
                                            "patches")
        choose_seeds(best_path, run.val_sampler, config, run.grow_for, run.device,
                     run.precision)
    return TrainResult(folder.path, best_path, folder.last, progress.history, progress.best,
                       stopped)


def _end_epoch(run: Run, folder: RunFolder, progress: _Progress, epoch: int,
               losses: list[float], elapsed: float) -> EpochEnd:
    """Validate, step a plateau schedule, keep the best model; the epoch's event."""
    config = run.config
    val_loss, val_dice = evaluate_patches(run.model, run.val_set, run.loss_fn, run.device,
                                          run.precision, config.batch_size, run.distance,
                                          run.partial)
    if not run.per_step:
        run.scheduler.step(val_dice)
    if val_dice > progress.best + 1e-6:
        progress.best, progress.bad_epochs = val_dice, 0
        save_model(run.model, folder.best, **run.metadata, epoch=epoch + 1, val_dice=val_dice)
    else:
        progress.bad_epochs += 1
    event = EpochEnd(
        epoch=epoch + 1, step=progress.global_step,
        train_loss=float(np.mean(losses)) if losses else math.nan,
        val_loss=val_loss, val_dice=val_dice, lr=run.optimizer.param_groups[0]["lr"],
        elapsed=elapsed,
    )
    progress.history.append(event)
    return event
