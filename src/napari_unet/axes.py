"""The one rule for the axes of an image: which are spatial, which are channels, which are
iterated over -- for prediction, training, the widgets and the CLI alike.

Everything works on a canonical view ``(*lead, C, *spatial)``: ``lead`` holds a time axis
and, for a 2D model on a 3D stack, the z axis taken slice by slice.  Axes given by the user
(``axes="ZYX"``, letters from "TCZYX") always win; otherwise they are inferred from the
shapes: for prediction from the image and the model's channels (:func:`resolve_layout`),
for training from the image and its labels, which cover the spatial axes (and the lead
axes) exactly (:func:`training_layout`).  A ``(10, 256, 256)`` stack with ``(10, 256, 256)``
labels trains a 2D model on 10 slices and is predicted slice by slice; with ``(256, 256)``
labels it is 10 channels, for training and prediction alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dask.array as da
import numpy as np

from .io import InputError

__all__ = ["Layout", "resolve_layout", "training_layout", "check_axes"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How an input's axes map onto the canonical ``(*lead, C, *spatial)`` view.

    Attributes
    ----------
    axes : str
        Input axes, e.g. "TCZYX", "YXC", "ZYX".
    lead_axes : str
        Iterated axes in canonical order ("T", "Z" for per-slice, or both).
    spatial_axes : str
        "YX" or "ZYX".
    has_channel : bool
        Whether the input has an explicit channel axis.
    to_gray : bool
        Average the colour channels into one (a one-channel model trained on grayscale
        versions of colour images).
    """

    axes: str
    lead_axes: str
    spatial_axes: str
    has_channel: bool
    to_gray: bool = False

    @property
    def per_slice(self) -> bool:
        """A 2D model runs over a z stack slice by slice."""
        return "Z" in self.lead_axes

    def canonical(self, image: da.Array) -> da.Array:
        """Reorder ``image`` to ``(*lead, C, *spatial)`` (C added when absent)."""
        order = [self.axes.index(a) for a in self.lead_axes]
        if self.has_channel:
            order.append(self.axes.index("C"))
        order += [self.axes.index(a) for a in self.spatial_axes]
        out = image.transpose(order)
        if self.to_gray:
            n = len(self.lead_axes)
            rgb = out[(slice(None),) * n + (slice(0, 3),)]
            out = rgb.astype("float32").mean(axis=n, keepdims=True)
        elif not self.has_channel:
            n = len(self.lead_axes)
            out = da.expand_dims(out, axis=n)
        return out

    def region(self, source: Any, index: tuple[Any, ...]) -> np.ndarray:
        """``canonical(source)[index]`` read from ``source`` in one numpy-style indexing call
        (a zarr array decodes the chunks of one read concurrently), for ``index`` =
        ``(*lead integers, slice(None), *spatial slices)``; not for ``to_gray`` layouts."""
        n = len(self.lead_axes)
        where = dict(zip(self.lead_axes, index[:n], strict=True))
        where.update(zip(self.spatial_axes, index[n + 1 :], strict=True))
        x = np.asarray(source[tuple(where.get(a, slice(None)) for a in self.axes)])
        kept = [a for a in self.axes if a not in self.lead_axes]  # the axes x still has
        order = [kept.index(a) for a in ("C" if self.has_channel else "") + self.spatial_axes]
        x = x.transpose(order)
        return x if self.has_channel else x[None]

    def output_axes(self, with_channel: bool) -> str:
        return self.lead_axes + ("C" if with_channel else "") + self.spatial_axes


def _infer_axes(
    shape: tuple[int, ...], spatial_dims: int, in_channels: int, source: str, to_gray: bool
) -> str:
    nd = len(shape)
    spatial = "YX" if spatial_dims == 2 else "ZYX"
    extra = nd - spatial_dims
    hint = "pass axes= (e.g. axes='ZYX', 'CYX', 'YXC', 'TZYX')"
    if extra == 0:
        if in_channels > 1:
            raise InputError(
                f"{source}: shape {shape} has no channel axis but the model takes "
                f"{in_channels} channels; give an image with a channel axis or {hint}"
            )
        return spatial
    if extra == 1:
        if in_channels > 1:
            if spatial_dims == 2 and shape[-1] == in_channels:
                return "YXC"
            if shape[0] == in_channels:
                return "C" + spatial
            raise InputError(
                f"{source}: shape {shape} has no axis of size {in_channels} where the channels "
                f"are expected (first or last); {hint}"
            )
        if spatial_dims == 2:
            if shape[-1] in (3, 4) and min(shape[:2]) > 4:
                if to_gray:
                    return "YXC"
                raise InputError(
                    f"{source}: shape {shape} looks like an RGB(A) image but the model takes one "
                    "channel; convert it to grayscale, or pass axes='ZYX' if it is a stack of "
                    f"{shape[-1]} slices"
                )
            return "ZYX"  # 2D model over a stack: slice by slice
        if shape[0] == 1:
            return "CZYX"
        return "TZYX"
    if extra == 2:
        if in_channels > 1 and shape[1] == in_channels:
            return "TC" + spatial
        if in_channels == 1 and shape[1] == 1:
            return "TC" + spatial
        if in_channels == 1 and spatial_dims == 2:
            return "TZYX"
        raise InputError(f"{source}: cannot tell the axes of shape {shape}; {hint}")
    raise InputError(
        f"{source}: a {spatial_dims}D model cannot take a {nd}D image of shape {shape}; "
        f"expected {spatial_dims}D to {spatial_dims + 2}D ({hint})"
    )


