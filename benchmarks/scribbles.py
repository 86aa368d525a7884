"""Scribble training as a user does it: paint strokes, press Train, look at the preview, paint
corrections where it is wrong, train on -- simulated, with a random forest (ilastik-style) and
Otsu in the same table.

Tasks (``../shared/data`` and synthetic): three DSB 2018 val fluorescence images (2D nuclei),
the PlantSeg confocal patch (3D cells: strokes in cells and on membranes), synthetic 3D
nuclei.  A simulated user strokes every object (up to 30; in 3D on three slices of each),
paints half as many background strokes, then in each correction round strokes the six
largest wrong regions of the preview with their true class (and with ``--merge-strokes N``
a background line across each of the N largest objects of the preview that join two true
ones, where they meet).  Methods:

- ``otsu``: global Otsu threshold (no strokes).
- ``forest``: random forest on multiscale filter features of the strokes (what ilastik and
  APOC do), refitted on all strokes each round.
- ``unet``: ``label_mode="scribbles"``, a fresh 2-class U-Net, trained for the round's steps
  with a one-cycle schedule (2D: 150 steps of 8 x 128^2, then 75 per correction round; 3D:
  120 steps of 2 x 32 x 64^2, then 60), each round from the last model at a tenth of the
  rate; the seconds each round took are in the table (the 2D target: a preview as good as
  the forest's within 60 s).
- ``unet-forest``: the same with ``scribble_prior="forest"`` (the forest's confident voxels
  as pseudo-labels).
- ``unet-builtin`` (2D): the built-in nuclei model fine-tuned from the strokes (its classes
  kept: background strokes vs any part of an object).
- ``unet-builtin-model`` (2D): the same with ``scribble_prior="model"`` (the built-in
  model's own class probabilities before training where nothing is painted).

Instances: connected components of the foreground, or split at the necks of the distance
transform (``split_touching``, radius from the object strokes' length) -- both reported;
the built-in model's instances come from its own seeds.  Scores are on the whole image or
volume (painted voxels included, as a user judges it).

    .venv/bin/python benchmarks/scribbles.py [--tasks dsb_a dsb_b ...] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _dsb  # noqa: E402
import _strokes  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet import postprocess  # noqa: E402
from napari_unet.config import ModelConfig, TrainConfig  # noqa: E402
from napari_unet.evaluation import otsu_baseline  # noqa: E402
from napari_unet.metrics import dice, match_instances  # noqa: E402
from napari_unet.training.pixel_classifier import PixelClassifier  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scribbles"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# DSB 2018 val fluorescence images with 15-60 nuclei, at least 256 px: the first three by name.
DSB_TASKS = ("dsb_a", "dsb_b", "dsb_c")


def dsb_tasks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stems, images, labels, kinds = _dsb.load_split(_dsb.DATA, "val")
    picked = [(s, i, lab) for s, i, lab, k in zip(stems, images, labels, kinds, strict=True)
              if k == "gray" and 15 <= len(np.unique(lab)) - 1 <= 60
              and min(lab.shape) >= 256]
    return {name: (_dsb.to_gray(i), lab)
            for name, (_, i, lab) in zip(DSB_TASKS, picked[: len(DSB_TASKS)], strict=True)}


def plantseg_task() -> tuple[np.ndarray, np.ndarray]:
    """Cells of the PlantSeg patch: objects are cell interiors, background the membranes
    (one voxel either side of a border between cells)."""
    from skimage.segmentation import find_boundaries

    image = tifffile.imread(SHARED / "plantseg_cells_3d" / "images" / "sample_patch.tif")
    cells = tifffile.imread(SHARED / "plantseg_cells_3d" / "labels" / "sample_patch.tif")
    cells = cells.astype(np.int32)
    cells[find_boundaries(cells, mode="thick")] = 0
    return image.astype(np.float32), cells


def synthetic_task() -> tuple[np.ndarray, np.ndarray]:
    from napari_unet.data.synthetic import synthetic_nuclei

    # Well separated (few touch), as the scribble targets ask.
    image, labels = synthetic_nuclei((48, 128, 128), density=0.1, radius=(6, 9), seed=11)
    return image.astype(np.float32), labels.astype(np.int32)


def tasks(names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    if any(n.startswith("dsb") for n in names):
        out.update({k: v for k, v in dsb_tasks().items() if k in names})
    if "plantseg" in names:
        out["plantseg"] = plantseg_task()
    if "nuclei3d" in names:
        out["nuclei3d"] = synthetic_task()
    return out


def stroke_radius(marks: np.ndarray) -> int:
    """Typical object radius from the object strokes (each runs along an object's longest
    axis): half the median stroke length, plus the 2 px the strokes keep from the edge."""
    strokes, n = ndi.label(marks == 2, structure=np.ones((3,) * marks.ndim))
    if n == 0:
        return 8
    lengths = [max(s.stop - s.start for s in box) for box in ndi.find_objects(strokes)]
    return int(np.ceil(np.median(lengths) / 2 + 2))


def three_class(cls: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Foreground and instances of a class map from strokes 1 / 2 (/ 3): with a boundary
    class (2 here: stroke value 3), the object class's components grown into the boundary
    (as the instance models' labelling does); else no instances (the table splits them)."""
    fg = cls >= 1
    if cls.max() < 2:
        return fg, None
    return fg, postprocess.instances_in_memory(cls.astype(np.uint8), "instances",
                                               max(2, radius // 2), 10)[1]


def split_instances(fg: np.ndarray, radius: int) -> np.ndarray:
    """The preview's objects as the table's "split" column makes them."""
    split = postprocess.split_classes(fg, radius)
    return postprocess.instances_in_memory(split, "instances", radius, 10)[1]


def scores(fg: np.ndarray, labels: np.ndarray, radius: int,
           instances: np.ndarray | None = None) -> dict[str, float]:
    truth = labels > 0
    out = {"dice": dice(fg, truth)}
    cc = (postprocess.instances_in_memory(fg.astype(np.uint8), None, 0, 10)[1]
          if instances is None else instances)
    out["ap50_cc"] = match_instances(cc, labels, (0.5,))[0].average_precision
    if instances is None:
        inst = split_instances(fg, radius)
        out["ap50_split"] = match_instances(inst, labels, (0.5,))[0].average_precision
    else:
        out["ap50_split"] = out["ap50_cc"]
    return out


# Optimiser steps per round (one-cycle over each round, as the train widget's runs): round 0,
# then each correction round continuing from the last model.
STEPS = {2: (150, 75), 3: (120, 60)}


def train_config(ndim: int, method: str, init: str | None, steps: int,
                 boundary: bool = False) -> TrainConfig:
    if ndim == 2:
        cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=4, base_filters=16),
                          patch_size=(128, 128), batch_size=8)
    else:
        cfg = TrainConfig(model=ModelConfig(spatial_dims=3, depth=3, base_filters=16),
                          patch_size=(32, 64, 64), batch_size=2)
    per_epoch = 25 if ndim == 2 else 20
    # A fresh network at the default peak rate; a model trained on (a correction round, or
    # the built-in model) at a tenth of it.
    builtin = method.startswith("unet-builtin")
    lr = TrainConfig().lr if init is None and not builtin else 2e-4
    return cfg.replace(label_mode="scribbles", epochs=max(1, steps // per_epoch),
                       steps_per_epoch=per_epoch, val_patches=8, patience=10**6, lr=lr,
                       schedule="onecycle", precision="auto", device="cpu",
                       scribble_prior={"unet-forest": "forest",
                                       "unet-builtin-model": "model"}.get(method, "none"),
                       scribble_boundary=boundary,
                       init_model=init)


def run_unet(method: str, image, marks, steps: int, run: Path, init: str | None,
             boundary: bool = False):
    if method.startswith("unet-builtin") and init is None:
        from napari_unet.models import default_model_path

        init = str(default_model_path())
        cfg = train_config(image.ndim, method, init, steps)
    else:
        cfg = train_config(image.ndim, method, init, steps, boundary)
    t0 = time.time()
    result = nu.train([(image, marks)], cfg, [(image, marks)], run)
    return result.last_model, nu.load_model(result.last_model), time.time() - t0


def table(records: list[dict]) -> str:
    """Markdown: per task and method, the scores after round 0 and after each correction."""
    lines = ["| task | method | round | painted voxels | seconds | Dice | AP@0.5 (components) "
             "| AP@0.5 (split) |", "|" + "---|" * 8]
    for rec in records:
        for r in rec["rows"]:
            lines.append(f"| {r['task']} | {r['method']} | {r['round']} | {r['painted']} | "
                         f"{r['seconds']:.0f} | {r['dice']:.3f} | {r['ap50_cc']:.3f} | "
                         f"{r['ap50_split']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*",
                        default=["dsb_a", "dsb_b", "dsb_c", "nuclei3d", "plantseg"])
    parser.add_argument("--methods", nargs="*",
                        default=["otsu", "forest", "unet", "unet-forest", "unet-builtin"])
    parser.add_argument("--rounds", type=int, default=3, help="correction rounds after round 0")
    parser.add_argument("--runs", default="runs/scribbles")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply the training steps (a quick dry run: 0.1)")
    parser.add_argument("--merge-strokes", type=int, default=0,
                        help="per correction round, also paint a background line across up "
                             "to this many merged objects of the preview (rows '+merges')")
    parser.add_argument("--merge-class", choices=("background", "boundary"),
                        default="background",
                        help="what the merge strokes paint where two nuclei touch: background "
                             "(1) or a third class, boundary (3: a 3-class model whose "
                             "instances are its object class grown into the boundary)")
    parser.add_argument("--tag", default="",
                        help="suffix of the results files (keeps earlier runs' files)")
    parser.add_argument("--table", action="store_true", help="print the stored results")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table([json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]))
        return
    for name, (image, labels) in tasks(args.tasks).items():
        nd = image.ndim
        steps = tuple(max(1, int(args.budget_scale * b)) for b in STEPS[nd])
        marks0 = _strokes.initial_scribbles(labels, seed=0)
        radius = stroke_radius(marks0)
        rows = []
        print(f"== {name}: {image.shape}, {len(np.unique(labels)) - 1} objects, radius "
              f"{radius}, {int((marks0 > 0).sum())} painted voxels", flush=True)
        for method in args.methods:
            if method.startswith("unet-builtin") and nd != 2:
                continue
            marks = marks0.copy()
            # With boundary strokes the U-Net has its three classes from round 0
            # (TrainConfig.scribble_boundary), so corrections continue the same model.
            boundary = args.merge_class == "boundary" and method in ("unet", "unet-forest")
            init, n_classes = None, 3 if boundary else 2
            for rnd in range(args.rounds + 1 if method != "otsu" else 1):
                t0 = time.time()
                inst = None
                if method == "otsu":
                    fg = otsu_baseline(image) > 0
                    took = time.time() - t0
                elif method == "forest":
                    clf = PixelClassifier().fit([image[None]], [marks])
                    cls = clf.predict_proba(image[None]).argmax(0)
                    fg, inst = three_class(cls, radius)
                    took = time.time() - t0
                else:
                    run = Path(args.runs) / f"{name}-{method}-r{rnd}"
                    shutil.rmtree(run, ignore_errors=True)
                    classes = max(int(marks.max()), 3 if boundary else 2)
                    if init is not None and classes != n_classes:  # a new class: afresh
                        init = None
                    n_classes = classes
                    init, model, took = run_unet(method, image, marks,
                                                 steps[0 if init is None else 1], run, init,
                                                 boundary)
                    init = str(init)
                    if method.startswith("unet-builtin"):
                        inst = np.asarray(nu.predict(model, image, mode="instances",
                                                     device="cpu"))
                        fg = inst > 0
                    elif n_classes == 3:
                        probs = np.asarray(nu.predict(model, image, mode="probabilities",
                                                      device="cpu"))
                        fg, inst = three_class(probs.argmax(0), radius)
                    else:
                        probs = np.asarray(nu.predict(model, image, mode="probabilities",
                                                      device="cpu"))
                        fg = probs[-1] > 0.5
                label = method + ("+merges" if args.merge_strokes else "") + (
                    "(boundary)" if args.merge_class == "boundary" else "")
                row = {"task": name, "method": label, "round": rnd, "seconds": took,
                       "painted": int((marks > 0).sum()),
                       **scores(fg, labels, radius, inst)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if rnd < args.rounds:
                    marks = _strokes.corrections(fg, labels, marks, seed=rnd + 1)
                    if args.merge_strokes:
                        shown = inst if inst is not None else split_instances(fg, radius)
                        marks = _strokes.merge_strokes(
                            shown, labels, marks, rnd + 1, args.merge_strokes,
                            value=3 if args.merge_class == "boundary" else 1)
        suffix = ("-merges" if args.merge_strokes else "") + (
            "-boundary" if args.merge_class == "boundary" else "") + (
            f"-{args.tag}" if args.tag else "")
        (RESULTS / f"{name}{suffix}.json").write_text(json.dumps(
            {"task": name, "shape": list(image.shape), "radius": radius,
             "objects": int(len(np.unique(labels)) - 1), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
