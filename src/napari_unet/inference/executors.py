"""Executors: what runs a job's unfinished blocks.  Both take the same ``run(todo, done,
cancel)`` and yield a :class:`~napari_unet.events.BlockDone` per block written: here, local
threads reading ahead and writing behind the device; :mod:`.distributed`, tasks on a
dask.distributed cluster."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import errno
from collections.abc import Callable, Generator
from typing import Any

import dask.array as da
import numpy as np

from ..config import PredictConfig
from ..events import BlockDone, Cancelled, Notice
from ..io import InputError
from ..normalize import Normalization
from .blocks import BlockRunner, block_arrays, read_block, write_block
from .plan import Plan
from .store import OutputStore

__all__ = ["LocalExecutor"]


@dataclasses.dataclass
class LocalExecutor:
    """Blocks on this machine: a reader thread works ahead (``config.prefetch`` blocks), the
    device computes, one writer thread writes behind.  Memory is set by the block size and
    the blocks in flight, never by the volume."""

    store: OutputStore
    plan: Plan
    canonical: da.Array
    norm: Normalization
    runner: BlockRunner
    config: PredictConfig
    source: str
    direct: Callable[[tuple[Any, ...]], np.ndarray] | None = None

    def run(self, todo: list[int], done: int, cancel: Callable[[], bool] | None
            ) -> Generator[Any, None, None]:
        """Run blocks ``todo`` (``done`` already finished), yielding as each is written."""
        store, plan, runner, config = self.store, self.plan, self.runner, self.config
        units = plan.units
        total = len(units)
        n_done = done

        def read(i: int) -> tuple[np.ndarray, tuple[slice, ...]]:
            return read_block(self.canonical, plan, self.norm, units[i], self.source,
                              self.direct)

        def write(i: int, name: str, data: np.ndarray) -> None:
            write_block(store, units[i], name, data, config.mode)
            store.mark_block(i)

        def written(fut: cf.Future, n: int) -> None:
            try:
                fut.result()
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                raise InputError(
                    f"no space left on the device while writing {store.where}: free some space "
                    f"and run the same command again -- the {n} finished block(s) are kept and "
                    "the run resumes from there with the identical result") from err

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
                        written(wfut, n_done)
                        n_done += 1
                        yield BlockDone(j, units[j][1], n_done, total)
                    raise Cancelled.after_blocks(n_done, total)
                i, fut = reads.popleft()
                x, in_region = fut.result()
                refill()
                batch_size = runner.batch_size
                logits = runner(x, in_region, units[i][1])
                if runner.batch_size != batch_size:
                    yield Notice("predict", f"out of memory on {runner.device}: "
                                            f"{runner.batch_size} tile(s) per batch from now on "
                                            f"(was {batch_size})")
                name, data = block_arrays(logits, config, runner.spec.metadata)
                del logits
                writes.append((i, writer.submit(write, i, name, data)))
                while writes and (len(writes) > max(1, config.prefetch) or writes[0][1].done()):
                    j, wfut = writes.popleft()
                    written(wfut, n_done)
                    n_done += 1
                    yield BlockDone(j, units[j][1], n_done, total)
            while writes:
                j, wfut = writes.popleft()
                written(wfut, n_done)
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
