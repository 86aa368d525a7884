"""Models shipped inside the package, and the one place a model name or path is resolved."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_model_path", "BUILTIN_MODELS", "model_path"]

_HERE = Path(__file__).parent
BUILTIN_MODELS = {"nuclei": _HERE / "nuclei2d.safetensors"}


def default_model_path() -> Path | None:
    """The built-in nuclei model, or None while no model ships with this install."""
    path = BUILTIN_MODELS["nuclei"]
    return path if path.exists() else None


def model_path(model: str | os.PathLike | None) -> Path:
    """The file of a model given by path, by built-in name (``"nuclei"``), or None (the
    built-in default model).

    Raises
    ------
    InputError
        No such file, or no built-in model ships with this install.
    """
    from ..io import InputError

    if model is None or str(model) in BUILTIN_MODELS:
        path = BUILTIN_MODELS["nuclei" if model is None else str(model)]
        if not path.exists():
            raise InputError("no built-in model ships with this install; train one "
                             "(napari-unet train) or pass a model file")
        return path
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model {str(model)!r} is neither a model file nor a built-in model "
                         f"({', '.join(BUILTIN_MODELS)})")
    return path
