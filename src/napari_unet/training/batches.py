"""The patch pipeline of a training run: threads that cut (and augment) patches, batches in
step order whose content depends only on the seed, epoch and step."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Any

import torch

from ..config import TrainConfig
from .augment import Augmenter
from .data import PatchSampler

__all__ = ["patch_pipeline", "augment_on_device", "batches", "lower_priority"]


def lower_priority() -> None:
    """Run a patch thread below the training thread's priority (Linux: threads have their own
    nice value).  On a few cores the patch threads otherwise preempt torch's intra-op threads
    mid-operation and the others wait for them at the next barrier; at a lower priority they
    fill the gaps instead.  Ignored where the OS does not allow it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def patch_pipeline(device, cpus: int | None = None, on_device: bool = False
                   ) -> tuple[int, int]:
    """Threads that cut and augment patches, and how many batches they work ahead.

    On the CPU the model's own threads use every core during a step, so patch threads running
    alongside only take time from them (and hold up the others at their next barrier):
    cutting each batch between steps, its patches spread over the cores, is faster than
    working ahead (benchmarks/training_throughput.py).  This assumes torch uses every core,
    as it does by default.  On a GPU the cores are idle
    while it computes, and a 3D batch of augmented patches costs about as much CPU time as
    several GPU steps, so one thread per spare core (up to 8) works ahead.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 2)
    if getattr(device, "type", str(device)) == "cpu":
        return int(min(8, max(1, cpus))), 0
    # Augmenting on the device, a thread only cuts regions, faster than a GPU trains on them:
    # a few threads suffice, and more only compete for the interpreter with the thread that
    # drives the GPU.
    threads = int(min(4 if on_device else 8, max(2, cpus - 1)))
    return threads, threads


def augment_on_device(device: torch.device, augmenter: Augmenter | None) -> bool:
    """Augment on the training device rather than in the patch threads: on a GPU, which
    resamples a batch in a few operations while the CPU threads would starve it (see
    :mod:`.augment_device`).  On the CPU the threads' scipy path is what was measured fastest."""
    return augmenter is not None and device.type == "cuda"


def batches(sampler: PatchSampler, config: TrainConfig, epoch: int, first_step: int,
             pool: cf.ThreadPoolExecutor, ahead: int, regions: bool = False,
             pin: bool = False):
    """Batches of one epoch in step order (``regions``: see :meth:`PatchSampler.batch`).

    ``ahead = 0``: each batch is cut when it is needed, its patches in parallel on ``pool``;
    otherwise ``ahead`` batches are cut in advance, one per thread.  The content depends only
    on the seed, epoch and step.
    """
    steps = range(first_step, config.steps_per_epoch)
    if ahead == 0:
        for step in steps:
            yield step, sampler.batch(config.batch_size, (config.seed, epoch, step), pool,
                                      regions)
        return
    futures = []
    it = iter(steps)
    for step in it:
        futures.append((step, pool.submit(_cut, sampler, config.batch_size,
                                          (config.seed, epoch, step), regions, pin)))
        if len(futures) > ahead:
            break
    while futures:
        step, fut = futures.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            futures.append((nxt, pool.submit(_cut, sampler, config.batch_size,
                                             (config.seed, epoch, nxt), regions, pin)))
        yield step, fut.result()


def _cut(sampler: PatchSampler, batch_size: int, seed: tuple[int, ...], regions: bool,
         pin: bool) -> tuple[Any, ...]:
    """One batch, cut in a patch thread; with ``pin`` its arrays in pinned memory, so that
    copying them to the GPU does not wait for the step in flight."""
    batch = sampler.batch(batch_size, seed, None, regions)
    if not pin:
        return batch
    return (*(torch.from_numpy(a).pin_memory() for a in batch[:2]), *batch[2:])
