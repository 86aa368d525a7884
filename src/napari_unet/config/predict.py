"""Settings of tiled, out-of-core prediction."""

from __future__ import annotations

import dataclasses
from typing import Any

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

__all__ = ["PredictConfig", "MODES", "LABEL_OUTPUTS", "BLENDINGS", "PRECISIONS", "DEVICES",
           "Z_STITCHES", "IN_MEMORY_VOXELS", "resolve_mode", "parse_overlap", "parse_batch_size"]

MODES = ("auto", "instances", "semantic", "probabilities", "logits")
# Images up to this many voxels are segmented in memory by the segment widget and written
# as one file by a batch; larger ones go block by block to a zarr store.
IN_MEMORY_VOXELS = 64 * 2**20
# What a batch writes per image: a label mask ("auto" resolves to one of the two).
LABEL_OUTPUTS = ("instances", "semantic")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BLENDINGS = ("crop", "gaussian", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")  # and "cuda:N"
Z_STITCHES = ("overlap", "slices", "3d")


def resolve_mode(mode: str, metadata: dict[str, Any], out_channels: int) -> str:
    """``"auto"`` -> ``"instances"`` for models that find objects (trained on instance
    labels or scribbles with boundary strokes, or with one foreground channel),
    ``"semantic"`` for multi-class models."""
    if mode != "auto":
        return mode
    if (metadata.get("label_mode") == "instances" or metadata.get("scribble_boundary")
            or out_channels == 1):
        return "instances"
    return "semantic"


def parse_overlap(text: str) -> float | tuple[int, ...]:
    """``0.25`` (a fraction of the tile), ``16`` (voxels on every axis) or ``8,32,32``."""
    if "," in text or "x" in text:
        return parse_ints(text) or ()
    value = float(text)
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"an overlap of 1 or more is in whole voxels, got {text!r}")
        return (int(value),)
    return value


def parse_batch_size(text: str) -> int | str:
    text = str(text).strip().lower()
    if text in ("auto", "0"):
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"batch_size: expected 'auto' or a whole number of tiles, got "
                          f"{text!r}") from None


