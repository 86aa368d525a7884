"""Everything a run needs before its first step: the data checked and split, the targets'
kind, the model (fresh, fine-tuned or resumed), the loss, optimiser and schedule, and the
metadata its checkpoints carry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch

from .. import postprocess
from ..config import ModelConfig, TrainConfig
from ..events import Preview, StageStarted
from ..inference.device import select_device, select_precision
from ..io import InputError
from ..model.checkpoint import load_model
from ..model.unet import UNet
from .augment import Augmenter
from .data import PatchSampler, class_weights, prepare_pairs, split_validation
from .losses import make_loss, partial_scribble_loss
from .schedules import make_scheduler
from .targets import (
    DISTANCE_CHANNELS,
    INSTANCE_CLASSES,
    grow_distance,
    levels_to_classes,
    n_classes_for,
)

__all__ = ["Run", "prepare_run", "DEFAULT_SEED_THRESHOLD"]

# Seeds of a distance model before its threshold is chosen on the validation patches.
DEFAULT_SEED_THRESHOLD = 0.5


@dataclasses.dataclass
class Run:
    """A run ready to train (see :func:`prepare_run`)."""

    config: TrainConfig  # as trained: the architecture in use, channels filled in
    split_note: str
    n_classes: int
    sampler: PatchSampler
    val_sampler: PatchSampler
    val_set: list[Any]
    model: torch.nn.Module
    augmenter: Augmenter | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    device: torch.device
    precision: str
    metadata: dict[str, Any]
    distance: bool  # a distance model: seeds chosen after training
    partial: bool  # an instance model fine-tuned from scribbles: norms frozen
    grow_for: Callable[[float], int] | None
    teacher: torch.nn.Module | None = None  # scribble_prior="model": the model before training

    @property
    def per_step(self) -> bool:
        """The schedule steps after every optimiser step (else after validation)."""
        return self.config.schedule != "plateau"


def _init_model(config: TrainConfig) -> tuple[TrainConfig, Any, bool]:
    """The model to fine-tune (if any), the config with its normalisation, and whether
    scribbles train it as background / any part of an object."""
    if config.init_model is None:
        return config, None, False
    from ..models import model_path

    init = load_model(model_path(config.init_model))
    norm = init.metadata.get("normalization") or {}
    if norm.get("kind") == "percentile":  # fine-tuning keeps the intensities it learnt on
        config = config.replace(normalize=(float(norm["low"]), float(norm["high"])),
                                invert=str(norm.get("invert", "never")))
    partial = (config.label_mode == "scribbles"
               and init.metadata.get("label_mode") == "instances"
               and postprocess.output_kind(init.metadata) == "classes")
    return config, init, partial


def _data(train_data: Sequence[Any], val_data: Sequence[Any] | None, config: TrainConfig,
          axes: str | None) -> tuple[list, list, str, int, tuple[float, ...] | None]:
    sd, patch = config.model.spatial_dims, tuple(config.patch_size)
    common = dict(invert=config.invert, axes=axes)
    train, stats = prepare_pairs(train_data, sd, config.label_mode, patch, config.normalize,
                                 "training", config.seed, **common)
    voxel = config.voxel_size or _common_voxel_size(stats.voxel_sizes)
    if val_data is not None and len(val_data):
        val, vstats = prepare_pairs(val_data, sd, config.label_mode, patch, config.normalize,
                                    "validation", config.seed, **common)
        return (train, val, f"{len(train)} training / {len(val)} validation pairs",
                max(stats.max_label, vstats.max_label), voxel)
    train, val, note = split_validation(train, config.val_fraction, config.seed, patch,
                                        sparse=config.label_mode == "scribbles")
    return train, val, note, stats.max_label, voxel


def _common_voxel_size(sizes: list[tuple[float, ...] | None]) -> tuple[float, ...] | None:
    """The training images' voxel size where every image states one and they agree (1 %)."""
    if not sizes or any(s is None for s in sizes):
        return None
    first = np.asarray(sizes[0])
    if any(len(s) != len(first) or not np.allclose(s, first, rtol=0.01) for s in sizes):
        return None
    return tuple(float(v) for v in first)


def _architecture(config: TrainConfig, in_channels: int, n_classes: int, init: Any,
                  partial: bool) -> ModelConfig:
    distance = config.target == "distance"
    out = len(DISTANCE_CHANNELS) if distance else 1 if n_classes == 2 else n_classes
    model_cfg = config.model.replace(in_channels=in_channels, out_channels=out)
    if init is None:
        return model_cfg
    if partial:
        model_cfg = model_cfg.replace(out_channels=init.config.out_channels)
    if (init.config.in_channels, init.config.out_channels) != (
            model_cfg.in_channels, model_cfg.out_channels):
        raise InputError(
            f"init_model {config.init_model!r} takes {init.config.in_channels} channel(s) "
            f"and predicts {init.config.out_channels}; these data need "
            f"{model_cfg.in_channels} and {model_cfg.out_channels}")
    return init.config


