"""Models known to the widgets: the built-in one, files the user picked, runs just trained.

Holds paths only (never viewers, layers or loaded networks), so training in one widget makes a
model selectable in the segment widget at once.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal

__all__ = ["ModelRegistry", "registry", "BUILTIN"]

BUILTIN = "built-in nuclei (2D)"


class ModelRegistry:
    changed = Signal()

    def __init__(self) -> None:
        self._models: dict[str, Path] = {}

    def add(self, name: str, path: str | Path) -> str:
        self._models[name] = Path(path)
        self.changed.emit()
        return name

    def choices(self) -> list[str]:
        from ..models import default_model_path

        builtin = [BUILTIN] if default_model_path() is not None else []
        return builtin + list(self._models)

    def path(self, name: str) -> Path | None:
        if name == BUILTIN:
            from ..models import default_model_path

            return default_model_path()
        return self._models.get(name)


registry = ModelRegistry()
