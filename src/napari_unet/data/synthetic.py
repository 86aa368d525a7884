"""Synthetic nuclei images and volumes with exact ground truth.

Used by the built-in demo, the sample data and the tests: blurred, noisy ellipses (2D) or
ellipsoids (3D) of varying size and brightness, some touching, on an uneven background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei"]


def synthetic_nuclei(
    shape: Sequence[int],
    density: float = 0.5,
    radius: tuple[float, float] = (5.0, 10.0),
    noise: float = 0.08,
    seed: int = 0,
    dtype: str = "uint16",
) -> tuple[np.ndarray, np.ndarray]:
    """Render nuclei-like blobs and their instance labels.

    Parameters
    ----------
    shape : sequence of int
        (Y, X) or (Z, Y, X).
    density : float
        Fraction of the volume the objects would fill if they did not overlap.
    radius : (float, float)
        Range of object radii in pixels.
    noise : float
        Standard deviation of the additive Gaussian noise, relative to the object brightness.
    seed : int
        Random seed: the same seed gives the same image.
    dtype : str
        Image type ("uint16", "uint8" or "float32").

    Returns
    -------
    image : numpy.ndarray
    labels : numpy.ndarray of uint32
        0 = background, 1..N = objects.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if nd not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    labels = np.zeros(shape, dtype=np.uint32)
    brightness = np.zeros(shape, dtype=np.float32)
    mean_r = float(np.mean(radius))
    unit = math.pi * mean_r**2 if nd == 2 else 4.0 / 3.0 * math.pi * mean_r**3
    n = max(1, int(density * math.prod(shape) / unit))
    next_id = 1
    for _ in range(n):
        r = rng.uniform(*radius, size=nd) * rng.uniform(0.8, 1.2)
        center = rng.uniform(0, shape)
        lo = [max(0, int(c - ri - 1)) for c, ri in zip(center, r, strict=True)]
        hi = [min(s, int(c + ri + 2)) for c, ri, s in zip(center, r, shape, strict=True)]
        if any(h <= l for l, h in zip(lo, hi, strict=True)):
            continue
        grids = np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi, strict=True)],
                            indexing="ij")
        d = sum(((g - c) / ri) ** 2 for g, c, ri in zip(grids, center, r, strict=True))
        inside = d <= 1.0
        box = tuple(slice(l, h) for l, h in zip(lo, hi, strict=True))
        free = inside & (labels[box] == 0)  # earlier objects stay on top: touching, not merged
        if free.sum() < 0.5 * inside.sum() or not free.any():
            continue
        labels[box][free] = next_id
        # Brighter centre, dimmer rim, like a stained nucleus.
        brightness[box][free] = rng.uniform(0.5, 1.0) * (1.0 - 0.3 * d[free])
        next_id += 1
    # Relabel so that ids are consecutive even where an object was swallowed.
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    labels = lut[labels]

    # Uneven background, optical blur, and noise.
    coords = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    background = 0.08 + 0.06 * sum(np.sin(2.5 * c + p) for c, p in
                                   zip(coords, rng.uniform(0, 6, nd), strict=True)) / nd
    image = ndi.gaussian_filter(brightness, sigma=1.0) + background
    image = image + rng.normal(0.0, noise, size=shape)
    image = np.clip(image, 0.0, None).astype(np.float32)
    if dtype == "float32":
        return image, labels
    info = np.iinfo(np.dtype(dtype))
    scale = 0.8 * info.max / max(float(image.max()), 1e-6)
    return (image * scale).round().astype(dtype), labels
