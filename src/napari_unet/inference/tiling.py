"""Pure tile and block geometry, and blending weights.

There is one global tile grid per volume: tile origins depend only on the volume shape, the
tile size and the overlap -- never on how the volume is cut into blocks.  A block (the unit of
work that is read, predicted and written) gathers every tile that writes into it, so each output
voxel always gets the same tiles with the same weights, whatever the block size.

Two kinds of grid:

* blending grids (``"gaussian"``, ``"constant"``): every tile writes its whole extent, and
  overlapping tiles are averaged with weights.  A tile that straddles a block border is
  computed by every block it touches.
* crop grids (``"crop"``): the volume is cut into cells; each tile is a cell plus a halo of
  context on every side (clamped at the volume's edges) and writes only its cell.  Blocks made
  of whole cells compute every tile exactly once, and every written voxel has at least the halo
  of context around it.
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
    "fit_cells",
    "cell_spans",
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


def cell_spans(
    size: int, tile: int, cell: int
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Tile starts and the span each tile writes along one axis of a crop grid.

    Cell ``i`` is ``[i * cell, (i + 1) * cell)``; its tile starts ``(tile - cell) // 2``
    before it, clamped into the volume, so the cell has at least that much context on each
    side (or the volume's edge).  Consecutive cells whose tiles clamp to the same start share
    one tile.
    """
    if tile >= size:
        return (0,), ((0, size),)
    if not 1 <= cell <= tile:
        raise ValueError(f"cell {cell} must be between 1 and the tile {tile}")
    halo = (tile - cell) // 2
    origins: list[int] = []
    spans: list[tuple[int, int]] = []
    for i in range(math.ceil(size / cell)):
        o = min(max(0, i * cell - halo), size - tile)
        lo, hi = i * cell, min((i + 1) * cell, size)
        if origins and origins[-1] == o:
            spans[-1] = (spans[-1][0], hi)
        else:
            origins.append(o)
            spans.append((lo, hi))
    return tuple(origins), tuple(spans)


