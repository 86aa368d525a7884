"""The scripting facade: the same functions back the CLI and the napari widgets."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from .config import PredictConfig
from .events import drain

__all__ = ["predict", "predict_iter"]


def predict_iter(
    model: Any,
    image: Any,
    output: Any = None,
    config: PredictConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> Generator[Any, None, Any]:
    """Generator form of :func:`predict`: yields progress events, returns the result.

    napari runs this as a cancellable ``thread_worker``; the CLI feeds a progress bar from it.
    """
    from .inference.engine import predict_iter as _predict_iter

    return (yield from _predict_iter(model, image, output, config, cancel, **options))


def predict(
    model: Any,
    image: Any,
    output: Any = None,
    config: PredictConfig | None = None,
    *,
    progress: Callable[[Any], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> Any:
    """Segment ``image`` with ``model``, tile by tile and block by block.

    Parameters
    ----------
    model : UNet or path
        A :class:`~napari_unet.UNet` or the path of a model saved with ``save_model``.
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
    return drain(predict_iter(model, image, output, config, cancel, **options), progress)
