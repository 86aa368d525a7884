"""Learning-rate schedules: halved on a plateau of the validation Dice, or per step
(cosine with a warm-up, one-cycle) over all the run's steps."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig

__all__ = ["lr_factor", "make_scheduler"]


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate after ``step`` of ``total`` steps, as a share of ``lr``, for the
    per-step schedules (``cosine``: 5 % linear warm-up, cosine decay to 0; ``onecycle``: from
    1/25 up over 30 %, cosine decay to 1/10^4)."""
    total = max(1, total)
    step = min(step, total)
    warm, start, end = (max(1, total // 20), 0.0, 0.0) if schedule == "cosine" else (
        max(1, int(0.3 * total)), 0.04, 1e-4)
    if step < warm:
        return start + (1.0 - start) * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    """The learning-rate scheduler of ``config.schedule`` (stepped per epoch with the
    validation Dice for ``plateau``, per step otherwise)."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=config.plateau_patience)
    total = config.epochs * config.steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config.schedule, step, total))
