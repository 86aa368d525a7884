"""A 2D model on z stacks: per-slice instances made into 3D objects, scored against the 3D
truth (pooled over objects: AP@0.5, AP@0.75, mean AP 0.5:0.95).

Volumes: synthetic 3D nuclei (``napari_unet.data.synthetic``, two seeds) and the PlantSeg
confocal patch (``../shared/data/plantseg_cells_3d``, dense cells).  Per-slice instances come
from the built-in 2D nuclei model (synthetic nuclei; ``predict(z_stitch="slices")``) or are
the ideal ones a perfect 2D model would give (every slice of the truth labelled on its own).
Rules: ``3d`` (the per-slice classes labelled as one volume: seeds connected in z),
``iou>=t`` (Cellpose's stitching), ``iou>=t | half inside`` (the default ``overlap`` rule:
also linked when the overlap covers half of the smaller object).  The cost of the stitching
pass out of core is timed against the whole ``predict`` run writing a zarr store.

    .venv/bin/python benchmarks/z_stitching.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

import napari_unet as nu
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.inference.stitching import stitch_labels
from napari_unet.metrics import DEFAULT_THRESHOLDS, match_instances

RESULTS = Path(__file__).resolve().parent / "results" / "z_stitching.json"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RULES = [("iou>=0.1", 0.1, None), ("iou>=0.25", 0.25, None), ("iou>=0.5", 0.5, None),
         ("iou>=0.25 | half inside (default)", 0.25, 0.5),
         ("iou>=0.5 | half inside", 0.5, 0.5)]


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    s = match_instances(pred, truth, DEFAULT_THRESHOLDS)
    ap = [x.tp / max(1, x.tp + x.fp + x.fn) for x in s]
    th = list(DEFAULT_THRESHOLDS)
    return {"objects": int(len(np.unique(pred[pred > 0]))),
            "ap50": ap[th.index(0.5)], "ap75": ap[th.index(0.75)], "map": float(np.mean(ap))}


def ideal_slices(truth: np.ndarray) -> np.ndarray:
    """What a perfect 2D model gives: each slice's objects labelled on that slice alone
    (one label per object and slice, numbered 1..n per slice)."""
    out = np.zeros(truth.shape, np.uint32)
    for z in range(truth.shape[0]):
        ids = np.unique(truth[z][truth[z] > 0])
        lut = np.zeros(int(truth.max()) + 1, np.uint32)
        lut[ids] = np.arange(1, len(ids) + 1)
        out[z] = lut[truth[z]]
    return out


def slice_ap50(slices: np.ndarray, truth: np.ndarray) -> float:
    """AP@0.5 of the per-slice instances against the truth's slices, pooled over slices."""
    tp = fp = fn = 0
    for z in range(truth.shape[0]):
        s = match_instances(slices[z], truth[z], (0.5,))[0]
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
    return tp / max(1, tp + fp + fn)


def rows_for(name: str, source: str, slices: np.ndarray, truth: np.ndarray,
             extra: dict[str, np.ndarray]) -> list[dict]:
    rows = [{"volume": name, "slices from": source, "rule": "(2D AP@0.5 of the slices: "
             f"{slice_ap50(slices, truth):.3f})", "objects": 0, "ap50": np.nan,
             "ap75": np.nan, "map": np.nan}]
    rows += [{"volume": name, "slices from": source, "rule": rule, **scores(pred, truth)}
             for rule, pred in extra.items()]
    for rule, threshold, contained in RULES:
        t0 = time.perf_counter()
        pred = stitch_labels(slices, threshold, contained)
        rows.append({"volume": name, "slices from": source, "rule": rule,
                     "seconds": time.perf_counter() - t0, **scores(pred, truth)})
    return rows


def main() -> None:
    rows: list[dict] = []
    timing: dict[str, float] = {}
    for seed in (0, 1):
        image, truth = synthetic_nuclei((32, 256, 256), seed=seed)
        truth = truth.astype(np.uint32)
        name = f"synthetic nuclei 32x256x256 seed {seed} ({len(np.unique(truth)) - 1})"
        kw = dict(mode="instances", axes="ZYX", device="cpu")
        slices = nu.predict(None, image, z_stitch="slices", **kw)
        in3d = nu.predict(None, image, z_stitch="3d", **kw)
        rows += rows_for(name, "built-in 2D model", slices, truth, {"3d": in3d})
        rows += rows_for(name, "ideal 2D", ideal_slices(truth), truth, {})
        if seed == 0:
            # The stitching pass out of core, as a share of the whole run to a zarr store.
            tmp = Path(tempfile.mkdtemp())
            try:
                for rule in ("slices", "overlap"):
                    t0 = time.perf_counter()
                    nu.predict(None, image, tmp / f"{rule}.zarr", z_stitch=rule, **kw)
                    timing[rule] = time.perf_counter() - t0
            finally:
                shutil.rmtree(tmp)
    folder = SHARED / "plantseg_cells_3d" / "labels"
    files = sorted(folder.glob("*.tif")) if folder.exists() else []
    if files:
        truth = tifffile.imread(files[0]).astype(np.uint32)
        name = f"PlantSeg cells {'x'.join(map(str, truth.shape))} ({len(np.unique(truth)) - 1})"
        rows += rows_for(name, "ideal 2D", ideal_slices(truth), truth, {})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "predict_seconds": timing}, indent=1))
    print("| volume | slices from | rule | objects | AP@0.5 | AP@0.75 | mean AP |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {r['slices from']} | {r['rule']} | {r['objects']} | "
              f"{r['ap50']:.3f} | {r['ap75']:.3f} | {r['map']:.3f} |")
    if timing:
        share = 1 - timing["slices"] / timing["overlap"]
        print(f"\npredict to zarr, synthetic seed 0: per-slice {timing['slices']:.1f} s, "
              f"stitched {timing['overlap']:.1f} s (stitching {100 * share:.0f} % of the run)")


if __name__ == "__main__":
    sys.exit(main())
