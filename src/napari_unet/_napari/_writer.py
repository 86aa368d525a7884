"""npe2 writers: image and labels layers to zarr (chunked, written block by block) or TIFF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_zarr", "write_tiff"]

CHUNK = {2: (512, 512), 3: (64, 256, 256)}


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    tail = CHUNK[3] if len(shape) >= 3 else CHUNK[2][-len(shape):]
    tail = tail[-min(len(shape), len(tail)):]
    return (1,) * (len(shape) - len(tail)) + tuple(min(c, s) for c, s in zip(tail,
                                                                             shape[-len(tail):],
                                                                             strict=True))


def write_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one layer to a zarr array; lazy (dask / zarr) data is copied chunk by chunk."""
    import dask.array as da
    import zarr

    if isinstance(data, list):  # multiscale: keep full resolution
        data = data[0]
    p = Path(path)
    if p.suffix != ".zarr":
        p = p.with_suffix(".zarr")
    arr = da.asarray(data)
    target = zarr.create_array(str(p), shape=arr.shape, dtype=arr.dtype,
                               chunks=_chunks(tuple(arr.shape)), overwrite=True)
    da.store(arr.rechunk(target.chunks), target, lock=False)
    attrs = {"name": meta.get("name"), "scale": list(map(float, meta.get("scale", ())))}
    target.attrs["napari"] = attrs
    return [str(p)]


def write_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one layer to a (BigTIFF when large) TIFF file with its voxel size."""
    import tifffile

    if isinstance(data, list):
        data = data[0]
    arr = np.asarray(data)
    scale = [float(s) for s in meta.get("scale", [1.0] * arr.ndim)]
    kwargs: dict[str, Any] = {}
    if arr.ndim >= 2:
        kwargs["resolution"] = (1.0 / scale[-1], 1.0 / scale[-2])
    if arr.dtype == np.uint32 or arr.dtype == np.int64:
        arr = arr.astype(np.uint32 if arr.max() < 2**32 else np.uint64)
    tifffile.imwrite(path, arr, bigtiff=arr.nbytes > 2**31, compression="zlib", **kwargs)
    return [path]
