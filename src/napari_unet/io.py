"""Open images lazily: numpy, dask, zarr arrays, and paths to zarr / OME-Zarr / TIFF.

Everything comes back as a dask array so the engine reads only the blocks it needs; a TIFF is
read through tifffile's zarr interface, never loaded whole.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["InputError", "VolumeInfo", "open_volume", "SUPPORTED_DTYPES", "RESULT_ATTR",
           "IMAGE_SUFFIXES", "PLAIN_IMAGE_SUFFIXES", "VENDOR_SUFFIXES", "is_image_path"]

# Plain 2D image files, read whole into memory (they are small by nature).
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Microscope vendor formats, read lazily through bioio where bioio and the format's reader
# plugin are installed (bioio-czi, bioio-nd2, bioio-lif, ...); the plugin that reads each.
VENDOR_SUFFIXES = {".czi": "bioio-czi", ".nd2": "bioio-nd2", ".lif": "bioio-lif",
                   ".lsm": "bioio-tifffile", ".ims": "bioio-imaris", ".oir": "bioio-bioformats",
                   ".vsi": "bioio-bioformats"}
# Every file or folder kind open_volume reads.
IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", *PLAIN_IMAGE_SUFFIXES, *VENDOR_SUFFIXES)

# Group attribute written by the prediction engine; also read back here to find the result.
RESULT_ATTR = "napari_unet"

SUPPORTED_DTYPES = (
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
)  # fmt: skip


from .errors import InputError  # noqa: E402  (defined with the other user errors)


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
    """What is known about an opened volume besides its pixels."""

    source: str
    scale: tuple[float, ...] | None = None
    axes: str | None = None
    multiscale: tuple[Any, ...] = ()  # lower resolutions (dask arrays), level 0 excluded
    # The zarr array behind level 0, where there is one (for a TIFF, tifffile's zarr view):
    # the engine reads a block's region from it in one call (zarr decodes its chunks
    # concurrently, into one buffer), 2-8x faster than through dask's chunk-by-chunk graph
    # on 2 cores (benchmarks/block_reads.py).
    reader: Any = dataclasses.field(default=None, compare=False, repr=False)


def _check_dtype(arr: Any, source: str) -> None:
    if np.dtype(arr.dtype).name not in SUPPORTED_DTYPES:
        raise InputError(
            f"{source}: pixel type {arr.dtype} is not supported; convert the image to an "
            f"integer or float type ({', '.join(SUPPORTED_DTYPES[1:])})"
        )


def _ome_multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "multiscales" in attrs:  # OME-Zarr 0.4
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:  # OME-Zarr 0.5
        return ome["multiscales"]
    return None


def _open_zarr_path(path: Path) -> tuple[da.Array, VolumeInfo]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise InputError(f"{str(path)!r} is not a readable zarr store: {err}") from err
    source = str(path)
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), VolumeInfo(source, reader=node)
    attrs = dict(node.attrs)
    ours = attrs.get(RESULT_ATTR)
    if isinstance(ours, dict) and ours.get("result") in node:
        result = node[ours["result"]]
        if isinstance(result, zarr.Array):  # stores written before results were OME-Zarr
            return da.from_zarr(result), VolumeInfo(source, reader=result)
        node, attrs = result, dict(result.attrs)
        if not _ome_multiscales(attrs):  # axes OME-Zarr does not allow: level 0 alone
            level0 = node["0"]
            return da.from_zarr(level0), VolumeInfo(source, reader=level0)
    multiscales = _ome_multiscales(attrs)
    if multiscales:
        ms = multiscales[0]
        datasets = ms.get("datasets", [])
        if not datasets:
            raise InputError(f"{source}: OME-Zarr multiscales lists no datasets")
        level0 = node[datasets[0]["path"]]
        levels = [da.from_zarr(node[d["path"]]) for d in datasets]
        axes = ms.get("axes")
        axes_str = None
        if axes:
            names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
            axes_str = "".join(n[0].upper() for n in names)
        scale = None
        for t in datasets[0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = tuple(float(v) for v in t["scale"])
        return levels[0], VolumeInfo(source, scale, axes_str, tuple(levels[1:]),
                                       reader=level0)
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) == 1:
        return da.from_zarr(node[arrays[0]]), VolumeInfo(source, reader=node[arrays[0]])
    raise InputError(
        f"{source} is a zarr group with arrays {arrays or 'none'}; pass the path of one "
        f"array, e.g. {source}/{arrays[0] if arrays else 'NAME'}"
    )


def _zarr_behind(arr: da.Array) -> Any:
    """The zarr array that a dask array reads unchanged (``da.from_zarr``, as napari layers
    opened from zarr hold), else None: any slicing or arithmetic adds a layer to the graph."""
    import zarr

    layers = getattr(arr.__dask_graph__(), "layers", None)
    original = f"original-{arr.name}"
    if layers is None or set(layers) != {original, arr.name}:
        return None
    values = list(layers[original].values())
    if (len(values) == 1 and isinstance(values[0], zarr.Array)
            and tuple(values[0].shape) == tuple(arr.shape) and values[0].dtype == arr.dtype):
        return values[0]
    return None


def _open_tiff(path: Path) -> tuple[da.Array, VolumeInfo]:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            # tifffile axes: trust them only when they are plain T/C/Z/Y/X (S = samples = C).
            axes = series.axes.replace("S", "C")
            if any(a not in "TCZYX" for a in axes) or len(set(axes)) != len(axes):
                axes = None
            scale = _tiff_scale(tif, axes)
        store = tifffile.imread(str(path), aszarr=True)
        node = zarr.open(store, mode="r")
    except Exception as err:
        raise InputError(f"{str(path)!r} is not a readable TIFF file: {err}") from err
    if isinstance(node, zarr.Group):  # pyramidal TIFF: level 0 first
        keys = sorted(node.array_keys(), key=lambda k: int(k) if k.isdigit() else k)
        levels = [da.from_zarr(node[k]) for k in keys]
        return levels[0], VolumeInfo(str(path), scale, axes, tuple(levels[1:]),
                                     reader=node[keys[0]])
    return da.from_zarr(node), VolumeInfo(str(path), scale, axes, reader=node)


def _tiff_scale(tif: Any, axes: str | None) -> tuple[float, ...] | None:
    """Voxel size from ImageJ metadata (z spacing) and the TIFF resolution tags."""
    if axes is None:
        return None
    try:
        page = tif.pages[0]
        scale = {}
        tags = page.tags
        if "XResolution" in tags and "YResolution" in tags:
            xr = tags["XResolution"].value
            yr = tags["YResolution"].value
            if xr[0] and yr[0]:
                scale["X"] = xr[1] / xr[0]
                scale["Y"] = yr[1] / yr[0]
        ij = tif.imagej_metadata or {}
        if "spacing" in ij:
            scale["Z"] = float(ij["spacing"])
        if not scale:
            return None
        return tuple(float(scale.get(a, 1.0)) for a in axes)
    except Exception:  # metadata is a convenience; pixels still open without it
        return None


def _open_plain(path: Path) -> tuple[da.Array, VolumeInfo]:
    import imageio.v3 as iio

    try:
        image = np.asarray(iio.imread(path))
    except Exception as err:
        raise InputError(f"{str(path)!r} is not a readable {path.suffix[1:].upper()} image: "
                         f"{err}") from err
    axes = "YX" if image.ndim == 2 else "YXC" if image.ndim == 3 else None
    return da.from_array(image, chunks=image.shape), VolumeInfo(str(path), axes=axes)


def open_with_bioio(path: Path) -> tuple[da.Array, VolumeInfo]:
    """A file through bioio (its first scene), lazily: axes of size 1 among T, C and Z
    dropped, the voxel size from its metadata."""
    plugin = VENDOR_SUFFIXES.get(path.suffix.lower(), "the bioio plugin for the format")
    try:
        from bioio import BioImage
    except ImportError as err:
        raise InputError(f"{str(path)!r}: {path.suffix} files are read through bioio: pip "
                         f"install bioio {plugin}") from err
    try:
        image = BioImage(str(path))
        data, order = image.dask_data, image.dims.order
        sizes = image.physical_pixel_sizes
    except Exception as err:
        raise InputError(f"{str(path)!r} could not be read through bioio ({err}); is its "
                         f"reader installed? pip install {plugin}") from err
    keep = [i for i, a in enumerate(order) if a in "YX" or data.shape[i] > 1]
    arr = data[tuple(slice(None) if i in keep else 0 for i in range(data.ndim))]
    axes = "".join(order[i] for i in keep)
    known = {a: getattr(sizes, a, None) for a in "ZYX"}
    scale = (tuple(float(known.get(a) or 1.0) for a in axes)
             if any(known.values()) and set(axes) <= set("TCZYX") else None)
    return arr, VolumeInfo(str(path), scale, axes)


def is_image_path(path: Path) -> bool:
    """Whether ``path`` names something :func:`open_volume` reads (by its name)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def open_volume(source: Any) -> tuple[da.Array, VolumeInfo]:
    """Open an image as a lazy dask array.

    Parameters
    ----------
    source : array-like or path
        numpy / dask / zarr array, or a path to a zarr array or group (OME-Zarr: level 0,
        a napari-unet result: its result array), to a TIFF file (read lazily), to a PNG,
        JPEG or BMP image (read whole), or to a microscope file (CZI, ND2, LIF, ...: read
        lazily through bioio where it and the format's plugin are installed).

    Returns
    -------
    (dask.array.Array, VolumeInfo)

    Raises
    ------
    InputError
        Missing path, unknown format, unreadable file or unsupported pixel type.
    """
    import zarr

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"input {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff") and path.is_file():
            arr, info = _open_tiff(path)
        elif suffix in PLAIN_IMAGE_SUFFIXES and path.is_file():
            arr, info = _open_plain(path)
        elif suffix in VENDOR_SUFFIXES and path.is_file():
            arr, info = open_with_bioio(path)
        elif path.is_dir() and (suffix == ".zarr" or (path / "zarr.json").exists()
                                or (path / ".zarray").exists() or (path / ".zgroup").exists()):
            arr, info = _open_zarr_path(path)
        else:
            raise InputError(
                f"input {str(path)!r} is neither a zarr store nor a TIFF, PNG, JPEG, BMP or "
                f"microscope file ({', '.join(VENDOR_SUFFIXES)}, through bioio); give a .zarr "
                "folder or such a file (or an array from Python)"
            )
    elif isinstance(source, da.Array):
        arr, info = source, VolumeInfo("dask array", reader=_zarr_behind(source))
    elif isinstance(source, zarr.Array):
        arr, info = da.from_zarr(source), VolumeInfo("zarr array", reader=source)
    elif isinstance(source, np.ndarray):
        arr, info = da.from_array(source, chunks=source.shape or ()), VolumeInfo("numpy array")
    elif hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        arr, info = da.from_array(source), VolumeInfo(type(source).__name__)
    else:
        raise InputError(
            f"cannot read an image from {type(source).__name__}; give a numpy, dask or zarr "
            "array, or a path to a .zarr folder or a .tif file"
        )
    _check_dtype(arr, info.source)
    return arr, info
