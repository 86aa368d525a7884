"""The model choice shared by the segment and batch widgets: a registered model (built-in,
trained in this session, added) or a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, FileEdit, Select

from ..errors import InputError
from ._registry import registry

__all__ = ["ModelChooser", "FILE_CHOICE"]

FILE_CHOICE = "model file..."


class ModelChooser:
    """A model combo box and the file field it shows for ``FILE_CHOICE``, and ``others``:
    registered models to average with it (an ensemble); follows the registry while ``owner``
    (a magicgui container) lives."""

    def __init__(self, owner: Any) -> None:
        self.combo = ComboBox(label="model", choices=self.choices)
        self.file = FileEdit(label="model file", mode="r", filter="*.safetensors *.onnx",
                             visible=False)
        self.others = Select(label="average with", choices=lambda *_: registry.choices(),
                             value=[],
                             tooltip="other models whose probabilities are averaged with the "
                                     "model's, tile by tile (an ensemble; they must agree on "
                                     "channels, classes and normalisation)")
        self.others.native.setMaximumHeight(70)
        self.combo.changed.connect(self._on_choice)
        registry.changed.connect(self.refresh)
        # The registry outlives dock widgets: stop notifying one once Qt has deleted it.
        owner.native.destroyed.connect(
            lambda *_: registry.changed.disconnect(self.refresh, missing_ok=True))
        self._on_choice(self.combo.value)

    def choices(self, *_: Any) -> list[str]:
        return [*registry.choices(), FILE_CHOICE]

    def refresh(self) -> None:
        self.combo.reset_choices()
        self.others.reset_choices()

    def _on_choice(self, value: Any) -> None:
        self.file.visible = value == FILE_CHOICE

    def path(self) -> Path:
        """The chosen model's file (raises InputError when there is none)."""
        if self.combo.value == FILE_CHOICE:
            path = Path(self.file.value)
            if not path.is_file():
                raise InputError("choose a model file (.safetensors or .onnx)")
            return path
        path = registry.path(self.combo.value)
        if path is None:
            raise InputError("no model selected: train one or choose a model file")
        return path

    def paths(self) -> list[Path]:
        """The chosen model's file, then those of the models ticked in ``others`` (the
        chosen one not twice)."""
        first = self.path()
        rest = [registry.path(name) for name in self.others.value]
        return [first, *dict.fromkeys(p for p in rest if p is not None and p != first)]
