"""Cellpose 3 trained from scratch on DSB 2018 train for a wall-clock budget (CPU), then
val predicted with its own dynamics; one label TIFF per image in ``OUT/val``."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import tifffile
from _data import load


def _train(out: Path, epochs: int) -> None:
    from cellpose import models, train

    _, images, labels = load("train")
    _, vimg, vlab = load("val")
    # A random network (no pretrained weights); 17 px, Cellpose's diameter for nuclei.
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None,
                                 diam_mean=17.0)
    train.train_seg(model.net, train_data=images, train_labels=labels, test_data=vimg,
                    test_labels=vlab, channels=[0, 0], normalize=True, n_epochs=epochs,
                    learning_rate=0.005, weight_decay=1e-5, batch_size=8, save_path=str(out),
                    save_every=1, save_each=True, model_name="dsb_scratch", nimg_per_epoch=64,
                    min_train_masks=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=Path("runs/cellpose"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # Training runs in a child process stopped at the budget; the last checkpoint is used.
    proc = mp.Process(target=_train, args=(args.out, 10_000))
    proc.start()
    proc.join(timeout=60 * args.minutes)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    minutes = (time.time() - t0) / 60
    weights = sorted((args.out / "models").glob("dsb_scratch*"), key=lambda p: p.stat().st_mtime)
    from cellpose import models

    # One checkpoint per epoch: the newest may have been cut short by the budget's stop.
    for w in reversed(weights):
        try:
            model = models.CellposeModel(gpu=False, pretrained_model=str(w))
            break
        except Exception as exc:  # noqa: BLE001 - a truncated file, try the one before
            print(f"skipping {w.name}: {exc}")
    else:
        raise SystemExit(f"no loadable checkpoint in {args.out / 'models'}: train longer")
    stems, images, _ = load("val")
    (args.out / "val").mkdir(exist_ok=True)
    t1 = time.time()
    for s, img in zip(stems, images, strict=True):
        masks = model.eval(img, channels=[0, 0], diameter=None)[0]
        tifffile.imwrite(args.out / "val" / f"{s}.tif", masks.astype(np.uint32))
    (args.out / "run.json").write_text(json.dumps({
        "train_minutes": minutes, "predict_seconds": time.time() - t1,
        "weights": str(w)}))


if __name__ == "__main__":
    main()
