"""The output store of a prediction job, which also records the job's progress.

An output is a zarr group::

    out.zarr/               attrs["napari_unet"]: job description, fingerprint, result name
      labels | probabilities | logits    the result: an OME-Zarr (NGFF 0.5) multiscale group
        0                                level 0, written block by block
        1, 2, ...                        halved in Y and X (:mod:`.pyramid`), as level 0 is final
      semantic                           class map (instance jobs only; input of labelling)
      seeds                              seed components (instance jobs only)
      blocks_done                        one uncompressed byte per block, set after its write
      pyramid_done_1, _2, ...            one byte per chunk of each lower level
      frames_done                        one byte per labelled frame (instance jobs only)
      model                              the model's bytes (cluster jobs only)

The result is the store's only subgroup, so readers that open the first group of a zarr store
(napari's built-in reader) show the result, and OME-Zarr readers open ``out.zarr/labels``.

Progress lives in the store itself, so a run that was killed resumes from what is on disk:
a block counts as finished only once its marker is written, and the marker is written only
after the block's data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..io import RESULT_ATTR, InputError
from .input_digest import describe_change
from .pyramid import DONE_PREFIX

__all__ = ["OutputStore", "OutputExistsError", "fingerprint", "result_compressors", "LEVEL0",
           "STORE_FORMAT", "ROOT"]

# 2: the result is a multiscale group (level "0"); 1: the result was an array.
STORE_FORMAT = 2
LEVEL0 = "0"
# The result's name where the store's root is the result: a label image written into an
# OME-Zarr image's labels group holds its levels at its root, as OME-Zarr readers expect.
ROOT = "."
RESULT_NAMES = ("labels", "probabilities", "logits")


from ..errors import OutputExistsError  # noqa: E402


def fingerprint(job: Mapping[str, Any]) -> str:
    """Stable hash of a job description (everything that changes the numbers written)."""
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()


def result_compressors(dtype: Any) -> Any:
    """Zarr compressors of a result array of ``dtype``.

    Probabilities and logits compress little whatever the codec (1.1-1.6x), and zarr's
    default zstd halves the speed of writing them, which bounds a GPU run; blosc's lz4 on
    byte-shuffled values writes about twice as fast (``benchmarks/block_writes.py``).  Labels
    and class maps compress 9-40x with the default at the same speed, so they keep it.
    """
    if np.dtype(dtype).kind != "f":
        return "auto"
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")
    )


class OutputStore:
    """Result arrays and progress markers of one prediction job."""

    def __init__(self, group: zarr.Group, resumed: bool, path: Path | None = None) -> None:
        self.group = group
        self.resumed = resumed
        self.path = path
        record = dict(group.attrs[RESULT_ATTR])
        self.record = record
        self.result_name: str = record["result"]
        self._result_path = (self.result_name if record.get("format", 1) < 2
                             else LEVEL0 if self.result_name == ROOT
                             else f"{self.result_name}/{LEVEL0}")
        self.blocks_done = group["blocks_done"]
        self._done_cache: np.ndarray | None = None

    # -- creation / resumption -------------------------------------------------------------
    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike | None,
        job: dict[str, Any],
        arrays: Mapping[str, dict[str, Any]],
        result: str,
        n_blocks: int,
        n_frames: int,
        overwrite: bool,
        result_attrs: Mapping[str, Any] | None = None,
    ) -> OutputStore:
        """Resume the job stored at ``path`` or create a fresh store for it.

        Parameters
        ----------
        path : path-like or None
            Destination ``.zarr`` folder; None keeps everything in memory.
        job : dict
            JSON description of the job; its fingerprint decides whether a store resumes.
        arrays : mapping
            Name -> ``dict(shape=, chunks=, dtype=)`` of the arrays to create; the result's
            may list the shapes of its lower resolutions as ``levels`` (:mod:`.pyramid`).
        result : str
            Name of the group holding the final result (:data:`ROOT`: the store's root, for
            a store that is a label image inside an OME-Zarr image's ``labels`` group).
        overwrite : bool
            Replace an existing store that belongs to another job.
        result_attrs : mapping, optional
            Attributes of the result's group (its OME-Zarr metadata).

        Raises
        ------
        OutputExistsError
            ``path`` exists and is not this job's store, and ``overwrite`` is False
            (or it is not a zarr store at all, which is never deleted).
        """
        fp = fingerprint(job)
        if path is None:
            group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
            return cls._create(group, job, fp, arrays, result, n_blocks, n_frames,
                               result_attrs=result_attrs)

        path = Path(path)
        if path.exists():
            if not _is_zarr_dir(path):
                raise OutputExistsError(
                    f"output {str(path)!r} exists and is not a zarr store; choose another path "
                    "(napari-unet never deletes files it did not write)"
                )
            existing = cls._existing_record(path)
            if (existing is not None and existing.get("fingerprint") == fp
                    and existing.get("format") == STORE_FORMAT):
                return cls(zarr.open_group(str(path), mode="r+"), resumed=True, path=path)
            if existing is not None and existing.get("creating"):
                overwrite = True  # ours, interrupted while being created: it holds no results
            if not overwrite:
                if existing is None:
                    why = "it is a zarr store that napari-unet did not write"
                elif existing.get("format") != STORE_FORMAT:
                    why = (f"was written by another version of napari-unet (store format "
                           f"{existing.get('format')}, this version writes {STORE_FORMAT})")
                else:
                    why = describe_change(existing.get("job") or {}, job)
                raise OutputExistsError(
                    f"output {str(path)!r} already exists and {why}; run again with "
                    "--overwrite (Python: overwrite=True) to recompute it, or choose another "
                    "path"
                )
            shutil.rmtree(path)
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent, os.W_OK):
            raise InputError(f"cannot write the output: folder {str(parent)!r} is not writable")
        group = zarr.open_group(str(path), mode="w")
        store = cls._create(group, job, fp, arrays, result, n_blocks, n_frames, path,
                            result_attrs)
        return store

    @classmethod
    def stored_fingerprint(cls, path: str | os.PathLike) -> str | None:
        """Fingerprint of the job whose store is at ``path`` (None: no store of ours)."""
        path = Path(path)
        record = cls._existing_record(path) if _is_zarr_dir(path) else None
        return None if record is None else record.get("fingerprint")

    @staticmethod
    def _existing_record(path: Path) -> dict[str, Any] | None:
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception:
            return None
        record = group.attrs.get(RESULT_ATTR)
        return record if isinstance(record, dict) else None

    @classmethod
    def _create(
        cls,
        group: zarr.Group,
        job: dict[str, Any],
        fp: str,
        arrays: Mapping[str, dict[str, Any]],
        result: str,
        n_blocks: int,
        n_frames: int,
        path: Path | None = None,
        result_attrs: Mapping[str, Any] | None = None,
    ) -> OutputStore:
        # Marks the store as napari-unet's from the start, so a run interrupted before the
        # record below is written leaves a store that the next run may simply replace.
        group.attrs[RESULT_ATTR] = {"format": STORE_FORMAT, "creating": True}
        for name, spec in arrays.items():
            spec = {"compressors": result_compressors(spec["dtype"]), **spec}
            if name == result:
                attrs = dict(result_attrs or {})
                if name == ROOT:
                    group.attrs.update(attrs)
                    sub = group
                else:
                    sub = group.create_group(name, attributes=attrs)
                axes = ((attrs.get("ome") or {}).get("multiscales") or [{}])[0].get("axes")
                if axes:  # OME-Zarr 0.5: the arrays name their dimensions as the axes
                    spec["dimension_names"] = [a["name"] for a in axes]
                lower = [tuple(x) for x in spec.pop("levels", None) or ()]
                for k, shape in enumerate([tuple(spec["shape"]), *lower]):
                    sub.create_array(str(k), fill_value=0, **{**spec, "shape": shape})
                    if k:  # one raw byte per chunk of a lower level, set after its data
                        grid = tuple(-(-n // c) for n, c in zip(shape, spec["chunks"],
                                                                 strict=True))
                        group.create_array(f"{DONE_PREFIX}{k}", shape=grid,
                                           chunks=(1,) * len(grid), dtype="uint8",
                                           fill_value=0, compressors=None)
            else:
                group.create_array(name, fill_value=0, **spec)
        # One raw byte per chunk: a marker is either fully there or absent.
        group.create_array(
            "blocks_done", shape=(n_blocks,), chunks=(1,), dtype="uint8", fill_value=0,
            compressors=None,
        )
        if n_frames:
            group.create_array(
                "frames_done", shape=(n_frames,), chunks=(1,), dtype="uint8", fill_value=0,
                compressors=None,
            )
        # The record goes last: a store without it was never started and is not resumed.
        group.attrs[RESULT_ATTR] = {
            "format": STORE_FORMAT,
            "fingerprint": fp,
            "result": result,
            "job": job,
        }
        return cls(group, resumed=False, path=path)

    @property
    def where(self) -> str:
        """The store's path in words (for messages)."""
        return repr(str(self.path)) if self.path is not None else "the in-memory result"

    def todo_blocks(self) -> tuple[np.ndarray, list[int]]:
        """Done flags and the indices of the blocks still to run."""
        flags = self.done_blocks()
        return flags, [int(i) for i in np.flatnonzero(~flags)]

    # -- progress ---------------------------------------------------------------------------
    def read_flags(self, arr: zarr.Array) -> np.ndarray:
        try:
            return np.asarray(arr[:], dtype=bool)
        except Exception:  # a marker torn by a crash: read one by one, torn ones count as 0
            flags = np.zeros(arr.shape, dtype=bool)
            for i in range(arr.shape[0]):
                try:
                    flags[i] = bool(arr[i])
                except Exception:
                    flags[i] = False
            return flags

    def done_blocks(self) -> np.ndarray:
        """Boolean flag per block: its output is on disk."""
        return self.read_flags(self.blocks_done)

    def mark_block(self, index: int) -> None:
        self.blocks_done[index] = 1

    def done_frames(self) -> np.ndarray:
        return self.read_flags(self.group["frames_done"])

    def mark_frame(self, index: int) -> None:
        self.group["frames_done"][index] = 1

    @property
    def result(self) -> zarr.Array:
        """Level 0 of the result."""
        return self.group[self._result_path]

    @property
    def levels(self) -> list[zarr.Array]:
        """The result's resolutions, level 0 first (one level in stores of format 1)."""
        if self.record.get("format", 1) < 2:
            return [self.result]
        sub = self.group if self.result_name == ROOT else self.group[self.result_name]
        names = sorted((n for n, _ in sub.arrays() if n.isdigit()), key=int)
        return [sub[n] for n in names]

    def __getitem__(self, name: str) -> zarr.Array:
        """An array of the store by name; the result's usual name ("labels", ...) gives
        level 0 also where the result is the store's root."""
        if name == self.result_name or (self.result_name == ROOT and name in RESULT_NAMES):
            return self.result
        return self.group[name]
