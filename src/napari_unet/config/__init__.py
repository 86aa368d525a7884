"""Validated configuration objects shared by the napari widgets, the CLI and the Python API.

Every option is described once, on its field (default, choices, range, help): the configs
check themselves on construction with it, their docstrings are written from it, and the CLI
flags (:mod:`napari_unet.cli`) and the widgets (``_napari/_config_widgets.py``) are generated
from it -- so a bad value fails where it is set with a message naming the field, and a user
gets the same defaults everywhere.  Configs round-trip through plain dicts, JSON and YAML.
"""

from ._base import Config, ConfigError, Option, int_tuple, option, options_of, parse_ints
from .model import EXPORT_FORMATS, NORMS, QUANTIZE_MODES, ModelConfig
from .predict import (
    BLENDINGS,
    DEVICES,
    IN_MEMORY_VOXELS,
    LABEL_OUTPUTS,
    MODES,
    PRECISIONS,
    PredictConfig,
    parse_batch_size,
    parse_overlap,
    resolve_mode,
)
from .train import (
    CLASS_WEIGHTS,
    INVERT_MODES,
    LABEL_MODES,
    LOSSES,
    PAIR_SAMPLINGS,
    PRESETS,
    SCHEDULES,
    SCRIBBLE_PRIORS,
    TARGETS,
    TrainConfig,
)

__all__ = [
    "Config", "ConfigError", "Option", "option", "options_of", "parse_ints", "int_tuple",
    "ModelConfig", "PredictConfig", "TrainConfig", "NORMS", "MODES", "LABEL_OUTPUTS",
    "EXPORT_FORMATS", "QUANTIZE_MODES",
    "IN_MEMORY_VOXELS",
    "PRECISIONS", "BLENDINGS", "DEVICES", "LABEL_MODES", "TARGETS", "SCRIBBLE_PRIORS",
    "LOSSES", "CLASS_WEIGHTS",
    "INVERT_MODES", "PAIR_SAMPLINGS", "SCHEDULES", "PRESETS", "as_spatial_tuple",
    "resolve_mode", "parse_overlap", "parse_batch_size",
]


def as_spatial_tuple(value, ndim: int, name: str) -> tuple[int, ...]:
    """Broadcast an int or check a sequence to ``ndim`` spatial values."""
    out = int_tuple(value, name, ndim)
    assert out is not None
    return out
