"""A prediction job as data: its normalisation, its JSON description (whose fingerprint
decides whether an output store resumes), the arrays it writes, and the store it writes them
to -- created, or resumed only where the description (input content included) is the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da

from .. import postprocess
from ..config import PredictConfig
from ..io import InputError
from ..ngff import ngff_axes_ok
from ..normalize import DEFAULT_PERCENTILES, Normalization, percentile_normalization
from .plan import Plan
from .pyramid import level_shapes
from .spec import ModelSpec
from .store import OutputStore, fingerprint

__all__ = ["job_normalization", "describe_job", "array_specs", "check_output_path",
           "open_job_store", "stitches_slices", "result_attrs", "FILE_SUFFIXES"]

# Outputs are zarr folders (results of any size are written block by block); a path named like
# an image file is a mistake, not a folder to create.
FILE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy", ".npz", ".h5",
                 ".hdf5", ".czi", ".nd2", ".lif")


def job_normalization(
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


def describe_job(model_record: dict[str, Any], array: Any, source: str, layout: Any,
         norm_record: dict[str, Any], plan: Plan, config: PredictConfig, precision: str,
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
        "tta": config.tta, "pyramid": config.pyramid,
        "label_mode": label_mode, "boundary_width": boundary_width,
        "min_size": config.min_size if config.mode == "instances" else None,
        "output_axes": layout.output_axes(config.mode in ("probabilities", "logits")),
    }
    if grow is not None:  # core models (jobs of other models keep their fingerprints)
        job["grow"] = grow
    if config.split_touching and config.mode == "instances":
        job["split_touching"] = config.split_touching
    if config.mode == "instances" and layout.per_slice:
        # (jobs that are not 2D-on-a-stack instances keep their fingerprints)
        job["z_stitch"] = config.z_stitch
        if config.z_stitch == "overlap":
            job["stitch_threshold"] = config.stitch_threshold
    if grid.crop:  # (blending jobs keep the fingerprint of earlier versions: they resume)
        job["cell"] = list(grid.cell or ())
    return job


def array_specs(
    config: PredictConfig, spec: ModelSpec, plan: Plan, in_store: bool = True
) -> tuple[dict[str, dict[str, Any]], str]:
    """The arrays a job writes (name -> shape, chunks, dtype) and the result's name; a
    result written to a store lists its lower resolutions as ``levels``."""
    arrays, name = _array_specs(config, spec, plan)
    result = arrays[name]
    axes = plan.layout.output_axes(config.mode in ("probabilities", "logits"))
    if in_store and config.pyramid and ngff_axes_ok(axes):
        result["levels"] = level_shapes(result["shape"])[1:]
    return arrays, name


def _array_specs(
    config: PredictConfig, spec: ModelSpec, plan: Plan
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
    arrays = {"semantic": classes, "seeds": labels, "labels": dict(labels)}
    if stitches_slices(config, plan.layout) and config.z_stitch == "overlap":
        from .stitching import SLICES_ARRAY, STITCHED_ARRAY

        arrays[SLICES_ARRAY] = dict(labels)
        arrays[STITCHED_ARRAY] = dict(shape=lead, chunks=ones, dtype="int64")
    return arrays, "labels"


def stitches_slices(config: PredictConfig, layout: Any) -> bool:
    """Instances of a 2D model on a z stack, labelled slice by slice (then linked in z, or
    left independent) rather than as one volume."""
    return config.mode == "instances" and layout.per_slice and config.z_stitch != "3d"


def _check_not_same_path(image: Any, output: Any) -> None:
    a, b = Path(image).resolve(), Path(output).resolve()
    if a == b or b in a.parents:
        raise InputError(f"output {str(output)!r} would overwrite the input {str(image)!r}")




def check_output_path(image: Any, output: Any) -> None:
    """Refuse an output that is not a zarr folder, or that would overwrite the input."""
    import os

    if output is None:
        return
    suffix = Path(output).suffix.lower()
    if suffix in FILE_SUFFIXES:
        raise InputError(
            f"output {str(output)!r}: results are written block by block into a zarr folder; "
            f"name it e.g. {str(Path(output).with_suffix('.zarr'))!r} (not {suffix})")
    if isinstance(image, (str, os.PathLike)):
        _check_not_same_path(image, output)


def open_job_store(
    output: Any,
    planned: Callable[[PredictConfig], tuple[Plan, dict[str, Any]]],
    config: PredictConfig,
    auto_batch: bool,
    arrays_for: Callable[[PredictConfig, Plan], tuple[dict[str, dict[str, Any]], str]],
    n_frames: int,
    attrs_for: Callable[[PredictConfig, Plan, str, int], dict[str, Any]] | None = None,
) -> tuple[OutputStore, PredictConfig, Plan, dict[str, Any]]:
    """The job's store at ``output`` (None: in memory), its config, plan and description.

    With an automatic batch size the plan depends on the batch measured on the device; a
    store of the same job planned with another one (more or less free GPU memory than last
    time) resumes with that run's plan.
    """
    plan, job = planned(config)
    if auto_batch and output is not None:
        stored = OutputStore.stored_fingerprint(output)
        if stored is not None and stored != fingerprint(job):
            for b in (1 << k for k in range(7)):
                other = planned(config.replace(batch_size=b))
                if fingerprint(other[1]) == stored:
                    config = config.replace(batch_size=b)
                    plan, job = other
                    break
    arrays, result_name = arrays_for(config, plan)
    attrs = (attrs_for(config, plan, result_name, len(arrays[result_name].get("levels", ())))
             if attrs_for is not None else None)
    store = OutputStore.open_or_create(output, job, arrays, result_name, len(plan.units),
                                       n_frames, config.overwrite, attrs)
    return store, config, plan, job


def result_attrs(config: PredictConfig, plan: Plan, name: str, source_axes: str | None,
                 source_scale: Any, title: str, n_lower: int = 0) -> dict[str, Any]:
    """OME-Zarr metadata of the result group with ``n_lower`` lower resolutions (none where
    the output's axes are in an order OME-Zarr does not allow, e.g. a time series of z
    stacks with channels: ``TZCYX``)."""
    from ..ngff import multiscale_attrs, scale_for_axes

    axes = plan.layout.output_axes(config.mode in ("probabilities", "logits"))
    if not ngff_axes_ok(axes):
        return {}
    scale = scale_for_axes(axes, source_axes, source_scale)
    factors = [[1] * (len(axes) - 2) + [2**k, 2**k] for k in range(n_lower + 1)]
    return multiscale_attrs(axes, scale, title,
                            labels=config.mode not in ("probabilities", "logits"),
                            n_levels=n_lower + 1, factors=factors)
