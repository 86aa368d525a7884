"""Export a napari-unet model as an ONNX file (float32), or quantise one to INT8 for CPUs;
the files predict through the same engine (:class:`~napari_unet.model.onnx_model.OnnxModel`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import QUANTIZE_MODES
from .errors import InputError
from .model.onnx_model import META_KEY, OnnxModel, onnx_session, require_onnx

__all__ = ["export_onnx", "quantize_onnx", "QUANTIZE_MODES"]

# Largest difference between the exported file's and torch's logits on a random input that
# export accepts (float32 rounding is ~1e-5 here).
_EXPORT_TOLERANCE = 1e-3


def _metadata(model: Any) -> dict[str, Any]:
    meta = dict(getattr(model, "metadata", {}))
    meta.pop("train_config", None)
    return {"config": model.config.to_dict(), "metadata": meta}


def _write_metadata(path: Path, stored: dict[str, Any]) -> None:
    """Put ``stored`` (config and metadata) into the ONNX file's ``metadata_props``."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(stored)
    onnx.save(proto, str(path))


def export_onnx(model: Any, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``model`` (a UNet, a model file or built-in name) as an ONNX file.

    The batch and spatial axes are dynamic (any size the network takes: a multiple of its
    pooling); batch norms are folded into the convolutions.  The file is checked against
    torch on a random input of the model's recommended tile before it is kept.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        onnx / onnxruntime missing, or the exported network disagrees with torch.
    """
    require_onnx()
    from .inference.device import inference_module
    from .inference.plan import recommended_tile
    from .inference.spec import resolve_model

    spec = resolve_model(model)
    if not hasattr(spec.module, "config"):
        raise InputError("only napari-unet U-Nets (model files) can be exported to ONNX")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{str(path)!r}: an ONNX file name ends in .onnx")
    module = inference_module(spec.module, torch.device("cpu"), spec.spatial_dims).float()
    module = module.to(memory_format=torch.contiguous_format)
    tile = recommended_tile(spec)
    x = torch.randn(1, spec.in_channels, *tile)
    axes = {0: "batch", **{2 + i: f"s{i}" for i in range(spec.spatial_dims)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.part")
    with torch.no_grad(), warnings.catch_warnings():
        # The U-Net's input checks (channels, size multiple) are Python conditions the tracer
        # warns about; they hold for every size the file takes (checked in the tests).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript-based exporter: the torch.export-based one needs onnxscript and
        # gave nothing this one lacks for a plain convolutional network.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": axes, "logits": axes})
        expected = module(x).numpy()
    _write_metadata(tmp, _metadata(spec.module))
    got = onnx_session(tmp).run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > _EXPORT_TOLERANCE:
        tmp.unlink()
        raise InputError(f"the exported network differs from torch by {diff:.2e} "
                         f"(more than {_EXPORT_TOLERANCE}); not written")
    os.replace(tmp, path)
    return path


def _calibration_tiles(images: Iterable[np.ndarray], spec: Any, tile: Sequence[int],
                       per_image: int, seed: int) -> list[np.ndarray]:
    """Normalised tiles of ``images`` as the engine feeds them (colour averaged to gray for
    a one-channel model, then :func:`~.inference.job.job_normalization`, the engine's own
    rule), ``per_image`` random windows of ``tile`` from each."""
    import dask.array as da

    from .config import PredictConfig
    from .inference.job import job_normalization

    dims = len(tile)
    rng = np.random.default_rng(seed)
    tiles = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        if spec.in_channels == 1 and image.ndim == dims + 1 and image.shape[-1] in (3, 4):
            image = image[..., :3].mean(axis=-1)  # RGB(A) for a gray model, as predict reads it
        if image.ndim == dims:
            image = image[None]
        if image.ndim != dims + 1:
            raise InputError(f"calibration image of shape {image.shape}: expected {dims} "
                             f"spatial axes (and a leading channel axis for several channels)")
        norm, _ = job_normalization(da.from_array(image), 0, spec, PredictConfig(),
                                    "calibration image")
        image = norm.apply(image)
        # Pad small images up to the tile (reflect, as the engine pads image borders).
        pad = [(0, 0)] + [(0, max(0, t - s)) for t, s in zip(tile, image.shape[1:],
                                                              strict=True)]
        image = np.pad(image, pad, mode="reflect" if max(p[1] for p in pad) < min(
            image.shape[1:]) else "constant")
        for _ in range(per_image):
            start = [int(rng.integers(0, s - t + 1)) for s, t in zip(image.shape[1:], tile,
                                                                       strict=True)]
            window = tuple(slice(a, a + t) for a, t in zip(start, tile, strict=True))
            tiles.append(np.ascontiguousarray(image[(slice(None), *window)][None]))
    if not tiles:
        raise InputError("INT8 quantisation needs calibration images (a few typical inputs)")
    return tiles


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike,
                  calibration: Iterable[np.ndarray], per_image: int = 4,
                  seed: int = 0) -> Path:
    """Statically quantise an exported ONNX model to INT8 (weights and activations, QDQ
    format, per-channel weights) with onnxruntime's quantiser, calibrated on tiles of
    ``calibration`` images normalised as the engine normalises them.

    Returns
    -------
    Path
        The written file (metadata carried over).
    """
    require_onnx()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .inference.plan import recommended_tile
    from .inference.spec import resolve_model

    src, dst = Path(src), Path(dst)
    model = OnnxModel(src)
    spec = resolve_model(model)
    tiles = _calibration_tiles(calibration, spec, recommended_tile(spec), per_image, seed)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tiles)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    tmp = dst.with_suffix(".onnx.part")
    try:
        quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    _write_metadata(tmp, {"config": model.config_dict,
                          "metadata": {**model.metadata, "quantized": "int8"}})
    os.replace(tmp, dst)
    return dst


