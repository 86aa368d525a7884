"""What the engine needs to know about a model, from a UNet, a model file or name, or any
compatible module."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ModelSpec", "resolve_model"]


@dataclasses.dataclass
class ModelSpec:
    """What the engine needs to know about a model (a UNet or any compatible module)."""

    module: torch.nn.Module
    spatial_dims: int
    in_channels: int
    out_channels: int
    size_multiple: tuple[int, ...]
    metadata: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """Architecture and a digest of the weights (part of a job's fingerprint)."""
        config = getattr(self.module, "config", None)
        arch = config.to_dict() if hasattr(config, "to_dict") else type(self.module).__name__
        return {"config": arch, "weights": self.weights_digest()}

    def weights_digest(self) -> str:
        h = hashlib.sha256(type(self.module).__name__.encode())
        for name, tensor in self.module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def resolve_model(model: Any) -> ModelSpec:
    """Accept a UNet, a model file path (``.safetensors``, or ``.onnx`` as written by
    :func:`~napari_unet.model.onnx_model.export_onnx`) or built-in name, None (the built-in
    nuclei model), a module exposing the same attributes, or a list of these (an ensemble: their
    probabilities averaged, :class:`~napari_unet.model.ensemble.Ensemble`).

    A non-UNet module must define ``spatial_dims``, ``in_channels``, ``out_channels`` and
    optionally ``size_multiple`` -- enough to plan tiles (used e.g. by identity models in tests).
    """
    import torch

    from ..model.checkpoint import load_model
    from ..model.unet import UNet

    if isinstance(model, (list, tuple)):
        if len(model) == 1:
            return resolve_model(model[0])
        from ..model.ensemble import Ensemble

        names = [str(m) if isinstance(m, (str, os.PathLike)) or m is None
                 else f"model {i + 1}" for i, m in enumerate(model)]
        model = Ensemble(list(model), names)
    from ..model.onnx_model import OnnxModel, is_onnx_path

    if is_onnx_path(model):
        model = OnnxModel(model)
    if model is None or isinstance(model, (str, os.PathLike)):
        from ..models import model_path

        model = load_model(model_path(model))
    if isinstance(model, UNet):
        cfg = model.config
        return ModelSpec(
            model, cfg.spatial_dims, cfg.in_channels, cfg.out_channels, cfg.size_multiple,
            dict(getattr(model, "metadata", {})),
        )
    if isinstance(model, torch.nn.Module) and all(
        hasattr(model, a) for a in ("spatial_dims", "in_channels", "out_channels")
    ):
        sd = int(model.spatial_dims)
        multiple = tuple(getattr(model, "size_multiple", (1,) * sd))
        return ModelSpec(
            model, sd, int(model.in_channels), int(model.out_channels), multiple,
            dict(getattr(model, "metadata", {})),
        )
    raise TypeError(
        f"model must be a napari_unet UNet, a path to a saved model, or a torch module with "
        f"spatial_dims / in_channels / out_channels attributes; got {type(model).__name__}"
    )
