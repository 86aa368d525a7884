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


def fold_indices(n: int, k: int, seed: int, groups: Sequence[Any] | None = None
                 ) -> list[np.ndarray]:
    """Seeded split of ``range(n)`` into ``k`` folds: nearly equal ones, or with ``groups``
    (one label per pair: animal, patient, plate...) whole groups per fold, so that pairs of
    one group are never both trained on and validated on; groups go, largest first in a
    seeded order, to the fold with the fewest pairs so far."""
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {k}")
    if n < k:
        raise InputError(f"{k}-fold cross-validation needs at least {k} image pairs, got {n}")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        return [np.sort(f) for f in np.array_split(order, k)]
    if len(groups) != n:
        raise InputError(f"groups: {len(groups)} label(s) for {n} image pairs; give one per "
                         "pair")
    names = list(dict.fromkeys(groups))
    if len(names) < k:
        raise InputError(f"{k}-fold cross-validation by group needs at least {k} groups, got "
                         f"{len(names)} ({', '.join(map(str, names[:6]))}); use fewer folds")
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in names}
    shuffled = [names[i] for i in rng.permutation(len(names))]
    shuffled.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in shuffled:
        min(folds, key=len).extend(members[g])
    return [np.sort(np.asarray(f, dtype=int)) for f in folds]


def cross_validate_iter(
    data: Sequence[Any],
    config: TrainConfig,
    k: int,
    run_dir: str | os.PathLike,
    cancel: Callable[[], bool] | None = None,
    groups: Sequence[Any] | None = None,
) -> Generator[Any, None, CrossValidationResult]:
    """Train ``k`` models, fold ``i`` validated on the ``i``-th held-out part of ``data``
    (whole ``groups`` per fold where given: see :func:`fold_indices`)."""
    run_dir = Path(run_dir)
    results = []
    for i, held_out in enumerate(fold_indices(len(data), k, config.seed, groups)):
        held = (f" (groups {', '.join(sorted({str(groups[j]) for j in held_out}))})"
                if groups is not None else "")
        yield StageStarted("fold", message=f"fold {i + 1} of {k}: {len(held_out)} held out"
                                           + held)
        val = [data[j] for j in held_out]
        train = [data[j] for j in range(len(data)) if j not in set(held_out.tolist())]
        result = yield from train_iter(train, config, val, run_dir / f"fold{i + 1}",
                                       cancel=cancel)
        results.append(result)
        if result.stopped == "cancelled":
            break
    return CrossValidationResult(results)
