"""Batch prediction: a folder, a glob pattern or a list of images in; per image a mask, an
overlay (outlines in colour on the image) and a row of counts out, with one CSV for the run.

Layout of the output folder::

    out/
      masks/<stem>.tif | .png | .zarr    labels (TIFF for TIFF input, PNG for PNG / JPEG /
                                          BMP up to 65535 labels, a zarr store -- written
                                          block by block -- for zarr input and large images)
      overlays/<stem>.png                outlines on the image (3D: the middle slice)
      objects/<stem>.csv                 per-object table (``objects=True``)
      summary.csv                        one row per image: objects, areas, foreground, time
      objects.csv                        all per-object tables (``objects=True``)
      batch.json                         what is finished, and for which job

A file that cannot be read or segmented is reported (a row with its error) and skipped; the
run goes on.  Running the same command again skips the files already finished for the same
model, settings and file content (the rule that resumes blocks), and an interrupted zarr mask
resumes block by block.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import IN_MEMORY_VOXELS, LABEL_OUTPUTS, PredictConfig, resolve_mode
from .errors import InputError
from .events import Cancelled, Notice, Progress, StageStarted, drain
from .folders import batch_inputs, output_names
from .io import IMAGE_SUFFIXES, PLAIN_IMAGE_SUFFIXES, open_volume

__all__ = ["predict_many_iter", "predict_many", "BatchResult", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = ("file", "status", "objects", "mean_area", "median_area",
                   "foreground_fraction", "seconds", "mask", "overlay", "error")
OBJECT_PROPERTIES = ("label", "area", "centroid", "intensity_mean", "bbox")
STATE = "batch.json"


@dataclasses.dataclass
class BatchResult:
    """Rows of the run's summary (one per input, in order) and where it was written."""

    rows: list[dict[str, Any]]
    out_dir: Path

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {str(out_dir)!r} is a file; batch results go to a folder -- "
                         "choose a folder name")
    if out_dir.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"output {str(out_dir)!r}: batch results go to a folder of masks, "
                         "overlays and a summary; name it without an image extension")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue())


def label_stats(labels: Any) -> dict[str, Any]:
    """Object count, mean / median area (voxels) and foreground fraction of a label array
    (numpy, or zarr / dask read chunk by chunk)."""
    import dask.array as da

    if isinstance(labels, np.ndarray):
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        size = labels.size
    else:
        arr = labels if isinstance(labels, da.Array) else da.from_zarr(labels)
        ids, counts = da.compute(*da.unique(arr, return_counts=True))
        keep = ids > 0
        ids, counts = ids[keep], counts[keep]
        size = arr.size
    return {"objects": int(len(ids)),
            "mean_area": float(counts.mean()) if len(ids) else 0.0,
            "median_area": float(np.median(counts)) if len(ids) else 0.0,
            "foreground_fraction": float(counts.sum() / max(1, size))}


def _channels_last(image: Any, shape: tuple[int, ...]) -> Any:
    """``image`` with the labels' ``shape``, plus colour channels last where it has them."""
    if image.shape == shape:
        return image
    for axis in range(image.ndim):
        if image.shape[:axis] + image.shape[axis + 1:] == shape:
            return np.moveaxis(image, axis, -1)
    raise InputError(f"image {image.shape} and labels {shape} do not match")


def _display_plane(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2D plane of image (gray or colour last) and labels: the middle one of a stack."""
    image = _channels_last(image, labels.shape)
    while labels.ndim > 2:
        mid = labels.shape[0] // 2
        labels, image = labels[mid], image[mid]
    return image, labels


def overlay_image(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8: the image (percentile-scaled, gray or colour) with each object's outline
    in its own colour."""
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:  # colour last: RGB as it is, other channel counts averaged
        img = img[..., :3] if img.shape[-1] == 3 else img.mean(-1)
    lo, hi = np.percentile(img, (1, 99.8))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    rgb = (rgb * 255).astype(np.uint8)
    edges = find_boundaries(labels, mode="thick")  # two pixels: readable at a glance
    # The outer pixel of an edge takes its object's colour (the largest label beside it).
    from scipy.ndimage import grey_dilation

    inside = labels[edges]
    ids = np.where(inside > 0, inside, grey_dilation(labels, size=3)[edges]).astype(np.uint64)
    # A saturated colour per label from its id (the same in every run): one channel full,
    # one empty, so outlines show on dark and on bright (saturated) objects alike.
    hue = (ids.astype(np.float64) * 0.6180339887 % 1.0 * 6.0).astype(np.float32)  # golden
    rise = (hue % 1.0)[:, None]
    ramps = np.concatenate([np.ones_like(rise), rise, np.zeros_like(rise), 1 - rise], axis=1)
    sector = hue.astype(int) % 6
    table = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])
    colours = np.take_along_axis(ramps, table[sector], axis=1)
    rgb[edges] = (255 * colours).astype(np.uint8)
    return rgb


