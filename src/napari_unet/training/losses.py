"""Segmentation losses that honour the ignore label (``-1``: unlabelled / scribble gaps).

Binary models have one output channel (sigmoid); multi-class models one channel per class
(softmax).  Every loss takes logits ``(N, C, ...)`` and an int64 target ``(N, ...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .targets import IGNORE

__all__ = ["make_loss", "soft_dice_loss", "dice_score"]


def _probs_and_onehot(logits: torch.Tensor, target: torch.Tensor):
    valid = (target != IGNORE).unsqueeze(1).float()
    safe = target.clamp_min(0)
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits)
        onehot = safe.unsqueeze(1).float()
    else:
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).float()
    return probs * valid, onehot * valid


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the batch; for multi-class models averaged over foreground classes."""
    probs, onehot = _probs_and_onehot(logits.float(), target)
    dims = (0, *range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    if dice.numel() > 1:
        dice = dice[1:]  # background Dice is large and uninformative
    return 1.0 - dice.mean()


def _bce(logits, target, weight=None):
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    x = logits[:, 0][valid].float()
    y = target[valid].float()
    pos_weight = None
    if weight is not None:
        pos_weight = (weight[1] / weight[0]).to(x.device)
    return F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)


def _ce(logits, target, weight=None):
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    w = weight.to(logits.device) if weight is not None else None
    return F.cross_entropy(logits.float(), target, weight=w, ignore_index=IGNORE)


def _focal(logits, target, weight=None, gamma: float = 2.0):
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    logits = logits.float()
    if logits.shape[1] == 1:
        x = logits[:, 0][valid]
        y = target[valid].float()
        logp = -F.binary_cross_entropy_with_logits(x, y, reduction="none")
    else:
        logp_all = F.log_softmax(logits, dim=1)
        logp = logp_all.gather(1, target.clamp_min(0).unsqueeze(1))[:, 0][valid]
    loss = -((1 - logp.exp()) ** gamma) * logp
    if weight is not None:
        w = weight.to(logits.device)[target[valid]]
        return (loss * w).sum() / w.sum()
    return loss.mean()


def make_loss(name: str, binary: bool, class_weights: torch.Tensor | None = None):
    """The loss function called ``name`` ("auto", "bce_dice", "ce_dice", "dice", "ce", "focal")."""
    if name == "auto":
        name = "bce_dice" if binary else "ce_dice"
    xent = _bce if binary else _ce
    if name in ("bce_dice", "ce_dice"):
        return lambda lo, t: xent(lo, t, class_weights) + soft_dice_loss(lo, t)
    if name == "dice":
        return soft_dice_loss
    if name == "ce":
        return lambda lo, t: xent(lo, t, class_weights)
    if name == "focal":
        return lambda lo, t: _focal(lo, t, class_weights)
    raise ValueError(f"unknown loss {name!r}")


@torch.no_grad()
def dice_score(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Hard foreground Dice terms (intersection, denominator) over labelled voxels.

    Foreground = any class other than 0, so the score is comparable across label modes.
    """
    valid = target != IGNORE
    if logits.shape[1] == 1:
        pred = logits[:, 0] > 0
    else:
        pred = logits.argmax(dim=1) > 0
    truth = target > 0
    pred, truth = pred & valid, truth & valid
    return float((pred & truth).sum()) * 2.0, float(pred.sum() + truth.sum())
