"""Segmentation metrics in pure numpy / scipy.

Semantic: Dice, IoU, pixel accuracy, Hausdorff distance (max and 95th percentile).
Instances: matching at IoU thresholds -> precision, recall, F1, average precision in the
StarDist / DSB 2018 sense (TP / (TP + FP + FN)), panoptic quality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "dice",
    "iou",
    "pixel_accuracy",
    "hausdorff",
    "InstanceScores",
    "match_instances",
    "overlaps",
    "Overlaps",
    "average_precision",
    "DEFAULT_THRESHOLDS",
]

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


def _binary_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    return pred.astype(bool), truth.astype(bool)


def dice(pred, truth) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two masks (1.0 when both are empty)."""
    p, t = _binary_pair(pred, truth)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & t).sum() / denom)


def iou(pred, truth) -> float:
    """Intersection over union of two masks (1.0 when both are empty)."""
    p, t = _binary_pair(pred, truth)
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


def pixel_accuracy(pred, truth) -> float:
    """Share of pixels with the same label."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    return float((pred == truth).mean())


def hausdorff(pred, truth, percentile: float = 100.0,
              spacing: Sequence[float] | None = None) -> float:
    """Symmetric Hausdorff distance between mask surfaces (``percentile=95`` for HD95).

    Returns ``inf`` when exactly one mask is empty and 0 when both are.
    """
    p, t = _binary_pair(pred, truth)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")

    def surface(m):
        return m & ~ndi.binary_erosion(m, border_value=0)

    sp, st = surface(p), surface(t)
    dt_t = ndi.distance_transform_edt(~st, sampling=spacing)
    dt_p = ndi.distance_transform_edt(~sp, sampling=spacing)
    d = np.concatenate([dt_t[sp], dt_p[st]])
    return float(np.percentile(d, percentile)) if percentile < 100 else float(d.max())


@dataclasses.dataclass(frozen=True)
class InstanceScores:
    """Object-level scores at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0 * (self.fn == 0)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0 * (self.fp == 0)

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def average_precision(self) -> float:
        """DSB 2018 / StarDist "accuracy": TP / (TP + FP + FN)."""
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0

    @property
    def panoptic_quality(self) -> float:
        """PQ = SQ * RQ = (sum of matched IoU) / (TP + FP/2 + FN/2)."""
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.mean_matched_iou * self.tp / d if d else 1.0


class Overlaps(NamedTuple):
    """IoU of every overlapping (true, predicted) object pair, sparse."""

    truth_ids: np.ndarray  # non-zero ids of the ground truth
    pred_ids: np.ndarray  # non-zero ids of the prediction
    rows: np.ndarray  # index into truth_ids, one per overlapping pair
    cols: np.ndarray  # index into pred_ids
    iou: np.ndarray


def overlaps(pred, truth) -> Overlaps:
    """Overlapping object pairs and their IoU, from one joint histogram of the pairs that
    occur (a dense truth x prediction matrix needs GBs for images with 10^4 objects)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    p_inv, t_inv = p_inv.ravel(), t_inv.ravel()
    pairs, joint = np.unique(t_inv.astype(np.int64) * len(p_ids) + p_inv, return_counts=True)
    rows, cols = np.divmod(pairs, len(p_ids))
    keep = (t_ids[rows] != 0) & (p_ids[cols] != 0)
    rows, cols, joint = rows[keep], cols[keep], joint[keep]
    area_t = np.bincount(t_inv, minlength=len(t_ids))
    area_p = np.bincount(p_inv, minlength=len(p_ids))
    iou = joint / (area_t[rows] + area_p[cols] - joint)
    t_nz, p_nz = t_ids != 0, p_ids != 0
    return Overlaps(t_ids[t_nz], p_ids[p_nz], (np.cumsum(t_nz) - 1)[rows],
                    (np.cumsum(p_nz) - 1)[cols], iou)


def match_instances(
    pred, truth, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[InstanceScores]:
    """Match predicted to true objects one-to-one at each IoU threshold (hit: IoU > t).

    For thresholds >= 0.5 a match is unique without optimisation (two objects cannot both
    overlap a third by more than half); below 0.5 the Hungarian algorithm maximises the
    total IoU (over the objects with a candidate pair only).
    """
    from scipy.optimize import linear_sum_assignment

    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    ov = overlaps(pred, truth)
    n_true, n_pred = len(ov.truth_ids), len(ov.pred_ids)
    out = []
    for th in thresholds:
        if n_true == 0 or n_pred == 0:
            out.append(InstanceScores(float(th), 0, n_pred, n_true, 0.0))
            continue
        hit = ov.iou > th
        matched = ov.iou[hit]
        if th < 0.5 and len(matched):
            r = np.unique(ov.rows[hit], return_inverse=True)[1].ravel()
            c = np.unique(ov.cols[hit], return_inverse=True)[1].ravel()
            cost = np.zeros((r.max() + 1, c.max() + 1))
            cost[r, c] = matched
            rr, cc = linear_sum_assignment(-cost)
            matched = cost[rr, cc]
            matched = matched[matched > th]
        tp = len(matched)
        mean_iou = float(matched.mean()) if tp else 0.0
        out.append(InstanceScores(float(th), tp, n_pred - tp, n_true - tp, mean_iou))
    return out


def average_precision(pred, truth, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
                      ) -> dict[float, float]:
    """DSB-style average precision per IoU threshold."""
    return {s.threshold: s.average_precision for s in match_instances(pred, truth, thresholds)}
