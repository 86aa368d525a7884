"""What happens after each epoch and after the run: the validation patches scored, and a
distance model's seed threshold chosen on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..inference.device import autocast, memory_format
from ..model.checkpoint import load_model, save_model
from .data import PatchSampler
from .losses import dice_score

__all__ = ["train_mode", "evaluate_patches", "choose_seeds", "comparable"]


def choose_seeds(path: Path, val_sampler: PatchSampler, config: TrainConfig,
                  grow_for: Callable[[float], int], device: torch.device, precision: str
                  ) -> None:
    """Store in the model at ``path`` the seed threshold that labels the validation patches
    best, and how far its seeds regrow."""
    from .seed_threshold import choose_seed_threshold

    model = load_model(path).to(device)
    patches = val_sampler.fixed_patches(config.val_patches, config.seed, labels=True)
    best, scores = choose_seed_threshold(model, patches, grow_for, device, precision)
    save_model(model.cpu(), path, seed_threshold=best, grow=grow_for(best),
               seed_threshold_scores={str(k): v for k, v in scores.items()})


def comparable(config: TrainConfig) -> TrainConfig:
    """What must match for a run to resume: everything but the epochs and the channels (filled
    in from the data; runs saved before they were stored hold placeholders)."""
    return config.replace(epochs=1, model=config.model.replace(in_channels=1, out_channels=1))


def train_mode(model: torch.nn.Module, freeze_norms: bool = False) -> None:
    """Training mode; with ``freeze_norms`` the batch norms keep the statistics they have
    (fine-tuning from a few strokes on one image: statistics of its patches alone would
    replace those of the data the model learnt on, and it forgets)."""
    model.train()
    if freeze_norms:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def evaluate_patches(model, patches, loss_fn, device, precision, batch_size, distance=False,
              freeze_norms=False):
    model.eval()
    losses, inter, denom = [], 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(patches), batch_size):
            xs, ts = zip(*patches[i : i + batch_size], strict=True)
            x = torch.from_numpy(np.stack(xs)).to(device)
            x = x.contiguous(memory_format=memory_format(x.ndim - 2))
            t = torch.from_numpy(np.stack(ts)).to(device)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            losses.append(loss_fn(logits, t).item() * len(xs))
            a, b = dice_score(logits, t, distance)
            inter += a
            denom += b
    train_mode(model, freeze_norms)
    return sum(losses) / max(1, len(patches)), (inter / denom if denom > 0 else 1.0)
