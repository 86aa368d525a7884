"""The scripting facade: the same functions back the CLI and the napari widgets."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from .config import PredictConfig, TrainConfig
from .events import drain

__all__ = ["predict", "predict_iter", "predict_many", "predict_many_iter", "train",
           "train_iter", "cross_validate"]


def predict_iter(
    model: Any,
    image: Any,
    output: Any = None,
    config: PredictConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    client: Any = None,
    **options: Any,
) -> Generator[Any, None, Any]:
    """Generator form of :func:`predict`: yields progress events, returns the result.

    napari runs this as a cancellable ``thread_worker``; the CLI feeds a progress bar from it.
    """
    from .inference.engine import predict_iter as _predict_iter

    return (yield from _predict_iter(model, image, output, config, cancel, client, **options))


def predict(
    model: Any,
    image: Any,
    output: Any = None,
    config: PredictConfig | None = None,
    *,
    progress: Callable[[Any], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    client: Any = None,
    **options: Any,
) -> Any:
    """Segment ``image`` with ``model``, tile by tile and block by block.

    Parameters
    ----------
    model : UNet, path, "nuclei" or None
        A :class:`~napari_unet.UNet`, the path of a model saved with ``save_model``, or the
        built-in nuclei model (``"nuclei"`` or None).
    image : array-like or path
        numpy, dask or zarr array, or a path to a zarr / OME-Zarr store or a TIFF file.
        Axes YX or ZYX with an optional channel axis and an optional leading time axis
        (see ``axes``).  Read lazily: the image may be larger than memory.
    output : path, optional
        ``.zarr`` folder written chunk by chunk.  An interrupted run of the same job resumes
        there.  Omit it for small images to get a numpy array back.
    config : PredictConfig, optional
        All settings in one validated object; ``**options`` override single fields, e.g.
        ``mode="instances"``, ``tile=(128, 128, 128)``, ``block_shape=(256, 256, 256)``,
        ``device="cuda"``, ``precision="bf16"``, ``overwrite=True``.
    progress : callable, optional
        Called with every progress event.
    cancel : callable, optional
        Polled between blocks; return True to stop (finished blocks are kept).
    client : dask.distributed.Client, optional
        Run the blocks on a dask cluster (``LocalCluster``, a remote scheduler, SLURM via
        dask-jobqueue ...).  Same result as a local run; workers read and write the stores.

    Returns
    -------
    zarr.Array or numpy.ndarray

    Examples
    --------
    >>> import napari_unet as nu
    >>> model = nu.load_model("nuclei.safetensors")                 # doctest: +SKIP
    >>> labels = nu.predict(model, "stack.zarr", "labels.zarr",
    ...                     mode="instances")                        # doctest: +SKIP
    """
    return drain(predict_iter(model, image, output, config, cancel, client, **options), progress)


def predict_many_iter(model: Any, inputs: Any, out_dir: Any,
                      config: PredictConfig | None = None, **options: Any
                      ) -> Generator[Any, None, Any]:
    """Generator form of :func:`predict_many` (see :mod:`napari_unet.batch`)."""
    from .batch import predict_many_iter as _predict_many_iter

    return (yield from _predict_many_iter(model, inputs, out_dir, config, **options))


def predict_many(model: Any, inputs: Any, out_dir: Any, config: PredictConfig | None = None,
                 *, progress: Callable[[Any], None] | None = None,
                 cancel: Callable[[], bool] | None = None, **options: Any) -> Any:
    """Segment a folder, a glob pattern or a list of images into ``out_dir``: per image a
    mask and an overlay, one ``summary.csv`` (and with ``objects=True`` a per-object
    table); a failing file is reported and skipped, a rerun skips finished files.  Returns a
    :class:`~napari_unet.batch.BatchResult` (see :mod:`napari_unet.batch`)."""
    from .batch import predict_many as _predict_many

    return _predict_many(model, inputs, out_dir, config, progress=progress, cancel=cancel,
                         **options)


def train_iter(
    train_data: Any,
    config: TrainConfig | None = None,
    val_data: Any = None,
    run_dir: Any = "napari-unet-run",
    resume: bool = False,
    cancel: Callable[[], bool] | None = None,
    metadata: dict[str, Any] | None = None,
    axes: str | None = None,
) -> Generator[Any, None, Any]:
    """Generator form of :func:`train` (yields Progress / EpochEnd, returns TrainResult)."""
    from .training.loop import train_iter as _train_iter

    return (yield from _train_iter(train_data, config, val_data, run_dir, resume, cancel,
                                   metadata, axes))


def train(
    train_data: Any,
    config: TrainConfig | None = None,
    val_data: Any = None,
    run_dir: Any = "napari-unet-run",
    *,
    resume: bool = False,
    progress: Callable[[Any], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    axes: str | None = None,
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Train a 2D or 3D U-Net on (image, labels) pairs.

    Parameters
    ----------
    train_data : sequence of (image, labels)
        numpy / dask / zarr arrays or paths; dense instance ids, class ids or scribbles
        (see ``label_mode``).
    config : TrainConfig, optional
        All settings; ``**options`` override single fields (``epochs=20``,
        ``label_mode="scribbles"``, ``patch_size=(64, 64, 64)`` ...).
    val_data : sequence of (image, labels), optional
        Validation pairs (default: hold out part of ``train_data``).
    run_dir : path
        Where the best / last checkpoints, config and history go.
    resume : bool
        Continue an interrupted run in ``run_dir``.
    progress, cancel : callable, optional
        Event callback; cancel hook polled every step.
    axes : str, optional
        Axes of every image, letters from "TCZYX" (e.g. "CYX", "YXC", "ZYX"); inferred from
        the labels' shape when omitted: labels cover the spatial axes (and Z of a stack
        for a 2D model, trained slice by slice), an extra image axis is the channel.
    metadata : dict, optional
        Facts stored in the saved models, e.g. ``rgb_to_gray=True``.

    Returns
    -------
    TrainResult
        Paths of the best and last models, the epoch history and the best validation Dice.
    """
    config = config or TrainConfig()
    if options:
        config = config.replace(**options)
    return drain(train_iter(train_data, config, val_data, run_dir, resume, cancel, metadata,
                            axes), progress)


def cross_validate(
    data: Any,
    config: TrainConfig | None = None,
    folds: int = 5,
    run_dir: Any = "napari-unet-cv",
    *,
    progress: Callable[[Any], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    groups: Any = None,
    **options: Any,
) -> Any:
    """k-fold cross-validation (seeded by ``config.seed``): per-fold and mean validation Dice.

    ``groups`` (one label per pair: animal, patient, plate...) keeps every group within one
    fold, so no group is both trained on and validated on.  Returns a
    ``CrossValidationResult`` whose ``folds`` are the per-fold ``TrainResult``s.
    """
    from .training.crossval import cross_validate_iter

    config = config or TrainConfig()
    if options:
        config = config.replace(**options)
    return drain(cross_validate_iter(data, config, folds, run_dir, cancel, groups), progress)
