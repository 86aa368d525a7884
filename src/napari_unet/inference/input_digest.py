"""What a prediction job records of its input, so that a store resumes only for the same data.

A resumed run keeps the blocks already written, so it must prove that the input has not
changed since they were computed.  The record holds:

- the array's metadata (shape, dtype, storage chunks);
- for inputs backed by files (a TIFF, a zarr store on disk, also behind a dask array or a
  napari layer opened from zarr): the size and modification time of every file, summed up
  (an edit of any chunk or page in place changes them);
- a content digest of up to ``SAMPLED_BLOCKS`` chunks spread evenly over the array (its
  storage chunks where it is stored in chunks): every byte of a numpy array (one chunk),
  a fixed sample of a large volume whatever its size.

A change that touches no file's size or time and none of the sampled chunks (e.g. a lazily
computed dask array whose source changed outside any file) is not detected; the docs say so.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["input_record", "SAMPLED_BLOCKS", "describe_change"]

SAMPLED_BLOCKS = 32


def _hash_array(h: Any, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(memoryview(a).cast("B"))


def _sampled_blocks(arr: da.Array, n: int) -> list[tuple[int, ...]]:
    """Indices of up to ``n`` blocks spread evenly over the block grid (first and last
    included); depends only on the grid."""
    total = int(np.prod(arr.numblocks)) if arr.ndim else 1
    picks = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))
    return [tuple(int(v) for v in np.unravel_index(int(i), arr.numblocks)) for i in picks]


def _content_digest(arr: da.Array) -> dict[str, Any]:
    h = hashlib.blake2b(digest_size=20)
    blocks = _sampled_blocks(arr, SAMPLED_BLOCKS)
    for idx in blocks:
        h.update(str(idx).encode())
        _hash_array(h, np.asarray(arr.blocks[idx].compute(scheduler="threads")))
    whole = len(blocks) == (int(np.prod(arr.numblocks)) if arr.ndim else 1)
    return {"kind": "full" if whole else "sampled", "blocks": len(blocks),
            "value": h.hexdigest()}


def _local_path(reader: Any, source: str) -> Path | None:
    """The file or folder on disk that holds the input's data, where there is one: the
    zarr array's own folder where known (so that other arrays of the same store, e.g. labels
    written into an OME-Zarr image, are not the input), else the source path."""
    store = getattr(reader, "store", None)
    root = getattr(store, "root", None)
    if root is not None:
        path = Path(root) / str(getattr(reader, "path", "") or "")
        if path.exists():
            return path
    if source and os.path.exists(source):
        return Path(source)
    return None


def _file_signature(path: Path) -> dict[str, Any]:
    """Count, total size and newest modification time of the files at ``path``."""
    if path.is_file():
        st = path.stat()
        return {"files": 1, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    count = size = newest = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:  # removed while listing: the signature differs either way
                continue
            count += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return {"files": count, "bytes": size, "mtime_ns": newest}


def input_record(array: da.Array, source: str, reader: Any = None) -> dict[str, Any]:
    """The part of a job's fingerprint that identifies its input's data.

    Parameters
    ----------
    array : dask.array.Array
        The input as opened (``open_volume``).
    source : str
        Its path, or a description of an array.
    reader : zarr.Array, optional
        The zarr array behind it (``VolumeInfo.reader``), whose files are listed.
    """
    record: dict[str, Any] = {}
    path = _local_path(reader, source)
    if path is not None:
        record["files"] = _file_signature(path)
    record["digest"] = _content_digest(array)
    return record


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two job descriptions, in words (for the refusal to resume)."""
    old_in, new_in = old.get("input", {}), new.get("input", {})
    if old_in.get("content") is None:
        return ("it was written by an earlier version of napari-unet that did not record the "
                "input's content, so resuming it cannot be proven safe")
    if old_in != new_in:
        if old_in.get("content") != new_in.get("content") and all(
                old_in.get(k) == new_in.get(k) for k in ("source", "shape", "dtype")):
            return "the input's content changed since it was written (same source and shape)"
        return "it was written from another input"
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "it holds the result of a job with other settings (" + ", ".join(differing) + ")"
