"""Out-of-core tiled prediction: ``predict_iter`` puts the parts together.

The job is checked and planned before any pass over the input (:mod:`.plan`: pure
geometry), normalised once per volume and described as data (:mod:`.job`: its fingerprint,
input content included, decides whether an output store resumes), then its unfinished blocks
run on an executor -- local threads (:mod:`.executors`) or a dask.distributed cluster
(:mod:`.distributed`) -- each block read, run through the model and blended on the device,
and written chunk-aligned (:mod:`.blocks`); instance labelling follows (:mod:`.labelling`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import postprocess
from ..axes import resolve_layout
from ..config import PredictConfig, resolve_mode
from ..events import BlockDone, Notice, StageStarted, Writing
from ..io import InputError, open_volume
from ..ngff import labels_image_of, register_label, voxel_size, voxel_size_notice
from .input_digest import input_record
from .job import (
    array_specs,
    check_output_path,
    describe_job,
    job_normalization,
    open_job_store,
    result_attrs,
    stitches_slices,
)
from .plan import Plan, plan_shapes, recommended_tile
from .pyramid import PyramidBuilder
from .spec import ModelSpec, resolve_model
from .store import ROOT

__all__ = ["predict_iter", "plan_shapes", "resolve_model", "recommended_tile", "ModelSpec"]


@contextlib.contextmanager
def _model_kept(module: Any) -> Iterator[None]:
    """However prediction ends, the caller's model is left in its mode and on its device
    (a module without batch norms to fold is run as it is, so the engine moves it)."""
    training = module.training
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else None
    try:
        yield
    finally:
        module.train(training)
        if device is not None and next(iter(module.parameters())).device != device:
            module.to(device)


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
        The network (see :func:`~.spec.resolve_model`).
    image : array-like or path
        numpy / dask / zarr array or a path to zarr / OME-Zarr / TIFF, read lazily.
    output : path, optional
        A ``.zarr`` folder to write to (created, or resumed when it holds an unfinished run of
        the same job on the same input content).  None keeps the result in memory and returns
        a numpy array.
    config : PredictConfig, optional
        Settings; keyword ``overrides`` replace individual fields.
    cancel : callable, optional
        Polled between blocks (and labelling tasks); returning True stops after the blocks
        in flight are written and raises :class:`~napari_unet.events.Cancelled`.  Running
        again resumes.
    client : dask.distributed.Client, optional
        Run the blocks as tasks on this cluster (see :mod:`.distributed`); the input must be
        a path or zarr array and the output a store every worker reaches.

    Yields
    ------
    StageStarted, BlockDone, Progress, Notice

    Returns
    -------
    zarr.Array or numpy.ndarray
        The result array (in the store at ``output``, or in memory).
    """
    config = config or PredictConfig()
    if overrides:
        config = config.replace(**overrides)
    spec = resolve_model(model)
    with _model_kept(spec.module):
        return (yield from _predict(spec, image, output, config, cancel, client))


