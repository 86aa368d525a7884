"""napari-unet: train 2D/3D U-Nets and segment volumes larger than memory.

The public API is imported lazily: ``import napari_unet`` loads neither torch, napari nor Qt,
so napari starts fast and a script pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "UNet": "napari_unet.model.unet",
    "ModelConfig": "napari_unet.config",
    "PredictConfig": "napari_unet.config",
    "ConfigError": "napari_unet.errors",
    "NapariUnetError": "napari_unet.errors",
    "save_model": "napari_unet.model.checkpoint",
    "load_model": "napari_unet.model.checkpoint",
    "read_metadata": "napari_unet.model.checkpoint",
    "export_onnx": "napari_unet.onnx_export",
    "quantize_onnx": "napari_unet.onnx_export",
    "CheckpointError": "napari_unet.errors",
    "predict": "napari_unet.api",
    "predict_iter": "napari_unet.api",
    "predict_many": "napari_unet.api",
    "predict_many_iter": "napari_unet.api",
    "train": "napari_unet.api",
    "train_iter": "napari_unet.api",
    "cross_validate": "napari_unet.api",
    "TrainConfig": "napari_unet.config",
    "open_volume": "napari_unet.io",
    "InputError": "napari_unet.errors",
    "dice": "napari_unet.metrics",
    "evaluate": "napari_unet.evaluation",
    # Understands napari layers; importing it loads napari (only when first used).
    "segment": "napari_unet._napari._console",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from ._napari._console import segment
    from .api import (
        cross_validate,
        predict,
        predict_iter,
        predict_many,
        predict_many_iter,
        train,
        train_iter,
    )
    from .config import ConfigError, ModelConfig, PredictConfig, TrainConfig
    from .evaluation import evaluate
    from .io import InputError, open_volume
    from .metrics import dice
    from .model.checkpoint import CheckpointError, load_model, read_metadata, save_model
    from .model.unet import UNet
    from .onnx_export import export_onnx, quantize_onnx


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
