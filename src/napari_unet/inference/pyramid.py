"""Lower resolutions of a result: an OME-Zarr multiscale pyramid built from level 0 chunk by
chunk, as level 0 becomes final, so a viewer shows a result far larger than memory at every
zoom while it is still being written.

Level ``k`` halves Y and X of level ``k - 1`` (rounding up) until both are at most
:data:`MAX_SIDE`; other axes (time, channels, z) keep their size, as viewers draw planes.
Every level has level 0's chunk shape, so a chunk of level ``k`` is made from at most 2 x 2
chunks of level ``k - 1``: labels and class maps by taking every second pixel (nearest: no
new values, thin objects keep their ids), probabilities and logits by the mean of 2 x 2.

Only the process that runs the job writes the pyramid (in one background thread), always
whole chunks, so it never races the block writers.  A chunk is built once all its children
are final and then marked in the store (``pyramid_done_<k>``), after its data: a resumed run
builds exactly what is missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..events import Cancelled, Progress, StageStarted

__all__ = ["MAX_SIDE", "level_shapes", "downsample", "PyramidBuilder", "DONE_PREFIX"]

MAX_SIDE = 512
TILE = 4  # chunks per box in Y and X (:meth:`PyramidBuilder._boxes`)
DONE_PREFIX = "pyramid_done_"


def level_shapes(shape: Sequence[int], max_side: int = MAX_SIDE) -> list[tuple[int, ...]]:
    """Shapes of levels 0, 1, ... of an array whose last two axes are Y and X."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1][-2:]) > max_side:
        *rest, h, w = shapes[-1]
        shapes.append((*rest, -(-h // 2), -(-w // 2)))
    return shapes


def downsample(data: np.ndarray, how: str) -> np.ndarray:
    """Halve the last two axes: ``"nearest"`` (every second pixel, from the first) or
    ``"mean"`` (of 2 x 2 pixels; an odd edge averages its own pixels)."""
    if how == "nearest":
        return data[..., ::2, ::2]
    h, w = data.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (data.ndim - 2) + [(0, h % 2), (0, w % 2)]
        data = np.pad(data, pad, mode="edge")
        h, w = data.shape[-2:]
    # Four strided adds in float32: numpy reduces a reshaped view over two axes slowly.
    total = data[..., 0::2, 0::2].astype(np.float32)
    total += data[..., 1::2, 0::2]
    total += data[..., 0::2, 1::2]
    total += data[..., 1::2, 1::2]
    total *= 0.25
    return total.astype(data.dtype, copy=False)


def reduction_for(dtype: Any) -> str:
    """How a result of ``dtype`` is reduced: integers (labels, classes) by nearest."""
    return "mean" if np.dtype(dtype).kind == "f" else "nearest"


def _grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks, strict=True))


def _children_done(done: np.ndarray, parent_grid: tuple[int, ...]) -> np.ndarray:
    """Per chunk of a level: all of its (up to 2 x 2) children of the level below are done."""
    h, w = done.shape[-2:]
    pad = [(0, 0)] * (done.ndim - 2) + [(0, h % 2), (0, w % 2)]
    padded = np.pad(done, pad, constant_values=True)  # beyond the edge: nothing to wait for
    ready = padded.reshape(*padded.shape[:-2], -(-h // 2), 2, -(-w // 2), 2).all(axis=(-3, -1))
    return ready[tuple(slice(0, g) for g in parent_grid)]


class PyramidBuilder:
    """Builds levels 1, 2, ... of a store's result from level 0 as its chunks are final.

    Parameters
    ----------
    store : OutputStore
        The job's store (its result group holds the levels).
    lead_ndim : int
        How many leading axes of the result are per block (time, slices): a block's region
        covers one index of each.
    """

    def __init__(self, store: Any, lead_ndim: int) -> None:
        self.store = store
        self.levels = store.levels
        self.lead_ndim = lead_ndim
        self.chunks = tuple(self.levels[0].chunks)
        self.how = reduction_for(self.levels[0].dtype)
        self.grids = [_grid(a.shape, self.chunks) for a in self.levels]
        self.flags = [None] + [store.group[f"{DONE_PREFIX}{k}"]
                               for k in range(1, len(self.levels))]
        self.done = [np.zeros(self.grids[0], dtype=bool)] + [
            store.read_flags(f) for f in self.flags[1:]]
        self._lock = threading.Lock()
        self._pool: cf.ThreadPoolExecutor | None = None
        self._pending: list[cf.Future] = []

    @property
    def active(self) -> bool:
        return len(self.levels) > 1

    # -- level 0 -----------------------------------------------------------------------------
    def level0_chunks(self, lead: tuple[int, ...], region: tuple[slice, ...]) -> tuple[slice, ...]:
        """Chunk-grid index of level 0 covered by a block (blocks are chunk-aligned)."""
        n_mid = len(self.chunks) - len(lead) - len(region)  # the channel axis, if any
        spatial = self.chunks[len(self.chunks) - len(region):]
        grid = self.grids[0][len(self.chunks) - len(region):]
        index = tuple(slice(i, i + 1) for i in lead) + (slice(None),) * n_mid
        return index + tuple(slice(r.start // c, min(g, math.ceil(r.stop / c)))
                             for r, c, g in zip(region, spatial, grid, strict=True))

    def mark(self, lead: tuple[int, ...], region: tuple[slice, ...]) -> None:
        """Level 0 of a block is final."""
        with self._lock:
            self.done[0][self.level0_chunks(lead, region)] = True

    def mark_all(self) -> None:
        """All of level 0 is final (after labelling)."""
        with self._lock:
            self.done[0][...] = True

    # -- building ----------------------------------------------------------------------------
    def _ready(self, k: int) -> np.ndarray:
        with self._lock:
            return _children_done(self.done[k - 1], self.grids[k]) & ~self.done[k]

    def todo(self) -> int:
        """Chunks of levels >= 1 still to build (counting those not yet ready)."""
        return int(sum((~d).sum() for d in self.done[1:]))

    def _build(self, k: int, grid: tuple[slice, ...]) -> int:
        """Build the chunks ``grid`` (a box of chunk indices) of level ``k``; returns how
        many chunks that was."""
        chunks, src, dst = self.chunks, self.levels[k - 1], self.levels[k]
        out = tuple(slice(g.start * c, min(g.stop * c, s))
                    for g, c, s in zip(grid, chunks, dst.shape, strict=True))
        lead = out[:-2]
        (ys, xs) = out[-2:]
        source = (*lead, slice(2 * ys.start, min(2 * ys.stop, src.shape[-2])),
                  slice(2 * xs.start, min(2 * xs.stop, src.shape[-1])))
        dst[out] = downsample(np.asarray(src[source]), self.how)
        self.flags[k][grid] = 1
        with self._lock:
            self.done[k][grid] = True
        return int(np.prod([g.stop - g.start for g in grid]))

    def _boxes(self, ready: np.ndarray) -> Generator[tuple[slice, ...], None, None]:
        """Ready chunks in boxes of up to TILE x TILE in Y and X: a tile's ready chunks as one
        box where they form a rectangle, else one by one (one read and one write per box:
        per chunk, reading and writing cost several times the downsampling)."""
        t = TILE
        h, w = ready.shape[-2:]
        for index in np.ndindex(*ready.shape[:-2]):
            plane = ready[index]
            for ty in range(0, h, t):
                for tx in range(0, w, t):
                    tile = plane[ty:ty + t, tx:tx + t]
                    if not tile.any():
                        continue
                    head = tuple(slice(i, i + 1) for i in index)
                    ys, xs = np.nonzero(tile.any(axis=1))[0], np.nonzero(tile.any(axis=0))[0]
                    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
                    if tile[y0:y1, x0:x1].all():  # one rectangle (a block's share of it)
                        yield (*head, slice(ty + y0, ty + y1), slice(tx + x0, tx + x1))
                        continue
                    for y, x in np.argwhere(tile):
                        yield (*head, slice(ty + y, ty + y + 1), slice(tx + x, tx + x + 1))

    def sweep(self, cancel: Callable[[], bool] | None = None) -> Generator[int, None, None]:
        """Build every chunk whose children are final, level by level; yields the number
        of chunks built at each step."""
        for k in range(1, len(self.levels)):
            for box in self._boxes(self._ready(k)):
                if cancel is not None and cancel():
                    return
                yield self._build(k, box)

    # -- in the background, while blocks run -----------------------------------------------
    def block_done(self, lead: tuple[int, ...], region: tuple[slice, ...]) -> None:
        """Mark a block's level 0 final and build what that completes, in a background thread
        (one: sweeps run in order)."""
        if not self.active:
            return
        self.mark(lead, region)
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nu-pyramid")
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        self._check()
        self._pending.append(self._pool.submit(lambda: list(self.sweep())))

    def _check(self) -> None:
        for f in self._pending:
            if f.done() and f.exception() is not None:
                raise f.exception()

    def wait(self) -> None:
        """Finish the background sweeps (raising their first error)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        pool.shutdown(wait=True)
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def wait_quietly(self) -> None:
        """Finish the background sweeps; their errors are left to :meth:`wait` (used on the
        way out of a run that already failed or was cancelled)."""
        try:
            self.wait()
        except Exception:
            pass

    def finish(self, cancel: Callable[[], bool] | None = None,
               all_final: bool = False) -> Generator[Any, None, None]:
        """Build what is left (the whole pyramid after labelling: ``all_final``), with
        progress events."""
        if not self.active:
            return
        self.wait()
        if all_final:
            self.mark_all()
        total = self.todo()
        if not total:
            return
        yield StageStarted("pyramid", total=total,
                           message=f"{len(self.levels) - 1} lower resolution(s)")
        done = 0
        for n in self.sweep(cancel):
            done += n
            yield Progress("pyramid", done, total)
        if cancel is not None and cancel() and self.todo():
            raise Cancelled("pyramid: cancelled; run again to finish it (the result is "
                            "complete at full resolution)")