def fit_cells(
    shape: Sequence[int],
    overlap: Sequence[int],
    multiple: Sequence[int],
    unit: Sequence[int],
    max_voxels: float,
    divides: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Cell and tile per axis of a crop grid that compute the fewest voxels.

    Cells are multiples of ``unit`` (the output chunk, so that blocks of whole cells are
    chunk-aligned) and, when ``divides`` is given, divisors of it (a user's block).  A tile is
    its cell plus at least ``overlap`` voxels (half on each side), rounded up to a size the
    network takes, and holds at most ``max_voxels``.  Depends only on its arguments, so every
    block of a volume, and a resumed run, uses the same grid.
    """
    options = []
    for k, (s, ov, m, u) in enumerate(zip(shape, overlap, multiple, unit, strict=True)):
        sizes: dict[int, tuple[int, int]] = {}  # tile -> (voxels computed along the axis, cell)
        for cell in range(u, max(s, u) + u, u):
            if divides is not None and divides[k] % cell:
                continue
            tile = round_up(cell + ov, m)
            if tile >= s:  # one tile covers the axis: so does one cell, where it may
                tile = round_up(s, m)
                computed = tile
                whole = round_up(s, u)
                if divides is None or divides[k] % whole == 0:
                    cell = whole
            else:
                computed = len(cell_spans(s, tile, cell)[0]) * tile
            if tile not in sizes or computed < sizes[tile][0]:
                sizes[tile] = (computed, cell)
        if not sizes:
            raise ValueError(f"no cell that is a multiple of {u} divides {divides[k]}")
        options.append(sorted((t, c, n) for t, (n, c) in sizes.items()))
    # A tile larger than the budget allows next to the smallest tiles of the other axes can
    # never be chosen; dropping it keeps the search small for large volumes.
    smallest = [opts[0][0] for opts in options]
    for k, opts in enumerate(options):
        limit = max_voxels / math.prod(t for j, t in enumerate(smallest) if j != k)
        options[k] = [o for o in opts if o[0] <= limit] or opts[:1]
    best, best_key = None, None
    for combo in itertools.product(*options):
        voxels = math.prod(t for t, _, _ in combo)
        key = (voxels > max_voxels, math.prod(n for _, _, n in combo), voxels)
        if best_key is None or key < best_key:
            best, best_key = combo, key
    assert best is not None
    return tuple(c for _, c, _ in best), tuple(t for t, _, _ in best)


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
    spans : tuple of tuple of (int, int)
        Per axis and tile, the interval of the volume the tile writes: its whole in-volume
        extent on a blending grid, its cell(s) on a crop grid.
    cell : tuple of int, optional
        Cell size per axis of a crop grid (None on a blending grid).
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    origins: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[tuple[int, int], ...], ...]
    cell: tuple[int, ...] | None = None

    @property
    def crop(self) -> bool:
        """Whether tiles write only their cells (no blending)."""
        return self.cell is not None

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
        spans = tuple(tuple((o, min(o + t, s)) for o in axis)
                      for axis, t, s in zip(origins, eff, shape, strict=True))
        return cls(shape, eff, ov, origins, spans)

    @classmethod
    def build_crop(
        cls,
        shape: Sequence[int],
        tile: Sequence[int],
        cell: Sequence[int],
        multiple: Sequence[int],
    ) -> TileGrid:
        """A crop grid: cells of ``cell`` voxels, each written by a tile of ``tile`` voxels."""
        shape = tuple(int(s) for s in shape)
        eff = effective_tile(shape, tile, multiple)
        cell = tuple(max(1, int(c)) for c in cell)
        axes = [cell_spans(s, t, c) for s, t, c in zip(shape, eff, cell, strict=True)]
        origins = tuple(a[0] for a in axes)
        spans = tuple(a[1] for a in axes)
        ov = tuple(t - c if t < s else 0 for t, c, s in zip(eff, cell, shape, strict=True))
        return cls(shape, eff, ov, origins, spans, cell=cell)

    @property
    def valid(self) -> tuple[int, ...]:
        """Voxels of a tile that lie inside the volume along each axis."""
        return tuple(min(t, s) for t, s in zip(self.tile, self.shape, strict=True))

    @property
    def n_tiles(self) -> int:
        return math.prod(len(o) for o in self.origins)

    def computed_voxels(self) -> int:
        """Voxels the network computes for the whole volume when no tile runs twice."""
        return math.prod(len(o) * t for o, t in zip(self.origins, self.tile, strict=True))

    def tiles_touching(self, region: Sequence[slice]) -> list[tuple[int, ...]]:
        """Origins of all tiles that write into ``region``."""
        return [origin for origin, _ in self.pieces(region)]

    def pieces(
        self, region: Sequence[slice]
    ) -> list[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
        """``(origin, span)`` of every tile that writes into ``region``, where ``span`` is
        the part of ``region`` it writes, per axis as ``(start, stop)`` in volume voxels."""
        per_axis = []
        for sl, origins, spans in zip(region, self.origins, self.spans, strict=True):
            per_axis.append([
                (o, (max(a, sl.start), min(b, sl.stop)))
                for o, (a, b) in zip(origins, spans, strict=True)
                if a < sl.stop and b > sl.start
            ])
        return [(tuple(o for o, _ in combo), tuple(sp for _, sp in combo))
                for combo in itertools.product(*per_axis)]

    def input_region(self, tiles: Sequence[Sequence[int]]) -> tuple[slice, ...]:
        """Smallest region of the volume holding the in-volume part of ``tiles``."""
        lo = np.min(np.asarray(tiles), axis=0)
        hi = np.max(np.asarray(tiles), axis=0) + np.asarray(self.valid)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def block_regions(
    shape: Sequence[int], block: Sequence[int], grid: TileGrid | None = None
) -> Iterator[tuple[slice, ...]]:
    """Regions of a block grid anchored at 0, in C order; edge blocks are clipped.

    Along an axis where ``grid`` is a crop grid and ``block`` a whole number of its cells, a
    block holds that many tiles' spans, so no tile is computed by two blocks (where the last
    tile writes more than one cell, the last block grows to take all of them).
    """
    per_axis = []
    for k, (s, b) in enumerate(zip(shape, block, strict=True)):
        if grid is not None and grid.crop and grid.cell and b % grid.cell[k] == 0:
            starts = [a for a, _ in grid.spans[k]][:: b // grid.cell[k]]
        else:
            starts = list(range(0, s, b))
        per_axis.append([slice(a, e) for a, e in zip(starts, [*starts[1:], s], strict=True)])
    yield from itertools.product(*per_axis)


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
