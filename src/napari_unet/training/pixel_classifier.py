"""A random-forest pixel classifier on multiscale filter features, trained from scribbles.

What ilastik's pixel classification and APOC do: per pixel, Gaussian-smoothed intensity,
edges and texture (Hessian eigenvalues) at several scales
(``skimage.feature.multiscale_basic_features``), and a random forest fitted to the painted
pixels.  It trains in seconds, so it gives a first preview at once, and its confident
predictions serve as pseudo-labels for the U-Net (``TrainConfig.scribble_prior="forest"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PixelClassifier", "pixel_features"]

SIGMA_MAX = 16.0
# Painted pixels used to fit the forest (drawn evenly from each class beyond this).
MAX_SAMPLES = 200_000


def pixel_features(image: np.ndarray, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """Features ``(*spatial, F)`` (float32) of a channels-first image ``(C, *spatial)``."""
    from skimage.feature import multiscale_basic_features

    image = np.asarray(image, dtype=np.float32)
    sigma_max = min(float(sigma_max), max(1.0, min(image.shape[1:]) / 4))
    feats = [multiscale_basic_features(c, intensity=True, edges=True, texture=True,
                                       sigma_min=1.0, sigma_max=sigma_max)
             for c in image]
    return np.concatenate(feats, axis=-1).astype(np.float32, copy=False)


@dataclasses.dataclass
class PixelClassifier:
    """Random forest on :func:`pixel_features`; classes are scribble values - 1."""

    n_estimators: int = 64
    max_depth: int | None = 16
    seed: int = 0
    forest: Any = None
    n_classes: int = 0

    def fit(self, images: Sequence[np.ndarray], scribbles: Sequence[np.ndarray]
            ) -> PixelClassifier:
        """Fit to painted pixels (``scribbles``: 0 unlabelled, k >= 1 class k-1) of
        channels-first ``images``."""
        from sklearn.ensemble import RandomForestClassifier

        xs, ys = [], []
        rng = np.random.default_rng(self.seed)
        for image, marks in zip(images, scribbles, strict=True):
            marks = np.asarray(marks)
            painted = marks > 0
            if not painted.any():
                continue
            feats = pixel_features(image)
            xs.append(feats[painted])
            ys.append(marks[painted].astype(np.int64) - 1)
        if not xs:
            raise ValueError("no painted pixels to fit the pixel classifier")
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(y) > MAX_SAMPLES:
            keep = rng.choice(len(y), MAX_SAMPLES, replace=False)
            x, y = x[keep], y[keep]
        self.n_classes = int(y.max()) + 1
        self.forest = RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, n_jobs=-1,
            random_state=self.seed, class_weight="balanced").fit(x, y)
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n_classes, *spatial)`` (float32) of a channels-first image."""
        if self.forest is None:
            raise RuntimeError("fit the pixel classifier first")
        feats = pixel_features(image)
        spatial = feats.shape[:-1]
        proba = self.forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
        out = np.zeros((self.n_classes, proba.shape[0]), np.float32)
        out[self.forest.classes_] = proba.T
        return out.reshape(self.n_classes, *spatial)


# Share of the trees that must agree before an unpainted voxel becomes a pseudo-label.
CONFIDENCE = 0.8


def forest_pseudo_labels(pairs: Sequence[Any], confidence: float = CONFIDENCE,
                         seed: int = 0) -> tuple[list[Any], list[np.ndarray]]:
    """Fit a :class:`PixelClassifier` to the scribbles of training ``pairs``
    (:class:`~.data.TrainPair` held in memory) and return copies of the pairs whose labels
    hold its confident predictions where nothing is painted (painted voxels keep their
    value) -- the pairs given are left as they are (they may also be the validation) -- and
    the forest's class of every voxel of each pair (0 = the first class, background)."""
    for p in pairs:
        if not isinstance(p.image, np.ndarray) or not isinstance(p.labels, np.ndarray):
            raise ValueError(
                f"{p.name}: the forest prior needs the training data in memory (up to 2 GB); "
                "train without it (scribble_prior='none') on larger data")
    images = [p.norm.apply(p.image, channel_axis=0) for p in pairs]
    forest = PixelClassifier(seed=seed).fit(images, [p.labels for p in pairs])
    out, classes = [], []
    for p, image in zip(pairs, images, strict=True):
        proba = forest.predict_proba(image)
        classes.append(proba.argmax(axis=0).astype(np.uint8))
        sure = proba.max(axis=0) >= confidence
        guess = (proba.argmax(axis=0) + 1).astype(p.labels.dtype)
        labels = np.where(p.labels > 0, p.labels, np.where(sure, guess, 0))
        # Patch centres are drawn from the labelled voxels, now most of the image.
        fg = np.argwhere(labels > 0)
        if len(fg) > 20_000:
            fg = fg[np.random.default_rng(seed).choice(len(fg), 20_000, replace=False)]
        out.append(dataclasses.replace(p, labels=labels, foreground=fg))
    return out, classes
