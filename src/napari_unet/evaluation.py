"""Evaluation over sets of images: per-image scores, bootstrap confidence intervals, paired tests.

``evaluate`` scores predicted instance (or semantic) labels against ground truth with the
metrics of :mod:`napari_unet.metrics`; ``compare`` tests whether one method beats another on the
same images; ``otsu_baseline`` is the classical baseline every model should beat.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .metrics import DEFAULT_THRESHOLDS, dice, hausdorff, iou, match_instances, pixel_accuracy

__all__ = [
    "score_pair",
    "EvaluationReport",
    "evaluate",
    "bootstrap_ci",
    "compare",
    "otsu_baseline",
    "SUMMARY_METRICS",
]

SUMMARY_METRICS = ("dice", "iou", "accuracy", "hd95", "ap50", "ap75", "map", "f1_50", "pq")


def score_pair(pred: np.ndarray, truth: np.ndarray, instances: bool = True) -> dict[str, float]:
    """All metrics of one image.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Label images of the same shape (0 = background).
    instances : bool
        Also match objects (AP at IoU 0.5:0.95, F1 and PQ at 0.5).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    fg_p, fg_t = pred > 0, truth > 0
    out = {
        "dice": dice(fg_p, fg_t),
        "iou": iou(fg_p, fg_t),
        "accuracy": pixel_accuracy(fg_p, fg_t),
        "hd95": hausdorff(fg_p, fg_t, percentile=95),
    }
    if instances:
        scores = match_instances(pred, truth, DEFAULT_THRESHOLDS)
        by_t = {s.threshold: s for s in scores}
        out.update({
            "ap50": by_t[0.5].average_precision,
            "ap75": by_t[0.75].average_precision,
            "map": float(np.mean([s.average_precision for s in scores])),
            "precision_50": by_t[0.5].precision,
            "recall_50": by_t[0.5].recall,
            "f1_50": by_t[0.5].f1,
            "pq": by_t[0.5].panoptic_quality,
            "n_true": by_t[0.5].tp + by_t[0.5].fn,
            "n_pred": by_t[0.5].tp + by_t[0.5].fp,
        })
    return out


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``1 - alpha`` confidence interval over images."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(v.mean()), float(lo), float(hi)


@dataclasses.dataclass
class EvaluationReport:
    """Per-image rows and a summary (mean with 95% bootstrap CI) per metric."""

    rows: list[dict[str, Any]]
    summary: dict[str, tuple[float, float, float]]

    def table(self, metrics: Sequence[str] = ("dice", "ap50", "ap75", "map", "f1_50", "pq")
              ) -> str:
        metrics = [m for m in metrics if self.rows and m in self.rows[0]]
        width = max([len(str(r["name"])) for r in self.rows] + [5])
        width = min(width, 40)
        lines = [f"{'image':<{width}} " + " ".join(f"{m:>8}" for m in metrics)]
        for r in self.rows:
            lines.append(f"{str(r['name'])[:width]:<{width}} "
                         + " ".join(f"{r[m]:>8.4f}" for m in metrics))
        lines.append("")
        lines.append(f"{'summary (n=' + str(len(self.rows)) + ')':<{width}} mean [95% CI]")
        for m in metrics:
            mean, lo, hi = self.summary[m]
            lines.append(f"  {m:<{width - 2}} {mean:.4f} [{lo:.4f}, {hi:.4f}]")
        return "\n".join(lines)

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.rows]


def evaluate(
    pairs: Iterable[tuple[Any, Any]],
    names: Sequence[str] | None = None,
    instances: bool = True,
    progress: Callable[[int], None] | None = None,
) -> EvaluationReport:
    """Score (prediction, ground truth) pairs and summarise with bootstrap CIs."""
    rows = []
    for k, (pred, truth) in enumerate(pairs):
        row = {"name": names[k] if names is not None else str(k),
               **score_pair(np.asarray(pred), np.asarray(truth), instances)}
        rows.append(row)
        if progress is not None:
            progress(k + 1)
    if not rows:
        raise ValueError("nothing to evaluate: no (prediction, ground truth) pairs")
    keys = [k for k in rows[0] if k != "name" and not k.startswith("n_")]
    summary = {k: bootstrap_ci([r[k] for r in rows]) for k in keys}
    return EvaluationReport(rows, summary)


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired comparison of two methods' per-image scores (``a - b``).

    Returns the mean difference with its bootstrap CI, and p-values of the Wilcoxon
    signed-rank test and the paired t-test.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: {a.shape} vs {b.shape}")
    d = a - b
    mean, lo, hi = bootstrap_ci(d)
    if np.allclose(d, 0):
        p_w = p_t = 1.0
    else:
        p_w = float(stats.wilcoxon(a, b).pvalue)
        p_t = float(stats.ttest_rel(a, b).pvalue)
    return {"mean_difference": mean, "ci_low": lo, "ci_high": hi,
            "wilcoxon_p": p_w, "ttest_p": p_t, "n": int(a.size)}


def otsu_baseline(image: np.ndarray, min_size: int = 10) -> np.ndarray:
    """Otsu threshold + connected components; objects are taken to be the minority phase
    (so dark nuclei on a bright background are found too)."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if float(img.max()) == float(img.min()):
        return np.zeros(img.shape, np.int32)
    mask = img > threshold_otsu(img)
    if mask.mean() > 0.5:
        mask = ~mask
    mask = remove_small_objects(mask, max_size=min_size)
    return label(mask).astype(np.int32)
