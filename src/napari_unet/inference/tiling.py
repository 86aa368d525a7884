"""Pure tile and block geometry, and blending weights.

There is one global tile grid per volume: tile origins depend only on the volume shape, the
tile size and the overlap -- never on how the volume is cut into blocks.  A block (the unit of
work that is read, predicted and written) gathers every tile that touches it, so each output
voxel always blends the same tiles with the same weights, whatever the block size.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "round_up",
    "effective_tile",
    "fit_tile",
    "overlap_voxels",
    "tile_origins",
    "TileGrid",
    "block_regions",
    "blending_weights",
]


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-int(value) // int(multiple)) * int(multiple)


def effective_tile(
    shape: Sequence[int], tile: Sequence[int], multiple: Sequence[int]
) -> tuple[int, ...]:
    """Tile size actually fed to the network along each axis.

    The requested size is rounded up to a multiple the network accepts.  Along an axis shorter
    than that, one tile covers the whole axis, padded up to the next valid size.
    """
    out = []
    for s, t, m in zip(shape, tile, multiple, strict=True):
        t = round_up(max(1, t), m)
        out.append(t if s >= t else round_up(s, m))
    return tuple(out)


def overlap_voxels(
    tile: Sequence[int], overlap: float | Sequence[int]
) -> tuple[int, ...]:
    """Overlap per axis in voxels, from a fraction of the tile or explicit voxels.

    The overlap is clipped to ``tile - 1`` so the grid always advances.
    """
    if isinstance(overlap, (int, float)):
        ov = [int(round(t * float(overlap))) for t in tile]
    else:
        ov = [int(o) for o in overlap]
        if len(ov) != len(tile):
            raise ValueError(f"overlap {tuple(overlap)} needs {len(tile)} values")
    return tuple(min(max(0, o), t - 1) for o, t in zip(ov, tile, strict=True))


def tile_origins(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start of every tile along one axis; the last tile ends flush with the volume."""
    if tile >= size:
        return (0,)
    step = max(1, tile - overlap)
    n = math.ceil((size - tile) / step) + 1
    return tuple(min(i * step, size - tile) for i in range(n))


def fit_tile(
    shape: Sequence[int],
    tile: Sequence[int],
    overlap: float | Sequence[int],
    multiple: Sequence[int],
    growth: float = 1.5,
) -> tuple[int, ...]:
    """The tile, from ``tile`` up to ``growth`` times its voxels, that computes the fewest voxels.

    A grid of fixed tiles over an axis a little longer than a whole number of strides needs
    one more tile, most of it overlap (96 x 192 x 192 with tiles of 96 computes 2.25x the
    volume; tiles of 96 x 112 x 112 compute 1.36x).  Depends only on the shape, so every block
    of a volume, and a resumed run, uses the same grid.
    """
    base = effective_tile(shape, tile, multiple)
    options = []
    for s, t, m in zip(shape, base, multiple, strict=True):
        sizes = {t}
        if t < s:
            c = t + m
            while c <= t * growth:
                sizes.add(effective_tile((s,), (c,), (m,))[0])
                c += m
        options.append(sorted(sizes))
    best, best_key = base, None
    for combo in itertools.product(*options):
        if math.prod(combo) > growth * math.prod(base):
            continue
        ov = overlap_voxels(combo, overlap)
        computed = math.prod(len(tile_origins(s, t, o)) * t
                             for s, t, o in zip(shape, combo, ov, strict=True))
        key = (computed, math.prod(combo))
        if best_key is None or key < best_key:
            best, best_key = combo, key
    return tuple(best)


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The global tile grid of one volume.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape of the volume.
    tile : tuple of int
        Network input size per axis (may exceed ``shape`` along short axes: padded).
    overlap : tuple of int
        Overlap of neighbouring tiles in voxels.
    origins : tuple of tuple of int
        Tile starts per axis.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    origins: tuple[tuple[int, ...], ...]

    @classmethod
    def build(
        cls,
        shape: Sequence[int],
        tile: Sequence[int],
        overlap: float | Sequence[int],
        multiple: Sequence[int],
    ) -> TileGrid:
        shape = tuple(int(s) for s in shape)
        eff = effective_tile(shape, tile, multiple)
        ov = overlap_voxels(eff, overlap)
        origins = tuple(tile_origins(s, t, o) for s, t, o in zip(shape, eff, ov, strict=True))
        return cls(shape, eff, ov, origins)

    @property
    def valid(self) -> tuple[int, ...]:
        """Voxels of a tile that lie inside the volume along each axis."""
        return tuple(min(t, s) for t, s in zip(self.tile, self.shape, strict=True))

    @property
    def n_tiles(self) -> int:
        return math.prod(len(o) for o in self.origins)

    def tiles_touching(self, region: Sequence[slice]) -> list[tuple[int, ...]]:
        """Origins of all tiles whose in-volume extent intersects ``region``."""
        per_axis = []
        for sl, origins, v in zip(region, self.origins, self.valid, strict=True):
            per_axis.append([o for o in origins if o < sl.stop and o + v > sl.start])
        return list(itertools.product(*per_axis))

    def input_region(self, tiles: Sequence[Sequence[int]]) -> tuple[slice, ...]:
        """Smallest region of the volume holding the in-volume part of ``tiles``."""
        lo = np.min(np.asarray(tiles), axis=0)
        hi = np.max(np.asarray(tiles), axis=0) + np.asarray(self.valid)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def block_regions(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Regions of a regular block grid anchored at 0, in C order; edge blocks are clipped."""
    ranges = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for starts in itertools.product(*ranges):
        yield tuple(
            slice(a, min(a + b, s)) for a, b, s in zip(starts, block, shape, strict=True)
        )


def blending_weights(
    tile: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125
) -> np.ndarray:
    """Weight map of one tile (float32, max 1).

    Gaussian weights (sigma = ``sigma_scale`` * tile, as nnU-Net and MONAI use) fade tile
    borders, where a network sees the least context.  Weights are clipped away from zero so
    every voxel has a positive total weight.
    """
    if mode == "constant":
        return np.ones(tuple(tile), dtype=np.float32)
    if mode != "gaussian":
        raise ValueError(f"unknown blending mode {mode!r}")
    w = np.ones((), dtype=np.float64)
    for t in tile:
        x = np.arange(t, dtype=np.float64) - (t - 1) / 2.0
        sigma = max(sigma_scale * t, 1e-6)
        g = np.exp(-0.5 * (x / sigma) ** 2)
        w = np.multiply.outer(w, g / g.max())
    w = np.maximum(w, 1e-3)
    return w.astype(np.float32)
