"""Blocks as dask.distributed tasks: the same block engine, fanned out over a cluster.

Each worker process loads the model once (a per-process cache keyed by the job fingerprint),
reads its block plus context straight from the input store, and writes its chunk-aligned output
straight to the output store: no pixels travel through the scheduler.  The model travels inside
the output store (an array of its safetensors bytes), so every worker that reaches the store has
it.  A worker that dies mid-block has its task rerun elsewhere; blocks are deterministic, so the
result is the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ..config import PredictConfig
from ..events import BlockDone, Cancelled
from ..io import InputError
from ..normalize import Normalization

__all__ = ["ClusterJob", "ClusterExecutor", "run_block", "check_cluster_input", "MODEL_ARRAY"]

MODEL_ARRAY = "model"  # uint8 array in the output store holding the model file's bytes

_CACHE: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    """Everything a worker needs to run any block of one job (small and picklable)."""

    fingerprint: str
    source: Any  # a path string or a zarr array: something every worker can open
    plan: Any  # plan.Plan
    norm: Normalization
    config: PredictConfig
    precision: str
    output: str
    units: tuple[tuple[tuple[int, ...], tuple[slice, ...]], ...]


def check_cluster_input(image: Any) -> Any:
    """Workers open the input themselves: it must be a path or a zarr array."""
    import os

    import zarr

    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, zarr.Array):
        return image
    raise InputError(
        f"a cluster run reads the input on the workers: give a path (zarr / TIFF) or a zarr "
        f"array, not a {type(image).__name__}"
    )


def _limit_threads() -> None:
    """CPU workers use their own share of cores, not all of them each."""
    import torch

    try:
        from distributed import get_worker

        n = int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return
    torch.set_num_threads(max(1, n))


def _state(job: ClusterJob) -> tuple[Any, Any, Any, Any]:
    """Per-process cache: the model is loaded once per worker and job, not once per task."""
    import zarr

    from ..io import open_volume
    from ..model.checkpoint import model_from_bytes
    from .blocks import BlockRunner, direct_reader
    from .device import select_device
    from .spec import resolve_model
    from .store import OutputStore

    cached = _CACHE.get(job.fingerprint)
    if cached is not None:
        return cached
    _CACHE.clear()
    _limit_threads()
    group = zarr.open_group(job.output, mode="r+")
    model = model_from_bytes(np.asarray(group[MODEL_ARRAY][:]).tobytes(), "model in the store")
    spec = resolve_model(model)
    device = select_device(job.config.device)
    array, info = open_volume(job.source)
    canonical = job.plan.layout.canonical(array)
    runner = BlockRunner(spec, job.plan, job.config, device, job.precision)
    store = OutputStore(group, resumed=True)
    _CACHE[job.fingerprint] = (canonical, direct_reader(job.plan.layout, info), runner, store)
    return _CACHE[job.fingerprint]


def run_block(job: ClusterJob, index: int) -> int:
    """Task: read, predict, write and mark one block; returns its index."""
    from .blocks import block_arrays, read_block, write_block

    canonical, direct, runner, store = _state(job)
    unit = job.units[index]
    x, in_region = read_block(canonical, job.plan, job.norm, unit, str(job.source), direct)
    name, data = block_arrays(runner(x, in_region, unit[1]), job.config, runner.spec.metadata)
    write_block(store, unit, name, data, job.config.mode)
    store.mark_block(index)
    return index


@dataclasses.dataclass
class ClusterExecutor:
    """Blocks as tasks on a dask.distributed cluster (the same ``run`` as the local
    executor); the job description goes to every worker once, tasks carry block indices."""

    client: Any
    job: ClusterJob

    def describe(self) -> str:
        workers = len(self.client.scheduler_info().get("workers", {}))
        return f"{workers} worker(s)"

    def run(self, todo: list[int], done: int, cancel: Callable[[], bool] | None
            ) -> Generator[Any, None, None]:
        """Submit blocks ``todo`` (``done`` already finished) and yield as they complete."""
        from distributed import as_completed

        client, units = self.client, self.job.units
        total, n_done = len(units), done
        if not todo:
            return
        [job_future] = client.scatter([self.job], broadcast=True, hash=False)
        futures = client.map(run_block, [job_future] * len(todo), todo, pure=False, retries=3)
        try:
            for fut in as_completed(futures):
                if cancel is not None and cancel():
                    client.cancel([f for f in futures if not f.done()])
                    raise Cancelled.after_blocks(n_done, total)
                i = fut.result()
                n_done += 1
                yield BlockDone(i, units[i][1], n_done, total)
        finally:
            client.cancel([f for f in futures if not f.done()])
