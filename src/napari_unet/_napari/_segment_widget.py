"""Segment with U-Net: a view of :class:`~napari_unet.config.PredictConfig` plus a worker.

Large images are written to a zarr store and shown at once as a zarr-backed labels layer that
fills in block by block; Cancel keeps finished blocks and running again resumes.  Results always
land on the layer created for that run, whatever the user selects meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.utils.notifications import show_error, show_info, show_warning

from ..config import DEVICES, IN_MEMORY_VOXELS, MODES, PredictConfig, options_of, resolve_mode
from ..errors import InputError, NapariUnetError
from . import _workers
from ._config_widgets import option_value, option_widget
from ._layers import (
    layer_axes,
    layer_data,
    layer_geometry,
    layer_voxel_size,
    unique_name,
    visible_region,
)
from ._model_choice import ModelChooser

__all__ = ["SegmentWidget"]

IN_MEMORY_LIMIT = IN_MEMORY_VOXELS  # voxels; larger images go to a zarr store ("auto")


def _model_argument(models: list[Path]) -> str | list[str]:
    """What predict takes: one model file, or several (an ensemble)."""
    return str(models[0]) if len(models) == 1 else [str(p) for p in models]


def _on_cluster(address, model, source, output, config, job):
    """Connect to the scheduler in the worker thread; same events as a local run."""
    from distributed import Client

    from ..api import predict_iter

    client = Client(address, timeout="20s")
    try:
        return (yield from predict_iter(model, source, output, config,
                                        cancel=job.is_cancelled, client=client))
    finally:
        client.close()


_warm_up_started = threading.Event()


def warm_up() -> None:
    """Import torch and the engine and run the built-in model once on a tiny image, in a
    background thread, once per session: started when the segment widget opens (never when
    napari starts), so the first Segment does not wait for them (benchmarks/first_labels.py)."""
    if _warm_up_started.is_set() or os.environ.get("NAPARI_UNET_NO_WARM_UP"):
        return
    _warm_up_started.set()

    def run() -> None:
        try:
            import numpy as np

            from ..api import predict

            predict(None, np.zeros((64, 64), np.float32), mode="semantic", device="cpu")
        except Exception:  # only a warm-up: a real run reports its own errors
            pass

    threading.Thread(target=run, name="nu-warm-up", daemon=True).start()


class SegmentWidget(Container):
    """Dock widget: pick a model and an image layer, segment it (out of core when large)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self._models = ModelChooser(self)
        self.model, self.model_file = self._models.combo, self._models.file
        self.ensemble = self._models.others
        # Settings are a view of PredictConfig: defaults, choices, ranges and help from its
        # options (logits, the raw output, are for scripts).
        defaults = PredictConfig()
        self.mode = option_widget(defaults, "mode", label="output",
                                  choices=[m for m in MODES if m != "logits"])
        self.tile = option_widget(defaults, "tile")
        self.overlap = option_widget(defaults, "overlap")
        self.batch_size = option_widget(defaults, "batch_size", label="batch")
        self.device = ComboBox(label="device", value=defaults.device, choices=list(DEVICES),
                               tooltip=options_of(PredictConfig)["device"][1].help)
        self.precision = option_widget(defaults, "precision")
        self.split_touching = option_widget(defaults, "split_touching")
        self.tta = option_widget(defaults, "tta")
        self.per_slice = CheckBox(label="2D model: slice by slice", value=True,
                                  tooltip="run a 2D model on every slice of a 3D stack")
        self.z_stitch = option_widget(defaults, "z_stitch", label="2D slices in z")
        self.stitch_threshold = option_widget(defaults, "stitch_threshold",
                                              label="stitch IoU")
        self.store = ComboBox(label="write to", value="auto",
                              choices=["auto", "memory", "zarr file"],
                              tooltip="auto: in memory for small images, else a zarr store in "
                                      "the temporary folder (resumable)")
        self.store_path = FileEdit(label="zarr store", mode="w", filter="*.zarr", visible=False)
        self.overwrite = CheckBox(label="overwrite a different result", value=False)
        self.scheduler = LineEdit(label="run on cluster", value="",
                                  tooltip="dask.distributed scheduler address, e.g. "
                                          "tcp://10.0.0.5:8786 (empty: this machine); the "
                                          "image and the zarr store must be reachable by "
                                          "every worker")
        self.view_only = CheckBox(label="current view only", value=False,
                                  tooltip="segment just what is on screen, for a quick look")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(value="")
        self.extend([
            self.image, self.model, self.model_file, self.ensemble, self.mode, self.tile,
            self.overlap, self.batch_size, self.device, self.precision, self.split_touching,
            self.tta, self.per_slice, self.z_stitch, self.stitch_threshold, self.store,
            self.store_path, self.overwrite, self.scheduler, self.view_only, self.run_button,
            self.cancel_button, self.progress, self.status,
        ])
        self.store.changed.connect(
            lambda v: setattr(self.store_path, "visible", v == "zarr file"))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.job: _workers.Job | None = None
        self._distance = False  # the model of the last run predicts distances
        warm_up()

    # -- run --------------------------------------------------------------------------------
    def _config(self, meta: dict[str, Any], layer: Any) -> PredictConfig:
        spatial_dims = int(meta["model"]["spatial_dims"])
        axes = layer_axes(layer)
        data = layer_data(layer)
        ndim = data.ndim - (1 if layer.rgb else 0)
        if axes is None and spatial_dims == 2 and ndim == 3 and not self.per_slice.value:
            raise InputError(
                f"layer {layer.name!r} is 3D but the model is 2D; tick '2D model: slice by "
                "slice' or choose a 3D model")
        values = {name: option_value(getattr(self, name), PredictConfig, name) for name in (
            "mode", "tile", "overlap", "batch_size", "device", "precision", "split_touching",
            "tta", "z_stitch", "stitch_threshold")}
        config = PredictConfig(**values, axes=axes, overwrite=bool(self.overwrite.value),
                               voxel_size=layer_voxel_size(layer, spatial_dims))
        # The mode the engine would choose for "auto", known here to pick the layer type.
        return config.replace(mode=resolve_mode(config.mode, meta,
                                                int(meta["model"]["out_channels"])))

    def _output_path(self, layer: Any, config: Any, n_voxels: int, models: list[Path]
                     ) -> Path | None:
        choice = self.store.value
        if choice == "memory" or (choice == "auto" and n_voxels <= IN_MEMORY_LIMIT):
            return None
        if choice == "zarr file":
            path = Path(self.store_path.value)
            if not str(path) or path == Path("."):
                raise InputError("choose where to write the zarr store")
            return path
        # Managed location: stable for the same layer (its identity, not its name: two
        # layers may share a name), model and settings, so a second run resumes the first.
        # The engine resumes it only if the data is unchanged, else recomputes it (see run).
        key = hashlib.sha1(f"{layer.unique_id}|{models}|{config.to_json()}".encode()
                           ).hexdigest()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer.name)[:40]
        return Path(tempfile.gettempdir()) / "napari-unet" / f"{safe}-{key[:10]}.zarr"

    def run(self) -> _workers.Job | None:
        """Start segmenting; returns the job (None when the input was refused)."""
        from ..model.checkpoint import read_metadata

        if self.job is not None and self.job.running:
            show_info("napari-unet: a segmentation is already running")
            return None
        layer = self.image.value
        if layer is None:
            show_error("napari-unet: no image layer; open or select an image first")
            return None
        try:
            models = self._models.paths()
            meta = read_metadata(models[0])  # an ensemble's members agree (checked)
            spatial_dims = int(meta["model"]["spatial_dims"])
            config = self._config(meta, layer)
            self._distance = meta.get("output") == "distance"
            data = layer_data(layer)
            region = None
            if self.view_only.value:
                depth = (config.tile or meta.get("tile") or [32])[0] if spatial_dims == 3 else 1
                region = visible_region(self.viewer, layer, spatial_dims, int(depth))
                data = data[region + (slice(None),) * (data.ndim - len(region))]
                output = None
            else:
                output = self._output_path(layer, config, int(data.size), models)
                if output is not None and self.store.value == "auto":
                    # The widget's own store of this layer: painted or replaced data is
                    # segmented again rather than refused (a store the user chose is not).
                    config = config.replace(overwrite=True)
            return self._start(layer, data, models, config, output, region, spatial_dims)
        except NapariUnetError as err:  # a refusal is a notification; a bug keeps its traceback
            show_error(f"napari-unet: {err}")
            return None

    def _start(self, layer, data, models, config, output, region, spatial_dims):
        from ..api import predict_iter
        from ..events import BlockDone, Notice, Progress, StageStarted, Writing

        name = unique_name(self.viewer, f"{layer.name} {config.mode}"
                           + (" (view)" if region is not None else ""))
        geometry = layer_geometry(layer, layer_data(layer).ndim - (1 if layer.rgb else 0),
                                  region)
        state: dict[str, Any] = {"layer": None, "last_refresh": 0.0, "refresh_s": 0.0,
                                 "sd": spatial_dims,
                                 "mode": config.mode}

        address = self.scheduler.value.strip() if region is None else ""
        if address and output is None:
            raise InputError("a cluster run writes to a zarr store: choose 'zarr file' or "
                             "'auto' for a large image")
        source = data
        if address and getattr(layer, "source", None) is not None and layer.source.path:
            source = layer.source.path  # workers open the file themselves

        def make(job):
            if not address:
                return predict_iter(_model_argument(models), data, output, config,
                                    cancel=job.is_cancelled)
            return _on_cluster(address, _model_argument(models), source, output, config, job)

        def on_event(event):
            if isinstance(event, StageStarted):
                self.status.value = event.message or event.stage
                if event.total:
                    self.progress.max = event.total
                    self.progress.value = 0
                if event.stage == "predict" and output is not None and state["layer"] is None:
                    state["layer"] = self._live_layer(output, name, geometry, spatial_dims,
                                                      config.mode)
            elif isinstance(event, Writing) and output is None and state["layer"] is None:
                # In memory too, the first blocks show as soon as they are written.
                state["layer"] = self._add_layer([event.array], name, geometry, spatial_dims,
                                                 config.mode)
            elif isinstance(event, Notice):
                self.status.value = event.message
                show_warning(f"napari-unet: {event.message}")
            elif isinstance(event, (BlockDone, Progress)):
                self.progress.value = event.done
                now = time.monotonic()
                # A refresh redraws what is in view, which for a large single-scale layer
                # (the class map of an instance run) means reading the whole plane: wait
                # ten times as long as the last one took, so the GUI and the run keep going.
                if (state["layer"] is not None
                        and now - state["last_refresh"] > max(0.25, 10 * state["refresh_s"])):
                    state["layer"].refresh()
                    state["last_refresh"] = time.monotonic()
                    state["refresh_s"] = state["last_refresh"] - now

        def on_done(result):
            self._show_result(result, output, name, geometry, state)
            self.status.value = f"done: {name}"

        def on_finished():
            self.run_button.enabled = True
            self.cancel_button.enabled = False
            if state["layer"] is not None:
                state["layer"].refresh()

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "starting"
        self.job = _workers.start(make, on_event, on_done, on_finished=on_finished)
        return self.job

    @staticmethod
    def _foreground(probabilities: Any, spatial_dims: int, distance: bool = False) -> Any:
        """Foreground probability of a ``(*lead, C, *spatial)`` array, lazily (the array may
        be a store larger than memory): the first channel of a binary or distance model,
        else 1 - P(class 0) -- for an instance model the last class is the boundary or
        contact, not the object."""
        import dask.array as da

        arr = probabilities if isinstance(probabilities, da.Array) else da.from_array(
            probabilities, chunks=getattr(probabilities, "chunks", "auto"))
        c_axis = arr.ndim - spatial_dims - 1
        first = arr[(slice(None),) * c_axis + (0,)]
        return first if arr.shape[c_axis] == 1 or distance else 1 - first

    def _live_layer(self, output: Path, name: str, geometry: dict[str, Any],
                    spatial_dims: int, mode: str) -> Any:
        """A layer backed by the zarr store being written: it fills in as blocks finish."""
        if mode == "instances":  # the class map until labelling has run
            import zarr

            semantic = zarr.open_group(str(output), mode="r")["semantic"]
            return self._add_layer([semantic], name, geometry, spatial_dims, mode)
        return self._add_layer(_result_levels(output), name, geometry, spatial_dims, mode)

    def _add_layer(self, levels: list[Any], name: str, geometry: dict[str, Any],
                   spatial_dims: int, mode: str) -> Any:
        """A result layer of ``levels`` (one, or a pyramid): probabilities as the foreground
        image, else labels."""
        if mode == "probabilities":
            fg = [self._foreground(a, spatial_dims, self._distance) for a in levels]
            return self.viewer.add_image(_one_or_all(fg), name=name, colormap="magma",
                                         contrast_limits=(0, 1), **geometry)
        return self.viewer.add_labels(_one_or_all(levels), name=name, **geometry)

    def _show_result(self, result, output, name, geometry, state) -> None:
        layer = state["layer"]
        mode, sd = state["mode"], state["sd"]
        if mode == "probabilities":
            if layer is None:
                state["layer"] = self._add_layer([result], name, geometry, sd, mode)
            elif output is None:  # from the array being written to the result in memory
                layer.data = self._foreground(result, sd, self._distance)
            return
        levels = _result_levels(output) if output is not None else []
        if len(levels) <= 1:
            levels = [result]  # the engine's own array: a single level stays paintable
        if layer is None:
            state["layer"] = self._add_layer(levels, name, geometry, sd, mode)
        elif len(levels) > 1:  # instances: the class map gives way to the labels' pyramid
            # (napari does not turn a layer multiscale: a new layer takes the old one's place)
            index = self.viewer.layers.index(layer)
            self.viewer.layers.remove(layer)
            state["layer"] = self._add_layer(levels, name, geometry, sd, mode)
            self.viewer.layers.move(self.viewer.layers.index(state["layer"]), index)
        else:
            layer.data = result  # instances: from the class map to the final labels
            layer.refresh()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.value = "cancelling after the blocks in flight"


def _result_levels(output: Path) -> list[Any]:
    """The levels of a result store (its OME-Zarr pyramid, as the reader opens it), level 0
    first."""
    from ..io import open_volume

    level0, info = open_volume(output)
    return [level0, *info.multiscale]


def _one_or_all(levels: list[Any]) -> Any:
    """A layer's data: one array, or the list napari shows as a multiscale layer."""
    return levels[0] if len(levels) == 1 else levels