def resolve_layout(
    shape: tuple[int, ...],
    spatial_dims: int,
    in_channels: int,
    axes: str | None = None,
    source: str = "input",
    rgb_to_gray: bool = False,
) -> Layout:
    """Check the input against the model and decide the role of each axis.

    Raises
    ------
    InputError
        The image has the wrong number of dimensions, no or the wrong channel axis, or
        axes that contradict its shape.

    With ``rgb_to_gray`` an RGB(A) image feeds a one-channel model as the mean of its colour
    channels (models trained on grayscale versions of colour images ask for this).
    """
    if axes is None:
        axes = _infer_axes(shape, spatial_dims, in_channels, source, rgb_to_gray)
    axes = check_axes(axes, shape, spatial_dims, source)
    spatial = "YX" if spatial_dims == 2 else "ZYX"
    has_c = "C" in axes
    n_channels = shape[axes.index("C")] if has_c else 1
    to_gray = rgb_to_gray and in_channels == 1 and n_channels in (3, 4)
    if n_channels != in_channels and not to_gray:
        raise InputError(
            f"{source}: the image has {n_channels} channel(s) (axes {axes}, shape {shape}) but "
            f"the model takes {in_channels}; choose a matching model or image"
        )
    lead = "".join(a for a in "TZ" if a in axes and a not in spatial)
    for a, s in zip(axes, shape, strict=True):
        if s < 1:
            raise InputError(f"{source}: axis {a} of shape {shape} is empty")
    return Layout(axes, lead, spatial, has_c, to_gray)


def check_axes(axes: str, shape: tuple[int, ...], spatial_dims: int, source: str) -> str:
    """Upper-case ``axes`` after checking them against ``shape`` and the model's
    dimensionality."""
    axes = axes.upper()
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or any(
            a not in "TCZYX" for a in axes):
        raise InputError(f"{source}: axes {axes!r} do not match the {len(shape)}D shape "
                         f"{shape} (distinct letters from TCZYX, one per axis)")
    spatial = "YX" if spatial_dims == 2 else "ZYX"
    if any(a not in axes for a in spatial):
        raise InputError(f"{source}: a {spatial_dims}D model needs axes {spatial}, axes "
                         f"{axes!r} lack {''.join(a for a in spatial if a not in axes)}")
    return axes


def training_layout(
    image_shape: tuple[int, ...],
    labels_shape: tuple[int, ...],
    spatial_dims: int,
    axes: str | None = None,
    source: str = "training pair",
) -> Layout:
    """Axes of a training image whose labels cover its spatial (and lead) axes.

    Without ``axes``: the labels' axes are the image's spatial axes, preceded by Z (a 2D
    model on a stack: one training slice per z) or T; an image axis more than the labels is
    the channel axis, first or last.

    Raises
    ------
    InputError
        The labels do not cover the image, or the axes cannot be told.
    """
    spatial = "YX" if spatial_dims == 2 else "ZYX"
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    hint = "pass axes= (e.g. 'CYX', 'YXC', 'ZYX', 'CZYX')"
    if axes is None:
        extra = len(labels_shape) - spatial_dims
        if extra < 0 or extra > 2:
            raise InputError(
                f"{source}: labels of shape {labels_shape} are not {spatial_dims}D (or a stack "
                f"of {spatial_dims}D slices) for a {spatial_dims}D model")
        label_axes = ("TZ" if spatial_dims == 2 else "T")[-extra:] if extra else ""
        if extra == 2 and spatial_dims == 3:
            raise InputError(f"{source}: labels of shape {labels_shape} have too many axes "
                             f"for a 3D model; {hint}")
        label_axes += spatial
        if image_shape == labels_shape:
            axes = label_axes
        elif image_shape[1:] == labels_shape:
            axes = "C" + label_axes
        elif image_shape[:-1] == labels_shape:
            axes = label_axes + "C"
        else:
            raise InputError(
                f"{source}: labels of shape {labels_shape} do not match the image of shape "
                f"{image_shape}; labels must cover the image pixel for pixel (an image may "
                f"have one channel axis more, first or last)")
    axes = check_axes(axes, image_shape, spatial_dims, source)
    label_axes = axes.replace("C", "")
    expected = tuple(s for a, s in zip(axes, image_shape, strict=True) if a != "C")
    if expected != labels_shape:
        raise InputError(
            f"{source}: labels of shape {labels_shape} do not match the image of shape "
            f"{image_shape} with axes {axes!r} (labels cover axes {label_axes!r}: "
            f"{expected}); labels must cover the image pixel for pixel")
    lead = "".join(a for a in "TZ" if a in axes and a not in spatial)
    return Layout(axes, lead, spatial, "C" in axes)
