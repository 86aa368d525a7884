"""Anchors on DSB 2018 val, scored the same way: Otsu, the built-in model, napari-unet trained
from scratch at a fixed budget (recipes: schedules, targets, colour), and Cellpose trained from
scratch at the same budget where it is installed.

Each method writes ``results/anchors_dsb/<name>.json`` (per-image counts and the summary);
``--table`` prints every stored result as one markdown table (pooled over objects, as
StarDist's ``matching_dataset``, and per-image means; AP@0.5 by modality).

    .venv/bin/python benchmarks/anchors_dsb.py otsu builtin
    .venv/bin/python benchmarks/anchors_dsb.py train --recipe cosine --steps 2400
    .venv/bin/python benchmarks/anchors_dsb.py ensemble --members runs/anchors/default-s0 [--tta]
    .venv/bin/python benchmarks/anchors_dsb.py --table

Training runs use the whole of ``train/``; the checkpoint is selected on fixed patches of
``val/`` (the validation Dice of the training loop) and scored on the whole ``val/`` images.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _dsb  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.config import ModelConfig, TrainConfig  # noqa: E402
from napari_unet.evaluation import otsu_baseline  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "anchors_dsb"

# The training setup every recipe starts from: what a user of TrainConfig gets for 2D nuclei
# (defaults, with 16 x 128^2 patches, images drawn equally often and bright backgrounds
# inverted, as DSB's mixed sizes and modalities need).
BASE = TrainConfig(
    model=ModelConfig(spatial_dims=2, depth=4, base_filters=16),
    patch_size=(128, 128), batch_size=16, steps_per_epoch=40, pair_sampling="uniform",
    invert="auto", precision="auto",
)
RECIPES: dict[str, dict] = {
    # TrainConfig's defaults (one-cycle at 2e-3, chosen from the rows below).
    "default": {},
    # The former defaults: lr 1e-4 halved after 5 epochs without progress, 32 val patches.
    "plateau-lr1e-4": {"lr": 1e-4, "schedule": "plateau"},
    "plateau-lr1e-3": {"lr": 1e-3, "schedule": "plateau"},
    "plateau-lr1e-3-val128-p10": {"lr": 1e-3, "schedule": "plateau", "val_patches": 128,
                                  "plateau_patience": 10},
    "cosine-lr1e-3": {"lr": 1e-3, "schedule": "cosine"},
    "onecycle-lr2e-3": {"lr": 2e-3, "schedule": "onecycle"},
    # Instance targets and colour, at the schedule measured best above.
    "distance-cosine-lr1e-3": {"lr": 1e-3, "schedule": "cosine", "target": "distance"},
    "rgb-cosine-lr1e-3": {"lr": 1e-3, "schedule": "cosine", "rgb": True},
}


def score(name: str, preds, labels, kinds, stems, **meta) -> dict:
    rows = [{"stem": s, "kind": k, **_dsb.image_counts(p, t)}
            for p, t, k, s in zip(preds, labels, kinds, stems, strict=True)]
    record = _dsb.save(RESULTS / f"{name}.json", name, rows, **meta)
    print(_dsb.table([record]), flush=True)
    return record


def run_train(args, recipe: str, train, val) -> None:
    changes = dict(RECIPES[recipe])
    rgb = changes.pop("rgb", False)
    epochs = max(1, args.steps // BASE.steps_per_epoch)
    # A fixed budget: every recipe runs all its steps (no early stopping).
    config = BASE.replace(epochs=epochs, patience=10**6, seed=args.seed, **changes)
    convert = _dsb.to_rgb if rgb else _dsb.to_gray
    pairs = [(convert(i), lab) for i, lab in zip(train[1], train[2], strict=True)]
    vpairs = [(convert(i), lab) for i, lab in zip(val[1], val[2], strict=True)]
    run = Path(args.runs) / f"{recipe}-s{args.seed}"
    if not args.evaluate_only:
        nu.train(pairs, config, vpairs, run,
                 progress=lambda e: print(e, flush=True) if hasattr(e, "val_dice") else None)
    with open(run / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    minutes = float(history[-1]["elapsed"]) / 60
    best_epoch = max(history, key=lambda h: float(h["val_dice"]))["epoch"]
    model = nu.load_model(run / "best.safetensors")
    model.metadata["rgb_to_gray"] = not rgb
    t1 = time.time()
    preds = [nu.predict(model, convert(i) if rgb else i, mode="instances", device="cpu")
             for i in val[1]]
    name = f"train-{recipe}" + (f"-s{args.seed}" if args.seed else "")
    score(name, preds, val[2], val[3], val[0], budget=f"{epochs * config.steps_per_epoch} "
          f"steps x {config.batch_size}, {minutes:.0f} min", train_minutes=minutes,
          predict_seconds=time.time() - t1, best_epoch=int(best_epoch),
          config=config.to_dict())


def run_ensemble(args, val) -> None:
    """The built-in model and the models of ``--members`` (run folders of ``train``), their
    probabilities averaged (``predict(model=[...])``)."""
    from napari_unet.models import model_path

    members = [nu.load_model(model_path(None))]
    for run in args.members:
        model = nu.load_model(Path(run) / "best.safetensors")
        model.metadata["rgb_to_gray"] = True  # as run_train scores it (gray input)
        members.append(model)
    t0 = time.time()
    preds = [nu.predict(members, i, mode="instances", device="cpu", tta=args.tta)
             for i in val[1]]
    names = " + ".join(["built-in", *(Path(r).name for r in args.members)])
    score(f"ensemble {names}" + (" + tta" if args.tta else ""), preds, val[2], val[3],
          val[0], budget="shipped + trained", predict_seconds=time.time() - t0,
          members=[str(m) for m in args.members])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="otsu, builtin, train, ensemble")
    parser.add_argument("--members", nargs="*", default=[],
                        help="ensemble: run folders of trained models to average with the "
                             "built-in model")
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=2400, help="training budget in steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=_dsb.DATA)
    parser.add_argument("--runs", default="runs/anchors")
    parser.add_argument("--tta", action="store_true",
                        help="builtin: average over mirror images (PredictConfig.tta)")
    parser.add_argument("--table", action="store_true", help="print every stored result")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the run already in --runs instead of training")
    parser.add_argument("--score-dir", type=Path,
                        help="score label TIFFs named by stem (a third-party tool's val "
                             "predictions, benchmarks/thirdparty) under --name")
    parser.add_argument("--name", help="the row's name for --score-dir")
    args = parser.parse_args()
    if args.methods:
        train = _dsb.load_split(args.data, "train")
        val = _dsb.load_split(args.data, "val")
    if args.score_dir is not None:
        import tifffile

        stems, _, labels, kinds = _dsb.load_split(args.data, "val")
        preds = [tifffile.imread(args.score_dir / f"{s}.tif") for s in stems]
        run = args.score_dir.parent / "run.json"
        meta = json.loads(run.read_text()) if run.exists() else {}
        name = args.name or args.score_dir.parent.name
        score(name, preds, labels, kinds, stems,
              budget=f"{meta.get('train_minutes', float('nan')):.0f} min", **meta)
    for method in args.methods:
        if method == "otsu":
            score("otsu", [otsu_baseline(i) for i in val[1]], val[2], val[3], val[0])
        elif method == "builtin":
            t0 = time.time()
            preds = [nu.predict(None, i, mode="instances", device="cpu", tta=args.tta)
                     for i in val[1]]
            score("built-in model" + (" + tta" if args.tta else ""), preds, val[2], val[3],
                  val[0], budget="shipped",
                  predict_seconds=time.time() - t0)
        elif method == "train":
            run_train(args, args.recipe, train, val)
        elif method == "ensemble":
            run_ensemble(args, val)
        else:
            raise SystemExit(f"unknown method {method!r}")
    if args.table:
        records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
        print(_dsb.table(records))


if __name__ == "__main__":
    main()
