"""Validated configuration objects shared by the napari widgets, the CLI and the Python API.

Every config is a frozen dataclass that checks itself on construction, so a bad value fails
where it is set (a widget field, a CLI flag, a YAML file) with a message naming the field and
the fix, never deep inside a worker thread.  Configs round-trip through plain dicts, JSON and
YAML.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "ModelConfig",
    "PredictConfig",
    "NORMS",
    "MODES",
    "PRECISIONS",
    "BLENDINGS",
    "TrainConfig",
    "LABEL_MODES",
]

NORMS = ("batch", "instance", "group", "none")
MODES = ("probabilities", "semantic", "instances", "logits")
INVERT_MODES = ("never", "always", "auto")
PAIR_SAMPLINGS = ("by_size", "uniform")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BLENDINGS = ("crop", "gaussian", "constant")

T = TypeVar("T", bound="_Config")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what to do."""


def _tuple_or_none(value: Any, name: str, length: int | None = None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,) * (length or 1)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a sequence of integers, got {value!r}") from err
    if length is not None and len(out) != length:
        raise ConfigError(f"{name} must have {length} values (one per spatial axis), got {out}")
    return out


@dataclasses.dataclass(frozen=True)
class _Config:
    """Base class: dict / JSON / YAML round-trip with unknown-key detection."""

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown option(s) {unknown}; valid options are {sorted(names)}"
            )
        return cls(**dict(data))

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write the config to ``path`` (``.json``, or ``.yaml``/``.yml``)."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=True))
        else:
            path.write_text(self.to_json())

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """Read a config written by :meth:`save` (JSON or YAML)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} does not hold a mapping of options")
        return cls.from_dict(data)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
    """Architecture of a :class:`~napari_unet.model.unet.UNet`.

    Parameters
    ----------
    spatial_dims : int
        2 for YX images, 3 for ZYX volumes.
    in_channels, out_channels : int
        Input channels and output classes (logits).  ``out_channels == 1`` means a binary
        model whose logit goes through a sigmoid.
    depth : int
        Number of poolings (1-6; 3-6 typical).
    base_filters : int
        Filters of the first level (any >= 1; 32-128 typical).
    growth : float
        Filter growth per level (1.5-2 typical).
    norm : {"batch", "instance", "group", "none"}
        Normalisation after each convolution; group or instance suit small 3D batches.
    groups : int
        Number of groups for group norm (reduced to a divisor of the channel count).
    dropout : float
        Dropout probability in the bottleneck.
    pool_factors : sequence of per-level tuples, optional
        Pooling factor per level and axis, e.g. ``[(1, 2, 2), (1, 2, 2), (2, 2, 2)]`` for an
        anisotropic stack.  Default: 2 along every axis at every level.
    """

    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 2
    depth: int = 4
    base_filters: int = 32
    growth: float = 2.0
    norm: str = "batch"
    groups: int = 8
    dropout: float = 0.0
    pool_factors: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        for name in ("in_channels", "out_channels", "base_filters", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 6:
            raise ConfigError(f"depth must be an integer from 1 to 6, got {self.depth!r}")
        if not 1.0 <= float(self.growth) <= 4.0:
            raise ConfigError(f"growth must be between 1 and 4 (1.5-2 typical), got {self.growth}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pool_factors is not None:
            factors = tuple(
                _tuple_or_none(f, f"pool_factors[{i}]", self.spatial_dims)
                for i, f in enumerate(self.pool_factors)
            )
            if len(factors) != self.depth:
                raise ConfigError(
                    f"pool_factors needs one entry per level (depth={self.depth}), "
                    f"got {len(factors)}"
                )
            if any(v < 1 for f in factors for v in f):  # type: ignore[union-attr]
                raise ConfigError(f"pool factors must be >= 1, got {factors}")
            object.__setattr__(self, "pool_factors", factors)

    @property
    def level_factors(self) -> tuple[tuple[int, ...], ...]:
        """Pooling factor per level and axis (explicit form of ``pool_factors``)."""
        if self.pool_factors is None:
            return tuple((2,) * self.spatial_dims for _ in range(self.depth))
        return self.pool_factors

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Each spatial size fed to the network must be a multiple of these."""
        out = [1] * self.spatial_dims
        for factors in self.level_factors:
            out = [o * f for o, f in zip(out, factors, strict=True)]
        return tuple(out)

    @property
    def filters(self) -> tuple[int, ...]:
        """Filters per level, from the top level down to the bottleneck."""
        return tuple(
            max(1, int(round(self.base_filters * self.growth**i))) for i in range(self.depth + 1)
        )


