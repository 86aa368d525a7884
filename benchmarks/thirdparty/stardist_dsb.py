"""StarDist 2D trained from scratch on DSB 2018 train for a wall-clock budget (CPU, its
example configuration: 32 rays, grid 2), thresholds optimised on val as its workflow does,
val predicted; one label TIFF per image in ``OUT/val``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
from _data import load


def _normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1.0, 99.8])
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=Path("runs/stardist"))
    args = parser.parse_args()
    import tensorflow as tf
    from stardist.models import Config2D, StarDist2D

    args.out.mkdir(parents=True, exist_ok=True)
    _, images, labels = load("train")
    stems, vimg, vlab = load("val")
    x = [_normalise(i) for i in images]
    xv = [_normalise(i) for i in vimg]
    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(128, 128),
                    train_batch_size=8, train_epochs=10_000, train_steps_per_epoch=40,
                    train_tensorboard=False)
    model = StarDist2D(conf, name="dsb_scratch", basedir=str(args.out))
    deadline = time.time() + 60 * args.minutes

    class Budget(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() > deadline:
                self.model.stop_training = True

    model.prepare_for_training()
    model.callbacks.append(Budget())
    t0 = time.time()
    model.train(x, labels, validation_data=(xv[:16], vlab[:16]), epochs=10_000,
                steps_per_epoch=40)
    minutes = (time.time() - t0) / 60
    model.optimize_thresholds(xv, vlab)
    (args.out / "val").mkdir(exist_ok=True)
    t1 = time.time()
    for s, img in zip(stems, xv, strict=True):
        masks, _ = model.predict_instances(img)
        tifffile.imwrite(args.out / "val" / f"{s}.tif", masks.astype(np.uint32))
    (args.out / "run.json").write_text(json.dumps({
        "train_minutes": minutes, "predict_seconds": time.time() - t1}))


if __name__ == "__main__":
    main()
