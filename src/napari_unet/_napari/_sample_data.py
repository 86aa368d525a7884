"""Sample data (File > Open Sample): synthetic nuclei with their ground-truth labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.synthetic import synthetic_nuclei


def nuclei_2d() -> list[tuple[Any, dict[str, Any], str]]:
    image, labels = synthetic_nuclei((512, 512), density=0.35, radius=(6.0, 12.0), seed=1)
    return [
        (image, {"name": "nuclei 2D"}, "image"),
        (labels, {"name": "nuclei 2D labels"}, "labels"),
    ]


def nuclei_3d() -> list[tuple[Any, dict[str, Any], str]]:
    # Large enough that segmenting it needs several blocks of tiles.
    image, labels = synthetic_nuclei((64, 256, 256), density=0.3, radius=(4.0, 8.0), seed=2)
    return [
        (image, {"name": "nuclei 3D"}, "image"),
        (labels, {"name": "nuclei 3D labels"}, "labels"),
    ]


def dsb2018_nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """A real CC0 image: a DSB 2018 (BBBC038) fluorescent nuclei crop with its labels."""
    import tifffile

    folder = Path(__file__).resolve().parents[1] / "data" / "samples"
    image = tifffile.imread(folder / "dsb2018_nuclei.tif")
    labels = tifffile.imread(folder / "dsb2018_nuclei_labels.tif")
    credit = "DSB 2018 / BBBC038 (Caicedo et al. 2019), CC0"
    return [
        (image, {"name": "DSB 2018 nuclei", "metadata": {"source": credit}}, "image"),
        (labels, {"name": "DSB 2018 nuclei labels", "metadata": {"source": credit}},
         "labels"),
    ]
