"""The built-in main job: segment a large synthetic image out of core and score it.

Needs no data of the user's.  With the built-in nuclei model (the default) it writes a large
synthetic 2D nuclei image to zarr, segments it block by block into a zarr store (instance
labels), and reports Dice and average precision against the synthetic truth, with a PNG
preview.  With ``train=True`` (or when no built-in model is installed) it first trains a
small 3D U-Net on synthetic volumes and segments a larger synthetic volume instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoSummary", "run_demo"]


@dataclasses.dataclass
class DemoSummary:
    """What the demo did and measured."""

    out_dir: Path
    volume_shape: tuple[int, ...]
    n_blocks: int
    train_seconds: float | None
    predict_seconds: float
    val_dice: float | None
    dice: float
    ap50: float
    n_true: int
    n_pred: int
    preview: Path
    model: Path

    def report(self) -> str:
        if self.train_seconds is None:
            how = "built-in model"
        else:
            how = (f"trained here in {self.train_seconds:.0f} s, validation Dice "
                   f"{self.val_dice:.3f}")
        return "\n".join([
            f"napari-unet demo: results in {self.out_dir}",
            f"  model       {self.model} ({how})",
            f"  segmented   {self.volume_shape} pixels out of core in {self.n_blocks} blocks, "
            f"{self.predict_seconds:.0f} s -> {self.out_dir / 'labels.zarr'}",
            f"  foreground Dice vs synthetic truth: {self.dice:.3f}",
            f"  AP@0.5 (objects): {self.ap50:.3f}  ({self.n_pred} predicted / "
            f"{self.n_true} true objects)",
            f"  preview     {self.preview}",
        ])


def _write_preview(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> None:
    import imageio.v3 as iio
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    lo, hi = np.percentile(image, (1, 99.8))
    gray = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    truth_view = rgb.copy()
    truth_view[find_boundaries(truth, mode="inner")] = (0.0, 1.0, 0.0)
    pred_view = label2rgb(pred, image=gray, alpha=0.35, bg_label=0)
    pred_view[find_boundaries(pred, mode="inner")] = (1.0, 1.0, 0.0)
    sep = np.ones((rgb.shape[0], 4, 3))
    panel = np.concatenate([rgb, sep, truth_view, sep, pred_view], axis=1)
    iio.imwrite(path, (panel * 255).astype(np.uint8))


def _write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks,
                            overwrite=True)
    arr[:] = data


def _segment_and_score(out: Path, model: Any, image: np.ndarray, truth: np.ndarray,
                       block: tuple[int, ...], chunk: tuple[int, ...], tile: Any,
                       emit: Callable[[Any], None]) -> tuple[Any, ...]:
    """Write the image to zarr, segment it out of core, and score it chunk by chunk."""
    import zarr

    from .api import predict
    from .metrics import average_precision

    image_path = out / "image.zarr"
    _write_zarr(image_path, image, chunk)
    _write_zarr(out / "truth.zarr", truth, chunk)
    shape = image.shape
    n_blocks = int(np.prod([-(-s // b) for s, b in zip(shape, block, strict=True)]))
    t0 = time.perf_counter()
    labels = predict(model, image_path, out / "labels.zarr", mode="instances",
                     block_shape=block, chunk_shape=chunk, tile=tile, overwrite=True,
                     progress=emit)
    seconds = time.perf_counter() - t0
    # Foreground Dice accumulated slab by slab: the result is never needed whole for it.
    inter = total = 0
    step = chunk[0]
    for a in range(0, shape[0], step):
        p = np.asarray(labels[a : a + step]) > 0
        t = truth[a : a + step] > 0
        inter += int((p & t).sum())
        total += int(p.sum() + t.sum())
    dice = 2.0 * inter / total if total else 1.0
    pred = np.asarray(labels[:])
    ap50 = average_precision(pred, truth, [0.5])[0.5]
    if image.ndim == 3:
        mid = shape[0] // 2
        view = (mid,)
    else:
        view = (slice(0, 512), slice(0, 768))
    preview = out / "preview.png"
    stored = np.asarray(zarr.open_array(str(image_path), mode="r")[view])
    _write_preview(preview, stored, truth[view], pred[view])
    return n_blocks, seconds, dice, ap50, int(truth.max()), int(len(np.unique(pred)) - 1), \
        preview


def run_demo(
    out_dir: str | Path = "napari-unet-demo",
    quick: bool = False,
    train: bool = False,
    progress: Callable[[Any], None] | None = None,
) -> DemoSummary:
    """Run the built-in demo and return its summary (see the module docstring)."""
    from .data.synthetic import synthetic_nuclei
    from .events import StageStarted
    from .models import default_model_path

    emit = progress or (lambda e: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builtin = default_model_path()
    if builtin is not None and not train:
        from .model.checkpoint import load_model

        shape = (2048, 2048) if quick else (4096, 4096)
        emit(StageStarted("data", message=f"rendering a synthetic {shape} nuclei image"))
        image, truth = synthetic_nuclei(shape, density=0.25, radius=(5.0, 10.0), seed=1234)
        n_blocks, seconds, dice, ap50, n_true, n_pred, preview = _segment_and_score(
            out, load_model(builtin), image, truth, block=(1024, 1024), chunk=(512, 512),
            tile=None, emit=emit)
        return DemoSummary(out, shape, n_blocks, None, seconds, None, dice, ap50, n_true,
                           n_pred, preview, builtin)
    return _train_then_segment(out, quick, emit)


def _train_then_segment(out: Path, quick: bool, emit: Callable[[Any], None]) -> DemoSummary:
    import shutil

    from .api import train
    from .config import ModelConfig, TrainConfig
    from .data.synthetic import synthetic_nuclei
    from .events import StageStarted
    from .model.checkpoint import load_model

    radius = (4.0, 8.0)
    density = 0.3
    emit(StageStarted("data", message="rendering synthetic training volumes"))
    n_train, train_shape = (3, (32, 96, 96)) if quick else (4, (48, 96, 96))
    pairs = [synthetic_nuclei(train_shape, density, radius, seed=s) for s in range(n_train)]
    config = TrainConfig(
        model=ModelConfig(spatial_dims=3, depth=2, base_filters=8, norm="batch"),
        label_mode="instances", patch_size=(32, 64, 64), batch_size=2,
        epochs=3 if quick else 8, steps_per_epoch=20 if quick else 25, lr=3e-3,
        schedule="plateau",
        val_patches=8, boundary_width=2, seed=0,
    )
    run_dir = out / "model"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    result = train(pairs, config, run_dir=run_dir, progress=emit)
    train_s = time.perf_counter() - t0

    emit(StageStarted("data", message="writing a larger synthetic volume to zarr"))
    shape = (48, 256, 256) if quick else (64, 384, 384)
    image, truth = synthetic_nuclei(shape, density, radius, seed=1234)
    n_blocks, seconds, dice, ap50, n_true, n_pred, preview = _segment_and_score(
        out, load_model(result.best_model), image, truth, block=(32, 128, 128),
        chunk=(16, 128, 128), tile=(32, 128, 128), emit=emit)
    return DemoSummary(out, shape, n_blocks, train_s, seconds, result.best_val_dice, dice,
                       ap50, n_true, n_pred, preview, result.best_model)
