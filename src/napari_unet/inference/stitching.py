"""Per-slice instances of a 2D model on a z stack linked into 3D objects, slice by slice and
resumable, never holding more than one chunk row of two slices.

Each object of slice ``z`` takes the label of the object of slice ``z - 1`` that it overlaps
most (by intersection over union), when no other object of ``z`` overlaps that one more and
either their IoU reaches the threshold (the rule of Cellpose's ``stitch3D``) or the overlap
covers half of the smaller object (a nucleus's small end slice); every other object starts a
new label.  Overlaps and areas are counted chunk by chunk (they add up), so a slice of any size is
stitched in bounded memory.

A stitched slice is written to the result, then its marker: the largest label used so far
plus one (0: not stitched yet), which is all the next slice needs to continue after a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np

from ..events import Cancelled, Progress, StageStarted
from .store import OutputStore

__all__ = ["SLICES_ARRAY", "STITCHED_ARRAY", "link_slices", "stitch_labels", "stitch_slices"]

SLICES_ARRAY = "slices"  # per-slice instances (labels restart on every slice)
STITCHED_ARRAY = "stitched"  # per slice: 0, or 1 + the largest label after stitching it
# Objects also continue where the overlap covers this share of the smaller one
# (benchmarks/z_stitching.py: with IoU alone, the small end slices of nuclei stay apart).
CONTAINED = 0.5


def _row_regions(shape: tuple[int, ...], chunks: tuple[int, ...], voxels: int
                 ) -> Iterator[tuple[slice, ...]]:
    """Regions of one slice, whole chunks along X, rows of chunks along Y up to ``voxels``."""
    rows = max(chunks[0], (max(1, voxels // max(1, shape[1])) // chunks[0]) * chunks[0])
    for y in range(0, shape[0], rows):
        yield (slice(y, min(y + rows, shape[0])), slice(None))


def link_slices(prev_pairs: np.ndarray, counts: np.ndarray, area_prev: dict[int, int],
                area_cur: dict[int, int], threshold: float, next_label: int,
                contained: float | None = CONTAINED) -> tuple[dict[int, int], int]:
    """New labels of one slice's objects from their overlaps with the slice above.

    Parameters
    ----------
    prev_pairs : (N, 2) array
        Distinct (label in the slice above, label in this slice) pairs that overlap, both > 0.
    counts : (N,) array
        Overlapping pixels of each pair.
    area_prev, area_cur : dict
        Pixels of every object of the slice above / of this slice.
    threshold : float
        Least intersection over union for an object to continue one above.
    next_label : int
        The first label free for new objects.
    contained : float or None
        Also link a pair whose overlap covers this share of the smaller object (a nucleus's
        small end slice inside the next one: IoU alone leaves those poles apart); None: IoU
        alone (Cellpose's rule).

    Returns
    -------
    mapping : dict
        This slice's label -> its stitched label, for every object of this slice.
    next_label : int
        The first label still free.
    """
    mapping: dict[int, int] = {}
    if len(counts):
        p, c = prev_pairs[:, 0], prev_pairs[:, 1]
        ap = np.array([area_prev[int(v)] for v in p], float)
        ac = np.array([area_cur[int(v)] for v in c], float)
        iou = counts / (ap + ac - counts)
        inside = counts / np.minimum(ap, ac)
        # An object above continues into at most one object here: the one it overlaps most.
        best_for_prev: dict[int, float] = {}
        for pv, v in zip(p.tolist(), iou.tolist(), strict=True):
            best_for_prev[pv] = max(best_for_prev.get(pv, 0.0), v)
        keep = np.array([v >= best_for_prev[pv] for pv, v in zip(p.tolist(), iou.tolist(),
                                                                  strict=True)])
        keep &= (iou >= threshold) | ((inside >= contained) if contained is not None
                                      else False)
        best: dict[int, tuple[float, int]] = {}
        for pv, cv, v in zip(p[keep].tolist(), c[keep].tolist(), iou[keep].tolist(),
                             strict=True):
            if v > best.get(cv, (-1.0, 0))[0]:
                best[cv] = (v, pv)
        taken: set[int] = set()
        for cv, (_, pv) in sorted(best.items()):
            if pv not in taken:  # ties: one object above continues once
                mapping[cv] = pv
                taken.add(pv)
    for cv in sorted(area_cur):
        if cv not in mapping:
            mapping[cv] = next_label
            next_label += 1
    return mapping, next_label


def _count(prev: np.ndarray | None, cur: np.ndarray, pairs: dict[tuple[int, int], int],
           area_prev: dict[int, int], area_cur: dict[int, int]) -> None:
    """Add one region's overlaps and areas to the running counts."""
    ids, n = np.unique(cur[cur > 0], return_counts=True)
    for i, k in zip(ids.tolist(), n.tolist(), strict=True):
        area_cur[i] = area_cur.get(i, 0) + k
    if prev is None:
        return
    ids, n = np.unique(prev[prev > 0], return_counts=True)
    for i, k in zip(ids.tolist(), n.tolist(), strict=True):
        area_prev[i] = area_prev.get(i, 0) + k
    both = (prev > 0) & (cur > 0)
    if both.any():
        key = (prev[both].astype(np.uint64) << np.uint64(32)) | cur[both].astype(np.uint64)
        keys, n = np.unique(key, return_counts=True)
        for kk, k in zip(keys.tolist(), n.tolist(), strict=True):
            pair = (kk >> 32, kk & 0xFFFFFFFF)
            pairs[pair] = pairs.get(pair, 0) + k


def _relabel(cur: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    if not mapping:
        return np.zeros_like(cur)
    lut = np.zeros(max(max(mapping), int(cur.max(initial=0))) + 1, dtype=np.uint32)
    for k, v in mapping.items():
        lut[k] = v
    return lut[cur]


def stitch_labels(slices: np.ndarray, threshold: float, contained: float | None = CONTAINED
                  ) -> np.ndarray:
    """Stitch a ``(Z, Y, X)`` stack of per-slice instances in memory (same rule as
    :func:`stitch_slices`)."""
    slices = np.asarray(slices)
    out = np.zeros(slices.shape, dtype=np.uint32)
    next_label = 1
    for z in range(slices.shape[0]):
        pairs: dict[tuple[int, int], int] = {}
        area_prev: dict[int, int] = {}
        area_cur: dict[int, int] = {}
        _count(out[z - 1] if z else None, slices[z], pairs, area_prev, area_cur)
        mapping, next_label = link_slices(*_pair_arrays(pairs), area_prev, area_cur,
                                          threshold, next_label, contained)
        out[z] = _relabel(slices[z], mapping)
    return out


def _pair_arrays(pairs: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, float)
    keys = np.array(list(pairs), dtype=np.int64)
    return keys, np.array(list(pairs.values()), float)


def stitch_slices(
    store: OutputStore, lead_shape: tuple[int, ...], z_axis: int, threshold: float,
    cancel: Callable[[], bool] | None, voxels: int = 1 << 22,
) -> Generator[Any, None, None]:
    """Stitch the per-slice instances in ``store[SLICES_ARRAY]`` along the lead axis
    ``z_axis`` into ``store.result`` (every other lead axis, e.g. time, on its own)."""
    slices, result, marks = store[SLICES_ARRAY], store.result, store[STITCHED_ARRAY]
    n_lead = len(lead_shape)
    plane = tuple(slices.shape[n_lead:])
    regions = list(_row_regions(plane, tuple(slices.chunks[n_lead:]), voxels))
    others = [s for i, s in enumerate(lead_shape) if i != z_axis]
    n_z = lead_shape[z_axis]
    total = int(np.prod(lead_shape))
    done = np.asarray(marks[...], dtype=np.int64)
    yield StageStarted("stitch", total=total,
                       message=f"linking objects across {n_z} slices (IoU >= {threshold:g})")
    k = 0
    for other in np.ndindex(*others):
        next_label = 1
        for z in range(n_z):
            index = (*other[:z_axis], z, *other[z_axis:])
            k += 1
            if done[index]:
                next_label = int(done[index])
                yield Progress("stitch", k, total)
                continue
            if cancel is not None and cancel():
                raise Cancelled("stitching cancelled; running again resumes")
            above = (*other[:z_axis], z - 1, *other[z_axis:]) if z else None
            pairs: dict[tuple[int, int], int] = {}
            area_prev: dict[int, int] = {}
            area_cur: dict[int, int] = {}
            for region in regions:
                cur = np.asarray(slices[(*index, *region)])
                prev = np.asarray(result[(*above, *region)]) if above is not None else None
                _count(prev, cur, pairs, area_prev, area_cur)
            mapping, next_label = link_slices(*_pair_arrays(pairs), area_prev, area_cur,
                                              threshold, next_label)
            for region in regions:
                cur = np.asarray(slices[(*index, *region)])
                result[(*index, *region)] = _relabel(cur, mapping)
            marks[index] = next_label  # after the slice's data: the slice's marker
            yield Progress("stitch", k, total)
