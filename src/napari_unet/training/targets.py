"""Label modes -> per-voxel training targets (``-1`` = ignored by every loss)."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["IGNORE", "INSTANCE_CLASSES", "make_target", "n_classes_for"]

IGNORE = -1
# Classes of the ``instances`` label mode (models trained before the contact class have
# the first three).
INSTANCE_CLASSES = ("background", "interior", "boundary", "contact")


def make_target(labels: np.ndarray, label_mode: str, boundary_width: int = 2) -> np.ndarray:
    """Training target (int64 classes, ``IGNORE`` where unlabelled) from a label patch.

    ``instances``: 0 background, 1 interior, 2 boundary (``boundary_width`` pixels inside each
    object along its border with the background), 3 contact (the boundary pixels within
    ``boundary_width`` of another object).  Interiors are the seeds of instance labelling, so
    touching objects come apart where the contact class is predicted; contacts are a class of
    their own because they are rare (about 1 % of the voxels of DSB 2018 nuclei), and
    inverse-frequency class weights and the per-class Dice then make the model learn them
    rather than the easy outer edges.
    ``classes``: the labels are class ids.  ``scribbles``: 0 is unlabelled, k is class k-1.
    """
    labels = np.asarray(labels)
    if label_mode == "classes":
        return labels.astype(np.int64)
    if label_mode == "scribbles":
        return labels.astype(np.int64) - 1
    if label_mode != "instances":
        raise ValueError(f"unknown label mode {label_mode!r}")
    faces = _half_ball(labels.ndim, 1)
    edge = _dilate(_differing_neighbours(labels, faces, objects_only=False), faces,
                   boundary_width - 1)
    near = _differing_neighbours(labels, _half_ball(labels.ndim, boundary_width),
                                 objects_only=True)
    fg = labels > 0
    target = fg.astype(np.int64)
    target[edge & fg] = 2
    target[edge & fg & near] = 3
    return target


# Targets come from comparisons of shifted views of the labels: patches are made on the fly
# while training, and skimage's find_boundaries plus maximum / minimum filters for the
# contacts cost ~5x more (tested equal in tests/core/test_training.py).


def _shifted_pairs(shape: tuple[int, ...], offset: tuple[int, ...]):
    """Index pairs (a, b) with b = a + offset, both inside ``shape``."""
    a = tuple(slice(0, n - o) if o >= 0 else slice(-o, n) for n, o in zip(shape, offset,
                                                                         strict=True))
    b = tuple(slice(o, n) if o >= 0 else slice(0, n + o) for n, o in zip(shape, offset,
                                                                         strict=True))
    return a, b


def _half_ball(ndim: int, width: int) -> list[tuple[int, ...]]:
    """Offsets of the L1 ball of radius ``width``, one of each opposite pair (width 1: the
    face neighbours)."""
    width = max(1, int(width))
    return [o for o in itertools.product(range(-width, width + 1), repeat=ndim)
            if 0 < sum(map(abs, o)) <= width and o > tuple(-v for v in o)]


def _differing_neighbours(labels: np.ndarray, offsets: list[tuple[int, ...]],
                          objects_only: bool) -> np.ndarray:
    """True where the label at one of ``offsets`` (either direction) differs; with
    ``objects_only``, where that label and this one are both objects (non-zero)."""
    out = np.zeros(labels.shape, bool)
    for offset in offsets:
        a, b = _shifted_pairs(labels.shape, offset)
        la, lb = labels[a], labels[b]
        d = la != lb
        if objects_only:
            d &= (la > 0) & (lb > 0)
        out[a] |= d
        out[b] |= d
    return out


def _dilate(mask: np.ndarray, offsets: list[tuple[int, ...]], steps: int) -> np.ndarray:
    """Binary dilation over ``offsets`` (both directions), ``steps`` times; outside the
    array is False."""
    for _ in range(max(0, int(steps))):
        grown = mask.copy()
        for offset in offsets:
            a, b = _shifted_pairs(mask.shape, offset)
            grown[a] |= mask[b]
            grown[b] |= mask[a]
        mask = grown
    return mask


def n_classes_for(label_mode: str, max_label: int) -> int:
    """Number of classes a model must predict for ``label_mode`` and the largest label value."""
    if label_mode == "instances":
        return len(INSTANCE_CLASSES)
    if label_mode == "classes":
        return max(2, int(max_label) + 1)
    return max(2, int(max_label))
