"""From blended logits to probabilities, class labels and instance labels.

Instance labels come from dask-image's ``ndmeasure.label``, which resolves components that
cross chunk borders through a global relabelling pass, so the result is correct on volumes
larger than memory.  Labelling runs in two passes through the output store: seed components,
then size filtering (a per-id voxel count) and regrowth through the boundary class.  A frame
small enough to be one labelling chunk is labelled in memory instead, with the same functions
and the same result (``instances_in_memory``).
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

__all__ = [
    "probabilities",
    "semantic",
    "interior_threshold",
    "semantic_dtype",
    "seed_labels",
    "object_sizes",
    "grow_instances",
    "instances_in_memory",
    "BOUNDARY_MODE",
    "DISTANCE_OUTPUT",
    "output_kind",
    "split_classes",
    "split_classes_lazy",
    "split_depth",
]

# Label mode of models trained on instance masks as background / interior / boundary /
# contact (models trained before the contact class have the first three; both label alike).
BOUNDARY_MODE = "instances"


DISTANCE_OUTPUT = "distance"


def output_kind(metadata: dict) -> str:
    """"distance" for models with the distance target (foreground, normalised distance),
    else "classes" (softmax over classes, or one sigmoid channel)."""
    return str(metadata.get("output", "classes"))


def probabilities(logits, output: str = "classes"):  # torch.Tensor (C, ...) -> (C, ...)
    """Sigmoid for one-channel (binary) and distance models (foreground probability and
    normalised distance), softmax over classes otherwise."""
    import torch

    if logits.shape[0] == 1 or output == DISTANCE_OUTPUT:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=0)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def interior_threshold(metadata: dict, mode: str) -> float | None:
    """The probability an interior voxel needs to seed an instance: the model's
    ``interior_threshold`` (chosen on validation images and stored with it) for instance
    labelling of an instance model; None (the argmax) otherwise."""
    value = metadata.get("interior_threshold")
    if mode != "instances" or metadata.get("label_mode") != "instances" or value is None:
        return None
    return float(value)


def semantic(logits, threshold: float = 0.5, output: str = "classes",
             seed_threshold: float = 0.5, interior_threshold: float | None = None
             ):  # torch.Tensor (C, ...) -> (...)
    """Class index per voxel: ``p > threshold`` for binary models, argmax otherwise.

    Distance models: 0 background (foreground probability up to ``threshold``), 1 seed
    (normalised distance above ``seed_threshold``), 2 the rest of the object -- the classes
    that instance labelling seeds and regrows, as for a background / interior / boundary
    model.  ``interior_threshold`` (instance labelling of a background / interior / boundary
    [/ contact] model): an interior voxel (the argmax) is a seed only where its probability
    exceeds it, else boundary -- seeds of confident cores separate touching objects better.
    """
    if output == DISTANCE_OUTPUT:
        fg = logits[0] > _logit(threshold)
        seed = logits[1] > _logit(seed_threshold)
        return (fg.to(_torch_dtype("uint8")) * (2 - seed.to(_torch_dtype("uint8"))))
    if logits.shape[0] == 1:
        return (logits[0] > _logit(threshold)).to(dtype=_torch_dtype(semantic_dtype(1)))
    classes = logits.argmax(dim=0)
    if interior_threshold is not None and logits.shape[0] >= 3:
        import torch

        unsure = (classes == 1) & (torch.softmax(logits.float(), dim=0)[1]
                                   <= float(interior_threshold))
        classes = torch.where(unsure, torch.full_like(classes, 2), classes)
    return classes.to(dtype=_torch_dtype(semantic_dtype(logits.shape[0])))


def semantic_dtype(out_channels: int) -> str:
    return "uint8" if out_channels <= 255 else "uint16"


def _torch_dtype(name: str):
    import torch

    return {"uint8": torch.uint8, "uint16": torch.int32}[name]


def _grow(seeds: np.ndarray, classes: np.ndarray, keep: np.ndarray, distance: int,
          grow: bool) -> np.ndarray:
    """Drop seeds too small to be objects, then (boundary models) regrow the rest."""
    from skimage.segmentation import expand_labels

    seeds = np.where(keep[seeds], seeds, 0).astype(np.uint32)
    if not grow:
        return seeds
    grown = expand_labels(seeds, distance=distance)
    return np.where(classes > 0, grown, 0).astype(np.uint32)


def _seed_mask(classes, label_mode: str | None):
    """Seed voxels: the interior class of boundary models, else all foreground."""
    return classes == 1 if label_mode == BOUNDARY_MODE else classes > 0


def _kept(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Per seed id, whether it has at least ``min_size`` voxels (id 0, background, never)."""
    keep = sizes >= max(1, int(min_size))
    keep[0] = False
    return keep