def _metadata(config: TrainConfig, n_classes: int, init: Any, partial: bool,
              sampler: PatchSampler, extra: dict[str, Any] | None
              ) -> tuple[dict[str, Any], Callable[[float], int] | None]:
    """What the checkpoints carry besides the weights, and how far seeds of a given
    threshold regrow (core and distance models)."""
    distance = config.target == "distance"
    patch = tuple(config.patch_size)
    metadata = {
        **(extra or {}),
        "normalization": {"kind": "percentile", "low": config.normalize[0],
                          "high": config.normalize[1], "invert": config.invert},
        "label_mode": config.label_mode,
        "boundary_width": config.boundary_width,
        "core": config.core,
        "class_names": (list(DISTANCE_CHANNELS) if distance
                        else list(INSTANCE_CLASSES) if config.label_mode == "instances"
                        else ["background", "object", "boundary"] if config.scribble_boundary
                        else [f"class {i}" for i in range(n_classes)]),
        "tile": [max(2 * p, 256 if len(patch) == 2 else 96) for p in patch],
        "patch_size": list(patch),
        "train_config": config.to_dict(),
        **({"scribble_boundary": True} if config.scribble_boundary else {}),
    }
    if partial:  # still the init model's kind of model: its classes, seeds and regrowth
        metadata.update({k: init.metadata[k] for k in (
            "label_mode", "boundary_width", "core", "class_names", "grow", "tile",
            "interior_threshold", "rgb_to_gray") if k in init.metadata})
        return metadata, None
    if config.label_mode != "instances" or not (config.core > 0 or distance):
        return metadata, None
    # Seeds of a core or distance model regrow further than the ring width: as far as its
    # targets need.  Whole targets where small (distance transforms cost ~20 bytes per
    # voxel), else training patches.
    whole = [t for t in sampler.targets if t is not None and t.size <= 2**24]
    if len(whole) < len(sampler.targets):
        whole += [t for _, t in sampler.fixed_patches(64, config.seed + 2)]

    def grow_for(threshold: float) -> int:
        return grow_distance([levels_to_classes(t, threshold) for t in whole]
                             if distance else whole, config.boundary_width)

    if distance:
        metadata.update(output="distance", seed_threshold=DEFAULT_SEED_THRESHOLD)
    metadata["grow"] = grow_for(DEFAULT_SEED_THRESHOLD)
    return metadata, grow_for


def prepare_run(train_data: Sequence[Any], val_data: Sequence[Any] | None,
                config: TrainConfig, axes: str | None = None,
                metadata: dict[str, Any] | None = None) -> Generator[Any, None, Run]:
    """Check and sample the data, build the model and everything that trains it (yields
    :class:`StageStarted` events; returns the :class:`Run`)."""
    config, init, partial = _init_model(config)
    yield StageStarted("prepare", message="checking and sampling the training data")
    train_pairs, val_pairs, split_note, max_label, voxel = _data(train_data, val_data, config,
                                                                 axes)
    if config.label_mode == "scribbles" and max_label < 2:
        raise InputError(
            "scribbles need at least two classes: paint background with label 1 and "
            "foreground with label 2 (0 stays unlabelled)"
        )
    if partial and max_label > 2:
        raise InputError(
            f"init_model {config.init_model!r} is an instance model: its scribbles take two "
            f"values, 1 for background and 2 for objects (found up to {max_label})")
    if config.label_mode == "scribbles" and config.scribble_prior == "forest":
        from .pixel_classifier import forest_pseudo_labels

        yield StageStarted("forest", message="pixel classifier on the scribbles")
        try:
            train_pairs, classes = forest_pseudo_labels(train_pairs, seed=config.seed)
        except ValueError as err:
            raise InputError(str(err)) from err
        if len(classes) == 1:  # one image (a widget's layer): shown while the network trains
            yield Preview("forest", classes[0])
    n_classes = n_classes_for(config.label_mode, max_label)
    if config.scribble_boundary:  # three outputs from the first stroke: boundary ones may come
        if max_label > 3:
            raise InputError(f"with boundary strokes, scribbles are 1 background, 2 object, 3 "
                             f"boundary; found the value {max_label}")
        n_classes = 3
    model_cfg = _architecture(config, int(train_pairs[0].image.shape[0]), n_classes, init,
                              partial)
    config = config.replace(model=model_cfg)
    device = select_device(config.device)
    precision = select_precision(config.precision, device)

    torch.manual_seed(config.seed)
    model = UNet(model_cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
    teacher = None
    if config.scribble_prior == "model":
        if not partial:
            raise InputError(
                f"scribble_prior='model' needs an instance model to start from (init_model "
                f"{config.init_model!r} is not one): choose 'forest' or 'none'")
        teacher = init.eval().requires_grad_(False)  # the loaded model, left as it is
    sd, patch = model_cfg.spatial_dims, tuple(config.patch_size)
    augmenter = (Augmenter(sd, anisotropic=config.anisotropic, scale=config.zoom)
                 if config.augment else None)
    targets = dict(core=config.core, target=config.target)
    sampler = PatchSampler(train_pairs, patch, config.label_mode, config.boundary_width,
                           config.foreground_fraction, augmenter,
                           uniform=config.pair_sampling == "uniform", **targets)
    val_sampler = PatchSampler(val_pairs, patch, config.label_mode, config.boundary_width,
                               config.foreground_fraction, None, **targets)
    distance = config.target == "distance"
    weights = None
    if config.class_weights == "auto" and config.loss != "dice" and not (distance or partial):
        sample = sampler.fixed_patches(min(64, 4 * config.batch_size), config.seed + 1)
        # On the training device from the start: a copy per step would wait for the device.
        weights = torch.tensor(class_weights([t for _, t in sample], n_classes),
                               dtype=torch.float32, device=device)
    loss_fn = (partial_scribble_loss if partial
               else make_loss(config.loss, n_classes == 2, weights, config.target))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    meta, grow_for = _metadata(config, n_classes, init, partial, sampler, metadata)
    if voxel is not None:
        meta["voxel_size"] = list(voxel)
    return Run(
        config=config, split_note=split_note, n_classes=n_classes, sampler=sampler,
        val_sampler=val_sampler, val_set=val_sampler.fixed_patches(config.val_patches,
                                                                   config.seed),
        model=model, augmenter=augmenter, loss_fn=loss_fn, optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        device=device, precision=precision, metadata=meta, distance=distance,
        partial=partial, grow_for=grow_for, teacher=teacher)
