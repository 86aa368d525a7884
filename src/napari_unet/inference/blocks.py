"""One block of work: read its input region, run its tiles through the model and blend
them on the device (:class:`BlockRunner`), turn the logits into the stored arrays, and write
them chunk-aligned.  Used alike by the local executor and the cluster's workers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import torch

from .. import postprocess
from ..axes import Layout
from ..config import PredictConfig
from ..io import InputError
from ..normalize import Normalization
from .device import (
    autocast,
    exact_fp32,
    inference_module,
    memory_format,
    release_memory,
    too_large,
)
from .plan import Plan, tiles_per_batch
from .spec import ModelSpec
from .store import OutputStore
from .tiling import blending_weights

__all__ = ["BlockRunner", "read_block", "write_block", "block_arrays", "direct_reader"]


class BlockRunner:
    """Runs the tiles of one block through the model and blends them on the device."""

    def __init__(
        self, spec: ModelSpec, plan: Plan, config: PredictConfig, device: torch.device,
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


def block_arrays(
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
        logits, config.threshold, output, float(metadata.get("seed_threshold", 0.5)),
        postprocess.interior_threshold(metadata, config.mode)).cpu().numpy()



def direct_reader(layout: Layout, info: Any) -> Callable[[tuple[Any, ...]], np.ndarray] | None:
    """Reads a canonical region of a zarr input from the zarr array itself, in one call
    (``VolumeInfo.reader``); None where blocks go through dask (other inputs, and colour
    averaged to gray, which dask computes)."""
    if info.reader is None or layout.to_gray:
        return None
    return functools.partial(layout.region, info.reader)


def read_block(
    canonical: da.Array,
    plan: Plan,
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
        # Synchronous: dask's thread pool per block made the peak memory grow with the
        # volume for no clear gain (benchmarks/README.md, memory).
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
