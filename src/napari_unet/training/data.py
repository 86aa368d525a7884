"""Training pairs and lazy patch sampling.

Pairs may be numpy, dask or zarr arrays or paths; only the patches drawn are read, so training
works on volumes larger than memory.  A share of patches is centred on labelled foreground
(as nnU-Net does) so that sparse objects and scribbles are seen often enough.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import dask.array as da
import numpy as np

from ..io import InputError, open_volume
from ..ngff import voxel_size
from ..normalize import Normalization, percentile_normalization
from .augment import Augmenter, Draw, margin_for, noise_seed
from .targets import IGNORE, make_target

__all__ = [
    "TrainPair", "prepare_pairs", "split_validation", "PatchSampler", "LabelStats",
    "class_weights",
]


@dataclasses.dataclass
class TrainPair:
    """One image (``(C, *spatial)``, lazy) with its labels, normalisation and foreground sample."""

    name: str
    image: da.Array | np.ndarray  # numpy once loaded (small data), else lazy
    labels: da.Array | np.ndarray
    norm: Normalization
    foreground: np.ndarray  # (K, nd) coordinates of labelled voxels (a sample)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.labels.shape)

    def crop(self, axis: int, start: int, stop: int, name: str) -> TrainPair:
        sl = [slice(None)] * len(self.spatial_shape)
        sl[axis] = slice(start, stop)
        fg = self.foreground[(self.foreground[:, axis] >= start)
                             & (self.foreground[:, axis] < stop)].copy()
        fg[:, axis] -= start
        return TrainPair(name, self.image[(slice(None), *sl)], self.labels[tuple(sl)],
                         self.norm, fg)


@dataclasses.dataclass
class LabelStats:
    """Facts gathered in one pass over the labels."""

    max_label: int
    # Voxel size of each image along its spatial axes (None where its metadata says nothing).
    voxel_sizes: list[tuple[float, ...] | None] = dataclasses.field(default_factory=list)


def _foreground_sample(labels: da.Array, max_points: int, seed: int
                       ) -> tuple[np.ndarray, LabelStats]:
    """Coordinates of labelled voxels and the largest label, reading one chunk at a time."""
    rng = np.random.default_rng(seed)
    points = []
    top = 0
    per_block = max(16, max_points // max(1, math.prod(labels.numblocks)))
    offsets = [np.cumsum((0, *c[:-1])) for c in labels.chunks]
    for idx in np.ndindex(*labels.numblocks):
        block = np.asarray(labels.blocks[idx].compute(scheduler="threads"))
        if block.size == 0:
            continue
        top = max(top, int(block.max()))
        if int(block.min()) < 0:
            raise InputError("labels contain negative values; use 0 for background or "
                             "unlabelled and positive ids / classes")
        coords = np.argwhere(block > 0)
        if len(coords) > per_block:
            coords = coords[rng.choice(len(coords), per_block, replace=False)]
        offset = np.array([o[i] for o, i in zip(offsets, idx, strict=True)])
        points.append(coords + offset)
    fg = np.concatenate(points) if points else np.zeros((0, labels.ndim), dtype=np.int64)
    return fg, LabelStats(top)


def prepare_pairs(
    pairs: Sequence[Any],
    spatial_dims: int,
    label_mode: str,
    patch: tuple[int, ...],
    normalize: tuple[float, float],
    what: str = "training",
    seed: int = 0,
    in_memory_limit: int = 2 * 2**30,
    invert: str = "never",
    axes: str | None = None,
) -> tuple[list[TrainPair], LabelStats]:
    """Open and check (image, labels) pairs before any training starts.

    The axes of each image follow :func:`napari_unet.axes.training_layout` (``axes`` given,
    else inferred from the labels' shape); a stack for a 2D model (or a time series) becomes
    one pair per slice with labels, sharing the normalisation of the whole image.

    Raises
    ------
    InputError
        Empty list, unreadable input, image/label shape mismatch, float or all-zero labels,
        a patch larger than the image, NaN in an image, differing channel counts.
    """
    from ..axes import training_layout

    if pairs is None or len(pairs) == 0:
        raise InputError(f"no {what} data: give at least one (image, labels) pair")
    out: list[TrainPair] = []
    max_label = 0
    channels = None
    voxel_sizes: list[tuple[float, ...] | None] = []
    for k, pair in enumerate(pairs):
        try:
            image_src, label_src = pair
        except (TypeError, ValueError) as err:
            raise InputError(f"{what} pair {k}: expected an (image, labels) pair") from err
        name = f"{what} pair {k}"
        image, info = open_volume(image_src)
        labels, _ = open_volume(label_src)
        layout = training_layout(tuple(image.shape), tuple(labels.shape), spatial_dims, axes,
                                 name)
        voxel_sizes.append(voxel_size(layout.spatial_axes, layout.axes, info.scale))
        image = layout.canonical(image)  # (*lead, C, *spatial)
        labels = labels.transpose([layout.axes.replace("C", "").index(a)
                                   for a in layout.lead_axes + layout.spatial_axes])
        n_lead = len(layout.lead_axes)
        if channels is None:
            channels = image.shape[n_lead]
        elif image.shape[n_lead] != channels:
            raise InputError(f"{name}: {image.shape[n_lead]} channel(s), the first pair has "
                             f"{channels}")
        if np.dtype(labels.dtype).kind not in "biu":
            raise InputError(
                f"{name}: labels have a float type ({labels.dtype}); labels must be integers "
                "(0 = background / unlabelled). Convert them, e.g. labels.astype('uint16')"
            )
        spatial = tuple(labels.shape[n_lead:])
        small = [(s, p) for s, p in zip(spatial, patch, strict=True) if s < p]
        if small:
            raise InputError(
                f"{name}: the image ({spatial}) is smaller than patch_size {patch}; "
                "choose a smaller patch_size (a multiple of 2**depth)"
            )
        if np.dtype(labels.dtype).kind == "i" and labels.dtype.itemsize <= 2:
            labels = labels.astype(np.int32)
        try:
            norm = percentile_normalization(image, n_lead, normalize, source=name,
                                            invert=invert)
        except ValueError as err:
            raise InputError(str(err)) from err
        found = 0
        for j, lead in enumerate(np.ndindex(*labels.shape[:n_lead])):
            fg, stats = _foreground_sample(labels[lead], 20_000, seed + k + j)
            if len(fg) == 0:
                continue  # an unlabelled slice of a stack
            found += 1
            max_label = max(max_label, stats.max_label)
            at = ", ".join(f"{a}={i}" for a, i in zip(layout.lead_axes, lead, strict=True))
            out.append(TrainPair(f"{name} ({at})" if n_lead else name, image[lead],
                                 labels[lead], norm, fg))
        if not found:
            raise InputError(
                f"{name}: the labels are all zero; "
                + ("paint at least one stroke of background (1) and foreground (2)"
                   if label_mode == "scribbles" else "label some objects before training")
            )
    _load_small(out, in_memory_limit)
    return out, LabelStats(max_label, voxel_sizes)


def _take(arr: Any, index: tuple[slice, ...]) -> np.ndarray:
    if isinstance(arr, np.ndarray):
        return arr[index]
    return np.asarray(arr[index].compute(scheduler="synchronous"))


def _load_small(pairs: list[TrainPair], limit: int) -> None:
    """Hold the data in memory when it all fits under ``limit`` bytes.

    Reading every patch through dask and zarr decompression was measured to starve the model
    (12 patches/s vs 35 needed for 2D); data larger than the limit stays lazy.
    """
    total = sum(p.image.nbytes + p.labels.nbytes for p in pairs)
    if total > limit:
        return
    for p in pairs:
        p.image = np.asarray(p.image.compute(scheduler="threads"))
        p.labels = np.asarray(p.labels.compute(scheduler="threads"))


def split_validation(
    pairs: list[TrainPair], fraction: float, seed: int, patch: tuple[int, ...],
    sparse: bool = False,
) -> tuple[list[TrainPair], list[TrainPair], str]:
    """Hold out whole pairs, or cut a single pair along its first spatial axis.

    ``sparse`` (scribbles): a single pair is not cut -- every stroke painted is needed for
    training, and the strokes then serve as the validation too.

    Returns the training pairs, the validation pairs and a note on how they were split.
    """
    if sparse and len(pairs) == 1:
        return pairs, pairs, ("one image of scribbles: trained on every stroke and validated "
                              "on the same strokes (no held-out score)")
    if len(pairs) >= 2:
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(round(fraction * len(pairs))))
        val = [pairs[i] for i in sorted(order[:n_val])]
        train = [pairs[i] for i in sorted(order[n_val:])]
        return train, val, f"{len(train)} training / {len(val)} validation pairs"
    (pair,) = pairs
    size = pair.spatial_shape[0]
    cut = int(round(size * (1 - fraction)))
    cut = min(max(cut, patch[0]), size - patch[0])
    if cut >= patch[0] and size - cut >= patch[0]:
        train = pair.crop(0, 0, cut, pair.name + " (training part)")
        val = pair.crop(0, cut, size, pair.name + " (validation part)")
        if len(train.foreground) and len(val.foreground):
            return [train], [val], f"one pair split along axis 0 at {cut}"
    return [pair], [pair], (
        "one pair too small (or too sparsely labelled) to split: validating on the training "
        "data; give a validation set for an honest score"
    )


def _small_target(labels: np.ndarray, label_mode: str, boundary_width: int,
                  core: float = 0.0, target_kind: str = "classes") -> np.ndarray:
    """The whole image's target in the smallest signed integer type that holds it."""
    target = make_target(labels, label_mode, boundary_width, core, target_kind)
    lo, hi = (int(target.min()), int(target.max())) if target.size else (0, 0)
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return target.astype(dtype)
    return target


class PatchSampler:
    """Draws (image, target) patches, deterministically from a seed sequence."""

    def __init__(
        self,
        pairs: list[TrainPair],
        patch: tuple[int, ...],
        label_mode: str,
        boundary_width: int,
        foreground_fraction: float,
        augmenter: Augmenter | None,
        uniform: bool = False,
        core: float = 0.0,
        target: str = "classes",
    ) -> None:
        self.pairs = pairs
        self.target = target
        self.patch = tuple(patch)
        self.label_mode = label_mode
        self.boundary_width = boundary_width
        self.core = core
        self.foreground_fraction = foreground_fraction
        self.augmenter = augmenter
        sizes = np.array([1 if uniform else math.prod(p.spatial_shape) for p in pairs],
                         dtype=np.float64)
        self.weights = sizes / sizes.sum()
        # Targets of data held in memory are made once, for the whole image: per patch they
        # took a third of the sampling time (boundary filters over patch + margin).
        self.targets = [_small_target(p.labels, label_mode, boundary_width, core, target)
                        if isinstance(p.labels, np.ndarray) else None for p in pairs]

    def _window(self, pair: TrainPair, rng: np.random.Generator, centred: bool) -> list[int]:
        shape = pair.spatial_shape
        if centred and len(pair.foreground):
            c = pair.foreground[rng.integers(len(pair.foreground))]
            start = [int(ci) - p // 2 for ci, p in zip(c, self.patch, strict=True)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for s, p in
                     zip(shape, self.patch, strict=True)]
        return [min(max(0, a), s - p) for a, s, p in zip(start, shape, self.patch, strict=True)]

    def read(self, k: int, start: Sequence[int], margin: Sequence[int]
             ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image ``(C, *region)`` and target around a patch of pair ``k``,
        reflect-padded."""
        pair = self.pairs[k]
        shape = pair.spatial_shape
        lo = [a - m for a, m in zip(start, margin, strict=True)]
        hi = [a + p + m for a, p, m in zip(start, self.patch, margin, strict=True)]
        sl = tuple(slice(max(0, a), min(s, b)) for a, b, s in zip(lo, hi, shape, strict=True))
        pad = [(max(0, -a), max(0, b - s)) for a, b, s in zip(lo, hi, shape, strict=True)]
        x = _take(pair.image, (slice(None), *sl))
        x = pair.norm.apply(x, channel_axis=0)
        targets = self.targets[k]
        if targets is not None:
            t = targets[sl].astype(np.int64)
        else:
            # Cores of objects cut by the region are measured within it (an approximation
            # data held in memory avoids: its targets are made for whole images).
            t = make_target(_take(pair.labels, sl), self.label_mode, self.boundary_width,
                            self.core, self.target)
        if any(p for pp in pad for p in pp):
            x = np.pad(x, [(0, 0), *pad], mode="reflect")
            t = np.pad(t, pad, mode="reflect")
        return x, t

    def _draw(self, rng: np.random.Generator) -> tuple[int, list[int]]:
        """A pair index and the start of a patch window in it."""
        k = int(rng.choice(len(self.pairs), p=self.weights))
        return k, self._window(self.pairs[k], rng, rng.random() < self.foreground_fraction)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k, start = self._draw(rng)
        if self.augmenter is None:
            return self.read(k, start, (0,) * len(self.patch))
        x, t = self.read(k, start, margin_for(self.patch))
        return self.augmenter(x, t, self.patch, rng)

    def sample_region(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Draw]:
        """The region around a patch (its margin on every side), un-augmented, and the
        random choices that make the augmented patch of :meth:`sample` from it (applied on
        the training device by :func:`~.augment_device.augment_batch`)."""
        assert self.augmenter is not None
        k, start = self._draw(rng)
        x, t = self.read(k, start, margin_for(self.patch))
        d = self.augmenter.draw(rng, self.patch)
        if d.noise is not None:
            d.noise_seed = noise_seed(rng)
        return x, t, d

    def batch(self, batch_size: int, seed: Sequence[int], pool: Executor | None = None,
              regions: bool = False) -> tuple[Any, ...]:
        """A batch ``(images, targets)`` whose content depends only on ``seed`` (so runs and
        resumes repeat); with ``regions``, ``(regions, region targets, draws)`` to augment on
        the training device (:meth:`sample_region`).

        Each patch draws from its own stream (``seed`` and its index), so a thread ``pool``
        may cut the patches in parallel without changing them.
        """
        seeds = [[*seed, i] for i in range(batch_size)]

        def draw(s: list[int]) -> tuple[Any, ...]:
            rng = np.random.default_rng(s)
            return self.sample_region(rng) if regions else self.sample(rng)

        patches = list(pool.map(draw, seeds)) if pool is not None else [draw(s) for s in seeds]
        xs, ts, *draws = zip(*patches, strict=True)
        return (np.stack(xs), np.stack(ts), *(list(d) for d in draws))

    def fixed_patches(self, n: int, seed: int, labels: bool = False
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``n`` un-augmented patches drawn once (the validation set of a run); with
        ``labels``, the same patches' labels instead of their targets."""
        rng = np.random.default_rng([seed, 7919])
        out = []
        for _ in range(n):
            k, start = self._draw(rng)
            x, t = self.read(k, start, (0,) * len(self.patch))
            if labels:
                sl = tuple(slice(a, a + p) for a, p in zip(start, self.patch, strict=True))
                t = _take(self.pairs[k].labels, sl)
            out.append((x, t))
        return out


def class_weights(targets: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Inverse-frequency class weights from sample targets, mean 1, clipped to [0.1, 10]."""
    c = np.zeros(n_classes, dtype=np.float64)
    for t in targets:
        t = t[t != IGNORE]
        c += np.bincount(t.ravel(), minlength=n_classes)[:n_classes]
    freq = c / max(c.sum(), 1.0)
    w = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12), 0.0)
    w = w / w[w > 0].mean()
    return np.clip(w, 0.1, 10.0)

