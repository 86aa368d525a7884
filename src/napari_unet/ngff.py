"""OME-Zarr (NGFF 0.5) metadata of the results napari-unet writes: a multiscale image, and for
labels an ``image-label``, so that OME-Zarr readers (napari-ome-zarr, Fiji / MoBIE, QuPath,
webknossos, neuroglancer) open a result with its axes and voxel sizes.

Only the metadata is made here: the arrays are written chunk by chunk by the engine, which the
writers of the OME-Zarr libraries (whole arrays at once) do not do; the tests validate what is
written with ``ome-zarr-models``, an independent implementation of the specification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["NGFF_VERSION", "ngff_axes_ok", "multiscale_attrs", "scale_for_axes", "voxel_size",
           "voxel_size_notice", "labels_image_of", "register_label"]

NGFF_VERSION = "0.5"
_AXIS = {"T": ("t", "time"), "C": ("c", "channel"), "Z": ("z", "space"),
         "Y": ("y", "space"), "X": ("x", "space")}


def ngff_axes_ok(axes: str) -> bool:
    """Whether ``axes`` (letters from "TCZYX") is an order NGFF allows: 2-5 axes, time
    first, then channel, then 2 or 3 spatial axes."""
    spatial = [a for a in axes if a in "ZYX"]
    order = "TCZYX"
    return (2 <= len(axes) <= 5 and len(set(axes)) == len(axes) and all(a in order for a in axes)
            and list(axes) == sorted(axes, key=order.index) and len(spatial) in (2, 3)
            and axes.endswith("YX"))


def scale_for_axes(axes: str, source_axes: str | None,
                   source_scale: Sequence[float] | None) -> list[float]:
    """Voxel size of every axis of ``axes`` taken from an input's axes and scale (1 where
    the input says nothing, and for time and channels)."""
    known = _spatial_scale(source_axes, source_scale)
    return [known.get(a, 1.0) for a in axes]


def _spatial_scale(source_axes: str | None, source_scale: Sequence[float] | None
                   ) -> dict[str, float]:
    """Positive voxel sizes of the Z / Y / X axes an input states, by axis letter."""
    if not source_axes or source_scale is None or len(source_axes) != len(source_scale):
        return {}
    return {a: float(s) for a, s in zip(source_axes.upper(), source_scale, strict=True)
            if a in "ZYX" and float(s) > 0}


def voxel_size(axes: str, source_axes: str | None, source_scale: Sequence[float] | None
               ) -> tuple[float, ...] | None:
    """Voxel size along ``axes`` (spatial letters) from an input's axes and scale; None
    where the input does not say -- including a scale of 1 on every axis, which is what
    files and napari layers without calibration report."""
    known = _spatial_scale(source_axes, source_scale)
    if any(a not in known for a in axes):
        return None
    sizes = tuple(known[a] for a in axes)
    return None if all(s == 1.0 for s in sizes) else sizes


def voxel_size_notice(model_size: Sequence[float] | None, image_size: Sequence[float] | None,
                      limit: float = 1.5) -> str | None:
    """A warning where an image's voxels differ from the model's training voxels by more
    than ``limit`` along an axis (the last axes of the image's size are compared with the
    model's: a 2D model on a z stack compares Y and X)."""
    if not model_size or not image_size or len(image_size) < len(model_size):
        return None
    image = tuple(image_size)[len(image_size) - len(model_size):]
    ratios = [i / m for i, m in zip(image, model_size, strict=True)]
    if all(1 / limit <= r <= limit for r in ratios):
        return None
    fmt = " x ".join
    factor = ", ".join(f"{r:.2g}" for r in ratios)
    return (f"the model was trained on voxels of {fmt(f'{v:g}' for v in model_size)} and this "
            f"image's are {fmt(f'{v:g}' for v in image)} ({factor}x): objects look that many "
            "times smaller to the model than in training (larger below 1). Resample the "
            "image by that factor first (e.g. skimage.transform.rescale), give the right "
            "voxel_size if the image's metadata is wrong, or train on data at this voxel "
            "size")


def multiscale_attrs(axes: str, scale: Sequence[float], name: str, labels: bool,
                     n_levels: int = 1, factors: Sequence[Sequence[int]] | None = None,
                     unit: str | None = None) -> dict[str, Any]:
    """The ``ome`` attributes of a multiscale group whose levels are arrays ``"0"``,
    ``"1"``, ... (level ``k`` downsampled by ``factors[k]`` per axis from level 0).

    Parameters
    ----------
    axes : str
        Letters from "TCZYX" in NGFF order (:func:`ngff_axes_ok`).
    scale : sequence of float
        Voxel size of level 0 per axis.
    name : str
        The image's name.
    labels : bool
        Add an ``image-label`` entry (an integer label image).
    unit : str, optional
        Unit of the spatial axes (e.g. "micrometer").
    """
    if not ngff_axes_ok(axes):
        raise ValueError(f"axes {axes!r} are not in an order OME-Zarr allows (T, C, Z, Y, X)")
    entries = []
    for a in axes:
        key, kind = _AXIS[a]
        entry: dict[str, Any] = {"name": key, "type": kind}
        if kind == "space" and unit:
            entry["unit"] = unit
        entries.append(entry)
    datasets = []
    for k in range(n_levels):
        f = list(factors[k]) if factors is not None else [1] * len(axes)
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(s) * fk for s, fk in zip(scale, f, strict=True)]}
        ]})
    ome: dict[str, Any] = {"version": NGFF_VERSION,
                           "multiscales": [{"name": name, "axes": entries,
                                            "datasets": datasets}]}
    if labels:
        ome["image-label"] = {}
    return {"ome": ome}


def labels_image_of(output: Any) -> Any:
    """The OME-Zarr image whose ``labels`` group ``output`` is in (``image.zarr/labels/
    NAME``), or None for any other output path.

    Raises
    ------
    InputError
        The image is OME-Zarr 0.4 (zarr v2): labels written by napari-unet are zarr v3.
    """
    from pathlib import Path

    import zarr

    from .errors import InputError

    if output is None:
        return None
    output = Path(output)
    image = output.parent.parent
    if output.parent.name != "labels" or not image.is_dir():
        return None
    try:
        group = zarr.open_group(str(image), mode="r")
    except Exception:
        return None
    attrs = dict(group.attrs)
    if "multiscales" in attrs:
        raise InputError(
            f"{str(image)!r} is an OME-Zarr 0.4 (zarr v2) image; napari-unet writes labels "
            "as OME-Zarr 0.5 (zarr v3), which its readers would not find there -- write "
            "them to a store of their own (e.g. nuclei.zarr) or convert the image to 0.5")
    return image if isinstance(attrs.get("ome"), dict) and "multiscales" in attrs["ome"] \
        else None


def register_label(image: Any, name: str) -> None:
    """List label image ``name`` in the ``labels`` group of OME-Zarr 0.5 image ``image``
    (creating the group), so that OME-Zarr readers find it."""
    import zarr

    root = zarr.open_group(str(image), mode="r+")
    labels = root.require_group("labels")
    ome = dict(labels.attrs.get("ome") or {"version": NGFF_VERSION})
    names = list(ome.get("labels") or [])
    if name not in names:
        ome["labels"] = [*names, name]
        labels.attrs["ome"] = ome