@document
@dataclasses.dataclass(frozen=True)
class PredictConfig(Config):
    """Settings of tiled, out-of-core prediction (shared by :func:`napari_unet.predict`, the
    CLI and the segment widget)."""

    mode: str = option(
        "auto", "What to write: instance labels (connected objects, correct across blocks), "
                "class labels (argmax / threshold), class probabilities (channel first) or "
                "the blended raw model output; 'auto': instances for models that find objects "
                "(trained on instance labels, or one foreground channel), class labels for "
                "multi-class models.", choices=MODES)
    tile: tuple[int, ...] | None = option(
        None, "Network input size per spatial axis, rounded up to a size the model takes and "
              "clipped to the image; None: fitted to the image from the model's recommended "
              "tile.", parse=parse_ints)
    overlap: float | tuple[int, ...] = option(
        0.25, "Overlap of neighbouring tiles: a fraction of the tile (0 <= f < 1) or voxels "
              "(one number >= 1 for every axis, or one per axis).  With crop stitching and "
              "no explicit tile, a fraction is of the model's recommended tile.",
        parse=parse_overlap, widget_step=0.05)
    blending: str = option(
        "crop", "How overlapping tiles make one output: 'crop' cuts the volume into cells "
                "and each tile, a cell plus half the overlap of context, writes only its cell "
                "(no tile computed twice); 'gaussian' / 'constant' average overlapping tiles "
                "(as nnU-Net and MONAI).", choices=BLENDINGS)
    sigma_scale: float = option(0.125, "Gaussian sigma as a fraction of the tile size.",
                                low=0.0, high=1.0, open_low=True)
    batch_size: int | str = option(
        "auto", "Tiles of the model's recommended size per forward pass; 'auto': on a CUDA "
                "GPU as many as fit in 60 % of its free memory (a power of two, at most 64), "
                "elsewhere 4.  Running out of GPU memory halves it for the rest of the run.",
        parse=parse_batch_size)
    block_shape: tuple[int, ...] | None = option(
        None, "Spatial size of one unit of work (read, predict, write), clipped to the "
              "volume; a multiple of chunk_shape.  Memory grows with it, never with the "
              "volume.", flag="--block", parse=parse_ints)
    chunk_shape: tuple[int, ...] | None = option(
        None, "Spatial chunk shape of the output zarr array.", flag="--chunk",
        parse=parse_ints)
    device: str = option("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', "
                                 "'cuda:N' or 'mps'.")
    precision: str = option(
        "auto", "'auto': bf16 (or fp16) autocast on a GPU, and on a CPU with native bf16 "
                "(AVX512-BF16 / AMX); fp32 elsewhere.", choices=PRECISIONS)
    probability_dtype: str = option("float16", "Storage type of probabilities.",
                                    choices=("float16", "float32"))
    threshold: float = option(0.5, "Foreground threshold of binary (one-channel) models.",
                              low=0.0, high=1.0, open_low=True, open_high=True)
    axes: str | None = option(
        None, "Axes of the input, letters from 'TCZYX' (e.g. 'ZYX', 'CYX', 'TZYX'); None: "
              "inferred (napari_unet.axes).  With a 2D model a Z axis is processed slice by "
              "slice.")
    normalize: tuple[float, float] | None = option(
        None, "Low / high percentiles of the intensity normalisation, computed once per "
              "volume; None: the model's training normalisation, else (1, 99.8).", cli=False)
    prefetch: int = option(2, "Blocks read ahead of the one being computed (and writes "
                              "allowed to lag behind).", low=0)
    min_size: int = option(10, "Instances: seeds (object cores) smaller than this many "
                               "voxels are dropped -- fragments, not objects.", low=0)
    split_touching: int = option(
        0, "Instances of models without boundary classes (two-class and scribble models): "
           "split touching objects at the necks of their distance to the background -- each "
           "seed is where that distance exceeds half the largest within this radius (voxels; "
           "about the objects' typical radius), and seeds regrow as far.  Out of core, blocks "
           "see three radii of context: the same result as in one piece for objects up to "
           "twice the radius.  0: connected components of the foreground.", low=0,
        label="split touching (radius)")
    z_stitch: str = option(
        "overlap", "Instances of a 2D model on a z stack (slice by slice): 'overlap' links each "
                   "slice's objects to the object of the slice above that they overlap most "
                   "(IoU >= stitch_threshold as Cellpose's stitching, or covering half of "
                   "the smaller one: the end slices of nuclei), one label per 3D object; "
                   "'slices' keeps slices independent, labels restarting on every slice "
                   "(unrelated planes); '3d' labels the per-slice classes in 3D as one "
                   "volume (connected seeds: objects of neighbouring slices merge wherever "
                   "they touch).", choices=Z_STITCHES)
    stitch_threshold: float = option(
        0.25, "z_stitch 'overlap': the least intersection over union with an object of the "
              "slice above for an object to continue it (else it starts a new one).",
        low=0.0, high=1.0, open_low=True, widget_step=0.05)
    tta: bool = option(False, "Test-time augmentation: average the logits over mirror images "
                              "along the YX axes (4x the compute; usually a little more "
                              "accurate).")
    voxel_size: tuple[float, ...] | None = option(
        None, "Voxel size of the image along its spatial axes ((Z)YX, in its metadata's "
              "unit), one number per axis; None: read from the image's metadata (OME-Zarr, "
              "OME / ImageJ TIFF) where it says -- the segment widget uses the layer's "
              "scale.  Written to the result and compared with the voxel size the model "
              "was trained at (a warning when they differ by more than 1.5x).",
        parse=parse_floats)
    pyramid: bool = option(True, "Also write the result at lower resolutions (an OME-Zarr "
                                 "multiscale pyramid halving Y and X down to 512 pixels), "
                                 "built as blocks finish, so viewers show large results "
                                 "at any zoom.  Output stores only.")
    overwrite: bool = option(False, "Replace an existing output that belongs to another job "
                                    "(another model, input, input content or settings).")

    def _check(self) -> None:
        dev = str(self.device)
        if not (dev in DEVICES or dev.startswith("cuda:")):
            raise ConfigError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )
        for name in ("tile", "block_shape", "chunk_shape"):
            value = int_tuple(getattr(self, name), name)
            if value is not None and any(v < 1 for v in value):
                raise ConfigError(f"{name} values must be >= 1, got {value}")
            self._set(name, value)
        self._check_overlap()
        self._set("voxel_size", voxel_size_of(self.voxel_size, "voxel_size"))
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int)
                                          or isinstance(self.batch_size, bool)
                                          or self.batch_size < 1):
            raise ConfigError(
                f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        if self.axes is not None:
            axes = str(self.axes).upper()
            if not axes or any(a not in "TCZYX" for a in axes) or len(set(axes)) != len(axes):
                raise ConfigError(
                    f"axes must be distinct letters from 'TCZYX' (e.g. 'ZYX', 'CYX'), "
                    f"got {self.axes!r}"
                )
            self._set("axes", axes)
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
            self._set("normalize", (lo, hi))

    def _check_overlap(self) -> None:
        ov = self.overlap
        if isinstance(ov, float) or (isinstance(ov, int) and not isinstance(ov, bool)
                                     and ov < 1):
            if not 0.0 <= float(ov) < 1.0:
                raise ConfigError(
                    f"overlap as a fraction must be in [0, 1), got {ov}; give whole voxels "
                    "(e.g. 16, or 8,32,32) for an absolute overlap"
                )
            self._set("overlap", float(ov))
            return
        voxels = int_tuple(ov, "overlap")  # an int >= 1 is voxels on every axis
        if voxels is None or not voxels or any(v < 0 for v in voxels):
            raise ConfigError(f"overlap in voxels must be >= 0, got {ov}")
        self._set("overlap", voxels)
