"""Segmentation losses that honour the ignore label (``-1``: unlabelled / scribble gaps).

Binary models have one output channel (sigmoid); multi-class models one channel per class
(softmax).  Every loss takes logits ``(N, C, ...)`` and an int64 target ``(N, ...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .targets import DISTANCE_LEVELS, IGNORE

__all__ = ["make_loss", "soft_dice_loss", "dice_score"]


def _free_to_ask(x: torch.Tensor) -> bool:
    """Whether a data-dependent branch on ``x`` costs nothing: on the CPU it does; on a GPU it
    would wait for the device mid-step (and idle it while the backward pass is launched)."""
    return x.device.type == "cpu"


def _class_dice(probs: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Soft Dice per class from probabilities ``(N, C, ...)``, ignoring IGNORE voxels.

    The intersection sums each voxel's probability of its own class, by class (a gather and
    an index_add instead of a one-hot tensor the size of the output: cheaper, same value).
    """
    n_classes = probs.shape[1]
    dims = (0, *range(2, probs.ndim))
    safe = target.clamp_min(0)
    p_true = probs.gather(1, safe.unsqueeze(1))[:, 0]
    valid = target != IGNORE
    if _free_to_ask(probs) and bool(valid.all()):
        p_sum = probs.sum(dims)
        flat = safe.reshape(-1)
    else:  # ignored voxels count nowhere: not in the sums, not as any class
        p_true = p_true * valid
        p_sum = (probs * valid.unsqueeze(1)).sum(dims)
        flat = torch.where(valid, safe, n_classes).reshape(-1)
    # index_add, not bincount: bincount waits for the device (it sizes its output first).
    counts = torch.zeros(n_classes + 1, dtype=torch.int64, device=probs.device).index_add_(
        0, flat, torch.ones_like(flat))[:n_classes].to(probs.dtype)
    inter = torch.zeros(n_classes + 1, dtype=probs.dtype, device=probs.device)
    inter = inter.index_add(0, flat, p_true.reshape(-1))[:n_classes]
    return (2 * inter + eps) / (p_sum + counts + eps)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the batch; for multi-class models averaged over foreground classes."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return 1.0 - _binary_dice(torch.sigmoid(logits[:, 0]), target, eps)
    return 1.0 - _class_dice(torch.softmax(logits, dim=1), target, eps)[1:].mean()


def _binary_dice(probs: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    y = target.clamp_min(0).to(probs.dtype)
    valid = target != IGNORE
    if not (_free_to_ask(probs) and bool(valid.all())):
        probs, y = probs * valid, y * valid
    return (2 * (probs * y).sum() + eps) / (probs.sum() + y.sum() + eps)


def _bce(logits, target, weight=None):
    """Binary cross-entropy, mean over the labelled voxels (0 where none is labelled)."""
    valid = target != IGNORE
    x = logits[:, 0].float()
    y = target.clamp_min(0).to(x.dtype)
    pos_weight = None
    if weight is not None:
        pos_weight = (weight[1] / weight[0]).to(x.device)
    per = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="none")
    return _mean_over(per, valid.to(per.dtype))


