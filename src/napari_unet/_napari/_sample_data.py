"""Sample data (File > Open Sample): synthetic nuclei with their ground-truth labels."""

from __future__ import annotations

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
