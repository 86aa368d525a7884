"""Which files a command means: the images of a folder, a glob pattern or a list (batch
prediction), the (image, labels) pairs of two folders (training), and names for outputs."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import IMAGE_SUFFIXES, is_image_path

__all__ = ["batch_inputs", "is_batch", "output_names", "pairs_from_folders", "read_groups"]


def is_batch(inputs: list[str]) -> bool:
    """Several inputs, a folder that is not a zarr store, or a glob pattern."""
    if len(inputs) != 1:
        return True
    path = Path(inputs[0])
    if not path.exists():
        return any(c in inputs[0] for c in "*?[")
    return path.is_dir() and path.suffix.lower() != ".zarr" and not any(
        (path / n).exists() for n in ("zarr.json", ".zgroup", ".zarray"))


def batch_inputs(inputs: Any) -> list[Path]:
    """The images named by ``inputs``: a folder (its images, sorted), a glob pattern, a file
    or .zarr store, or a list of these."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if any(c in text for c in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            images = [p for p in matches if is_image_path(p)]
            if not images:
                raise InputError(f"no images match {text!r} (images are "
                                 f"{', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_dir() and path.suffix.lower() != ".zarr" and not (
                path / "zarr.json").exists():
            entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            images = [p for p in entries if is_image_path(p)]
            if not images:
                kinds = sorted({p.suffix or p.name for p in entries})
                raise InputError(f"no images in {str(path)!r} (found "
                                 f"{', '.join(kinds) or 'nothing'}); images are "
                                 f"{', '.join(IMAGE_SUFFIXES)}")
            found += images
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"input {text!r} does not exist")
    if not found:
        raise InputError("no images given")
    return list(dict.fromkeys(found))


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output names: the file's stem, or its whole name where two inputs share a stem."""
    stems = [p.stem for p in paths]
    clash = {s for s in stems if stems.count(s) > 1}
    names = [p.name.replace(".", "_") if p.stem in clash else p.stem for p in paths]
    if len(set(names)) < len(names):  # same names in different folders
        names = [f"{p.parent.name}_{n}" for p, n in zip(paths, names, strict=True)]
    return names


def pairs_from_folders(images: str, labels: str) -> list[tuple[str, str]]:
    """(image, labels) paths: one pair, or the images of a folder with labels of the same
    name (any readable kinds: TIFF, zarr, PNG, JPEG, BMP)."""
    img_dir, lab_dir = Path(images), Path(labels)
    for d in (img_dir, lab_dir):
        if not d.exists():
            raise InputError(f"{d} does not exist")
    if img_dir.is_file() or img_dir.suffix == ".zarr":
        return [(str(img_dir), str(lab_dir))]
    found = sorted(p for p in img_dir.iterdir() if not p.name.startswith("."))
    imgs = [p for p in found if is_image_path(p)]
    if not imgs:
        kinds = sorted({p.suffix or p.name for p in found})
        raise InputError(f"no images in {img_dir} (found {', '.join(kinds) or 'nothing'}); "
                         "images are .tif/.tiff, .zarr, .png, .jpg or .bmp")
    labels_by_stem: dict[str, list[Path]] = {}
    for q in lab_dir.iterdir():
        if is_image_path(q):
            labels_by_stem.setdefault(q.stem, []).append(q)
    pairs = []
    for p in imgs:
        match = labels_by_stem.get(p.stem)
        if not match:
            raise InputError(f"no labels for {p.name} in {lab_dir} (labels need the same "
                             "name)")
        if len(match) > 1:
            raise InputError(f"several labels for {p.name} in {lab_dir}: "
                             f"{', '.join(sorted(m.name for m in match))}; keep one")
        pairs.append((str(p), str(match[0])))
    return pairs


def read_groups(csv_path: str | os.PathLike, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The group of every pair's image from a CSV with columns ``image`` (a file name, with
    or without its extension) and ``group``."""
    import csv

    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"groups file {str(path)!r} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "group"} <= set(rows[0]):
        raise InputError(f"{str(path)!r}: needs the columns image,group (one row per image), "
                         f"found {', '.join(rows[0]) if rows else 'no rows'}")
    by_name = {}
    for r in rows:
        name = Path(r["image"].strip()).name
        by_name[name] = by_name[Path(name).stem] = r["group"].strip()
    groups, missing = [], []
    for image, _ in pairs:
        p = Path(image)
        group = by_name.get(p.name, by_name.get(p.stem))
        if group is None:
            missing.append(p.name)
        groups.append(group)
    if missing:
        raise InputError(f"{str(path)!r} gives no group for {len(missing)} image(s), e.g. "
                         f"{', '.join(missing[:3])}")
    return groups