def _save_mask(path: Path, labels: np.ndarray) -> Path:
    import tifffile

    if path.suffix == ".png":
        if labels.ndim == 2 and labels.max(initial=0) <= 65535:
            import imageio.v3 as iio

            iio.imwrite(path, labels.astype(np.uint16))
            return path
        path = path.with_suffix(".tif")  # more labels (or more axes) than a PNG holds
    tifffile.imwrite(path, labels, compression="zlib", photometric="minisblack")
    return path


def _mask_kind(path: Path, n_voxels: int) -> str:
    suffix = path.suffix.lower()
    if suffix == ".zarr" or path.is_dir() or n_voxels > IN_MEMORY_VOXELS:
        return ".zarr"
    return ".png" if suffix in PLAIN_IMAGE_SUFFIXES else ".tif"


def _objects_table(labels: np.ndarray, image: np.ndarray, name: str) -> list[dict[str, Any]]:
    from skimage.measure import regionprops_table

    intensity = _channels_last(np.asarray(image, dtype=np.float32), labels.shape)
    if intensity.ndim > labels.ndim:  # channels: their mean
        intensity = intensity.mean(axis=-1)
    table = regionprops_table(labels, intensity_image=intensity, properties=OBJECT_PROPERTIES)
    n = len(table["label"])
    return [{"file": name, **{k: (float(v[i]) if k != "label" else int(v[i]))
                              for k, v in table.items()}} for i in range(n)]


