"""DSB 2018 for the third-party scripts (no napari-unet in their environments)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dsb2018"


def load(split: str) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Stems, gray float32 images (colour averaged, as napari-unet's recipes) and labels."""
    with open(DATA / "manifest.csv") as fh:
        stems = sorted(r["stem"] for r in csv.DictReader(fh) if r["split"] == split)
    images, labels = [], []
    for s in stems:
        img = tifffile.imread(DATA / split / "images" / f"{s}.tif").astype(np.float32)
        images.append(img[..., :3].mean(-1) if img.ndim == 3 else img)
        labels.append(tifffile.imread(DATA / split / "labels" / f"{s}.tif").astype(np.int32))
    return stems, images, labels
