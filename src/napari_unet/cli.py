"""Command line ``napari-unet {demo,predict,train,evaluate,info,export}``: a thin layer
over the API.

Every option maps onto a field of the same validated config used by the API and the widgets;
``--config FILE`` loads one (YAML/JSON) and flags override its fields.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "add_config_options", "config_changes"]


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (),
                       prefix: str = "") -> None:
    """One flag per described option of config class ``cls``: type, choices and help from
    the option's description, default None (= the config's, or the ``--config`` file's)."""
    import types
    import typing

    from .config import ConfigError, options_of

    def wrap(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        def convert(text: str) -> Any:
            try:
                return parse(text)
            except (ConfigError, ValueError) as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        convert.__name__ = getattr(parse, "__name__", "value")
        return convert

    for name, (_f, opt, hint) in options_of(cls).items():
        if not opt.cli or name in skip:
            continue
        flag = opt.flag or "--" + name.replace("_", "-")
        kw: dict[str, Any] = {"dest": prefix + name, "default": None,
                              "metavar": flag.lstrip("-").replace("-", "_").upper(),
                              "help": opt.help.replace("%", "%%")}
        args = typing.get_args(hint)
        plain = [a for a in args if a is not type(None)] if args else [hint]
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
            del kw["metavar"]
        elif opt.parse is not None:
            kw["type"] = wrap(opt.parse)
        elif opt.choices is not None:
            del kw["metavar"]
            kw["choices"] = list(opt.choices)
            kw["type"] = type(opt.choices[0])
        elif len(plain) == 1 and plain[0] in (int, float, str):
            kw["type"] = plain[0]
        elif isinstance(hint, types.UnionType) or args:
            kw["type"] = str
        parser.add_argument(flag, **kw)


def config_changes(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The options of ``cls`` given on the command line (flags left out are None)."""
    from .config import options_of

    return {name: getattr(args, prefix + name) for name in options_of(cls)
            if getattr(args, prefix + name, None) is not None}


class _Bar:
    """tqdm progress bar fed by engine events, one bar per stage."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        from .events import BlockDone, EpochEnd, Notice, Progress, StageStarted

        if self.quiet:
            return
        if isinstance(event, StageStarted):
            self.close()
            if event.message:
                tqdm.write(f"[{event.stage}] {event.message}")
            if event.total:
                self.bar = tqdm(total=event.total, desc=event.stage, unit="block"
                                if event.stage == "predict" else "it", dynamic_ncols=True)
        elif isinstance(event, Notice):
            tqdm.write(f"[{event.stage}] {event.message}")
        elif isinstance(event, (BlockDone, Progress)) and self.bar is not None:
            self.bar.n = event.done
            if isinstance(event, Progress):
                self.bar.set_postfix_str(event.message or "", refresh=False)
            self.bar.refresh()
            if self.bar.total and event.done >= self.bar.total:
                self.close()  # the stage is done: its bar keeps the stage's own time
        elif isinstance(event, EpochEnd):
            if event.epoch == 1 or self.bar is None:
                tqdm.write(f"{'epoch':>6} {'train loss':>11} {'val loss':>9} {'val Dice':>9} "
                           f"{'lr':>9} {'time':>8}")
            tqdm.write(f"{event.epoch:>6} {event.train_loss:>11.4f} {event.val_loss:>9.4f} "
                       f"{event.val_dice:>9.4f} {event.lr:>9.2e} {event.elapsed:>7.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _predict(args: argparse.Namespace) -> int:
    from .api import predict
    from .config import PredictConfig

    config = PredictConfig.load(args.config) if args.config else PredictConfig()
    config = config.replace(**config_changes(args, PredictConfig))
    model = args.model[0] if args.model and len(args.model) == 1 else args.model
    bar = _Bar(args.quiet)
    from .folders import is_batch

    if is_batch(args.input):
        if args.scheduler or args.workers:
            from .io import InputError

            raise InputError("a batch runs on this machine: drop --scheduler / --workers")
        return _predict_batch(args, model, config, bar)
    client = cluster = None
    if args.scheduler or args.workers:
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            from .errors import MissingDependencyError

            raise MissingDependencyError("cluster runs need dask.distributed: pip install "
                                         "'napari-unet[distributed]'") from err
        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                                   processes=True, dashboard_address=None)
            client = Client(cluster)
    try:
        result = predict(model, args.input[0], args.output, config, progress=bar,
                         client=client)
    finally:
        bar.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(f"wrote {args.output} ({result.shape}, {result.dtype})")
    return 0


def _predict_batch(args: argparse.Namespace, model: Any, config: Any, bar: Any) -> int:
    from .batch import predict_many

    try:
        result = predict_many(model, args.input, args.output, config, progress=bar,
                              overlays=not args.no_overlays, objects=args.objects)
    finally:
        bar.close()
    done = sum(r["status"] != "failed" for r in result.rows)
    print(f"segmented {done} of {len(result.rows)} image(s) -> {args.output} "
          f"(summary.csv)")
    for row in result.failed:
        print(f"  failed: {row['file']}: {row.get('error', '')}")
    return 1 if result.failed else 0


def _train(args: argparse.Namespace) -> int:
    from .api import train
    from .config import ModelConfig, TrainConfig

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    changes = config_changes(args, TrainConfig)
    model_changes = config_changes(args, ModelConfig, prefix="model.")
    if model_changes:
        changes["model"] = config.model.replace(**model_changes)
    config = config.replace(**changes)
    from .folders import pairs_from_folders

    pairs = pairs_from_folders(args.images, args.labels)
    val = pairs_from_folders(args.val_images, args.val_labels) if args.val_images else None
    bar = _Bar(args.quiet)
    if args.folds:
        from .api import cross_validate
        from .folders import read_groups

        try:
            groups = read_groups(args.fold_groups, pairs) if args.fold_groups else None
            cv = cross_validate(pairs, config, args.folds, args.out, progress=bar,
                                groups=groups)
        finally:
            bar.close()
        print(cv.report())
        return 0
    try:
        result = train(pairs, config, val, args.out, resume=args.resume, progress=bar)
    finally:
        bar.close()
    print(f"{result.stopped}: best validation Dice {result.best_val_dice:.4f}; "
          f"model: {result.best_model}")
    return 0


def _files(path: str) -> dict[str, Path]:
    from .io import InputError, is_image_path

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_file() or p.suffix == ".zarr":
        return {p.stem: p}
    return {q.stem: q for q in sorted(p.iterdir())
            if is_image_path(q) or q.suffix.lower() == ".npy"}


def _read_labels(path: Path):
    import numpy as np

    from .io import open_volume

    if path.suffix == ".npy":
        return np.load(path)
    arr, _ = open_volume(path)
    return np.asarray(arr)


def _evaluation_figures(args: argparse.Namespace, report: Any, pairs: dict) -> None:
    from .figures import evaluation_figures

    images = _files(args.images) if args.images else {}

    def load(name: str) -> tuple[Any, Any, Any]:
        pred, truth = pairs[name]
        image = _read_labels(images[name]) if name in images else None
        return _read_labels(pred), _read_labels(truth), image

    written = evaluation_figures(report, load, args.figures, args.worst,
                                 "dice" if args.semantic else "ap50")
    print(f"wrote {len(written)} figures to {args.figures}")


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluation import compare, evaluate

    pred, truth = _files(args.pred), _files(args.truth)
    if len(pred) == 1 and len(truth) == 1:
        names = [next(iter(pred))]
        pairs = [(next(iter(pred.values())), next(iter(truth.values())))]
    else:
        missing = sorted(set(truth) - set(pred))
        if missing:
            from .io import InputError

            raise InputError(f"no prediction for {len(missing)} ground-truth image(s), e.g. "
                             f"{missing[0]!r} (predictions need the same names)")
        names = sorted(truth)
        pairs = [(pred[n], truth[n]) for n in names]
    report = evaluate(((_read_labels(p), _read_labels(t)) for p, t in pairs), names,
                      instances=not args.semantic)
    print(report.table())
    if args.compare:
        other = _files(args.compare)
        if len(pred) == 1 and len(truth) == 1:
            other_pairs = [(next(iter(other.values())), pairs[0][1])]
        else:
            other_pairs = [(other[n], truth[n]) for n in names]
        report2 = evaluate(((_read_labels(p), _read_labels(t)) for p, t in other_pairs), names,
                           instances=not args.semantic)
        print(f"\npaired comparison: {args.pred} minus {args.compare}")
        for m in ("dice", "ap50", "map") if not args.semantic else ("dice",):
            c = compare(report.values(m), report2.values(m))
            print(f"  {m:<6} {c['mean_difference']:+.4f} [{c['ci_low']:+.4f}, "
                  f"{c['ci_high']:+.4f}]  Wilcoxon p={c['wilcoxon_p']:.3g}  "
                  f"paired t p={c['ttest_p']:.3g}")
    if args.figures:
        _evaluation_figures(args, report, dict(zip(names, pairs, strict=True)))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": report.rows, "summary": report.summary}, indent=2, default=float))
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from .model.checkpoint import read_metadata

    meta = read_metadata(args.model)
    meta.pop("train_config", None)
    print(json.dumps(meta, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    bar = _Bar(args.quiet)
    try:
        summary = run_demo(args.out, quick=args.quick, train=args.train, progress=bar)
    finally:
        bar.close()
    print(summary.report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import ModelConfig, PredictConfig, TrainConfig

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    parser = argparse.ArgumentParser(
        prog="napari-unet", parents=[common],
        description="Train 2D/3D U-Nets and segment images larger than memory.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("demo", help="segment a large built-in synthetic image out of core "
                                    "with the built-in model and report Dice")
    p.add_argument("--out", default="napari-unet-demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    p.add_argument("--train", action="store_true",
                   help="train a small 3D model on synthetic data first instead of using the "
                        "built-in model")
    p.set_defaults(func=_demo)

    p = sub.add_parser("predict", help="segment an image (zarr / OME-Zarr / TIFF) into zarr, "
                                       "or a folder / glob / list of images into a folder")
    p.add_argument("input", nargs="+",
                   help="image: .zarr folder or .tif file; or several, a folder of images "
                        "or a quoted glob such as 'plate1/*.png' (batch: TIFF, PNG, JPEG, "
                        "BMP, zarr)")
    p.add_argument("output", help="output .zarr folder (resumed if it holds this job); for "
                                  "a batch, a folder of masks, overlays and summary.csv")
    p.add_argument("--objects", action="store_true", help="batch: a per-object table too")
    p.add_argument("--no-overlays", action="store_true", help="batch: no overlay images")
    p.add_argument("--model", action="append", help="model file (.safetensors); default: "
                   "the built-in model; several: their probabilities averaged (an ensemble)")
    p.add_argument("--config", help="PredictConfig as YAML/JSON; flags override it")
    add_config_options(p, PredictConfig)
    p.add_argument("--scheduler", help="run on this dask.distributed scheduler (tcp://host:port)")
    p.add_argument("--workers", type=int, help="start a local cluster of N worker processes")
    p.add_argument("--threads", type=int, default=1, help="threads per local worker")
    p.set_defaults(func=_predict)

    p = sub.add_parser("train", help="train a U-Net on images and labels")
    p.add_argument("--images", required=True, help="image file / .zarr, or a folder of them")
    p.add_argument("--labels", required=True, help="labels with the same names")
    p.add_argument("--val-images", help="validation images (default: hold out a part)")
    p.add_argument("--val-labels")
    p.add_argument("--out", required=True, help="run folder (checkpoints, config, history)")
    p.add_argument("--config", help="TrainConfig as YAML/JSON; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_config_options(p, TrainConfig)
    add_config_options(p, ModelConfig, prefix="model.")
    p.add_argument("--folds", type=int, help="k-fold cross-validation instead of one run")
    p.add_argument("--fold-groups", help="with --folds: CSV of image,group (animal, "
                                         "patient...); each group stays in one fold")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    p.add_argument("pred", help="predicted labels: a file / .zarr, or a folder of them")
    p.add_argument("truth", help="ground-truth labels with the same names")
    p.add_argument("--semantic", action="store_true", help="skip object matching")
    p.add_argument("--compare", help="second prediction folder: paired tests against it")
    p.add_argument("--json", help="also write all scores to this JSON file")
    p.add_argument("--figures", help="folder for figures (matplotlib): summary.png and "
                                     "input / truth / prediction / errors of the worst images")
    from .figures import WORST_FIGURES

    p.add_argument("--worst", type=int, default=WORST_FIGURES,
                   help="how many worst images get a figure")
    p.add_argument("--images", help="the input images (same names), shown in the figures")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("info", help="show a model file's architecture and metadata")
    p.add_argument("model")
    p.set_defaults(func=_info)

    from .export_command import add_export_parser

    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import NapariUnetError
    from .events import Cancelled

    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    try:
        return int(args.func(args) or 0)
    except NapariUnetError as err:
        print(f"napari-unet: error: {err}", file=sys.stderr)
        return 2
    except Cancelled as err:
        print(f"napari-unet: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("napari-unet: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
