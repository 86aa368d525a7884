"""k-fold cross-validation: one training run per fold, each validated on its held-out pairs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..events import StageStarted
from ..io import InputError
from .loop import TrainResult, train_iter

__all__ = ["CrossValidationResult", "cross_validate_iter", "fold_indices"]


@dataclasses.dataclass
class CrossValidationResult:
    """Best validation Dice of every fold, and their mean and standard deviation."""

    folds: list[TrainResult]

    @property
    def scores(self) -> list[float]:
        return [f.best_val_dice for f in self.folds]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0

    def report(self) -> str:
        lines = [f"fold {i + 1}: validation Dice {s:.4f}" for i, s in enumerate(self.scores)]
        lines.append(f"mean {self.mean:.4f} +/- {self.std:.4f} (std over {len(self.scores)} "
                     "folds)")
        return "\n".join(lines)


def fold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """Seeded split of ``range(n)`` into ``k`` nearly equal folds."""
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {k}")
    if n < k:
        raise InputError(f"{k}-fold cross-validation needs at least {k} image pairs, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, k)]


def cross_validate_iter(
    data: Sequence[Any],
    config: TrainConfig,
    k: int,
    run_dir: str | os.PathLike,
    cancel: Callable[[], bool] | None = None,
) -> Generator[Any, None, CrossValidationResult]:
    """Train ``k`` models, fold ``i`` validated on the ``i``-th held-out part of ``data``."""
    run_dir = Path(run_dir)
    results = []
    for i, held_out in enumerate(fold_indices(len(data), k, config.seed)):
        yield StageStarted("fold", message=f"fold {i + 1} of {k}: {len(held_out)} held out")
        val = [data[j] for j in held_out]
        train = [data[j] for j in range(len(data)) if j not in set(held_out.tolist())]
        result = yield from train_iter(train, config, val, run_dir / f"fold{i + 1}",
                                       cancel=cancel)
        results.append(result)
        if result.stopped == "cancelled":
            break
    return CrossValidationResult(results)
