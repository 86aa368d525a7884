"""The first minute after Train, as the train widget runs it: how good the live preview is
after how many seconds, next to the random forest's preview.

The simulated user of ``scribbles.py`` paints the first strokes (every object, half as many
background strokes; no corrections) and presses Train with the widget's settings
(``TrainConfig.preset("interactive")``, the patch the widget picks for the image, no
validation data).  After every epoch the widget predicts the image with the newest
checkpoint; here that prediction runs in the same thread, so its time counts against the
clock and delays the next epoch (in the widget it shares the CPU with training).  Each
preview is scored as in ``scribbles.py`` (Dice of the foreground; AP@0.5 the better of
connected components and split touching objects, or the model's own instances).

Variants (``--variants``):

- ``new``: a new model, *scribble prior: forest* (the recipe of the scribble tables).
- ``builtin``: *start from: built-in* (the nuclei model fine-tuned from the strokes; its
  classes kept), at the widget's learning rate.
- ``builtin-lr``: the same at a tenth of the rate (what ``init_model``'s help advises).
- ``builtin-model`` / ``builtin-model-lr``: the same with *scribble prior: model* (the
  built-in model's own class probabilities where nothing is painted).

The forest's preview and the built-in model's before any training (``builtin-0``) are
scored too.

``--steps-per-epoch``, ``--patch``, ``--lr``, ``--schedule`` and ``--epochs`` override the
preset for every variant (how often the preview comes, and what each step costs).

    .venv/bin/python benchmarks/scribble_preview.py [--tasks dsb_a dsb_b dsb_c]
        [--variants new builtin builtin-lr] [--seconds 120] [--steps-per-epoch 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _strokes  # noqa: E402
import scribbles  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.config import ModelConfig, TrainConfig  # noqa: E402
from napari_unet.config.train import SCHEDULES, auto_patch  # noqa: E402
from napari_unet.events import EpochEnd  # noqa: E402
from napari_unet.model.checkpoint import read_metadata  # noqa: E402
from napari_unet.models import default_model_path  # noqa: E402
from napari_unet.training.pixel_classifier import PixelClassifier  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scribble_preview"
# Variant: (start from the built-in model, learning rate as a share of the preset's, prior).
VARIANTS = {"new": (False, 1.0, "forest"), "builtin": (True, 1.0, "none"),
            "builtin-lr": (True, 0.1, "none"), "builtin-model": (True, 1.0, "model"),
            "builtin-model-lr": (True, 0.1, "model")}


def widget_config(image: np.ndarray, variant: str, args: argparse.Namespace) -> TrainConfig:
    """What the train widget builds for this image and choice (see ``config_and_data``)."""
    sd = image.ndim
    builtin, share, prior = VARIANTS[variant]
    init = str(default_model_path()) if builtin else None
    model = (ModelConfig(spatial_dims=sd) if init is None
             else ModelConfig.from_dict(read_metadata(init)["model"]))
    patch = tuple(args.patch) if args.patch else auto_patch(image.shape, model)
    defaults = TrainConfig.preset("interactive")
    lr = (args.lr or defaults.lr) * share
    changes = {"steps_per_epoch": args.steps_per_epoch} if args.steps_per_epoch else {}
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.schedule:
        changes["schedule"] = args.schedule
    return TrainConfig.preset(
        "interactive", model=model, patch_size=patch, label_mode="scribbles", lr=lr,
        scribble_prior=prior, init_model=init,
        device="cpu", **changes)


def preview_scores(model_path: Path, image: np.ndarray, labels: np.ndarray, radius: int,
                   instance_model: bool) -> dict[str, float]:
    """Score what the widget's preview shows: the model's instances, or its foreground."""
    if instance_model:
        inst = np.asarray(nu.predict(str(model_path), image, mode="instances", device="cpu"))
        return scribbles.scores(inst > 0, labels, radius, inst)
    probs = np.asarray(nu.predict(str(model_path), image, mode="probabilities", device="cpu"))
    fg = probs[0] > 0.5 if probs.shape[0] == 1 else probs.argmax(0) >= 1  # one channel: BCE
    return scribbles.scores(fg, labels, radius)


def run_variant(name: str, image, labels, marks, radius: int, variant: str,
                args: argparse.Namespace) -> list[dict]:
    cfg = widget_config(image, variant, args)
    run = Path(args.runs) / f"{name}-{variant}"
    shutil.rmtree(run, ignore_errors=True)
    rows: list[dict] = []
    stop = False
    t0 = time.monotonic()
    gen = nu.train_iter([(image, marks)], cfg, None, run, cancel=lambda: stop)
    try:
        while True:
            event = next(gen)
            if not isinstance(event, EpochEnd):
                continue
            row = {"task": name, "variant": variant, "epoch": event.epoch, "step": event.step,
                   **preview_scores(run / "last.safetensors", image, labels, radius,
                                    VARIANTS[variant][0])}
            row["seconds"] = time.monotonic() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
            stop = row["seconds"] >= args.seconds
    except StopIteration:
        pass
    return rows


def forest_row(name: str, image, labels, marks, radius: int) -> dict:
    t0 = time.monotonic()
    clf = PixelClassifier().fit([image[None]], [marks])
    cls = clf.predict_proba(image[None]).argmax(0)
    fg, inst = scribbles.three_class(cls, radius)
    row = {"task": name, "variant": "forest", "epoch": 0, "step": 0,
           **scribbles.scores(fg, labels, radius, inst), "seconds": time.monotonic() - t0}
    print(json.dumps(row), flush=True)
    return row


def best_ap(row: dict) -> float:
    return max(row["ap50_cc"], row["ap50_split"])


def summary(records: list[dict], deadline: float) -> str:
    """Per task and variant: the last preview within the deadline, and when the preview
    first matched the forest's Dice and AP@0.5."""
    lines = [f"| task | variant | forest Dice / AP@0.5 | last preview <= {deadline:.0f} s: "
             "seconds, step, Dice / AP@0.5 | first preview >= forest (Dice and AP): seconds |",
             "|" + "---|" * 5]
    for rec in records:
        forest = next(r for r in rec["rows"] if r["variant"] == "forest")
        for variant in dict.fromkeys(r["variant"] for r in rec["rows"]):
            if variant == "forest":
                continue
            rows = [r for r in rec["rows"] if r["variant"] == variant]
            early = [r for r in rows if r["seconds"] <= deadline]
            last = (f"{early[-1]['seconds']:.0f} s, {early[-1]['step']}, "
                    f"{early[-1]['dice']:.3f} / {best_ap(early[-1]):.3f}" if early else
                    f"none (first at {rows[0]['seconds']:.0f} s)" if rows else "none")
            match = next((r for r in rows if r["dice"] >= forest["dice"]
                          and best_ap(r) >= best_ap(forest)), None)
            when = f"{match['seconds']:.0f}" if match else "not within the run"
            lines.append(f"| {rec['task']} | {variant} | {forest['dice']:.3f} / "
                         f"{best_ap(forest):.3f} | {last} | {when} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(scribbles.DSB_TASKS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS),
                        choices=list(VARIANTS))
    parser.add_argument("--seconds", type=float, default=120,
                        help="stop a run at the first preview after this many seconds")
    parser.add_argument("--deadline", type=float, default=60,
                        help="the summary's 'preview within' seconds")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--patch", type=int, nargs="*", default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--schedule", choices=SCHEDULES, default=None)
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--runs", default="runs/scribble_preview")
    parser.add_argument("--table", action="store_true", help="print the stored results")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.table:
        for path in sorted(RESULTS.glob("*.json")):
            print(f"\n{path.stem}\n")
            print(summary(json.loads(path.read_text())["records"], args.deadline))
        return
    records = []
    for name, (image, labels) in scribbles.tasks(args.tasks).items():
        marks = _strokes.initial_scribbles(labels, seed=0)
        radius = scribbles.stroke_radius(marks)
        print(f"== {name}: {image.shape}, {len(np.unique(labels)) - 1} objects", flush=True)
        rows = [forest_row(name, image, labels, marks, radius)]
        t0 = time.monotonic()
        rows.append({"task": name, "variant": "builtin-0", "epoch": 0, "step": 0,
                     **preview_scores(default_model_path(), image, labels, radius, True),
                     "seconds": time.monotonic() - t0})
        print(json.dumps(rows[-1]), flush=True)
        for variant in args.variants:
            rows += run_variant(name, image, labels, marks, radius, variant, args)
        records.append({"task": name, "rows": rows})
    settings = {k: v for k, v in vars(args).items() if k not in ("table", "runs")}
    out = RESULTS / f"preview{('-' + args.tag) if args.tag else ''}.json"
    out.write_text(json.dumps({"settings": settings, "records": records}, indent=1))
    print(summary(records, args.deadline))


if __name__ == "__main__":
    main()
