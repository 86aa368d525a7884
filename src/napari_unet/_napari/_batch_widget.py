"""Segment a folder: every image of a folder (or matching a pattern) to masks, overlays and
a summary table in an output folder -- :func:`napari_unet.batch.predict_many_iter` in a
cancellable worker, with a progress bar and the summary shown when done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning

from ..config import LABEL_OUTPUTS, MODES, PredictConfig
from ..errors import InputError, NapariUnetError
from . import _workers
from ._config_widgets import option_value, option_widget
from ._model_choice import ModelChooser

__all__ = ["BatchWidget"]


class BatchWidget(Container):
    """Dock widget: folder (or pattern) in, folder of masks, overlays and CSV tables out."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.inputs = FileEdit(label="images", mode="d",
                               tooltip="a folder of TIFF / PNG / JPEG / BMP / zarr images")
        self.pattern = LineEdit(label="only", value="",
                                tooltip="a pattern inside the folder, e.g. *.png (empty: all "
                                        "images)")
        self.output = FileEdit(label="output folder", mode="d")
        self._models = ModelChooser(self)
        self.model, self.model_file = self._models.combo, self._models.file
        defaults = PredictConfig()
        self.mode = option_widget(defaults, "mode", label="output",
                                  choices=[m for m in MODES if m == "auto"
                                           or m in LABEL_OUTPUTS])
        self.device = option_widget(defaults, "device")
        self.tta = option_widget(defaults, "tta")
        self.overlays = CheckBox(label="overlays", value=True,
                                 tooltip="an overlay PNG per image: outlines on the image")
        self.objects = CheckBox(label="per-object table", value=False,
                                tooltip="objects.csv: label, area, centroid, mean intensity, "
                                        "bounding box of every object")
        self.run_button = PushButton(text="Segment folder")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(value="")
        self.extend([self.inputs, self.pattern, self.output, self.model, self.model_file,
                     self.mode, self.device, self.tta, self.overlays, self.objects,
                     self.run_button, self.cancel_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.job: _workers.Job | None = None
        self.result: Any = None

    def _inputs(self) -> str:
        folder = Path(self.inputs.value)
        if not str(self.inputs.value) or folder == Path("."):
            raise InputError("choose the folder of images")
        pattern = self.pattern.value.strip()
        return str(folder / pattern) if pattern else str(folder)

    def run(self) -> _workers.Job | None:
        """Start the batch; returns the job (None when the choice was refused)."""
        from ..api import predict_many_iter
        from ..events import Notice, Progress, StageStarted

        if self.job is not None and self.job.running:
            show_info("napari-unet: a batch is already running")
            return None
        try:
            inputs, model = self._inputs(), self._models.path()
            out = Path(self.output.value)
            if not str(self.output.value) or out == Path("."):
                raise InputError("choose the output folder")
            config = PredictConfig(**{name: option_value(getattr(self, name), PredictConfig,
                                                         name)
                                      for name in ("mode", "device", "tta")})
        except NapariUnetError as err:
            show_error(f"napari-unet: {err}")
            return None
        overlays, objects = bool(self.overlays.value), bool(self.objects.value)

        def make(job):
            return predict_many_iter(str(model), inputs, out, config, overlays=overlays,
                                     objects=objects, cancel=job.is_cancelled)

        def on_event(event):
            if isinstance(event, StageStarted):
                self.status.value = event.message
                self.progress.max, self.progress.value = max(1, event.total), 0
            elif isinstance(event, Progress):
                self.progress.value = event.done
                self.status.value = event.message
            elif isinstance(event, Notice):
                show_warning(f"napari-unet: {event.message}")

        def on_done(result):
            self.result = result
            failed = len(result.failed)
            self.status.value = (f"{len(result.rows) - failed} of {len(result.rows)} images "
                                 f"segmented -> {out / 'summary.csv'}"
                                 + (f"; {failed} failed (see the table)" if failed else ""))

        def on_finished():
            self.run_button.enabled, self.cancel_button.enabled = True, False

        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "starting"
        self.job = _workers.start(make, on_event, on_done, on_finished=on_finished)
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.value = "cancelling after the image in progress"
