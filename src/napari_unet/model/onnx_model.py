"""ONNX model files (written by :mod:`napari_unet.onnx_export`) predicted through the same
engine as torch models.

An exported file holds the network with dynamic batch and spatial axes and, in its
``metadata_props``, the JSON a ``.safetensors`` model carries (architecture, normalisation,
label mode, classes, tile), so ``predict("model.onnx", ...)`` tiles, normalises and labels as
the original does.  Inference runs with onnxruntime on the CPU (``onnx`` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = ["OnnxModel", "is_onnx_path", "read_onnx_metadata", "META_KEY", "require_onnx",
           "onnx_session"]

META_KEY = "napari_unet"


def is_onnx_path(model: Any) -> bool:
    """Whether ``model`` names an ONNX file (by its suffix)."""
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise InputError("ONNX models need the onnx and onnxruntime packages: "
                         "pip install 'napari-unet[onnx]'") from err


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    """``{"config": ..., "metadata": ...}`` stored in an ONNX file by :func:`export_onnx`.

    Raises
    ------
    InputError
        No such file, not an ONNX file, or one not exported by napari-unet.
    """
    require_onnx()
    import onnx

    if not path.is_file():
        raise InputError(f"model {str(path)!r}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise InputError(f"{str(path)!r} is not a readable ONNX file: {err}") from err
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise InputError(f"{str(path)!r} was not exported by napari-unet (its metadata, "
                         "needed for tiling and normalisation, is missing); export with "
                         "napari-unet export MODEL FILE.onnx")
    return json.loads(props[META_KEY])


def onnx_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(torch.nn.Module):
    """An exported ONNX file as a module the engine runs like a U-Net: tensors in, logits
    out, computed by onnxruntime on the CPU (float32 in and out; autocast does not apply).

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`export_onnx` or :func:`quantize_onnx`.
    threads : int
        onnxruntime's intra-op threads (0: its default, all cores).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        super().__init__()
        path = Path(path)
        stored = read_onnx_metadata(path)
        self.config_dict = stored["config"]
        self.metadata = stored["metadata"]
        self.spatial_dims = int(self.config_dict["spatial_dims"])
        self.in_channels = int(self.config_dict["in_channels"])
        self.out_channels = int(self.config_dict["out_channels"])
        from ..config import ModelConfig

        self.size_multiple = ModelConfig.from_dict(self.config_dict).size_multiple
        self.source_path = str(path)
        self._threads = threads
        self._session = onnx_session(path, threads)
        # The file's digest as a buffer: a job's fingerprint (state_dict) follows the file.
        digest = hashlib.sha256(path.read_bytes()).digest()
        self.register_buffer("onnx_digest", torch.tensor(list(digest), dtype=torch.uint8))

    def __reduce__(self):
        # Copies (the engine's, an ensemble's) and pickles (a cluster's workers) reopen the
        # file: an onnxruntime session cannot be copied.
        return (type(self), (self.source_path, self._threads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._session.run(None, {"input": array})[0]
        return torch.from_numpy(out).to(x.device)
