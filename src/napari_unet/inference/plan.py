"""Pure geometry of a prediction job: the tile grid, blocks and output chunks of a volume,
clipped to it and checked before any pass over the input (no torch, no I/O)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import Layout
from ..config import PredictConfig
from ..io import InputError
from .tiling import (
    TileGrid,
    block_regions,
    effective_tile,
    fit_cells,
    fit_tile,
    overlap_voxels,
    round_up,
)

if TYPE_CHECKING:
    from .spec import ModelSpec

__all__ = ["Plan", "plan_shapes", "recommended_tile", "tiles_per_batch", "check_image_size",
           "DEFAULT_TILE", "DEFAULT_CHUNK", "TILE_GROWTH", "CPU_BATCH", "MIN_SIDE"]

DEFAULT_TILE = {2: 512, 3: 96}
DEFAULT_CHUNK = {2: 256, 3: 64}
# A default tile may hold up to this many times the voxels of the model's recommended tile
# (times the batch, on a crop grid) where that computes fewer voxels in all.
TILE_GROWTH = 1.5
# Tiles per forward pass where no device was measured (batch_size="auto" on a CPU).
CPU_BATCH = 4
# The smallest image side (Y and X) worth segmenting: below it the model sees padding only.
MIN_SIDE = 2


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a job's blocks are: the input's layout, the lead (time / slice) and spatial
    shapes, the tile grid, the block and chunk shapes."""

    layout: Layout
    lead_shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    grid: TileGrid
    block: tuple[int, ...]
    chunk: tuple[int, ...]

    @functools.cached_property
    def units(self) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
        """(lead index, spatial region) of every block, in order."""
        regions = list(block_regions(self.spatial_shape, self.block, self.grid))
        return [(lead, r) for lead in np.ndindex(*self.lead_shape) for r in regions]


def plan_shapes(
    spatial_shape: tuple[int, ...], spec: ModelSpec, config: PredictConfig
) -> tuple[TileGrid, tuple[int, ...], tuple[int, ...]]:
    """Tile grid, block shape and chunk shape for a volume (pure; no I/O)."""
    sd = spec.spatial_dims

    def per_axis(value: Any, name: str) -> tuple[int, ...] | None:
        if value is None:
            return None
        value = tuple(value)
        if len(value) == 1:
            value = value * sd
        if len(value) != sd:
            raise InputError(f"{name} {value} needs {sd} values for a {sd}D model")
        return value

    check_image_size(spatial_shape)
    tile = per_axis(config.tile, "tile")
    overlap = config.overlap
    if not isinstance(overlap, float):
        overlap = per_axis(overlap, "overlap")
    chunk = per_axis(config.chunk_shape, "chunk_shape")
    block = per_axis(config.block_shape, "block_shape")
    if block is not None and chunk is None:  # a block larger than the volume is the volume
        block = tuple(min(b, s) for b, s in zip(block, spatial_shape, strict=True))
    if chunk is None:
        chunk = block if block is not None else (DEFAULT_CHUNK[sd],) * sd
    chunk = tuple(min(c, s) for c, s in zip(chunk, spatial_shape, strict=True))
    if block is not None:  # ... in whole chunks
        block = tuple(min(b, round_up(s, c)) for b, s, c in zip(block, spatial_shape, chunk,
                                                                 strict=True))
    if block is not None:
        bad = [(b, c) for b, c in zip(block, chunk, strict=True) if b % c]
        if bad:
            raise InputError(
                f"block_shape {block} must be a multiple of the output chunk_shape {chunk} so that "
                "blocks never share a chunk"
            )
    recommended = recommended_tile(spec)
    if config.blending == "crop":
        if tile is None:
            # The context a tile needs is the model's, set by its recommended tile; a larger
            # tile keeps that overlap in voxels and wastes a smaller share of its work.
            ov = overlap_voxels(recommended, overlap)
            cell, tile = fit_cells(spatial_shape, ov, spec.size_multiple, chunk,
                                   _voxel_budget(spec, config), divides=block)
        else:
            eff = effective_tile(spatial_shape, tile, spec.size_multiple)
            cell = tuple(max(1, t - o) for t, o in zip(eff, overlap_voxels(eff, overlap),
                                                      strict=True))
        grid = TileGrid.build_crop(spatial_shape, tile, cell, spec.size_multiple)
        if block is None and all(c % ch == 0 for c, ch in zip(cell, chunk, strict=True)):
            block = _crop_block(grid, spatial_shape, tiles_per_batch(grid, spec, config))
        elif block is None:  # cells that chunks cannot follow: a few cells per block
            block = _few_per_block(cell, chunk)
    else:
        if tile is None:  # the model's recommended tile, grown where that computes less
            tile = fit_tile(spatial_shape, recommended, overlap, spec.size_multiple,
                            TILE_GROWTH)
        grid = TileGrid.build(spatial_shape, tile, overlap, spec.size_multiple)
        if block is None:
            block = _few_per_block(grid.tile, chunk)
    block = tuple(min(b, round_up(s, c)) for b, s, c in zip(block, spatial_shape, chunk,
                                                             strict=True))
    return grid, block, chunk


