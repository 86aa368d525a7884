"""Out-of-core tiled prediction: blocks -> tiles -> model -> blend -> chunk-aligned writes.

The volume is cut into blocks aligned with the output chunks.  Each block is an independent
unit of work: read the block plus the context its tiles need, run the tiles of the global tile
grid that touch it in batches, blend them with Gaussian (or constant) weights, and write the
block's chunks.  Memory is set by the block size and the number of blocks in flight, never by
the volume.  Reading the next blocks and writing finished ones run in threads beside compute.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import math
import os
from collections.abc import Callable, Generator
from typing import Any

import dask.array as da
import numpy as np
import torch

from .. import postprocess
from ..axes import Layout, resolve_layout
from ..config import PredictConfig, resolve_mode
from ..events import BlockDone, Cancelled, Notice, Progress, StageStarted
from ..io import InputError, open_volume
from ..normalize import DEFAULT_PERCENTILES, Normalization, percentile_normalization
from .device import (
    CPU_BATCH,
    autocast,
    exact_fp32,
    inference_module,
    measure_batch_size,
    memory_format,
    release_memory,
    select_device,
    select_precision,
    too_large,
)
from .input_digest import input_record
from .store import OutputStore, fingerprint
from .tiling import (
    TileGrid,
    blending_weights,
    block_regions,
    effective_tile,
    fit_cells,
    fit_tile,
    overlap_voxels,
    round_up,
)

__all__ = ["ModelSpec", "resolve_model", "predict_iter", "plan_shapes"]

DEFAULT_TILE = {2: 512, 3: 96}
DEFAULT_CHUNK = {2: 256, 3: 64}
# A default tile may hold up to this many times the voxels of the model's recommended tile
# (times the batch, on a crop grid) where that computes fewer voxels in all.
TILE_GROWTH = 1.5


@dataclasses.dataclass
class ModelSpec:
    """What the engine needs to know about a model (a UNet or any compatible module)."""

    module: torch.nn.Module
    spatial_dims: int
    in_channels: int
    out_channels: int
    size_multiple: tuple[int, ...]
    metadata: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """Architecture and a digest of the weights (part of a job's fingerprint)."""
        config = getattr(self.module, "config", None)
        arch = config.to_dict() if hasattr(config, "to_dict") else type(self.module).__name__
        return {"config": arch, "weights": self.weights_digest()}

    def weights_digest(self) -> str:
        h = hashlib.sha256(type(self.module).__name__.encode())
        for name, tensor in self.module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def resolve_model(model: Any) -> ModelSpec:
    """Accept a UNet, a model file path or built-in name, None (the built-in nuclei model), or
    a module exposing the same attributes.

    A non-UNet module must define ``spatial_dims``, ``in_channels``, ``out_channels`` and
    optionally ``size_multiple`` -- enough to plan tiles (used e.g. by identity models in tests).
    """
    from ..model.checkpoint import load_model
    from ..model.unet import UNet

    if model is None or isinstance(model, (str, os.PathLike)):
        from ..models import model_path

        model = load_model(model_path(model))
    if isinstance(model, UNet):
        cfg = model.config
        return ModelSpec(
            model, cfg.spatial_dims, cfg.in_channels, cfg.out_channels, cfg.size_multiple,
            dict(getattr(model, "metadata", {})),
        )
    if isinstance(model, torch.nn.Module) and all(
        hasattr(model, a) for a in ("spatial_dims", "in_channels", "out_channels")
    ):
        sd = int(model.spatial_dims)
        multiple = tuple(getattr(model, "size_multiple", (1,) * sd))
        return ModelSpec(
            model, sd, int(model.in_channels), int(model.out_channels), multiple,
            dict(getattr(model, "metadata", {})),
        )
    raise TypeError(
        f"model must be a napari_unet UNet, a path to a saved model, or a torch module with "
        f"spatial_dims / in_channels / out_channels attributes; got {type(model).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class _Plan:
    layout: Layout
    lead_shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    grid: TileGrid
    block: tuple[int, ...]
    chunk: tuple[int, ...]

    @property
    def units(self) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
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

    tile = per_axis(config.tile, "tile")
    overlap = config.overlap
    if not isinstance(overlap, float):
        overlap = per_axis(overlap, "overlap")
    chunk = per_axis(config.chunk_shape, "chunk_shape")
    block = per_axis(config.block_shape, "block_shape")
    if chunk is None:
        chunk = block if block is not None else (DEFAULT_CHUNK[sd],) * sd
    chunk = tuple(min(c, s) for c, s in zip(chunk, spatial_shape, strict=True))
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


def _normalization(
    canonical: da.Array, n_lead: int, spec: ModelSpec, config: PredictConfig, source: str
) -> tuple[Normalization, dict[str, Any]]:
    meta = spec.metadata.get("normalization") or {}
    if config.normalize is None and meta.get("kind") == "none":
        norm = Normalization.identity(spec.in_channels)
        return norm, {"kind": "none", **norm.to_dict()}
    pct = config.normalize or (
        (float(meta["low"]), float(meta["high"]))
        if meta.get("kind") == "percentile" else DEFAULT_PERCENTILES
    )
    invert = str(meta.get("invert", "never"))
    try:
        norm = percentile_normalization(canonical, n_lead, pct, source=source, invert=invert)
    except ValueError as err:
        raise InputError(str(err)) from err
    return norm, {"kind": "percentile", "percentiles": list(pct), "invert": invert,
                  **norm.to_dict()}


class _BlockRunner:
    """Runs the tiles of one block through the model and blends them on the device."""

    def __init__(
        self, spec: ModelSpec, plan: _Plan, config: PredictConfig, device: torch.device,
        precision: str,
        module: torch.nn.Module | None = None,
    ) -> None:
        self.spec = spec
        # What runs: the model as inference_module prepares it (made here unless given).
        self.module = module if module is not None else inference_module(
            spec.module, device, spec.spatial_dims)
        self.plan = plan
        self.config = config
        self.device = device
        self.precision = precision
        grid = plan.grid
        self.weights = None
        if not grid.crop:
            w = blending_weights(grid.tile, config.blending, config.sigma_scale)
            w = w[tuple(slice(0, v) for v in grid.valid)]
            self.weights = torch.from_numpy(np.ascontiguousarray(w)).to(device)
        self.pin = device.type == "cuda"
        self.fmt = memory_format(spec.spatial_dims)
        # Tiles per forward pass: config.batch_size, halved (for the rest of the run) whenever
        # the device runs out of memory, so a batch too large for a smaller GPU slows the run
        # down instead of ending it.
        self.batch_size = tiles_per_batch(grid, spec, config)

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits of a batch; with ``tta`` the mean over mirror images along Y and X."""
        flips: list[tuple[int, ...]] = [()]
        if self.config.tta:
            y, x = xb.ndim - 2, xb.ndim - 1
            flips += [(x,), (y,), (y, x)]
        out = None
        for dims in flips:
            inp = torch.flip(xb, dims) if dims else xb
            with autocast(self.device, self.precision):
                yb = self.module(inp)
            yb = yb.float()
            yb = torch.flip(yb, dims) if dims else yb
            out = yb if out is None else out + yb
        return out / len(flips)

    def _block_input(self, x: np.ndarray) -> torch.Tensor:
        """The block's input ``(C, *in_region)`` on the device, to cut its tiles from there:
        one host-to-device copy per block rather than a stacked copy of every batch, and the
        host does no per-tile work while the device computes.

        Along axes shorter than one tile (the whole volume is shorter, so the one tile there
        covers the block's whole input) it is padded up to the tile here, once per block.
        """
        grid = self.plan.grid
        pad = [(0, t - v) for t, v in zip(grid.tile, grid.valid, strict=True)]
        if any(p for _, p in pad):
            x = np.pad(x, [(0, 0), *pad], mode="reflect" if min(grid.valid) > 1 else "edge")
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.pin:
            xt = xt.pin_memory()
        return xt.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def __call__(
        self, x: np.ndarray, in_region: tuple[slice, ...], region: tuple[slice, ...]
    ) -> torch.Tensor:
        """Blended logits ``(C_out, *region)`` of one block, on the device."""
        grid = self.plan.grid
        shape = tuple(r.stop - r.start for r in region)
        acc = torch.zeros((self.spec.out_channels, *shape), dtype=torch.float32,
                          device=self.device)
        wsum = None if grid.crop else torch.zeros(shape, dtype=torch.float32,
                                                  device=self.device)
        pieces = grid.pieces(region)
        xt = self._block_input(x)
        with exact_fp32(self.device, self.precision):
            self._run_pieces(xt, pieces, in_region, region, acc, wsum)
        return acc if wsum is None else acc / wsum

    def _run_pieces(self, xt: torch.Tensor, pieces: list, in_region: tuple[slice, ...],
                    region: tuple[slice, ...], acc: torch.Tensor,
                    wsum: torch.Tensor | None) -> None:
        """Run ``pieces`` (tile origins and the spans they write) of the block's input ``xt``
        (``in_region`` of the volume) through the model in batches, blending into ``acc``
        (and ``wsum``)."""
        grid = self.plan.grid
        start = 0
        while start < len(pieces):
            batch = pieces[start : start + self.batch_size]
            xb = torch.stack([
                xt[(slice(None), *(slice(o - r.start, o - r.start + t)
                                   for o, r, t in zip(origin, in_region, grid.tile, strict=True)))]
                for origin, _ in batch
            ]).contiguous(memory_format=self.fmt)
            try:
                yb = self._forward(xb)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not too_large(err):
                    raise
                del xb
                release_memory(self.device)
                if self.batch_size == 1:
                    raise InputError(
                        f"one tile of {tuple(grid.tile)} does not fit in the memory of "
                        f"{self.device}; choose a smaller tile (e.g. "
                        f"{tuple(max(16, t // 2) for t in grid.tile)}) or device='cpu'"
                    ) from err
                self.batch_size = max(1, len(batch) // 2)
                continue
            start += len(batch)
            if yb.shape[1] != self.spec.out_channels or yb.shape[2:] != xb.shape[2:]:
                raise RuntimeError(
                    f"the model returned shape {tuple(yb.shape)} for input {tuple(xb.shape)}; "
                    f"expected {self.spec.out_channels} channels and the same spatial size"
                )
            for y, (origin, span) in zip(yb, batch, strict=True):
                src = tuple(slice(a - o, b - o) for o, (a, b) in zip(origin, span, strict=True))
                dst = tuple(slice(a - r.start, b - r.start)
                            for (a, b), r in zip(span, region, strict=True))
                if wsum is None:  # crop grid: the tile's own cells, nobody else's
                    acc[(slice(None), *dst)] = y[(slice(None), *src)]
                    continue
                w = self.weights[src]
                acc[(slice(None), *dst)] += y[(slice(None), *src)] * w
                wsum[dst] += w


def _job(model_record: dict[str, Any], array: Any, source: str, layout: Any,
         norm_record: dict[str, Any], plan: _Plan, config: PredictConfig, precision: str,
         label_mode: str | None, boundary_width: int, grow: int | None,
         content: dict[str, Any] | None) -> dict[str, Any]:
    """JSON description of a prediction job: everything that changes the numbers written or
    where they go (its fingerprint decides whether an output store resumes).  ``content``
    identifies the input's data (:func:`.input_digest.input_record`)."""
    grid = plan.grid
    job = {
        "model": model_record,
        "input": {"source": source, "shape": list(array.shape), "dtype": str(array.dtype),
                  "axes": layout.axes, "to_gray": layout.to_gray, "content": content},
        "normalization": norm_record,
        "tile": list(grid.tile), "overlap": list(grid.overlap), "blending": config.blending,
        "sigma_scale": config.sigma_scale, "mode": config.mode,
        "threshold": config.threshold, "probability_dtype": config.probability_dtype,
        "block": list(plan.block), "chunk": list(plan.chunk), "precision": precision,
        "tta": config.tta,
        "label_mode": label_mode, "boundary_width": boundary_width,
        "min_size": config.min_size if config.mode == "instances" else None,
        "output_axes": layout.output_axes(config.mode in ("probabilities", "logits")),
    }
    if grow is not None:  # core models (jobs of other models keep their fingerprints)
        job["grow"] = grow
    if config.split_touching and config.mode == "instances":
        job["split_touching"] = config.split_touching
    if grid.crop:  # (blending jobs keep the fingerprint of earlier versions: they resume)
        job["cell"] = list(grid.cell or ())
    return job


def predict_iter(
    model: Any,
    image: Any,
    output: Any = None,
    config: PredictConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    client: Any = None,
    **overrides: Any,
) -> Generator[Any, None, Any]:
    """Predict ``image`` block by block, yielding progress events; returns the result.

    Parameters
    ----------
    model : UNet, path or module
        The network (see :func:`resolve_model`).
    image : array-like or path
        numpy / dask / zarr array or a path to zarr / OME-Zarr / TIFF, read lazily.
    output : path, optional
        A ``.zarr`` folder to write to (created, or resumed when it holds an unfinished run of
        the same job).  None keeps the result in memory and returns a numpy array.
    config : PredictConfig, optional
        Settings; keyword ``overrides`` replace individual fields.
    cancel : callable, optional
        Polled between blocks; returning True stops after the blocks in flight are written
        and raises :class:`~napari_unet.events.Cancelled`.  Running again resumes.
    client : dask.distributed.Client, optional
        Run the blocks as tasks on this cluster (see :mod:`.distributed`); the input must be
        a path or zarr array and the output a store every worker reaches.

    Yields
    ------
    StageStarted, BlockDone, Progress

    Returns
    -------
    zarr.Array or numpy.ndarray
        The result array (in the store at ``output``, or in memory).
    """
    config = config or PredictConfig()
    if overrides:
        config = config.replace(**overrides)
    spec = resolve_model(model)
    config = config.replace(mode=resolve_mode(config.mode, spec.metadata, spec.out_channels))
    array, info = open_volume(image)
    source = info.source
    if output is not None and isinstance(image, (str, os.PathLike)):
        _check_not_same_path(image, output)
    axes = config.axes or (info.axes if info.axes and len(info.axes) == array.ndim else None)
    layout = resolve_layout(tuple(array.shape), spec.spatial_dims, spec.in_channels, axes,
                            source, bool(spec.metadata.get("rgb_to_gray", False)))
    canonical = layout.canonical(array)
    direct = direct_reader(layout, info)
    n_lead = len(layout.lead_axes)
    lead_shape = tuple(canonical.shape[:n_lead])
    spatial_shape = tuple(canonical.shape[n_lead + 1 :])
    device = select_device(config.device)
    precision = select_precision(config.precision, device)
    label_mode = spec.metadata.get("label_mode")
    boundary_width = int(spec.metadata.get("boundary_width", 2))
    # Seeds regrow through the boundary class by this many voxels: a model whose seeds are
    # object cores stores how far its boundary reaches (``grow``), else the ring's width + 1.
    grow = spec.metadata.get("grow")
    expand = int(grow) if grow is not None else boundary_width + 1
    auto_batch = config.batch_size == "auto"
    # The copy of the model a local run computes with, made once (a cluster's workers make
    # their own); a module without batch norms runs as it is, in eval mode until the end.
    was_training = spec.module.training
    module = inference_module(spec.module, device, spec.spatial_dims) if client is None else None
    if auto_batch and client is None:
        config = config.replace(batch_size=measure_batch_size(
            module, recommended_tile(spec), spec.in_channels, device, precision))

    yield StageStarted("normalize", message="computing intensity percentiles")
    norm, norm_record = _normalization(canonical, n_lead, spec, config, source)
    # Instance labelling runs per time point; z processed slice by slice is still one volume.
    frame_shape = lead_shape[: 1] if "T" in layout.lead_axes else ()
    n_frames = math.prod(frame_shape) if config.mode == "instances" else 0

    model_record = spec.describe()  # hashes the weights: once, however many plans are tried
    if postprocess.output_kind(spec.metadata) == postprocess.DISTANCE_OUTPUT:
        model_record["seed_threshold"] = float(spec.metadata.get("seed_threshold", 0.5))
    # What proves a resumed store's input unchanged (an in-memory result never resumes).
    content = input_record(array, source, info.reader) if output is not None else None

    def planned(config: PredictConfig) -> tuple[_Plan, dict[str, Any]]:
        grid, block, chunk = plan_shapes(spatial_shape, spec, config)
        plan = _Plan(layout, lead_shape, spatial_shape, grid, block, chunk)
        return plan, _job(model_record, array, source, layout, norm_record, plan, config,
                          precision, label_mode, boundary_width, grow, content)

    plan, job = planned(config)
    if auto_batch and output is not None:
        # A store of the same job planned with another automatic batch size (more or less
        # free GPU memory than last time) resumes with that run's plan.
        stored = OutputStore.stored_fingerprint(output)
        if stored is not None and stored != fingerprint(job):
            for b in (1 << k for k in range(7)):
                other = planned(config.replace(batch_size=b))
                if fingerprint(other[1]) == stored:
                    config = config.replace(batch_size=b)
                    plan, job = other
                    break
    units = plan.units
    arrays, result_name = _array_specs(config, spec, plan)
    model_blob = None
    if client is not None:
        from ..model.checkpoint import model_to_bytes
        from ..model.unet import UNet
        from .distributed import MODEL_ARRAY, check_cluster_input

        if output is None:
            raise InputError("a cluster run writes to a store every worker reaches: give an "
                             "output path")
        if not isinstance(spec.module, UNet):
            raise InputError("a cluster run needs a napari_unet UNet (it ships the model to "
                             "the workers inside the output store)")
        cluster_source = check_cluster_input(image)
        model_blob = np.frombuffer(model_to_bytes(spec.module), dtype=np.uint8)
        arrays = {**arrays, MODEL_ARRAY: dict(shape=model_blob.shape, chunks=model_blob.shape,
                                              dtype="uint8")}
    store = OutputStore.open_or_create(
        output, job, arrays, result_name, len(units), n_frames, config.overwrite
    )
    if client is not None:
        yield from _predict_on_cluster(client, store, job, cluster_source, plan, norm, config,
                                       precision, output, units, model_blob, cancel)
        if config.mode == "instances":
            import dask

            with dask.config.set(scheduler=client):
                yield from _label(store, frame_shape, label_mode, expand,
                                  config.min_size, cancel, config.split_touching)
        return store.result

    runner = _BlockRunner(spec, plan, config, device, precision, module)
    del module  # the runner holds it
    try:
        yield from _run_blocks(store, plan, units, canonical, norm, runner, config, cancel,
                               source, direct)
        if config.mode == "instances":
            yield from _label(store, frame_shape, label_mode, expand,
                              config.min_size, cancel, config.split_touching)
    finally:
        spec.module.train(was_training)
        del runner  # the engine's copy of the model, before the device's cache is emptied
        release_memory(device)
    result = store.result
    return result[...] if output is None else result


def _predict_on_cluster(client, store, job, source, plan, norm, config, precision, output,
                        units, model_blob, cancel):
    from .distributed import MODEL_ARRAY, ClusterJob, run_blocks_on_cluster
    from .store import fingerprint

    if not store.resumed:
        store[MODEL_ARRAY][:] = model_blob
    cluster_job = ClusterJob(fingerprint(job), source, plan, norm, config, precision,
                             str(output), tuple(units))
    yield from run_blocks_on_cluster(client, cluster_job, store.done_blocks(), cancel)


def _check_not_same_path(image: Any, output: Any) -> None:
    from pathlib import Path

    a, b = Path(image).resolve(), Path(output).resolve()
    if a == b or b in a.parents:
        raise InputError(f"output {str(output)!r} would overwrite the input {str(image)!r}")


def _array_specs(
    config: PredictConfig, spec: ModelSpec, plan: _Plan
) -> tuple[dict[str, dict[str, Any]], str]:
    lead = plan.lead_shape
    ones = (1,) * len(lead)
    c_out = spec.out_channels
    if config.mode in ("probabilities", "logits"):
        dtype = config.probability_dtype if config.mode == "probabilities" else "float32"
        return {
            config.mode: dict(shape=(*lead, c_out, *plan.spatial_shape),
                                chunks=(*ones, c_out, *plan.chunk), dtype=dtype)
        }, config.mode
    classes = dict(shape=(*lead, *plan.spatial_shape), chunks=(*ones, *plan.chunk),
                   dtype=postprocess.semantic_dtype(c_out))
    if config.mode == "semantic":
        return {"labels": classes}, "labels"
    labels = dict(shape=classes["shape"], chunks=classes["chunks"], dtype="uint32")
    return {"semantic": classes, "seeds": labels, "labels": dict(labels)}, "labels"


def _block_arrays(
    logits: torch.Tensor, config: PredictConfig, metadata: dict[str, Any]
) -> tuple[str, np.ndarray]:
    """The array a block's logits become for ``config.mode`` (``metadata``: the model's)."""
    output = postprocess.output_kind(metadata)
    if config.mode == "logits":
        return "logits", logits.cpu().numpy()
    if config.mode == "probabilities":
        # Cast on the device: half the bytes to move, and no slow float16 rounding on the host.
        probs = postprocess.probabilities(logits, output).to(
            getattr(torch, config.probability_dtype))
        return "probabilities", probs.cpu().numpy()
    name = "labels" if config.mode == "semantic" else "semantic"
    return name, postprocess.semantic(
        logits, config.threshold, output,
        float(metadata.get("seed_threshold", 0.5))).cpu().numpy()


def direct_reader(layout: Layout, info: Any) -> Callable[[tuple[Any, ...]], np.ndarray] | None:
    """Reads a canonical region of a zarr input from the zarr array itself, in one call
    (``VolumeInfo.reader``); None where blocks go through dask (other inputs, and colour
    averaged to gray, which dask computes)."""
    if info.reader is None or layout.to_gray:
        return None
    return functools.partial(layout.region, info.reader)


def read_block(
    canonical: da.Array,
    plan: _Plan,
    norm: Normalization,
    unit: tuple[tuple[int, ...], tuple[slice, ...]],
    source: str,
    direct: Callable[[tuple[Any, ...]], np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Normalised input of one block: the region its tiles need, ``(C, *region)``.

    ``direct`` reads a canonical region straight from the stored array into a new buffer
    (``Layout.region`` on a zarr array), which is then normalised in place; without it the
    region comes through dask.
    """
    lead, region = unit
    in_region = plan.grid.input_region(plan.grid.tiles_touching(region))
    index = (*lead, slice(None), *in_region)
    if direct is not None:
        x = direct(index)
    else:
        # Synchronous: dask's thread pool per block (and reading in larger dask chunks) was
        # measured to raise the peak memory with the volume's size (1.16x -> 1.51x from 32 MB
        # to 1 GB) for no clear gain on an H200 host (3D 34 -> 36, 2D 27 -> 20 Mvox/s).
        x = np.asarray(canonical[index].compute(scheduler="synchronous"))
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        where = ", ".join(f"{s.start}:{s.stop}" for s in in_region)
        raise InputError(
            f"{source}: NaN or infinite values in the region [{where}]"
            f"{' at index ' + str(lead) if lead else ''}; replace them (e.g. "
            "numpy.nan_to_num) and run again -- finished blocks are kept"
        )
    return norm.apply(x, channel_axis=0, overwrite=direct is not None), in_region


def write_block(
    store: OutputStore,
    unit: tuple[tuple[int, ...], tuple[slice, ...]],
    name: str,
    data: np.ndarray,
    mode: str,
) -> None:
    """Write one block's result into its (chunk-aligned) region of the store."""
    lead, region = unit
    channel_out = mode in ("probabilities", "logits")
    index = (*lead, slice(None), *region) if channel_out else (*lead, *region)
    target = store[name]
    target[index] = data.astype(target.dtype, copy=False)


def _run_blocks(
    store: OutputStore,
    plan: _Plan,
    units: list[tuple[tuple[int, ...], tuple[slice, ...]]],
    canonical: da.Array,
    norm: Normalization,
    runner: _BlockRunner,
    config: PredictConfig,
    cancel: Callable[[], bool] | None,
    source: str,
    direct: Callable[[tuple[Any, ...]], np.ndarray] | None = None,
) -> Generator[Any, None, None]:
    total = len(units)
    done_flags = store.done_blocks()
    todo = [i for i in range(total) if not done_flags[i]]
    n_done = total - len(todo)
    yield StageStarted("predict", total=total,
                       message=f"{n_done} of {total} blocks already done" if n_done else "")
    for i in range(total):
        if done_flags[i]:
            yield BlockDone(i, units[i][1], int(done_flags[: i + 1].sum()), total, skipped=True)
    if not todo:
        return
    def read(i: int) -> tuple[np.ndarray, tuple[slice, ...]]:
        return read_block(canonical, plan, norm, units[i], source, direct)

    def write(i: int, name: str, data: np.ndarray) -> None:
        write_block(store, units[i], name, data, config.mode)
        store.mark_block(i)

    reader = cf.ThreadPoolExecutor(max_workers=max(1, config.prefetch),
                                   thread_name_prefix="nu-read")
    # One writer: zarr encodes the chunks of one write concurrently already, and more
    # writing threads raised the peak memory (see read_block).
    writer = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nu-write")
    reads: collections.deque[tuple[int, cf.Future]] = collections.deque()
    writes: collections.deque[tuple[int, cf.Future]] = collections.deque()
    queue = collections.deque(todo)

    def refill() -> None:
        while queue and len(reads) < max(1, config.prefetch):
            i = queue.popleft()
            reads.append((i, reader.submit(read, i)))

    try:
        refill()
        while reads:
            if cancel is not None and cancel():
                for _, fut in reads:
                    fut.cancel()
                while writes:  # blocks already computed are kept and reported
                    j, wfut = writes.popleft()
                    wfut.result()
                    n_done += 1
                    yield BlockDone(j, units[j][1], n_done, total)
                raise Cancelled(
                    f"prediction cancelled after {n_done} of {total} blocks; finished blocks are "
                    "kept and running the same command again resumes"
                )
            i, fut = reads.popleft()
            x, in_region = fut.result()
            refill()
            batch_size = runner.batch_size
            logits = runner(x, in_region, units[i][1])
            if runner.batch_size != batch_size:
                yield Notice("predict", f"out of memory on {runner.device}: "
                                        f"{runner.batch_size} tile(s) per batch from now on "
                                        f"(was {batch_size})")
            name, data = _block_arrays(logits, config, runner.spec.metadata)
            del logits
            writes.append((i, writer.submit(write, i, name, data)))
            while writes and (len(writes) > max(1, config.prefetch) or writes[0][1].done()):
                j, wfut = writes.popleft()
                wfut.result()
                n_done += 1
                yield BlockDone(j, units[j][1], n_done, total)
        while writes:
            j, wfut = writes.popleft()
            wfut.result()
            n_done += 1
            yield BlockDone(j, units[j][1], n_done, total)
    finally:
        for _, fut in reads:
            fut.cancel()
        # Blocks already computed are written before returning, even on cancel or error.
        for _, fut in writes:
            try:
                fut.result()
            except Exception:  # the first error was already raised to the caller
                pass
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)


# Voxels of one labelling chunk; a frame no larger is labelled in memory.
IN_MEMORY_LABEL_VOXELS = 1 << 22


def label_chunks(
    chunks: tuple[int, ...], shape: tuple[int, ...], n_frame_axes: int,
    voxels: int = IN_MEMORY_LABEL_VOXELS,
) -> tuple[int, ...]:
    """Chunks for instance labelling: whole multiples of the stored ``chunks`` (so writes stay
    chunk-aligned) holding up to ``voxels``, one per frame along the frame axes."""
    out = [1 if i < n_frame_axes else min(c, s) for i, (c, s) in enumerate(zip(chunks, shape,
                                                                              strict=True))]
    grown = True
    while grown:
        grown = False
        for i in reversed(range(n_frame_axes, len(shape))):
            bigger = min(out[i] * 2, shape[i])
            if bigger > out[i] and math.prod(out) // out[i] * bigger <= voxels:
                out[i] = bigger
                grown = True
    return tuple(out)


def _label(
    store: OutputStore,
    frame_shape: tuple[int, ...],
    label_mode: str | None,
    expand: int,
    min_size: int,
    cancel: Callable[[], bool] | None,
    split: int = 0,
) -> Generator[Any, None, None]:
    """Instance labelling of the stored class map, frame by frame (resumable).  ``split``
    (a radius, models without boundary classes): touching objects are split at the necks of
    their distance transform (:func:`postprocess.split_classes`) and regrow that far."""
    if split and label_mode != postprocess.BOUNDARY_MODE:
        label_mode, expand = postprocess.BOUNDARY_MODE, int(split)
    else:
        split = 0
    frames = list(np.ndindex(*frame_shape))
    # Seeds (interiors) regrow ``expand`` voxels through the boundary class; the class mask
    # bounds the growth.
    done = store.done_frames()
    yield StageStarted("label", total=2 * len(frames), message="connected components")
    # Label in chunks of ~4 M voxels: dask-image's relabelling across chunk faces costs
    # far more with many small chunks (2048^2 in 256^2 chunks: 29 s, in 512^2: 3 s).
    chunks = label_chunks(store["semantic"].chunks, store["semantic"].shape,
                          len(frame_shape), IN_MEMORY_LABEL_VOXELS)
    classes = da.from_zarr(store["semantic"], chunks=chunks)

    def put(arr: da.Array, target: Any, frame: tuple[int, ...]) -> None:
        arr = arr.reshape((1,) * len(frame) + arr.shape)
        region = tuple(slice(f, f + 1) for f in frame) + (slice(None),) * (arr.ndim
                                                                          - len(frame))
        da.store(arr, target, regions=region, lock=False)

    in_memory = math.prod(classes.shape[len(frame_shape):]) <= IN_MEMORY_LABEL_VOXELS
    for k, frame in enumerate(frames):
        if not done[k]:
            if cancel is not None and cancel():
                raise Cancelled("labelling cancelled; running again resumes")
            if in_memory:
                # Both passes in memory (dask-image and two store round trips took 110 ms of
                # a 256 x 256 image's 220 ms), same result.
                frame_classes = np.asarray(store["semantic"][(*frame, ...)])
                if split:
                    frame_classes = postprocess.split_classes(frame_classes, split)
                seeds, labels = postprocess.instances_in_memory(
                    frame_classes, label_mode, expand, min_size)
                store["seeds"][(*frame, ...)] = seeds
                store.result[(*frame, ...)] = labels
            else:
                frame_classes = classes[frame]
                if split:
                    frame_classes = postprocess.split_classes_lazy(frame_classes, split)
                put(postprocess.seed_labels(frame_classes, label_mode), store["seeds"], frame)
                yield Progress("label", 2 * k + 1, 2 * len(frames), "seeds")
                seeds = da.from_zarr(store["seeds"], chunks=chunks)[frame]
                put(postprocess.grow_instances(seeds, frame_classes, label_mode, expand,
                                               min_size), store.result, frame)
            store.mark_frame(k)
        yield Progress("label", 2 * k + 2, 2 * len(frames))
