"""Evaluate segmentation: scores of a prediction against ground truth, errors as a layer."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from magicgui.widgets import Container, Label, PushButton, create_widget
from napari.utils.notifications import show_error

from . import _workers
from ._layers import layer_data, layer_geometry, unique_name

__all__ = ["EvaluateWidget", "error_map"]

FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2


def error_map(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """1 on predicted objects without a match (false positives), 2 on missed true objects."""
    from ..metrics import overlaps

    ov = overlaps(pred, truth)
    hit = ov.iou > threshold
    fp = np.setdiff1d(ov.pred_ids, ov.pred_ids[ov.cols[hit]])
    fn = np.setdiff1d(ov.truth_ids, ov.truth_ids[ov.rows[hit]])
    out = np.zeros(pred.shape, np.uint8)
    out[np.isin(pred, fp)] = FALSE_POSITIVE
    out[np.isin(truth, fn)] = FALSE_NEGATIVE
    return out


def _evaluate(pred: Any, truth: Any):
    from ..evaluation import score_pair

    yield "scoring"
    p, t = np.asarray(pred), np.asarray(truth)
    return score_pair(p, t), error_map(p, t)


class EvaluateWidget(Container):
    """Dock widget: Dice, IoU, AP@0.5 and per-object errors of a labels layer vs ground truth."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.pred = create_widget(annotation=napari.layers.Labels, label="prediction")
        self.truth = create_widget(annotation=napari.layers.Labels, label="ground truth")
        self.run_button = PushButton(text="Evaluate")
        self.result = Label(value="")
        self.extend([self.pred, self.truth, self.run_button, self.result])
        self.run_button.changed.connect(self.run)
        self.scores: dict[str, float] | None = None
        self.job: _workers.Job | None = None

    def run(self) -> _workers.Job | None:
        pred, truth = self.pred.value, self.truth.value
        if pred is None or truth is None:
            show_error("napari-unet: choose a prediction and a ground-truth labels layer")
            return None
        p, t = layer_data(pred), layer_data(truth)
        if tuple(p.shape) != tuple(t.shape):
            show_error(f"napari-unet: {pred.name!r} {tuple(p.shape)} and {truth.name!r} "
                       f"{tuple(t.shape)} differ in shape")
            return None
        geometry = layer_geometry(truth, len(t.shape))

        def on_done(result):
            scores, errors = result
            self.scores = scores
            self.result.value = (
                f"Dice {scores['dice']:.3f}   IoU {scores['iou']:.3f}\n"
                f"AP@0.5 {scores['ap50']:.3f}   AP@0.75 {scores['ap75']:.3f}   "
                f"mAP {scores['map']:.3f}\n"
                f"objects: {scores['n_pred']} predicted, {scores['n_true']} true; "
                f"F1@0.5 {scores['f1_50']:.3f}\n"
                "errors layer: 1 = false positive, 2 = missed object")
            self.viewer.add_labels(errors, name=unique_name(self.viewer, "errors"),
                                   opacity=0.6, **geometry)

        self.job = _workers.start(lambda job: _evaluate(p, t), on_done=on_done)
        return self.job