def seed_labels(classes: da.Array, label_mode: str | None = None) -> da.Array:
    """Pass 1 of instance labelling: connected components of the seeds of one frame.

    Seeds are the interior class (1) of a background / interior / boundary [/ contact] model
    (``label_mode="instances"``), else all foreground.  dask-image relabels components across
    chunk borders, so ids are unique over the whole frame, however large.
    """
    from dask_image.ndmeasure import label

    labels, _ = label(_seed_mask(classes, label_mode))
    return labels.astype(np.uint32)


def instances_in_memory(classes: np.ndarray, label_mode: str | None = None, expand: int = 2,
                        min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both passes on one frame held in memory: ``(seeds, instances)``, equal to what
    :func:`seed_labels` and :func:`grow_instances` give for a frame in one chunk."""
    from scipy import ndimage as ndi

    seeds = ndi.label(_seed_mask(classes, label_mode))[0].astype(np.uint32)
    keep = _kept(np.bincount(seeds.ravel()), min_size)
    return seeds, _grow(seeds, classes, keep, expand, label_mode == BOUNDARY_MODE)


def object_sizes(seeds: da.Array) -> np.ndarray:
    """Voxels per id, summed chunk by chunk in a tree (memory: ids x log(chunks))."""
    import dask

    n = int(seeds.max().compute()) + 1
    parts = [dask.delayed(np.bincount)(b.ravel(), minlength=n)
             for b in seeds.to_delayed().ravel()]
    while len(parts) > 1:
        parts = [dask.delayed(np.add)(a, b) for a, b in zip(parts[::2], parts[1::2],
                                                            strict=False)] + (
            [parts[-1]] if len(parts) % 2 else [])
    return np.asarray(parts[0].compute()) if parts else np.zeros(1, np.int64)


def grow_instances(
    seeds: da.Array, classes: da.Array, label_mode: str | None = None, expand: int = 2,
    min_size: int = 0,
) -> da.Array:
    """Pass 2: remove seeds smaller than ``min_size`` voxels and grow the others ``expand``
    voxels into the boundary class (boundary models), staying inside the foreground."""
    keep = _kept(object_sizes(seeds), min_size)
    grow = label_mode == BOUNDARY_MODE
    out = da.map_overlap(
        _grow, seeds, classes, depth=expand if grow else 0, boundary="none",
        dtype=np.uint32, keep=keep, distance=expand, grow=grow,
    )
    # dask rechunks where a chunk is thinner than the overlap (a volume's last one); back to
    # the seeds' chunks, which the caller aligned with the store's: two tasks must never
    # write parts of one stored chunk.
    return out.rechunk(seeds.chunks)


# A seed of split_classes is where the distance to the background exceeds this share of the
# largest within the radius.
SPLIT_SHARE = 0.5


def split_classes(classes: np.ndarray, radius: int, share: float = SPLIT_SHARE) -> np.ndarray:
    """Seeds for splitting touching objects of a foreground mask (``classes > 0``): 0
    background, 1 seed, 2 rest of the foreground -- the classes that instance labelling seeds
    and regrows (by ``radius``), as for a boundary model.

    A seed voxel's distance to the background exceeds ``share`` x the largest such distance
    within ``radius``: two round objects touching at a neck narrower than ``share`` x their
    radius get one seed each, a single object one seed.
    """
    from scipy import ndimage as ndi

    fg = np.asarray(classes) > 0
    distance = ndi.distance_transform_edt(fg)
    peak = ndi.maximum_filter(distance, size=2 * int(radius) + 1, mode="nearest")
    seed = fg & (distance > share * peak)
    return np.where(seed, 1, np.where(fg, 2, 0)).astype(np.uint8)


def split_depth(radius: int) -> int:
    """Context a block of :func:`split_classes_lazy` needs: distances are exact up to twice
    the radius (objects up to that radius) and the neighbourhood maximum reaches one more
    radius."""
    return 3 * int(radius)


def split_classes_lazy(classes: da.Array, radius: int, share: float = SPLIT_SHARE
                       ) -> da.Array:
    """:func:`split_classes` chunk by chunk with ``split_depth`` of context: the same result
    wherever every object's radius is at most twice ``radius`` (tested)."""
    depth = min(split_depth(radius), *(max(1, s - 1) for s in classes.shape))
    out = da.map_overlap(split_classes, classes, depth=depth, boundary="none",
                         dtype=np.uint8, radius=radius, share=share)
    return out.rechunk(classes.chunks)  # dask rechunks chunks thinner than the depth
