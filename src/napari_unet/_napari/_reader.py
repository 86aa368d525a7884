"""npe2 reader: zarr / OME-Zarr / TIFF opened lazily as dask arrays (never loaded whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import RESULT_ATTR, InputError, open_volume

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]):
    """Return a reader for ``path`` if napari-unet can open it, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff") and p.is_file():
        return read
    if p.is_dir() and (suffix == ".zarr" or (p / "zarr.json").exists()
                       or (p / ".zarray").exists() or (p / ".zgroup").exists()):
        return read
    return None


def _is_labels(path: Path, dtype: Any) -> bool:
    """Our own label results, or integer data stored under a labels-like name."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        record = dict(node.attrs).get(RESULT_ATTR) if isinstance(node, zarr.Group) else None
    except Exception:
        record = None
    if isinstance(record, dict):
        if record.get("result") == "labels":
            return True
        try:  # a label image (written into an OME-Zarr image's labels group)
            result = record.get("result")
            ome = dict((node if result == "." else node[result]).attrs).get("ome") or {}
        except Exception:
            return False
        return "image-label" in ome
    return dtype.kind in "iu" and "label" in path.name.lower()


def read(path: str | list[str]) -> list[LayerData]:
    """Read one path into a napari layer (image or labels, multiscale when stored so)."""
    if isinstance(path, list):
        path = path[0]
    p = Path(path)
    try:
        data, info = open_volume(p)
    except InputError:
        return []  # let another reader try
    levels = [data, *info.multiscale]
    payload: Any = levels if len(levels) > 1 else data
    meta: dict[str, Any] = {"name": p.stem}
    if info.scale is not None and len(info.scale) == data.ndim:
        meta["scale"] = info.scale
    if info.multiscale:
        meta["multiscale"] = True
    kind = "labels" if _is_labels(p, data.dtype) else "image"
    return [(payload, meta, kind)]