def _predict(spec: ModelSpec, image: Any, output: Any, config: PredictConfig,
             cancel: Callable[[], bool] | None, client: Any) -> Generator[Any, None, Any]:
    from .device import (
        inference_module,
        measure_batch_size,
        release_memory,
        select_device,
        select_precision,
    )

    config = config.replace(mode=resolve_mode(config.mode, spec.metadata, spec.out_channels))
    check_output_path(image, output)
    label_of = labels_image_of(output)  # image.zarr/labels/NAME: a label of that image
    array, info = open_volume(image)
    source = info.source
    axes = config.axes or (info.axes if info.axes and len(info.axes) == array.ndim else None)
    layout = resolve_layout(tuple(array.shape), spec.spatial_dims, spec.in_channels, axes,
                            source, bool(spec.metadata.get("rgb_to_gray", False)))
    canonical = layout.canonical(array)
    n_lead = len(layout.lead_axes)
    lead_shape = tuple(canonical.shape[:n_lead])
    spatial_shape = tuple(canonical.shape[n_lead + 1 :])
    plan_shapes(spatial_shape, spec, config)  # shapes, blocks and chunks checked: no I/O yet
    scale_axes, image_voxel = _image_voxel_size(config, layout, info)
    if client is not None and output is None:
        raise InputError("a cluster run writes to a store every worker reaches: give an "
                         "output path")
    device = select_device(config.device)
    precision = select_precision(config.precision, device)
    label_mode = spec.metadata.get("label_mode")
    if spec.metadata.get("scribble_boundary"):  # background / object / boundary: labelled
        label_mode = postprocess.BOUNDARY_MODE  # as an instance model's classes
    boundary_width = int(spec.metadata.get("boundary_width", 2))
    # Seeds regrow through the boundary class by this many voxels: a model whose seeds are
    # object cores stores how far its boundary reaches (``grow``), else the ring's width + 1.
    grow = spec.metadata.get("grow")
    expand = int(grow) if grow is not None else boundary_width + 1
    auto_batch = config.batch_size == "auto"
    # The copy of the model a local run computes with, made once (a cluster's workers make
    # their own).
    module = inference_module(spec.module, device, spec.spatial_dims) if client is None else None
    if auto_batch and client is None:
        config = config.replace(batch_size=measure_batch_size(
            module, recommended_tile(spec), spec.in_channels, device, precision))

    notice = voxel_size_notice(spec.metadata.get("voxel_size"), image_voxel)
    if notice:
        yield Notice("predict", notice)
    yield StageStarted("normalize", message="computing intensity percentiles")
    norm, norm_record = job_normalization(canonical, n_lead, spec, config, source)
    # Instance labelling runs per time point, and per slice where a 2D model's slices are
    # labelled apart (then linked in z, or left independent: ``z_stitch``).
    per_slice = stitches_slices(config, layout)
    frame_shape = lead_shape if per_slice else (lead_shape[:1] if "T" in layout.lead_axes
                                                else ())
    n_frames = math.prod(frame_shape) if config.mode == "instances" else 0
    model_record = spec.describe()  # hashes the weights: once, however many plans are tried
    if postprocess.output_kind(spec.metadata) == postprocess.DISTANCE_OUTPUT:
        model_record["seed_threshold"] = float(spec.metadata.get("seed_threshold", 0.5))
    interior = postprocess.interior_threshold(spec.metadata, config.mode)
    if interior is not None:  # it changes the seeds: part of the job
        model_record["interior_threshold"] = interior
    # What proves a resumed store's input unchanged (an in-memory result never resumes).
    content = input_record(array, source, info.reader) if output is not None else None

    def planned(config: PredictConfig) -> tuple[Plan, dict[str, Any]]:
        grid, block, chunk = plan_shapes(spatial_shape, spec, config)
        plan = Plan(layout, lead_shape, spatial_shape, grid, block, chunk)
        return plan, describe_job(model_record, array, source, layout, norm_record, plan,
                                  config, precision, label_mode, boundary_width, grow, content)

    def arrays_for(config: PredictConfig, plan: Plan) -> tuple[dict[str, Any], str]:
        arrays, name = array_specs(config, spec, plan, in_store=output is not None)
        if label_of is not None:  # a label image in an image's labels/: levels at the root
            arrays[ROOT] = arrays.pop(name)
            name = ROOT
        if client is not None:
            from .distributed import MODEL_ARRAY

            arrays[MODEL_ARRAY] = dict(shape=model_blob.shape, chunks=model_blob.shape,
                                       dtype="uint8")
        return arrays, name

    if client is not None:
        model_blob, cluster_source = _cluster_model(spec, image)
    def attrs_for(config: PredictConfig, plan: Plan, name: str, n_lower: int
                  ) -> dict[str, Any]:
        title = Path(str(output)).stem if output is not None else name
        return result_attrs(config, plan, name, scale_axes, image_voxel, title, n_lower)

    store, config, plan, job = open_job_store(output, planned, config, auto_batch,
                                              arrays_for, n_frames, attrs_for)
    if label_of is not None:
        register_label(label_of, Path(str(output)).name)
    executor = _executor(spec, store, plan, job, config, client, canonical, norm, precision,
                         device, module, source, info, cluster_source if client else None,
                         model_blob if client else None)
    del module  # the executor's runner holds it
    pyramid = PyramidBuilder(store, n_lead)
    try:
        flags, todo = store.todo_blocks()
        yield from _started(plan, flags, executor)
        yield Writing(store["semantic" if config.mode == "instances" else store.result_name])
        if config.mode != "instances":  # level 0 is final block by block
            for i in np.flatnonzero(flags):
                pyramid.mark(*plan.units[i])
        for event in executor.run(todo, len(plan.units) - len(todo), cancel):
            if isinstance(event, BlockDone) and config.mode != "instances":
                pyramid.block_done(*plan.units[event.index])
            yield event
        if config.mode == "instances":
            from .labelling import label_frames
            from .stitching import SLICES_ARRAY, stitch_slices

            link = per_slice and config.z_stitch == "overlap"
            with _scheduler(client):
                yield from label_frames(store, frame_shape, label_mode, expand,
                                        config.min_size, cancel, config.split_touching,
                                        target=SLICES_ARRAY if link else None)
            if link:
                yield from stitch_slices(store, lead_shape, layout.lead_axes.index("Z"),
                                         config.stitch_threshold, cancel)
        yield from pyramid.finish(cancel, all_final=config.mode == "instances")
    finally:
        pyramid.wait_quietly()
        del executor  # the engine's copy of the model, before the device's cache is emptied
        release_memory(device)
    result = store.result
    return result[...] if output is None else result


