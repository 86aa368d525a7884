"""Label modes -> per-voxel training targets (``-1`` = ignored by every loss)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["IGNORE", "make_target", "n_classes_for"]

IGNORE = -1


def make_target(labels: np.ndarray, label_mode: str, boundary_width: int = 2) -> np.ndarray:
    """Training target (int64 classes, ``IGNORE`` where unlabelled) from a label patch.

    ``instances``: 0 background, 1 interior, 2 boundary (``boundary_width`` pixels inside each
    object along its border with the background or another object) -- the boundary class is
    what lets touching objects come apart at prediction time.
    ``classes``: the labels are class ids.  ``scribbles``: 0 is unlabelled, k is class k-1.
    """
    labels = np.asarray(labels)
    if label_mode == "classes":
        return labels.astype(np.int64)
    if label_mode == "scribbles":
        return labels.astype(np.int64) - 1
    if label_mode != "instances":
        raise ValueError(f"unknown label mode {label_mode!r}")
    from skimage.segmentation import find_boundaries

    fg = labels > 0
    target = fg.astype(np.int64)
    edge = find_boundaries(labels, connectivity=1, mode="inner") & fg
    if boundary_width > 1:
        edge = ndi.binary_dilation(edge, iterations=boundary_width - 1) & fg
    target[edge] = 2
    return target


def n_classes_for(label_mode: str, max_label: int) -> int:
    """Number of classes a model must predict for ``label_mode`` and the largest label value."""
    if label_mode == "instances":
        return 3
    if label_mode == "classes":
        return max(2, int(max_label) + 1)
    return max(2, int(max_label))
