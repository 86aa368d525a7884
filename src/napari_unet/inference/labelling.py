"""Instance labelling of a stored class map, frame by frame and resumable: connected
components of the seeds across chunks (dask-image), then size filtering and regrowth; a frame
small enough is labelled in memory with the same functions.  Cancellable between frames and,
on a frame labelled out of core, between its dask tasks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterator
from typing import Any

import dask.array as da
import numpy as np

from .. import postprocess
from ..events import Cancelled, Progress, StageStarted
from .store import OutputStore

__all__ = ["IN_MEMORY_LABEL_VOXELS", "label_chunks", "label_frames"]


@contextlib.contextmanager
def _cancellable(cancel: Callable[[], bool] | None) -> Iterator[None]:
    """Poll ``cancel`` before each dask task of a local computation (a frame labelled out of
    core is one computation of many tasks): a volume without a time axis stops mid-frame."""
    if cancel is None:
        yield
        return
    from dask.callbacks import Callback

    def pretask(key: Any, dsk: Any, state: Any) -> None:
        if cancel():
            raise Cancelled("labelling cancelled; running again resumes")

    with Callback(pretask=pretask):
        yield


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


def label_frames(
    store: OutputStore,
    frame_shape: tuple[int, ...],
    label_mode: str | None,
    expand: int,
    min_size: int,
    cancel: Callable[[], bool] | None,
    split: int = 0,
    target: str | None = None,
) -> Generator[Any, None, None]:
    """Instance labelling of the stored class map, frame by frame (resumable).  ``split``
    (a radius, models without boundary classes): touching objects are split at the necks of
    their distance transform (:func:`postprocess.split_classes`) and regrow that far.
    ``target``: the array the labels go to (default: the store's result)."""
    out = store[target] if target else store.result
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
        with _cancellable(cancel):
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
                out[(*frame, ...)] = labels
            else:
                frame_classes = classes[frame]
                if split:
                    frame_classes = postprocess.split_classes_lazy(frame_classes, split)
                put(postprocess.seed_labels(frame_classes, label_mode), store["seeds"], frame)
                yield Progress("label", 2 * k + 1, 2 * len(frames), "seeds")
                seeds = da.from_zarr(store["seeds"], chunks=chunks)[frame]
                put(postprocess.grow_instances(seeds, frame_classes, label_mode, expand,
                                               min_size), out, frame)
            store.mark_frame(k)
        yield Progress("label", 2 * k + 2, 2 * len(frames))
