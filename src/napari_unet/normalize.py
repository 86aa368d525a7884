"""Intensity normalisation computed once per volume, never per tile.

Per-tile normalisation makes neighbouring tiles disagree and shows up as seams; so the
percentiles are computed once from an even sample of the volume's chunks (bounded memory and
I/O whatever the volume size) and applied identically to every tile.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["Normalization", "percentile_normalization", "DEFAULT_PERCENTILES"]

DEFAULT_PERCENTILES = (1.0, 99.8)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel affine map ``(x - low) / (high - low)``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, x: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Normalise ``x`` (channels along ``channel_axis``) to float32."""
        shape = [1] * x.ndim
        shape[channel_axis] = len(self.low)
        lo = np.asarray(self.low, dtype=np.float32).reshape(shape)
        scale = 1.0 / (np.asarray(self.high, dtype=np.float32) - np.asarray(self.low,
                                                                             dtype=np.float32))
        return (x.astype(np.float32, copy=False) - lo) * scale.reshape(shape).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def identity(cls, channels: int) -> Normalization:
        return cls((0.0,) * channels, (1.0,) * channels)


def _sample_blocks(arr: da.Array, max_blocks: int) -> list[tuple[int, ...]]:
    grid = [range(n) for n in arr.numblocks]
    total = int(np.prod(arr.numblocks))
    if total <= max_blocks:
        return list(itertools.product(*grid))
    picks = np.unique(np.linspace(0, total - 1, max_blocks).round().astype(int))
    return [tuple(int(i) for i in np.unravel_index(p, arr.numblocks)) for p in picks]


def percentile_normalization(
    canonical: da.Array,
    n_lead: int,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    max_blocks: int = 48,
    max_values: int = 4_000_000,
    source: str = "input",
) -> Normalization:
    """Percentiles per channel from an even sample of chunks of a ``(*lead, C, *spatial)`` array.

    Raises
    ------
    ValueError
        The sampled pixels contain NaN or infinity.
    """
    lo_p, hi_p = (float(p) for p in percentiles)
    arr = canonical.rechunk({n_lead: -1})
    n_channels = arr.shape[n_lead]
    blocks = _sample_blocks(arr, max_blocks)
    per_block = max(1, max_values // max(1, len(blocks)))
    samples: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    for idx in blocks:
        block = np.asarray(arr.blocks[idx].compute(scheduler="threads"))
        block = np.moveaxis(block, n_lead, 0).reshape(n_channels, -1)
        stride = max(1, block.shape[1] // per_block)
        for c in range(n_channels):
            samples[c].append(block[c, ::stride])
    low, high = [], []
    for c in range(n_channels):
        values = np.concatenate(samples[c]).astype(np.float64, copy=False)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"{source}: channel {c} contains NaN or infinite values; replace them "
                "(e.g. numpy.nan_to_num) before segmenting"
            )
        a, b = np.percentile(values, [lo_p, hi_p])
        if b - a < 1e-6 * max(1.0, abs(a)):  # flat image: avoid dividing by ~0
            b = a + 1.0
        low.append(float(a))
        high.append(float(b))
    return Normalization(tuple(low), tuple(high))
