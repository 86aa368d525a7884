"""Label modes -> per-voxel training targets (``-1`` = ignored by every loss)."""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["IGNORE", "INSTANCE_CLASSES", "grow_distance", "make_target", "n_classes_for"]

IGNORE = -1
# Classes of the ``instances`` label mode (models trained before the contact class have
# the first three).
INSTANCE_CLASSES = ("background", "interior", "boundary", "contact")


def make_target(labels: np.ndarray, label_mode: str, boundary_width: int = 2,
                core: float = 0.0) -> np.ndarray:
    """Training target (int64 classes, ``IGNORE`` where unlabelled) from a label patch.

    ``instances``: 0 background, 1 interior, 2 boundary (``boundary_width`` pixels inside each
    object along its border with the background), 3 contact (the boundary pixels within
    ``boundary_width`` of another object).  Interiors are the seeds of instance labelling, so
    touching objects come apart where the contact class is predicted; contacts are a class of
    their own because they are rare (about 1 % of the voxels of DSB 2018 nuclei), and
    inverse-frequency class weights and the per-class Dice then make the model learn them
    rather than the easy outer edges.  With ``core`` > 0 the interior is only each object's
    core, where the distance to the object's edge exceeds ``core`` times the object's largest
    such distance, and the rest of the object is boundary: touching objects then have seeds
    apart by a share of their size rather than by the width of the contact.
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
    if core > 0:
        target[(target == 1) & ~_core(labels, target == 1, core)] = 2
    return target


def _core(labels: np.ndarray, interior: np.ndarray, core: float) -> np.ndarray:
    """Where the distance to the object's edge exceeds ``core`` x its largest in the object.

    Object by object within its bounding box (which holds every voxel nearer to the object's
    interior than anything outside it), so memory follows the largest object rather than the
    image: a distance transform of a whole volume costs ~20 bytes per voxel.
    """
    from scipy import ndimage as ndi

    out = np.zeros(labels.shape, bool)
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        inside = interior[box] & (labels[box] == k)
        if inside.any():
            distance = ndi.distance_transform_edt(inside)
            out[box] |= distance > core * distance.max()
    return out


def grow_distance(targets: list[np.ndarray], boundary_width: int) -> int:
    """How far seeds must regrow to refill the objects of ``instances`` targets: the 99th
    percentile of the distance from a boundary / contact voxel to the nearest interior voxel
    (rounded up), over the connected foreground regions that have an interior; at least
    ``boundary_width`` + 1 (what rings of that width need).

    Not the largest distance: seeds regrow into every foreground voxel within reach, so a
    reach set by a few far corners also hands stray foreground to nearby objects (DSB 2018
    val, core 0.3: regrowing 10 / 29 px, the 99th percentile / the largest, AP@0.5 0.795 /
    0.790).
    """
    from scipy import ndimage as ndi

    reach = []
    for t in targets:
        regions, _ = ndi.label(t > 0)
        seeded = np.unique(regions[t == 1])
        ring = (t >= 2) & np.isin(regions, seeded[seeded > 0])
        if ring.any():
            reach.append(ndi.distance_transform_edt(t != 1)[ring])
    far = float(np.percentile(np.concatenate(reach), 99)) if reach else 0.0
    return max(int(boundary_width) + 1, math.ceil(far))


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
