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
    edge = _dilate(_differs(labels), boundary_width - 1)
    fg = labels > 0
    target = fg.astype(np.int64)
    target[edge & fg] = 2
    target[edge & fg & _near_other_object(labels, boundary_width)] = 3
    return target


def _shifted_pairs(shape: tuple[int, ...], offset: tuple[int, ...]):
    """Index pairs (a, b) with b = a + offset, both inside ``shape``."""
    a = tuple(slice(0, n - o) if o >= 0 else slice(-o, n) for n, o in zip(shape, offset,
                                                                         strict=True))
    b = tuple(slice(o, n) if o >= 0 else slice(0, n + o) for n, o in zip(shape, offset,
                                                                         strict=True))
    return a, b


def _faces(ndim: int) -> list[tuple[int, ...]]:
    return [tuple(int(i == axis) for i in range(ndim)) for axis in range(ndim)]


def _differs(labels: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour of another label: ``find_boundaries(mode="thick")`` with
    face connectivity, from shifted views (patches are made on the fly while training;
    skimage's rank filters cost several times more)."""
    out = np.zeros(labels.shape, bool)
    for offset in _faces(labels.ndim):
        a, b = _shifted_pairs(labels.shape, offset)
        d = labels[a] != labels[b]
        out[a] |= d
        out[b] |= d
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by face connectivity, ``steps`` times (outside the array is False)."""
    for _ in range(max(0, int(steps))):
        grown = mask.copy()
        for offset in _faces(mask.ndim):
            a, b = _shifted_pairs(mask.shape, offset)
            grown[a] |= mask[b]
            grown[b] |= mask[a]
        mask = grown
    return mask


def _near_other_object(labels: np.ndarray, width: int) -> np.ndarray:
    """True where another object (non-zero label) lies within L1 distance ``width``.

    One comparison of shifted views per offset of half the L1 ball (12 in 3D at width 2):
    ~5x faster than maximum / minimum filters over the ball.
    """
    width = max(1, int(width))
    near = np.zeros(labels.shape, bool)
    ranges = [range(-width, width + 1)] * labels.ndim
    for offset in itertools.product(*ranges):
        if not 0 < sum(map(abs, offset)) <= width or offset <= tuple(-o for o in offset):
            continue  # each pair of opposite offsets once
        a, b = _shifted_pairs(labels.shape, offset)
        la, lb = labels[a], labels[b]
        t = (la != lb) & (la > 0) & (lb > 0)
        near[a] |= t
        near[b] |= t
    return near


def n_classes_for(label_mode: str, max_label: int) -> int:
    """Number of classes a model must predict for ``label_mode`` and the largest label value."""
    if label_mode == "instances":
        return len(INSTANCE_CLASSES)
    if label_mode == "classes":
        return max(2, int(max_label) + 1)
    return max(2, int(max_label))