def _image_voxel_size(config: PredictConfig, layout: Any, info: Any
                      ) -> tuple[str, tuple[float, ...] | None]:
    """The image's Z / Y / X axes and their voxel size: ``config.voxel_size`` (one number
    per axis, or per axis of the model: Y and X of a 2D model's stack), else the image's
    metadata (None where it says nothing)."""
    axes = "".join(a for a in layout.axes if a in "ZYX")
    if config.voxel_size is None:
        return axes, voxel_size(axes, layout.axes, info.scale)
    n = len(config.voxel_size)
    if not len(layout.spatial_axes) <= n <= len(axes):
        raise InputError(f"voxel_size {config.voxel_size} has {n} number(s); the image's "
                         f"spatial axes are {axes!r}: give one per axis")
    return axes[len(axes) - n:], tuple(config.voxel_size)  # (a 2D model's stack: Z unsaid)


def _started(plan: Plan, flags: np.ndarray, executor: Any) -> Generator[Any, None, None]:
    """The predict stage's start, and one event per block a resumed run skips."""
    units = plan.units
    total = len(units)
    n_done = int(flags.sum())
    where = getattr(executor, "describe", lambda: "")()
    parts = [where] + ([f"{n_done} of {total} blocks already done"] if n_done else [])
    yield StageStarted("predict", total=total, message="; ".join(p for p in parts if p))
    done_so_far = np.cumsum(flags)
    for i in np.flatnonzero(flags):
        yield BlockDone(int(i), units[i][1], int(done_so_far[i]), total, skipped=True)


@contextlib.contextmanager
def _scheduler(client: Any) -> Iterator[None]:
    if client is None:
        yield
        return
    import dask

    with dask.config.set(scheduler=client):
        yield


def _cluster_model(spec: ModelSpec, image: Any) -> tuple[np.ndarray, Any]:
    """The model's bytes (shipped to the workers in the output store) and the input as the
    workers open it."""
    from ..model.checkpoint import model_to_bytes
    from ..model.unet import UNet
    from .distributed import check_cluster_input

    if not isinstance(spec.module, UNet):
        raise InputError("a cluster run needs a napari_unet UNet (it ships the model to "
                         "the workers inside the output store)")
    source = check_cluster_input(image)
    return np.frombuffer(model_to_bytes(spec.module), dtype=np.uint8), source


def _executor(spec, store, plan, job, config, client, canonical, norm, precision, device,
              module, source, info, cluster_source, model_blob) -> Any:
    """The local executor, or the cluster's (which first puts the model in the store)."""
    if client is None:
        from .blocks import BlockRunner, direct_reader
        from .executors import LocalExecutor

        runner = BlockRunner(spec, plan, config, device, precision, module)
        return LocalExecutor(store, plan, canonical, norm, runner, config, source,
                             direct_reader(plan.layout, info))
    from .distributed import MODEL_ARRAY, ClusterExecutor, ClusterJob
    from .store import fingerprint

    if not store.resumed:
        store[MODEL_ARRAY][:] = model_blob
    cluster_job = ClusterJob(fingerprint(job), cluster_source, plan, norm, config, precision,
                             str(store.path), tuple(plan.units))
    return ClusterExecutor(client, cluster_job)
