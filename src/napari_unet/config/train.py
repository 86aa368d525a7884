"""Settings of a training run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ._base import (
    Config,
    ConfigError,
    document,
    int_tuple,
    option,
    parse_floats,
    parse_ints,
    voxel_size_of,
)
from .model import ModelConfig
from .predict import PRECISIONS

__all__ = ["TrainConfig", "LABEL_MODES", "LOSSES", "INVERT_MODES", "PAIR_SAMPLINGS",
           "SCHEDULES", "TARGETS", "SCRIBBLE_PRIORS", "CLASS_WEIGHTS", "PRESETS",
           "DEFAULT_PATCH", "auto_patch"]

LABEL_MODES = ("instances", "classes", "scribbles")
TARGETS = ("classes", "distance")
SCRIBBLE_PRIORS = ("none", "forest", "model")
LOSSES = ("auto", "bce_dice", "ce_dice", "dice", "ce", "focal")
CLASS_WEIGHTS = ("auto", "none")
INVERT_MODES = ("never", "always", "auto")
PAIR_SAMPLINGS = ("by_size", "uniform")
SCHEDULES = ("plateau", "cosine", "onecycle")

# The training patch where none is given, by spatial dimensions.
DEFAULT_PATCH = {2: (256, 256), 3: (32, 96, 96)}


def auto_patch(shape: tuple[int, ...], model: ModelConfig) -> tuple[int, ...]:
    """The training patch for images of spatial ``shape`` (the train widget's "auto"): the
    default patch, clipped to the image in multiples of the model's pooling product."""
    out = []
    for s, m, w in zip(shape, model.size_multiple, DEFAULT_PATCH[model.spatial_dims],
                       strict=True):
        p = min(w, (s // m) * m)
        if p < m:
            raise InputError(
                f"the image ({shape}) is too small for this depth: each axis needs at least "
                f"{m} pixels; lower the depth")
        out.append(p)
    return tuple(out)


# Named sets of changes to the defaults, for the widget and the console alike:
# ``TrainConfig.preset("interactive")``.
PRESETS: dict[str, dict[str, Any]] = {
    # A first model within minutes while a user looks at the live preview.
    "interactive": {"epochs": 30, "steps_per_epoch": 50},
}


@document
@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Settings of a training run (shared by :func:`napari_unet.train`, the CLI and the
    train widget)."""

    model: ModelConfig = option(
        help="Architecture; in_channels and out_channels are filled in from the data and the "
             "label mode when training starts.", default_factory=ModelConfig, cli=False)
    label_mode: str = option(
        "instances", "'instances': dense instance ids (0 = background); 'classes': dense "
                     "class ids (0 = background); 'scribbles': sparse strokes, 0 = "
                     "unlabelled, k >= 1 = class k-1 (1 background, 2 objects).",
        choices=LABEL_MODES, label="labels are")
    target: str = option(
        "classes", "Instances: what the model learns.  'classes': background / interior / "
                   "boundary / contact (see core).  'distance': a foreground probability and "
                   "each voxel's distance to its object's edge as a share of the object's "
                   "largest (a dense regression); seeds are voxels whose predicted distance "
                   "exceeds a threshold chosen on the validation patches after training, and "
                   "they regrow through the rest of the foreground.", choices=TARGETS)
    scribble_prior: str = option(
        "none", "Scribbles: what the network learns where nothing is painted.  'none': "
                "nothing (only painted voxels count).  'forest': a random-forest pixel "
                "classifier fitted to the strokes in seconds (multiscale filter features, as "
                "ilastik) labels the unpainted voxels it is confident about, and the network "
                "learns those too.  'model' (fine-tuning an instance model, init_model, from "
                "scribbles): the model's own class probabilities before training where "
                "nothing is painted, so the strokes change it where they disagree with it "
                "and it keeps what it knew elsewhere.", choices=SCRIBBLE_PRIORS)
    scribble_boundary: bool = option(
        False, "Scribbles: stroke value 3 marks the boundary between touching objects (a line "
               "where they meet): the model learns background / object / boundary and its "
               "instances are the objects grown into the boundary, as an instance model's.  "
               "Off: a value 3 is a third class.", label="3 = boundary strokes")
    patch_size: tuple[int, ...] | None = option(
        None, "Training patch per spatial axis; a multiple of the model's pooling product "
              "(2**depth).  None: 256 x 256 in 2D, 32 x 96 x 96 in 3D (thin in z, as most "
              "stacks are).", flag="--patch", parse=parse_ints, label="patch")
    batch_size: int = option(8, "Patches per optimiser step.", low=1)
    epochs: int = option(50, "Epochs (the per-step schedules decay over all of them).", low=1)
    steps_per_epoch: int = option(50, "Optimiser steps per epoch (validation after each).",
                                  low=1, flag="--steps", label="steps / epoch")
    lr: float = option(2e-3, "Adam learning rate (the peak, for the per-step schedules); "
                             "fine-tuning a model (init_model) wants about a tenth.",
                       low=0.0, open_low=True, label="learning rate")
    schedule: str = option(
        "onecycle", "Learning-rate schedule.  'onecycle': from lr / 25 up to lr over the first "
                    "30 % of the steps, then cosine decay to lr / 10^4 (trained the best DSB "
                    "2018 model from scratch at equal budget, benchmarks/README.md).  "
                    "'cosine': linear warm-up over the first 5 %, then cosine decay to 0 at "
                    "the last step.  'plateau': lr halved after plateau_patience epochs "
                    "without a better validation Dice.", choices=SCHEDULES)
    loss: str = option("auto", "'auto': BCE + Dice for binary problems, cross-entropy + Dice "
                               "otherwise.", choices=LOSSES)
    class_weights: str = option(
        "auto", "'auto' weights cross-entropy classes by inverse frequency in the training "
                "labels (rare boundary classes are learnt from scratch); 'none' for "
                "fine-tuning.", choices=CLASS_WEIGHTS)
    foreground_fraction: float = option(
        0.33, "Share of patches centred on a labelled foreground voxel (nnU-Net uses 1/3).",
        low=0.0, high=1.0)
    pair_sampling: str = option(
        "by_size", "How often each training pair is drawn: in proportion to its size, or "
                   "equally (many images of mixed sizes, scores averaged per image).",
        choices=PAIR_SAMPLINGS)
    augment: bool = option(True, "Flips, 90-degree rotations, small rotations and scaling, "
                                 "elastic deformation, gamma / contrast / brightness / noise / "
                                 "blur.")
    zoom: tuple[float, float] = option(
        (0.85, 1.2), "Range of the random scaling of the augmentation (30 % of the patches); "
                     "widen it where object sizes vary more than the training images show.",
        cli=False)
    anisotropic: bool = option(False, "3D only: rotate in the YX plane only (thin z stacks).")
    val_fraction: float = option(
        0.2, "Share of the training pairs held out for validation when no validation set is "
             "given (a single pair is cut along its first axis; a single image of scribbles "
             "is not cut).", low=0.0, high=1.0, open_low=True, open_high=True)
    val_patches: int = option(32, "Fixed validation patches evaluated after every epoch.",
                              low=1)
    patience: int = option(20, "Early stopping: epochs without a better validation Dice.",
                           low=1)
    plateau_patience: int = option(5, "'plateau' schedule: epochs without a better validation "
                                      "Dice before the learning rate is halved.", low=1)
    boundary_width: int = option(2, "Instances: width in pixels of the boundary class.",
                                 low=1)
    core: float = option(
        0.3, "Instances, 'classes' target: with a value in (0, 1) the interior class (the "
             "seeds) is each object's core, where the distance to its edge exceeds this share "
             "of the object's largest, and the rest of the object is boundary, so seeds of "
             "touching objects lie apart by a share of their size; 0: the interior reaches the "
             "boundary ring (thin or branched objects).", low=0.0, high=1.0, open_high=True,
        label="object cores", widget_step=0.05)
    normalize: tuple[float, float] = option(
        (1.0, 99.8), "Percentiles of the per-image intensity normalisation (stored in the "
                     "model).", cli=False)
    invert: str = option(
        "never", "Invert intensities so objects are bright: 'always' (dark objects, e.g. "
                 "bright-field), or per image where the background is bright ('auto', H&E or "
                 "bright-field next to fluorescence).  Stored in the model.",
        choices=INVERT_MODES, label="invert intensities")
    voxel_size: tuple[float, ...] | None = option(
        None, "Voxel size of the training images along their spatial axes ((Z)YX), one "
              "number per axis; None: read from the images' metadata (OME-Zarr, OME / "
              "ImageJ TIFF) where they all agree -- the train widget uses the image layer's "
              "scale.  Stored in the model: prediction warns when an image's voxel size "
              "differs from it by more than 1.5x.", parse=parse_floats)
    seed: int = option(0, "Seeds sampling, augmentation and initialisation (deterministic on "
                          "the CPU).", low=0)
    init_model: str | None = option(
        None, "Start from the weights of this model file (fine-tuning, e.g. the built-in "
              "model on your own images); its architecture and its intensity normalisation "
              "(percentiles, inversion) replace model, normalize and invert.  An instance "
              "model fine-tuned from scribbles keeps its classes: strokes of 1 mark "
              "background, strokes of 2 any part of an object.", flag="--init")
    device: str = option("auto", "As in PredictConfig.")
    precision: str = option("auto", "As in PredictConfig; AMP is used on a GPU.",
                            choices=PRECISIONS)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> TrainConfig:
        """The defaults changed by the named entry of ``PRESETS`` (and ``changes``)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    def _check(self) -> None:
        if self.init_model is not None:
            self._set("init_model", str(self.init_model))
        if isinstance(self.model, Mapping):
            self._set("model", ModelConfig.from_dict(self.model))
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig or a mapping, got {self.model!r}")
        if self.scribble_boundary and self.label_mode != "scribbles":
            raise ConfigError("scribble_boundary needs label_mode='scribbles', got "
                              f"label_mode={self.label_mode!r}")
        if self.scribble_prior == "model" and (self.label_mode != "scribbles"
                                               or self.init_model is None):
            raise ConfigError(
                "scribble_prior='model' keeps a fine-tuned model's own predictions where "
                "nothing is painted: it needs label_mode='scribbles' and init_model (the "
                f"instance model to start from), got label_mode={self.label_mode!r}, "
                f"init_model={self.init_model!r}")
        if self.target != "classes" and self.label_mode != "instances":
            raise ConfigError(f"target={self.target!r} needs label_mode='instances' (dense "
                              f"instance labels), got label_mode={self.label_mode!r}")
        patch = int_tuple(self.patch_size or DEFAULT_PATCH[self.model.spatial_dims],
                          "patch_size", self.model.spatial_dims)
        self._set("patch_size", patch)
        multiple = self.model.size_multiple
        if any(p % m for p, m in zip(patch, multiple, strict=True)):
            fixed = tuple(round(p / m) * m or m for p, m in zip(patch, multiple, strict=True))
            raise ConfigError(
                f"patch_size {patch} must be divisible by {multiple} "
                f"(2**depth per axis for depth={self.model.depth}); try {fixed}"
            )
        self._set("core", float(self.core))
        zoom = tuple(float(v) for v in self.zoom)
        if len(zoom) != 2 or not 0.0 < zoom[0] <= zoom[1]:
            raise ConfigError(f"zoom must be a range 0 < low <= high, got {self.zoom}")
        self._set("zoom", zoom)
        lo, hi = (float(v) for v in self.normalize)
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"normalize must be percentiles 0 <= low < high <= 100, "
                              f"got {self.normalize}")
        self._set("normalize", (lo, hi))
        voxel = voxel_size_of(self.voxel_size, "voxel_size")
        if voxel is not None and len(voxel) != self.model.spatial_dims:
            raise ConfigError(f"voxel_size {voxel} needs one number per spatial axis of a "
                              f"{self.model.spatial_dims}D model")
        self._set("voxel_size", voxel)