def _mean_over(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of per-voxel ``values`` (0 where every weight is 0, e.g. nothing is
    labelled), without asking the device which case it is."""
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def _ce_dice(logits, target, weight=None, eps: float = 1.0):
    """Cross-entropy + soft Dice from one log-softmax (values as the two losses apart)."""
    logp = F.log_softmax(logits.float(), dim=1)
    dice = 1.0 - _class_dice(logp.exp(), target, eps)[1:].mean()
    return _weighted_mean_nll(logp, target, weight) + dice


def _weighted_mean_nll(logp, target, weight=None):
    """``F.nll_loss(logp, target, weight, ignore_index=IGNORE)`` (the weighted mean over the
    labelled voxels), and 0 with zero gradients where no voxel is labelled, without asking
    the device which case it is."""
    valid = target != IGNORE
    w = weight.to(logp.device) if weight is not None else None
    total = F.nll_loss(logp, target, weight=w, ignore_index=IGNORE, reduction="sum")
    if w is None:
        count = valid.sum().to(logp.dtype)
    else:
        count = (w[target.clamp_min(0)] * valid).sum()
    return total / count.clamp_min(1e-12)


def _ce(logits, target, weight=None):
    return _weighted_mean_nll(F.log_softmax(logits.float(), dim=1), target, weight)


def _focal(logits, target, weight=None, gamma: float = 2.0):
    """Focal loss, (weighted) mean over the labelled voxels (0 where none is labelled)."""
    logits = logits.float()
    safe = target.clamp_min(0)
    if logits.shape[1] == 1:
        logp = -F.binary_cross_entropy_with_logits(logits[:, 0], safe.float(),
                                                   reduction="none")
    else:
        logp = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1))[:, 0]
    loss = -((1 - logp.exp()) ** gamma) * logp
    w = (target != IGNORE).to(loss.dtype)
    if weight is not None:
        w = w * weight.to(logits.device)[safe]
    return _mean_over(loss, w)


def distance_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of a ``distance`` model (channels: foreground, normalised distance) against
    distance levels (0 background, 1 + d * DISTANCE_LEVELS): BCE + soft Dice of the
    foreground, plus BCE of the predicted distance against d (0 on the background), over the
    labelled voxels."""
    logits = logits.float()
    valid = (target != IGNORE).to(logits.dtype)
    fg = (target > 0).to(logits.dtype)
    distance = (target - 1).clamp_min(0).to(logits.dtype) / DISTANCE_LEVELS
    fg_loss = F.binary_cross_entropy_with_logits(logits[:, 0], fg, reduction="none")
    d_loss = F.binary_cross_entropy_with_logits(logits[:, 1], distance, reduction="none")
    fg_target = torch.where(target > 0, 1, torch.where(target == IGNORE, IGNORE, 0))
    dice = 1.0 - _binary_dice(torch.sigmoid(logits[:, 0]), fg_target, 1.0)
    return _mean_over(fg_loss, valid) + dice + _mean_over(d_loss, valid)


def partial_scribble_loss(logits: torch.Tensor, target: torch.Tensor,
                          teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Scribbles (0 background, 1 object, IGNORE elsewhere) for a model with more classes
    than that: class 0 is background and any other class is a part of an object, so a stroke
    of 1 asks for the summed probability of classes 1.. (their log-sum-exp).  Background and
    object strokes weigh equally, however many voxels each has.  ``teacher``: the logits of
    the model before fine-tuning; where nothing is painted the loss adds the KL divergence
    from its class probabilities (weighted as one stroke class), so the model keeps what it
    knew there (``scribble_prior="model"``)."""
    logp = F.log_softmax(logits.float(), dim=1)
    fg = torch.logsumexp(logp[:, 1:], dim=1)
    per = -torch.where(target == 1, fg, logp[:, 0])
    loss = logits.new_zeros(())
    for value in (0, 1):
        loss = loss + _mean_over(per, (target == value).to(per.dtype)) / 2
    if teacher is not None:
        logq = F.log_softmax(teacher.float(), dim=1)
        kl = (logq.exp() * (logq - logp)).sum(dim=1)
        loss = loss + _mean_over(kl, (target == IGNORE).to(kl.dtype)) / 2
    return loss


def make_loss(name: str, binary: bool, class_weights: torch.Tensor | None = None,
              target: str = "classes"):
    """The loss function called ``name`` ("auto", "bce_dice", "ce_dice", "dice", "ce", "focal");
    for ``target="distance"`` models :func:`distance_loss` whatever ``name``."""
    if target == "distance":
        return distance_loss
    if name == "auto":
        name = "bce_dice" if binary else "ce_dice"
    xent = _bce if binary else _ce
    if name in ("bce_dice", "ce_dice") and not binary:
        return lambda lo, t: _ce_dice(lo, t, class_weights)
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
def dice_score(logits: torch.Tensor, target: torch.Tensor, distance: bool = False
               ) -> tuple[float, float]:
    """Hard foreground Dice terms (intersection, denominator) over labelled voxels.

    Foreground = any class other than 0 (``distance`` models: the foreground channel), so the
    score is comparable across label modes and targets.
    """
    valid = target != IGNORE
    if logits.shape[1] == 1 or distance:
        pred = logits[:, 0] > 0
    else:
        pred = logits.argmax(dim=1) > 0
    truth = target > 0
    pred, truth = pred & valid, truth & valid
    return float((pred & truth).sum()) * 2.0, float(pred.sum() + truth.sum())
