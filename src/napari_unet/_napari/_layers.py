"""Layer <-> array helpers.  Read on the GUI thread only; workers get plain arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["layer_data", "layer_axes", "visible_region", "layer_geometry", "unique_name"]


def layer_data(layer: Any) -> Any:
    """The array behind an image / labels layer (level 0 of a multiscale layer), not copied."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def layer_axes(layer: Any) -> str | None:
    """Axes napari knows for sure: RGB(A) layers keep colour last."""
    if getattr(layer, "rgb", False):
        return "ZYXC"[-layer.data.ndim if not layer.multiscale else -layer.data[0].ndim:]
    return None


def layer_voxel_size(layer: Any, spatial_dims: int) -> tuple[float, ...] | None:
    """The layer's scale along its last ``spatial_dims`` axes as a voxel size; None where it
    is 1 on all of them (napari's default: nothing known)."""
    ndim = (layer.data[0] if getattr(layer, "multiscale", False) else layer.data).ndim
    ndim -= 1 if getattr(layer, "rgb", False) else 0
    scale = tuple(float(s) for s in tuple(layer.scale)[:ndim][-spatial_dims:])
    return None if all(s == 1.0 for s in scale) else scale


def layer_geometry(layer: Any, ndim: int, region: tuple[slice, ...] | None = None
                   ) -> dict[str, Any]:
    """scale / translate of ``layer`` for a result layer with ``ndim`` dimensions, shifted to
    ``region`` (an index into the layer's data) when the result covers only that part."""
    scale = tuple(layer.scale)[-ndim:]
    translate = tuple(layer.translate)[-ndim:]
    pad = ndim - len(scale)
    scale, translate = (1.0,) * pad + scale, (0.0,) * pad + translate
    if region is not None:
        translate = tuple(t + s * r.start for t, s, r in zip(translate, scale, region,
                                                             strict=False))
    return {"scale": scale, "translate": translate}


def visible_region(viewer: Any, layer: Any, spatial_dims: int, depth: int = 1
                   ) -> tuple[slice, ...]:
    """Index of the part of ``layer`` on screen: the displayed window of the current slice.

    ``spatial_dims`` / ``depth``: a 3D model needs a z range (``depth`` slices around the
    current one) rather than a single slice.
    """
    data = layer_data(layer)
    ndim = data.ndim - (1 if getattr(layer, "rgb", False) else 0)
    shape = data.shape[:ndim]
    corners = np.asarray(layer.corner_pixels, dtype=int)  # (2, ndim), data coordinates
    point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    displayed = set(viewer.dims.displayed[-ndim:]) if ndim else set()
    offset = viewer.dims.ndim - ndim
    index: list[slice] = []
    for ax in range(ndim):
        size = shape[ax]
        if ax + offset in displayed:
            lo, hi = int(corners[0, ax]), int(corners[1, ax]) + 1
            lo, hi = max(0, lo), min(size, max(hi, lo + 1))
            index.append(slice(lo, hi))
        else:
            c = int(np.clip(round(point[ax]), 0, size - 1))
            if spatial_dims == 3 and ax == ndim - 3:
                half = depth // 2
                lo = max(0, min(c - half, size - depth))
                index.append(slice(lo, min(size, lo + depth)))
            else:
                index.append(slice(c, c + 1))
    return tuple(index)


def unique_name(viewer: Any, base: str) -> str:
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    k = 2
    while f"{base} [{k}]" in names:
        k += 1
    return f"{base} [{k}]"
