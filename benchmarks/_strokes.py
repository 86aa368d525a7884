"""A simulated user painting scribbles: strokes through objects, strokes in the background,
and corrections where a preview is wrong.  Scribble values: 0 unlabelled, 1 background,
2 object (what the train widget asks for)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import line


def _stroke_2d(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 1-px line through a 2D region along its longest axis, kept inside the region
    eroded by 2 px (or 1 px / the region itself where it is thin)."""
    inner = mask
    for r in (2, 1):
        eroded = ndi.binary_erosion(mask, iterations=r)
        if eroded.sum() >= 3:
            inner = eroded
            break
    pts = np.argwhere(inner)
    out = np.zeros(mask.shape, bool)
    if len(pts) == 0:
        return out
    if len(pts) < 3:
        out[tuple(pts.T)] = True
        return out
    c = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - c, full_matrices=False)
    proj = (pts - c) @ vt[0]
    a, b = pts[np.argmin(proj)], pts[np.argmax(proj)]
    rr, cc = line(int(a[0]), int(a[1]), int(b[0]), int(b[1]))
    keep = inner[rr, cc]
    out[rr[keep], cc[keep]] = True
    return out


def object_strokes(labels: np.ndarray, rng: np.random.Generator, max_objects: int = 30,
                   slices_per_object: int = 3) -> np.ndarray:
    """Strokes (value 2) through up to ``max_objects`` objects; in 3D on up to
    ``slices_per_object`` z slices spread over each object."""
    out = np.zeros(labels.shape, np.uint8)
    ids = np.unique(labels[labels > 0])
    if len(ids) > max_objects:
        ids = rng.choice(ids, max_objects, replace=False)
    boxes = ndi.find_objects(labels)
    for k in ids:
        box = boxes[k - 1]
        if labels.ndim == 2:
            out[box][_stroke_2d(labels[box] == k, rng)] = 2
            continue
        z0, z1 = box[0].start, box[0].stop
        zs = np.unique(np.linspace(z0 + (z1 - z0) / 4, z1 - 1 - (z1 - z0) / 4,
                                   slices_per_object).round().astype(int))
        for z in zs:
            region = labels[z][box[1:]] == k
            if region.any():
                out[z][box[1:]][_stroke_2d(region, rng)] = 2
    return out


def background_strokes(labels: np.ndarray, rng: np.random.Generator, n: int,
                       length: int = 30, slices: np.ndarray | None = None) -> np.ndarray:
    """``n`` straight strokes (value 1) in the background at least 3 px from any object; in
    3D on the given z ``slices``."""
    far = ~ndi.binary_dilation(labels > 0, iterations=3)
    out = np.zeros(labels.shape, np.uint8)
    planes = [None] if labels.ndim == 2 else list(slices if slices is not None
                                                  else range(labels.shape[0]))
    for i in range(n):
        z = planes[i % len(planes)]
        plane = far if z is None else far[z]
        pts = np.argwhere(plane)
        if len(pts) == 0:
            continue
        y, x = pts[rng.integers(len(pts))]
        angle = rng.uniform(0, np.pi)
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        rr, cc = line(int(y - dy), int(x - dx), int(y + dy), int(x + dx))
        ok = (rr >= 0) & (cc >= 0) & (rr < plane.shape[0]) & (cc < plane.shape[1])
        rr, cc = rr[ok], cc[ok]
        rr, cc = rr[plane[rr, cc]], cc[plane[rr, cc]]
        target = out if z is None else out[z]
        target[rr, cc] = 1
    return out


def initial_scribbles(labels: np.ndarray, seed: int = 0, max_objects: int = 30
                      ) -> np.ndarray:
    """Round 0: strokes through objects and about half as many in the background (on the
    slices the objects were painted on, in 3D)."""
    rng = np.random.default_rng(seed)
    marks = object_strokes(labels, rng, max_objects)
    n_obj = len(np.unique(labels[labels > 0]))
    slices = None if labels.ndim == 2 else np.unique(np.nonzero(marks)[0])
    bg = background_strokes(labels, rng, max(4, min(n_obj, max_objects) // 2), slices=slices)
    return np.where(marks > 0, marks, bg).astype(np.uint8)


def corrections(pred_fg: np.ndarray, labels: np.ndarray, marks: np.ndarray, seed: int,
                n: int = 6) -> np.ndarray:
    """One round of corrections: strokes with the true class through the ``n`` largest
    wrong regions of the preview (in 3D, on each region's largest slice)."""
    rng = np.random.default_rng(seed)
    truth = labels > 0
    out = marks.copy()
    wrong, count = ndi.label(pred_fg != truth)
    if count == 0:
        return out
    sizes = np.bincount(wrong.ravel())[1:]
    for k in np.argsort(sizes)[::-1][:n] + 1:
        region = wrong == k
        value = 2 if truth[region].mean() > 0.5 else 1
        if labels.ndim == 3:
            z = int(np.argmax(region.sum(axis=(1, 2))))
            stroke = np.zeros(region.shape, bool)
            stroke[z] = _stroke_2d(region[z], rng)
        else:
            stroke = _stroke_2d(region, rng)
        out[stroke & (out == 0)] = value
    return out


def merge_strokes(pred_inst: np.ndarray, labels: np.ndarray, marks: np.ndarray, seed: int,
                  n: int = 6, value: int = 1) -> np.ndarray:
    """Background lines across merged objects, as a user separates two nuclei the preview
    joined: for up to ``n`` predicted objects covering two or more true ones (each at least
    a fifth inside; the largest merges first), paint background (1) on the line where two
    of those true objects meet or the gap between them -- on the slice where the merge is
    largest, in 3D.  ``value`` 3 paints the line as a third class, "boundary between
    objects", instead of background (the gap bridged stays background)."""
    del seed  # deterministic: the contact line is where it is
    out = marks.copy()
    merges = []
    for k, box in enumerate(ndi.find_objects(pred_inst), start=1):
        if box is None:
            continue
        obj = pred_inst[box] == k
        ids, counts = np.unique(labels[box][obj], return_counts=True)
        sizes = np.bincount(labels[box].ravel())
        inside = [(i, c) for i, c in zip(ids, counts, strict=True)
                  if i > 0 and c >= 0.2 * sizes[i]]
        if len(inside) >= 2:
            merges.append((int(obj.sum()), k, box, [i for i, _ in inside]))
    for _, k, box, ids in sorted(merges, reverse=True)[:n]:
        obj = pred_inst[box] == k
        lab = labels[box]
        if lab.ndim == 3:
            z = int(np.argmax(obj.sum(axis=(1, 2))))
            obj, lab = obj[z], lab[z]
        # The line where two of the true objects touch (a pixel of each side), or else the
        # background the preview bridged between them.
        for r in (1, 2, 4, 6):  # further out where the preview bridged a wider gap
            near = sum(ndi.binary_dilation(lab == i, iterations=r).astype(int) for i in ids)
            line_ = obj & (near >= 2) & ((lab == 0) | (r == 1))
            if line_.any():
                break
        target = out[box] if labels.ndim == 2 else out[box][z]
        target[line_ & (target == 0) & (lab == 0)] = 1  # bridged background
        target[line_ & (target == 0) & (lab > 0)] = value  # where they touch
    return out
