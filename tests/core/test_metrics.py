"""Metrics and evaluation reproduce hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.evaluation import bootstrap_ci, compare, evaluate, otsu_baseline, score_pair
from napari_unet.metrics import (
    average_precision,
    dice,
    hausdorff,
    iou,
    match_instances,
    pixel_accuracy,
)


def test_semantic_metrics_by_hand():
    p = np.zeros((4, 4), bool)
    t = np.zeros((4, 4), bool)
    p[0, :3] = True  # 3 px
    t[0, 1:] = True  # 3 px, 2 shared
    assert dice(p, t) == pytest.approx(2 * 2 / 6)
    assert iou(p, t) == pytest.approx(2 / 4)
    assert pixel_accuracy(p, t) == pytest.approx(14 / 16)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice(p, t[:2])


def test_hausdorff_by_hand():
    p = np.zeros((20, 20), bool)
    t = np.zeros((20, 20), bool)
    p[5, 5] = True
    t[5, 9] = True
    assert hausdorff(p, t) == pytest.approx(4.0)
    assert hausdorff(p, t, spacing=(1.0, 0.5)) == pytest.approx(2.0)
    assert hausdorff(p, np.zeros_like(t)) == float("inf")


def test_instance_matching_by_hand():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4] = 1  # 16 px
    truth[6:10, 6:10] = 2  # 16 px
    truth[0:2, 8:10] = 3  # 4 px, missed
    pred = np.zeros_like(truth)
    pred[0:4, 0:3] = 5  # IoU 12/16 = 0.75 with object 1
    pred[6:10, 6:8] = 7  # IoU 8/16 = 0.5 with object 2: not a hit at 0.5 (needs > 0.5)
    pred[8, 0] = 9  # false positive
    s50, s70, s80 = match_instances(pred, truth, [0.5, 0.7, 0.8])
    assert (s50.tp, s50.fp, s50.fn) == (1, 2, 2)
    assert (s70.tp, s70.fp, s70.fn) == (1, 2, 2)
    assert (s80.tp, s80.fp, s80.fn) == (0, 3, 3)
    assert s50.average_precision == pytest.approx(1 / 5)
    assert s50.precision == pytest.approx(1 / 3) and s50.recall == pytest.approx(1 / 3)
    assert s50.f1 == pytest.approx(2 / 6)
    assert s50.panoptic_quality == pytest.approx(0.75 * 1 / (1 + 1 + 1))
    # Below 0.5 the optimal one-to-one assignment is used.
    (s30,) = match_instances(pred, truth, [0.3])
    assert s30.tp == 2
    assert average_precision(truth, truth)[0.95] == 1.0


def test_evaluate_bootstrap_and_compare():
    truth = np.zeros((16, 16), int)
    truth[2:6, 2:6] = 1
    truth[9:14, 9:14] = 2
    perfect = [(truth, truth)] * 4
    report = evaluate(perfect, names=list("abcd"))
    assert report.summary["ap50"] == (1.0, 1.0, 1.0)
    assert "ap50" in report.table()
    mean, lo, hi = bootstrap_ci([0.0, 1.0] * 10, seed=1)
    assert mean == 0.5 and lo < 0.5 < hi
    better = [0.9, 0.8, 0.95, 0.85, 0.9, 0.88, 0.92, 0.91]
    worse = [0.5, 0.6, 0.55, 0.4, 0.65, 0.5, 0.52, 0.6]
    c = compare(better, worse)
    assert c["mean_difference"] > 0.3 and c["wilcoxon_p"] < 0.01 and c["ttest_p"] < 0.001
    assert score_pair(truth, truth)["dice"] == 1.0


def test_otsu_baseline_finds_bright_and_dark_objects():
    img = np.full((40, 40), 10.0)
    img[5:15, 5:15] = 200
    img[25:35, 25:35] = 200
    labels = otsu_baseline(img)
    assert labels.max() == 2
    dark = otsu_baseline(255 - img)
    assert dark.max() == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_matching_equals_dense_iou_matrix(seed):
    """Matching from the sparse pair list equals matching on the dense truth x prediction
    IoU matrix (Hungarian below IoU 0.5), on label images with many partial overlaps."""
    from scipy import ndimage as ndi
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(seed)
    truth = ndi.zoom(rng.integers(0, 40, (12, 12)), 6, order=0)
    pred = np.roll(ndi.zoom(rng.integers(0, 40, (15, 15)), 5, order=0)[:72, :72], 2, axis=0)
    pred[pred % 7 == 0] = 0
    t_ids, p_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    inter = np.array([[np.sum((truth == t) & (pred == p)) for p in p_ids] for t in t_ids])
    union = (np.array([np.sum(truth == t) for t in t_ids])[:, None]
             + np.array([np.sum(pred == p) for p in p_ids])[None] - inter)
    m = inter / union
    for th, got in zip((0.1, 0.3, 0.5, 0.75), match_instances(pred, truth, (0.1, 0.3, 0.5, 0.75)),
                       strict=True):
        cost = np.where(m > th, m, 0.0)
        rows, cols = linear_sum_assignment(-cost)
        matched = cost[rows, cols][cost[rows, cols] > th]
        assert got.tp == len(matched), th
        assert got.fp == len(p_ids) - len(matched) and got.fn == len(t_ids) - len(matched)
        assert got.mean_matched_iou == pytest.approx(matched.mean() if len(matched) else 0.0)
