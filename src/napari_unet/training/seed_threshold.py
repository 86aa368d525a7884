"""The seed threshold of a ``distance`` model, chosen on validation patches after training.

Instance seeds are the voxels whose predicted normalised distance to the object's edge exceeds
a threshold; a low one merges touching objects, a high one splits elongated ones or loses
small ones.  The threshold scoring the best AP@0.5 over the validation patches (objects
labelled exactly as ``predict`` labels them) is stored in the model, with how far its seeds
regrow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..inference.device import autocast
from ..metrics import match_instances
from ..postprocess import instances_in_memory, semantic

__all__ = ["SEED_THRESHOLDS", "choose_seed_threshold"]

SEED_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@torch.no_grad()
def choose_seed_threshold(
    model: torch.nn.Module,
    patches: Sequence[tuple[np.ndarray, np.ndarray]],
    grow_for: Callable[[float], int],
    device: torch.device,
    precision: str,
    min_size: int = 10,
    thresholds: Sequence[float] = SEED_THRESHOLDS,
) -> tuple[float, dict[float, float]]:
    """The threshold with the best pooled AP@0.5 on ``patches`` of (image ``(C, ...)``,
    instance labels), and the AP of each; ``grow_for(t)`` is how far seeds of threshold ``t``
    regrow."""
    model.eval()
    logits = []
    for x, _ in patches:
        xt = torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)).to(device)
        with autocast(device, precision):
            logits.append(model(xt)[0].float().cpu())
    scores = {}
    for t in thresholds:
        tp = fp = fn = 0
        grow = grow_for(t)
        for lo, (_, labels) in zip(logits, patches, strict=True):
            classes = semantic(lo, 0.5, "distance", t).numpy()
            _, inst = instances_in_memory(classes, "instances", grow, min_size)
            s = match_instances(inst, labels, (0.5,))[0]
            tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
        scores[float(t)] = tp / max(1, tp + fp + fn)
    best = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    return best, scores