@dataclasses.dataclass(frozen=True)
class PredictConfig(_Config):
    """Settings of tiled, out-of-core prediction.

    Parameters
    ----------
    mode : {"probabilities", "semantic", "instances", "logits"}
        What to write: class probabilities (channel first), argmax / threshold labels,
        instance labels (connected components correct across blocks), or the blended raw
        model output.
    tile : tuple of int, optional
        Network input size per spatial axis.  Rounded up to a valid size for the model and
        clipped to the image; default: fitted to the image from the model's recommended tile
        (see ``blending``).
    overlap : float or tuple of int
        Overlap of neighbouring tiles, as a fraction of the tile (0 <= f < 1) or in voxels.
        With crop stitching and no explicit ``tile``, a fraction is of the model's recommended
        tile.
    blending : {"crop", "gaussian", "constant"}
        How overlapping tiles make one output.  "crop": the volume is cut into cells and each
        tile, a cell plus half the overlap of context on every side, writes only its cell --
        with blocks of whole cells no tile is computed twice (the default tile is then also
        grown, keeping the overlap in voxels of the model's recommended tile).  "gaussian" /
        "constant": overlapping tiles are averaged with Gaussian / equal weights (as nnU-Net
        and MONAI do); a tile straddling a block border is computed by both blocks.
    sigma_scale : float
        Gaussian sigma as a fraction of the tile size.
    batch_size : int or "auto"
        Tiles of the model's recommended size per forward pass (a larger default tile counts
        for several).  "auto": on a CUDA GPU as many as fit in 60 % of its free memory
        (measured with one forward pass; a power of two, at most 64), elsewhere 4.  Running
        out of GPU memory halves it for the rest of the run either way.
    block_shape : tuple of int, optional
        Spatial size of one unit of work (read, predict, write); a multiple of ``chunk_shape``.
        Memory grows with it, never with the volume.
    chunk_shape : tuple of int, optional
        Spatial chunk shape of the output zarr array.
    device : str
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:1", "mps".
    precision : {"auto", "fp32", "bf16", "fp16"}
        "auto" uses bf16 (or fp16) autocast on a GPU, and on a CPU with native bf16
        (AVX512-BF16 / AMX); fp32 elsewhere.
    probability_dtype : {"float16", "float32"}
        Storage type of probabilities.
    threshold : float
        Foreground threshold of binary (one-channel) models.
    axes : str, optional
        Axes of the input, letters from "TCZYX" (e.g. "ZYX", "CYX", "TZYX").  Inferred when
        omitted.  With a 2D model, a "Z" axis is processed slice by slice.
    normalize : tuple of float, optional
        Low/high percentiles of the intensity normalisation, computed once per volume.
        Default: the model's training normalisation, else (1, 99.8).
    prefetch : int
        Blocks read ahead of the one being computed (and writes allowed to lag behind).
    min_size : int
        Instance mode: seeds (object cores) smaller than this many voxels are dropped --
        fragments, not objects.
    split_touching : int
        Instance mode, models without boundary classes (two-class and scribble models):
        split touching objects at the necks of their distance to the background -- each
        seed is where that distance exceeds half the largest within this radius (voxels;
        about the objects' typical radius), and seeds regrow as far.  Out of core, blocks
        see three radii of context: the result is the same as in one piece for objects up
        to twice the radius.  0: connected components of the foreground.
    tta : bool
        Test-time augmentation: average the logits over mirror images along the YX axes
        (4x the compute; usually a little more accurate).
    overwrite : bool
        Replace an existing output that belongs to another job.
    """

    mode: str = "semantic"
    tile: tuple[int, ...] | None = None
    overlap: float | tuple[int, ...] = 0.25
    blending: str = "crop"
    sigma_scale: float = 0.125
    batch_size: int | str = "auto"
    block_shape: tuple[int, ...] | None = None
    chunk_shape: tuple[int, ...] | None = None
    device: str = "auto"
    precision: str = "auto"
    probability_dtype: str = "float16"
    threshold: float = 0.5
    axes: str | None = None
    normalize: tuple[float, float] | None = None
    prefetch: int = 2
    min_size: int = 10
    split_touching: int = 0
    tta: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.blending not in BLENDINGS:
            raise ConfigError(f"blending must be one of {BLENDINGS}, got {self.blending!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.probability_dtype not in ("float16", "float32"):
            raise ConfigError(
                f"probability_dtype must be 'float16' or 'float32', got {self.probability_dtype!r}"
            )
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "mps", "cuda") or dev.startswith("cuda:")):
            raise ConfigError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )
        for name in ("tile", "block_shape", "chunk_shape"):
            value = _tuple_or_none(getattr(self, name), name)
            if value is not None and any(v < 1 for v in value):
                raise ConfigError(f"{name} values must be >= 1, got {value}")
            object.__setattr__(self, name, value)
        if isinstance(self.overlap, (int, float)) and not isinstance(self.overlap, bool):
            if not 0.0 <= float(self.overlap) < 1.0:
                raise ConfigError(
                    f"overlap as a fraction must be in [0, 1), got {self.overlap}; "
                    "give a tuple of voxel counts for an absolute overlap"
                )
            object.__setattr__(self, "overlap", float(self.overlap))
        else:
            ov = _tuple_or_none(self.overlap, "overlap")
            if ov is None or any(v < 0 for v in ov):
                raise ConfigError(f"overlap in voxels must be >= 0, got {self.overlap}")
            object.__setattr__(self, "overlap", ov)
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int)
                                          or isinstance(self.batch_size, bool)
                                          or self.batch_size < 1):
            raise ConfigError(
                f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ConfigError(f"min_size must be an integer >= 0, got {self.min_size!r}")
        if (not isinstance(self.split_touching, int) or isinstance(self.split_touching, bool)
                or self.split_touching < 0):
            raise ConfigError(f"split_touching must be a radius in voxels >= 0 (0: off), got "
                              f"{self.split_touching!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ConfigError(f"prefetch must be an integer >= 0, got {self.prefetch!r}")
        if not 0.0 < float(self.sigma_scale) <= 1.0:
            raise ConfigError(f"sigma_scale must be in (0, 1], got {self.sigma_scale}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.axes is not None:
            axes = str(self.axes).upper()
            if not axes or any(a not in "TCZYX" for a in axes) or len(set(axes)) != len(axes):
                raise ConfigError(
                    f"axes must be distinct letters from 'TCZYX' (e.g. 'ZYX', 'CYX'), "
                    f"got {self.axes!r}"
                )
            object.__setattr__(self, "axes", axes)
        if self.normalize is not None:
            try:
                lo, hi = (float(v) for v in self.normalize)
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    f"normalize must be two percentiles (low, high), got {self.normalize!r}"
                ) from err
            if not 0.0 <= lo < hi <= 100.0:
                raise ConfigError(f"normalize percentiles must satisfy 0 <= low < high <= 100, "
                                  f"got {(lo, hi)}")
            object.__setattr__(self, "normalize", (lo, hi))


def as_spatial_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Broadcast an int or check a sequence to ``ndim`` spatial values."""
    out = _tuple_or_none(value, name, ndim)
    assert out is not None
    return out


LABEL_MODES = ("instances", "classes", "scribbles")
SCHEDULES = ("plateau", "cosine", "onecycle")
TARGETS = ("classes", "distance")
SCRIBBLE_PRIORS = ("none", "forest")
LOSSES = ("auto", "bce_dice", "ce_dice", "dice", "ce", "focal")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Config):
    """Settings of a training run (shared by :func:`napari_unet.train`, the CLI and the widget).

    Parameters
    ----------
    model : ModelConfig
        Architecture; ``in_channels`` and ``out_channels`` are filled in from the data and
        the label mode when training starts.
    label_mode : {"instances", "classes", "scribbles"}
        ``instances``: dense instance ids, trained as background / interior / boundary /
        contact (boundary next to another object) so touching objects separate.
        ``classes``: dense class ids (0 = background).
        ``scribbles``: sparse strokes, 0 = unlabelled (ignored), k >= 1 = class k-1.
    target : {"classes", "distance"}
        ``instances`` mode: what the model learns to predict.  ``classes``: background /
        interior / boundary / contact (see ``core``).  ``distance``: a foreground
        probability and, per voxel, the distance to its object's edge as a share of the
        object's largest (a dense regression); instance seeds are the voxels whose predicted
        distance exceeds a threshold chosen on the validation patches after training, and
        they regrow through the rest of the foreground.
    scribble_prior : {"none", "forest"}
        ``scribbles`` mode: what the network learns where nothing is painted.  ``none``:
        nothing (only painted voxels count).  ``forest``: a random-forest pixel classifier
        fitted to the scribbles in seconds (multiscale filter features, as ilastik) labels
        the unpainted voxels it is confident about, and the network learns those too.
    patch_size : tuple of int
        Training patch per spatial axis; a multiple of the model's pooling product.
    batch_size, epochs, steps_per_epoch : int
        Patches per step, epochs, optimiser steps per epoch.
    lr : float
        Adam learning rate.
    loss : {"auto", "bce_dice", "ce_dice", "dice", "ce", "focal"}
        ``auto``: BCE + Dice for binary problems, cross-entropy + Dice otherwise.
    class_weights : {"auto", "none"}
        ``auto`` weights cross-entropy classes by inverse frequency in the training labels.
    foreground_fraction : float
        Share of patches centred on a labelled foreground voxel (nnU-Net uses 1/3).
    pair_sampling : {"by_size", "uniform"}
        How often each training pair is drawn: in proportion to its size, or equally (many
        images of mixed sizes, where scores are averaged per image).
    augment : bool
        Flips, 90-degree rotations, small rotations and scaling, elastic deformation,
        gamma / contrast / brightness / noise / blur.
    zoom : (float, float)
        Range of the random scaling of the augmentation (applied to 30 % of the patches);
        widen it where object sizes vary more than the training images show.
    anisotropic : bool
        3D only: rotate in the YX plane only (thin z stacks).
    val_fraction : float
        Share of the training pairs held out for validation when no validation set is given
        (a single pair is split along its first spatial axis instead).
    val_patches : int
        Fixed validation patches evaluated after every epoch.
    patience : int
        Early stopping: epochs without a better validation Dice.
    schedule : {"plateau", "cosine", "onecycle"}
        Learning-rate schedule.  ``plateau``: ``lr`` halved after ``plateau_patience`` epochs
        without a better validation Dice.  ``cosine``: a linear warm-up over the first 5 % of
        the steps, then cosine decay to 0 at the last step of ``epochs``.  ``onecycle``: from
        ``lr`` / 25 up to ``lr`` over the first 30 %, then cosine decay to ``lr`` / 10^4.
    plateau_patience : int
        ``plateau`` schedule: epochs without improvement before the learning rate is halved.
    boundary_width : int
        Width in pixels of the boundary class (``instances`` mode).
    core : float
        ``instances`` mode: with a value in (0, 1), the interior class (the seeds of instance
        labelling) is each object's core, where the distance to its edge exceeds this share of
        the object's largest, and the rest of the object is boundary; seeds of touching objects
        then lie apart by a share of their size.  0: the interior reaches the boundary ring.
        Measured with 0.3 against 0: DSB 2018 nuclei (fine-tuning) mean AP 0.551 -> 0.570;
        synthetic 3D nuclei trained from scratch (the demo, two seeds) AP@0.5 0.899 / 0.887
        -> 0.903 / 0.911; 0.5 scored lower on DSB (mean AP 0.555).
    normalize : (float, float)
        Percentiles of the per-image intensity normalisation (stored in the model).
    invert : {"never", "always", "auto"}
        Invert intensities so objects are bright ("auto": per image, where the background is
        bright, e.g. H&E or bright-field next to fluorescence). Stored in the model.
    seed : int
        Seeds sampling, augmentation and initialisation (deterministic on the CPU).
    init_model : str, optional
        Start from the weights of this model file (fine-tuning, e.g. the built-in model on
        your own images); its architecture and its intensity normalisation (percentiles,
        inversion) replace ``model``, ``normalize`` and ``invert``.  An instance model
        (background / interior / boundary / contact) fine-tuned from ``scribbles`` keeps its
        classes: strokes of 1 mark background, strokes of 2 any part of an object.
    device, precision : str
        As in :class:`PredictConfig`; AMP is used on a GPU.
    """

    model: ModelConfig = dataclasses.field(
        default_factory=lambda: ModelConfig(depth=4, base_filters=16)
    )
    label_mode: str = "instances"
    target: str = "classes"
    scribble_prior: str = "none"
    patch_size: tuple[int, ...] = (256, 256)
    batch_size: int = 8
    epochs: int = 50
    steps_per_epoch: int = 50
    lr: float = 1e-4
    loss: str = "auto"
    class_weights: str = "auto"
    foreground_fraction: float = 0.33
    pair_sampling: str = "by_size"
    augment: bool = True
    zoom: tuple[float, float] = (0.85, 1.2)
    anisotropic: bool = False
    val_fraction: float = 0.2
    val_patches: int = 32
    patience: int = 20
    schedule: str = "plateau"
    plateau_patience: int = 5
    boundary_width: int = 2
    core: float = 0.3
    normalize: tuple[float, float] = (1.0, 99.8)
    invert: str = "never"
    seed: int = 0
    init_model: str | None = None
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.init_model is not None:
            object.__setattr__(self, "init_model", str(self.init_model))
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig or a mapping, got {self.model!r}")
        if self.label_mode not in LABEL_MODES:
            raise ConfigError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.class_weights not in ("auto", "none"):
            raise ConfigError(f"class_weights must be 'auto' or 'none', got {self.class_weights!r}")
        patch = _tuple_or_none(self.patch_size, "patch_size", self.model.spatial_dims)
        object.__setattr__(self, "patch_size", patch)
        bad = [(p, m) for p, m in zip(patch, self.model.size_multiple, strict=True) if p % m]
        if bad:
            fixed = tuple(round(p / m) * m or m for p, m in
                          zip(patch, self.model.size_multiple, strict=True))
            raise ConfigError(
                f"patch_size {patch} must be divisible by {self.model.size_multiple} "
                f"(2**depth per axis for depth={self.model.depth}); try {fixed}"
            )
        for name in ("batch_size", "epochs", "steps_per_epoch", "val_patches", "patience",
                     "plateau_patience", "boundary_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not float(self.lr) > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= float(self.foreground_fraction) <= 1.0:
            raise ConfigError(
                f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}"
            )
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= float(self.core) < 1.0:
            raise ConfigError(f"core must be in [0, 1), got {self.core!r}")
        object.__setattr__(self, "core", float(self.core))
        zoom = tuple(float(v) for v in self.zoom)
        if len(zoom) != 2 or not 0.0 < zoom[0] <= zoom[1]:
            raise ConfigError(f"zoom must be a range 0 < low <= high, got {self.zoom}")
        object.__setattr__(self, "zoom", zoom)
        lo, hi = (float(v) for v in self.normalize)
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"normalize must be percentiles 0 <= low < high <= 100, "
                              f"got {self.normalize}")
        object.__setattr__(self, "normalize", (lo, hi))
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target != "classes" and self.label_mode != "instances":
            raise ConfigError(f"target={self.target!r} needs label_mode='instances' (dense "
                              f"instance labels), got label_mode={self.label_mode!r}")
        if self.scribble_prior not in SCRIBBLE_PRIORS:
            raise ConfigError(f"scribble_prior must be one of {SCRIBBLE_PRIORS}, got "
                              f"{self.scribble_prior!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.pair_sampling not in PAIR_SAMPLINGS:
            raise ConfigError(f"pair_sampling must be one of {PAIR_SAMPLINGS}, "
                              f"got {self.pair_sampling!r}")
        if self.invert not in INVERT_MODES:
            raise ConfigError(f"invert must be one of {INVERT_MODES}, got {self.invert!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["model"] = self.model.to_dict()
        return d
