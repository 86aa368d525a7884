"""Figures as files (matplotlib, the ``figures`` extra): a training run's curves
(``history.png``), and for an evaluation the input / truth / prediction / errors of each image
and the distribution of the per-image scores.  napari shows the same in its own widgets; these
are for reports, and for runs without a viewer (CLI, cluster).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["available", "history_figure", "comparison_figure", "summary_figure",
           "error_overlay", "evaluation_figures"]

# Images that get a comparison figure in an evaluation, by default (lowest scores first).
WORST_FIGURES = 8
# Colours of the errors panel: matched objects, false positives, missed objects.
MATCHED, FALSE_POSITIVE, MISSED = (0.2, 0.8, 0.3), (0.95, 0.25, 0.2), (0.25, 0.55, 1.0)


def available() -> bool:
    """Whether matplotlib is installed (figures are skipped, not an error, where it is not)."""
    return importlib.util.find_spec("matplotlib") is not None


def _subplots(ncols: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes, made without pyplot: no GUI backend, no global state, so a
    training thread inside napari draws its files safely."""
    if not available():
        raise InputError("figures need matplotlib: pip install 'napari-unet[figures]'")
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Write atomically: a viewer refreshing the file never reads half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def history_figure(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Loss (train and validation), validation Dice and IoU, and the learning rate against
    epoch, from a run's history rows (``epoch``, ``train_loss``, ``val_loss``, ``val_dice``,
    ``lr``; as history.csv holds them)."""
    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan
                         for r in rows])

    epoch = column("epoch")
    fig, (ax_loss, ax_score, ax_lr) = _subplots(3, (12, 3.4))
    ax_loss.plot(epoch, column("train_loss"), label="train")
    ax_loss.plot(epoch, column("val_loss"), label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend(frameon=False)
    dice = column("val_dice")
    ax_score.plot(epoch, dice, label="Dice", color="C2")
    # Dice and IoU of the same pooled voxel counts are tied: IoU = Dice / (2 - Dice).
    ax_score.plot(epoch, dice / (2 - dice), label="IoU", color="C4")
    if np.isfinite(dice).any():
        best = int(np.nanargmax(dice))
        ax_score.scatter([epoch[best]], [dice[best]], color="C2", zorder=3,
                         label=f"best {dice[best]:.3f} (epoch {int(epoch[best])})")
    ax_score.set(xlabel="epoch", title="validation (patches)", ylim=(0, 1))
    ax_score.legend(frameon=False, loc="lower right")
    ax_lr.plot(epoch, column("lr"), color="C3")
    ax_lr.set(xlabel="epoch", title="learning rate", yscale="log")
    for ax in (ax_loss, ax_score, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def error_overlay(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """RGB image (float, H x W x 3) of a 2D prediction's errors: objects matched to a true
    one at IoU > ``threshold`` green, false positives red, true objects missed blue (filled
    where no prediction covers them, outlined on top of a false positive that merges them),
    background black."""
    from skimage.segmentation import find_boundaries

    from .metrics import overlaps

    pred, truth = np.asarray(pred), np.asarray(truth)
    ov = overlaps(pred, truth)
    hit = ov.iou > threshold
    matched_pred = ov.pred_ids[ov.cols[hit]]
    matched_true = ov.truth_ids[ov.rows[hit]]
    out = np.zeros((*pred.shape, 3), np.float32)
    missed = (truth > 0) & ~np.isin(truth, matched_true)
    out[missed] = MISSED
    out[(pred > 0) & ~np.isin(pred, matched_pred)] = FALSE_POSITIVE
    out[np.isin(pred, matched_pred) & (pred > 0)] = MATCHED
    out[find_boundaries(np.where(missed, truth, 0), mode="inner")] = MISSED
    return out


def _middle_plane(array: np.ndarray | None) -> np.ndarray | None:
    """A 2D view: the middle slice of a volume's first axis (colour images stay RGB)."""
    if array is None:
        return None
    array = np.asarray(array)
    while array.ndim > 2 and not (array.ndim == 3 and array.shape[-1] in (3, 4)):
        array = array[array.shape[0] // 2]
    return array


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """Random but fixed colours per label (0 black), as napari's labels layer shows them."""
    ids = np.unique(labels)
    rng = np.random.default_rng(0)
    lut = np.zeros((int(ids.max()) + 1 if ids.size else 1, 3), np.float32)
    lut[1:] = rng.uniform(0.25, 1.0, size=(len(lut) - 1, 3))
    return lut[labels]


def comparison_figure(pred: np.ndarray, truth: np.ndarray, path: str | os.PathLike,
                      image: np.ndarray | None = None, title: str = "",
                      scores: Mapping[str, float] | None = None) -> Path:
    """Input (when given) / truth / prediction / errors side by side for one image (the
    middle slice of a volume)."""
    pred, truth, image = _middle_plane(pred), _middle_plane(truth), _middle_plane(image)
    panels: list[tuple[str, np.ndarray, dict]] = []
    if image is not None:
        lo, hi = np.percentile(image, [1, 99.8])
        panels.append(("input", np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1),
                       {"cmap": "gray"}))
    n_true, n_pred = len(np.unique(truth)) - 1, len(np.unique(pred)) - 1
    panels += [(f"truth ({n_true} objects)", _label_colours(truth), {}),
               (f"prediction ({n_pred} objects)", _label_colours(pred), {}),
               ("errors at IoU 0.5: matched / false / missed", error_overlay(pred, truth), {})]
    fig, axes = _subplots(len(panels), (3.6 * len(panels), 3.9))
    for ax, (name, data, kw) in zip(axes, panels, strict=True):
        ax.imshow(data, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if scores:
        title = f"{title}   " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def summary_figure(rows: Sequence[Mapping[str, Any]],
                   summary: Mapping[str, tuple[float, float, float]],
                   path: str | os.PathLike,
                   metrics: Sequence[str] = ("dice", "ap50", "ap75", "map")) -> Path:
    """Per-image scores of an evaluation, one column per metric (each image a dot), with
    the mean and its 95 % bootstrap confidence interval."""
    metrics = [m for m in metrics if rows and m in rows[0]]
    fig, (ax,) = _subplots(1, (1.6 + 1.5 * len(metrics), 3.8))
    rng = np.random.default_rng(0)
    for i, m in enumerate(metrics):
        values = np.array([float(r[m]) for r in rows])
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(values)), values, s=12, alpha=0.6,
                   color="C0")
        mean, lo, hi = summary[m]
        ax.errorbar([i + 0.32], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o",
                    color="C3", capsize=4)
        ax.annotate(f"{mean:.3f}\n[{lo:.3f}, {hi:.3f}]", (i + 0.38, mean), fontsize=7,
                    va="center")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_xlim(-0.5, len(metrics) - 0.1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("per-image score")
    ax.set_title(f"{len(rows)} images: each dot one image; mean and 95 % bootstrap CI",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def evaluation_figures(report: Any, load: Callable[[str], tuple[Any, Any, Any]],
                       folder: str | os.PathLike, worst: int = WORST_FIGURES,
                       metric: str = "ap50") -> list[Path]:
    """``summary.png`` of an :class:`~napari_unet.evaluation.EvaluationReport` and a
    comparison figure for each of its ``worst`` lowest-scoring images by ``metric``
    (``load(name)`` gives that image's prediction, truth and input or None).

    Returns
    -------
    list of Path
        The written files, the summary first.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"figure folder {str(folder)!r} is a file; give a folder")
    metric = metric if report.rows and metric in report.rows[0] else "dice"
    written = [summary_figure(report.rows, report.summary, folder / "summary.png")]
    order = sorted(report.rows, key=lambda r: float(r[metric]))[:max(0, int(worst))]
    shown = [m for m in ("dice", "ap50", "map") if m in report.rows[0]]
    for rank, row in enumerate(order, start=1):
        pred, truth, image = load(str(row["name"]))
        written.append(comparison_figure(
            pred, truth, folder / f"worst{rank:02d}_{row['name']}.png", image,
            title=str(row["name"]), scores={m: float(row[m]) for m in shown}))
    return written