def predict_many_iter(
    model: Any,
    inputs: Any,
    out_dir: str | os.PathLike,
    config: PredictConfig | None = None,
    *,
    overlays: bool = True,
    objects: bool = False,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> Generator[Any, None, BatchResult]:
    """Segment every image of ``inputs`` into ``out_dir``; yields progress, returns the rows.

    Parameters
    ----------
    model : UNet, path, "nuclei" or None
        As for :func:`napari_unet.predict` (loaded once for all images).
    inputs : path, glob pattern or list of them
        A folder (its images), a pattern such as ``"plate1/*.tif"``, image files (TIFF, PNG,
        JPEG, BMP) and zarr / OME-Zarr stores.
    out_dir : path
        Folder for masks, overlays and the CSV tables (created).
    config : PredictConfig, optional
        Settings for every image (``mode``: instances or semantic labels).
    overlays : bool
        Write an overlay PNG per image.
    objects : bool
        Also write a per-object table (label, area, centroid, mean intensity, bounding box)
        for images segmented in memory.

    Yields
    ------
    StageStarted, Progress (one per image, with its name), Notice (a file that failed)
    """
    from .inference.engine import predict_iter
    from .inference.input_digest import input_record
    from .inference.spec import resolve_model
    from .inference.store import fingerprint

    config = config or PredictConfig()
    if options:
        config = config.replace(**options)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    paths = batch_inputs(inputs)
    spec = resolve_model(model)
    mode = resolve_mode(config.mode, spec.metadata, spec.out_channels)
    if mode not in LABEL_OUTPUTS:
        raise InputError(f"batch prediction writes label masks: mode {mode!r} is not one; use "
                         "'instances' or 'semantic' (or predict images one by one for "
                         "probabilities)")
    config = config.replace(mode=mode)
    for sub in ("masks",) + (("overlays",) if overlays else ()) + (
            ("objects",) if objects else ()):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
    except (OSError, ValueError):
        state = {}  # unreadable: everything is done again
    finished: dict[str, Any] = state.get("files", {})
    job = {"model": spec.describe(), "config": {**config.to_dict(), "overwrite": None},
           "overlays": overlays, "objects": objects}
    names = output_names(paths)
    rows: list[dict[str, Any]] = []
    yield StageStarted("batch", total=len(paths),
                       message=f"{len(paths)} image(s) -> {out_dir} ({mode})")
    for n, (path, name) in enumerate(zip(paths, names, strict=True), start=1):
        if cancel is not None and cancel():
            raise Cancelled(f"batch cancelled after {n - 1} of {len(paths)} images; running "
                            "the same command again skips the finished ones")
        t0 = time.perf_counter()
        row: dict[str, Any] = {"file": str(path), "status": "failed"}
        try:
            array, info = open_volume(path)
            record = fingerprint({**job, "input": input_record(array, info.source,
                                                                info.reader)})
            previous = finished.get(str(path))
            if (previous and previous.get("fingerprint") == record
                    and all((out_dir / p).exists() for p in previous["outputs"])):
                row = {**previous["row"], "status": "skipped (done)"}
            else:
                row = yield from _one(spec, path, name, array, out_dir, config,
                                      overlays, objects, predict_iter, cancel)
                row["seconds"] = round(time.perf_counter() - t0, 3)
                outputs = [row["mask"]] + ([row["overlay"]] if row.get("overlay") else [])
                finished[str(path)] = {"fingerprint": record, "row": row, "outputs": outputs}
                _atomic_write(state_path, json.dumps({"version": 1, "files": finished},
                                                     indent=1))
        except Cancelled:
            raise
        except Exception as err:  # reported, skipped: the run goes on
            message = str(err) if isinstance(err, (InputError, OSError, ValueError)) \
                else f"{type(err).__name__}: {err}"
            row = {"file": str(path), "status": "failed", "error": message,
                   "seconds": round(time.perf_counter() - t0, 3)}
            yield Notice("batch", f"{path.name}: {message} -- skipped")
        rows.append(row)
        _write_csv(out_dir / "summary.csv", rows, SUMMARY_COLUMNS)
        yield Progress("batch", n, len(paths), message=f"{path.name}: {row['status']}")
    if objects:
        tables = []
        for row in rows:
            table = out_dir / "objects" / f"{Path(row.get('mask') or '').stem}.csv"
            if row["status"] != "failed" and row.get("mask") and table.exists():
                with open(table, newline="") as fh:
                    tables += list(csv.DictReader(fh))
        columns = list(tables[0]) if tables else ["file", *OBJECT_PROPERTIES]
        _write_csv(out_dir / "objects.csv", tables, columns)
    return BatchResult(rows, out_dir)


def _one(spec: Any, path: Path, name: str, array: Any, out_dir: Path,
         config: PredictConfig, overlays: bool, objects: bool, predict_iter: Any,
         cancel: Callable[[], bool] | None) -> Generator[Any, None, dict[str, Any]]:
    """Segment one image and write its outputs; returns its summary row."""
    kind = _mask_kind(path, int(array.size))
    mask = out_dir / "masks" / f"{name}{kind}"
    if kind == ".zarr":
        # Block by block (resumed where an earlier run stopped); notices go on, the rest of
        # the image's events stay inside.
        gen = predict_iter(spec.module, path, mask, config.replace(overwrite=True), cancel)
        result = yield from _notices_only(gen)
        labels_small, image_small = _coarse(array, mask)
        stats = label_stats(result)
        labels_for_objects = None
    else:
        image = np.asarray(array)
        labels = drain(predict_iter(spec.module, image, None, config, cancel))
        mask = _save_mask(mask, labels)
        stats = label_stats(labels)
        labels_small, image_small = labels, image
        labels_for_objects = labels
    row: dict[str, Any] = {"file": str(path), "status": "done", **stats,
                           "mask": str(mask.relative_to(out_dir))}
    if overlays:
        import imageio.v3 as iio

        over = out_dir / "overlays" / f"{name}.png"
        try:
            img2, lab2 = _display_plane(np.asarray(image_small), np.asarray(labels_small))
            iio.imwrite(over, overlay_image(img2, lab2))
            row["overlay"] = str(over.relative_to(out_dir))
        except (InputError, ValueError) as err:  # the mask stands; say why there is no overlay
            row["error"] = f"no overlay: {err}"
    table = out_dir / "objects" / f"{mask.stem}.csv"
    if objects and labels_for_objects is not None:
        _write_csv(table, _objects_table(labels_for_objects, image_small, str(path)),
                   _objects_columns(labels_for_objects.ndim))
    elif objects:
        row["error"] = "objects table: not made for images segmented out of core"
    return row


def _objects_columns(ndim: int) -> list[str]:
    return (["file", "label", "area"] + [f"centroid-{i}" for i in range(ndim)]
            + ["intensity_mean"] + [f"bbox-{i}" for i in range(2 * ndim)])


def _notices_only(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Notice):
            yield event


def _coarse(array: Any, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """The middle plane of a result written to a store, and of its image, at a size an
    overlay can show: from the coarsest pyramid level of at least 1024 pixels a side (read
    lazily: only that plane is loaded)."""
    import dask.array as da

    level0, info = open_volume(mask)
    pick = level0
    for level in info.multiscale:
        if max(level.shape[-2:]) >= 1024:
            pick = level
    step = max(1, round(level0.shape[-1] / pick.shape[-1]))
    image = _channels_last(da.asarray(array), tuple(level0.shape))
    labels = pick
    while labels.ndim > 2:
        mid = labels.shape[0] // 2
        labels, image = labels[mid], image[mid]
    image = image[::step, ::step][: labels.shape[0], : labels.shape[1]]
    return np.asarray(labels), np.asarray(image)


def predict_many(model: Any, inputs: Any, out_dir: str | os.PathLike,
                 config: PredictConfig | None = None, *,
                 progress: Callable[[Any], None] | None = None,
                 cancel: Callable[[], bool] | None = None, **options: Any) -> BatchResult:
    """Segment a folder, a glob pattern or a list of images (see :func:`predict_many_iter`).

    Returns
    -------
    BatchResult
        One summary row per image (status ``done``, ``skipped (done)`` or ``failed`` with
        its error); the same rows are in ``out_dir/summary.csv``.
    """
    return drain(predict_many_iter(model, inputs, out_dir, config, cancel=cancel, **options),
                 progress)
