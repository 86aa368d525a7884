"""Models shipped inside the package."""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_model_path", "BUILTIN_MODELS"]

_HERE = Path(__file__).parent
BUILTIN_MODELS = {"nuclei": _HERE / "nuclei2d.safetensors"}


def default_model_path() -> Path | None:
    """The built-in nuclei model, or None while no model ships with this install."""
    path = BUILTIN_MODELS["nuclei"]
    return path if path.exists() else None
