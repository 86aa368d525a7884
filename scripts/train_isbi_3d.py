"""A 3D result: train a 3D U-Net on ISBI 2012 serial-section EM, split along z.

Slices 0-19 train, slices 20-29 validate (the volume is 30 x 512 x 512 at 4 x 4 x 50 nm, so
the network pools only in-plane: pool factors (1, 2, 2)).  Labels: 1 = cell interior,
0 = membrane.  Reports Dice of both classes on the validation slabs next to Otsu.

    .venv/bin/python scripts/train_isbi_3d.py --data ../shared/data/isbi2012_em --run runs/isbi3d
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile

import napari_unet as nu
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.events import EpochEnd
from napari_unet.metrics import dice

CONFIG = TrainConfig(
    model=ModelConfig(spatial_dims=3, depth=3, base_filters=16, norm="group",
                      pool_factors=((1, 2, 2), (1, 2, 2), (1, 2, 2))),
    label_mode="classes",
    patch_size=(8, 128, 128),
    batch_size=4,
    epochs=100,
    steps_per_epoch=25,
    lr=1e-3,
    anisotropic=True,
    val_patches=16,
    patience=10,
    seed=0,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/isbi2012_em"))
    parser.add_argument("--run", type=Path, default=Path("runs/isbi3d"))
    parser.add_argument("--minutes", type=float, default=12.0)
    args = parser.parse_args()
    image = tifffile.imread(args.data / "images" / "isbi2012_train.tif")
    labels = tifffile.imread(args.data / "labels" / "isbi2012_train.tif").astype(np.uint8)
    train = [(image[:20], labels[:20])]
    val = [(image[20:], labels[20:])]
    deadline = time.time() + 60 * args.minutes

    def show(e):
        if isinstance(e, EpochEnd):
            print(f"epoch {e.epoch:3d} train {e.train_loss:.4f} val {e.val_loss:.4f} "
                  f"dice {e.val_dice:.4f} {e.elapsed:.0f}s", flush=True)

    result = nu.train(train, CONFIG, val, args.run, progress=show,
                      cancel=lambda: time.time() > deadline)
    model = nu.load_model(result.best_model)
    pred = nu.predict(model, image[20:], mode="semantic", tile=(10, 256, 256))
    truth = labels[20:]
    from skimage.filters import threshold_otsu

    otsu = image[20:] > threshold_otsu(image[20:])
    report = {
        "val_interior_dice": dice(pred == 1, truth == 1),
        "val_membrane_dice": dice(pred == 0, truth == 0),
        "otsu_interior_dice": dice(otsu, truth == 1),
        "otsu_membrane_dice": dice(~otsu, truth == 0),
        "epochs": len(result.history), "stopped": result.stopped,
        "train_minutes": result.history[-1].elapsed / 60 if result.history else 0,
    }
    (args.run / "val_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
