"""Label modes -> per-voxel training targets (``-1`` = ignored by every loss)."""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["IGNORE", "INSTANCE_CLASSES", "DISTANCE_CHANNELS", "DISTANCE_LEVELS",
           "grow_distance", "make_target", "n_classes_for", "distance_levels", "levels_to_classes"]

IGNORE = -1
# Classes of the ``instances`` label mode (models trained before the contact class have
# the first three).
INSTANCE_CLASSES = ("background", "interior", "boundary", "contact")
# Output channels of an ``instances`` model with the ``distance`` target: a foreground logit
# and a logit of each voxel's distance to its object's edge, as a share of the object's
# largest (sigmoid: 0 at the edge, 1 at the centre).
DISTANCE_CHANNELS = ("foreground", "distance")
# Distance targets are stored as integers (patches, augmentation and padding treat every
# target alike): 0 background, 1 + round(d * DISTANCE_LEVELS) for a normalised distance d.
DISTANCE_LEVELS = 254


def make_target(labels: np.ndarray, label_mode: str, boundary_width: int = 2,
                core: float = 0.0, target: str = "classes") -> np.ndarray:
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
    With ``target="distance"`` an ``instances`` target is :func:`distance_levels` instead.
    ``classes``: the labels are class ids.  ``scribbles``: 0 is unlabelled, k is class k-1.
    """
    labels = np.asarray(labels)
    if label_mode == "classes":
        return labels.astype(np.int64)
    if label_mode == "scribbles":
        return labels.astype(np.int64) - 1
    if label_mode != "instances":
        raise ValueError(f"unknown label mode {label_mode!r}")
    if target == "distance":
        return distance_levels(labels)
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


def _object_distances(labels: np.ndarray, inside_of: np.ndarray | None = None):
    """Per object (bounding box, object mask, distance to its edge), object by object so that
    memory follows the largest object rather than the image (a whole volume's distance
    transform costs ~20 bytes per voxel).  The box is widened by one voxel of outside where
    it does not reach the image's border, so the distances equal those of one whole-image
    transform (the border itself is no edge: the object goes on beyond it).  ``inside_of``
    restricts each object (e.g. to its interior)."""
    from scipy import ndimage as ndi

    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == k
        if inside_of is not None:
            inside &= inside_of[box]
        if not inside.any():
            continue
        pad = [(int(b.start > 0), int(b.stop < n)) for b, n in zip(box, labels.shape,
                                                                   strict=True)]
        distance = ndi.distance_transform_edt(np.pad(inside, pad))
        yield box, inside, distance[tuple(slice(a, a + n) for (a, _), n in
                                          zip(pad, inside.shape, strict=True))]


def distance_levels(labels: np.ndarray) -> np.ndarray:
    """The ``distance`` target of instance labels (int16): 0 background, else 1 + the
    distance to the object's edge (touching objects count as edges) as a share of the
    object's largest, in ``DISTANCE_LEVELS`` steps.  Normalised per object, the target does
    not change with the image's scale (zoom augmentation keeps it valid)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.int16)
    for box, inside, distance in _object_distances(labels):
        level = 1 + np.rint(distance / distance.max() * DISTANCE_LEVELS).astype(np.int16)
        out[box][inside] = level[inside]
    return out


def levels_to_classes(levels: np.ndarray, seed_threshold: float) -> np.ndarray:
    """Background (0) / seed (1) / rest of the object (2) from distance levels: what
    instance labelling does with a distance model's output (seeds where the normalised
    distance exceeds ``seed_threshold``)."""
    cut = 1 + seed_threshold * DISTANCE_LEVELS
    return np.where(levels > cut, 1, np.where(levels > 0, 2, 0)).astype(levels.dtype)


def _core(labels: np.ndarray, interior: np.ndarray, core: float) -> np.ndarray:
    """Where the distance to the object's edge exceeds ``core`` x its largest in the object
    (object by object: see :func:`_object_distances`)."""
    out = np.zeros(labels.shape, bool)
    for box, _inside, distance in _object_distances(labels, interior):
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
