"""Console / scripting helpers that understand napari layers: ``nu.segment(layer, viewer=v)``."""

from __future__ import annotations

from typing import Any

from ._layers import layer_axes, layer_data, layer_geometry, unique_name

__all__ = ["segment"]


def segment(
    image: Any,
    model: Any = None,
    output: Any = None,
    viewer: Any = None,
    **options: Any,
) -> Any:
    """Segment an image layer (or array) and, with ``viewer``, add the result as a layer.

    Parameters
    ----------
    image : napari layer or array-like
        ``viewer.layers['stack']``, or anything :func:`napari_unet.predict` accepts.
    model : UNet or path, optional
        Default: the built-in nuclei model.
    output : path, optional
        zarr store for large images (resumable); in memory when omitted.
    viewer : napari.Viewer, optional
        Adds the result next to the image (same scale and position).
    **options
        PredictConfig fields, e.g. ``mode="instances"``, ``tile=(64, 128, 128)``.

    Returns
    -------
    numpy.ndarray or zarr.Array

    Examples
    --------
    >>> import napari_unet as nu
    >>> labels = nu.segment(viewer.layers["nuclei"], viewer=viewer)   # doctest: +SKIP
    """
    from ..api import predict

    is_layer = hasattr(image, "data") and hasattr(image, "scale") and hasattr(image, "name")
    data = layer_data(image) if is_layer else image
    if is_layer and "axes" not in options:
        options["axes"] = layer_axes(image)
    result = predict(model, data, output, **options)
    if viewer is not None:
        mode = options.get("mode", "auto")
        name = unique_name(viewer, f"{getattr(image, 'name', 'image')} "
                                   f"{'labels' if mode == 'auto' else mode}")
        ndim = result.ndim
        geometry = layer_geometry(image, ndim) if is_layer else {}
        if mode == "probabilities":
            viewer.add_image(result, name=name, colormap="magma", **geometry)
        else:
            viewer.add_labels(result, name=name, **geometry)
    return result
