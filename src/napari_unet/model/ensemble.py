"""Several compatible models as one: their probabilities averaged, tile by tile, inside the
same engine (one read of the input, one write of the result).

The ensemble's forward returns logits of the mean probability (``log`` of the softmax mean,
``logit`` of the sigmoid mean), so everything after the network -- test-time augmentation,
blending, thresholds, instance labelling -- runs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError

__all__ = ["Ensemble"]

# Metadata that decides how the engine reads an input or a prediction: members must agree.
_MUST_AGREE = ("label_mode", "output", "rgb_to_gray", "normalization")
_EPS = 1e-6


class Ensemble(torch.nn.Module):
    """The mean probability of ``members`` (UNets or compatible modules).

    Parameters
    ----------
    members : sequence of torch.nn.Module
        At least two models with the same spatial dimensions, input and output channels,
        label mode, output kind and input normalisation.
    names : sequence of str, optional
        How the members are called in error messages (e.g. their files).
    """

    def __init__(self, members: Sequence[torch.nn.Module],
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        from ..inference.spec import resolve_model

        if len(members) < 2:
            raise InputError("an ensemble needs at least two models")
        names = list(names or [f"model {i + 1}" for i in range(len(members))])
        specs = [resolve_model(m) for m in members]
        first = specs[0]
        for name, spec in zip(names[1:], specs[1:], strict=True):
            for attr in ("spatial_dims", "in_channels", "out_channels"):
                if getattr(spec, attr) != getattr(first, attr):
                    raise InputError(
                        f"models of an ensemble must agree: {names[0]} has {attr} "
                        f"{getattr(first, attr)}, {name} has {getattr(spec, attr)}")
            for key in _MUST_AGREE:
                if spec.metadata.get(key) != first.metadata.get(key):
                    raise InputError(
                        f"models of an ensemble must agree on {key!r}: {names[0]} has "
                        f"{first.metadata.get(key)!r}, {name} has {spec.metadata.get(key)!r}"
                        " -- they would read the image or their output differently")
        self.members = torch.nn.ModuleList(s.module for s in specs)
        self.spatial_dims = first.spatial_dims
        self.in_channels = first.in_channels
        self.out_channels = first.out_channels
        multiples = [s.size_multiple for s in specs]
        self.size_multiple = tuple(math.lcm(*axis) for axis in zip(*multiples, strict=True))
        self.metadata: dict[str, Any] = {**first.metadata, "ensemble": names}
        self._sigmoid = (first.out_channels == 1
                         or first.metadata.get("output") == "distance")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            logits = member(x).float()
            p = torch.sigmoid(logits) if self._sigmoid else torch.softmax(logits, dim=1)
            total = p if total is None else total + p
        mean = (total / len(self.members)).clamp(_EPS, 1 - _EPS)
        return torch.log(mean / (1 - mean)) if self._sigmoid else torch.log(mean)