def _few_per_block(sizes: tuple[int, ...], chunk: tuple[int, ...]) -> tuple[int, ...]:
    """A block of 4 (2D) or 3 (3D) tiles or cells per axis, in whole chunks.  A tile that
    straddles a block border is computed by both blocks, so larger blocks waste less (memory
    stays set by the block)."""
    k = 4 if len(sizes) == 2 else 3
    return tuple(round_up(max(k * t, c), c) for t, c in zip(sizes, chunk, strict=True))


def _voxel_budget(spec: ModelSpec, config: PredictConfig) -> float:
    """Most voxels one forward pass holds by default: ``TILE_GROWTH * batch_size``
    recommended tiles."""
    return TILE_GROWTH * _batch(config) * math.prod(recommended_tile(spec))


def _batch(config: PredictConfig) -> int:
    """``config.batch_size``; "auto" not yet measured on a device counts as ``CPU_BATCH``."""
    return CPU_BATCH if config.batch_size == "auto" else int(config.batch_size)


def recommended_tile(spec: ModelSpec) -> tuple[int, ...]:
    """The model's recommended tile (saved with it, else a default per dimensionality),
    rounded up to a size the network takes."""
    sd = spec.spatial_dims
    tile = tuple(spec.metadata.get("tile") or (DEFAULT_TILE[sd],))
    if len(tile) == 1:
        tile = tile * sd
    if len(tile) != sd:
        raise InputError(f"the model's recommended tile {tile} needs {sd} values")
    return tuple(round_up(t, m) for t, m in zip(tile, spec.size_multiple, strict=True))


def tiles_per_batch(grid: TileGrid, spec: ModelSpec, config: PredictConfig) -> int:
    """Tiles per forward pass.

    ``config.batch_size`` counts tiles of the model's recommended size; a crop grid's default
    tile, grown to waste less on overlap, passes proportionally fewer tiles so that the voxels
    of one forward pass (and so its memory) stay within ``TILE_GROWTH * batch_size``
    recommended tiles.
    """
    if not grid.crop or config.tile is not None:
        return _batch(config)
    return max(1, int(_voxel_budget(spec, config) // math.prod(grid.tile)))


def _crop_block(grid: TileGrid, shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """Default block of a crop grid: whole cells, so that no tile runs twice, and about one
    batch of tiles (more cells along the last axes first)."""
    assert grid.cell is not None
    cells = [1] * len(shape)

    def tiles() -> int:
        return math.prod(min(math.ceil(s / c), k)
                         for s, c, k in zip(shape, grid.cell, cells, strict=True))

    while tiles() < batch:
        grow = [i for i in reversed(range(len(shape))) if cells[i] * grid.cell[i] < shape[i]]
        if not grow:
            break
        i = min(grow, key=lambda j: cells[j] * grid.cell[j])
        cells[i] *= 2
    return tuple(c * k for c, k in zip(grid.cell, cells, strict=True))




def check_image_size(spatial_shape: tuple[int, ...]) -> None:
    """Refuse an image too small to segment (Y or X under ``MIN_SIDE`` pixels)."""
    if any(s < MIN_SIDE for s in spatial_shape[-2:]):
        raise InputError(
            f"the image's spatial shape {tuple(spatial_shape)} is too small to segment: Y and "
            f"X need at least {MIN_SIDE} pixels (check the axes: is a short axis taken for a "
            "spatial one? pass axes=)")
