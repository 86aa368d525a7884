"""Train U-Net: a view of :class:`~napari_unet.config.TrainConfig` running the core's generator.

Shows a progress bar, a live plot of train / validation loss and validation Dice, and after
every epoch a preview of the region on screen predicted by the latest model.  Stop keeps the
best and last checkpoints; the run can be resumed.  The best model becomes selectable in the
segment widget at once.
"""

from __future__ import annotations

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
from napari.utils.notifications import show_error, show_info

from ..config import DEVICES, ModelConfig, TrainConfig, options_of, parse_ints
from ..config.train import DEFAULT_PATCH, auto_patch
from ..errors import InputError, NapariUnetError
from . import _workers
from ._config_widgets import option_value, option_widget
from ._layers import (
    layer_data,
    layer_geometry,
    layer_voxel_size,
    unique_name,
    visible_region,
)
from ._plot import CurvePlot
from ._registry import registry

__all__ = ["TrainWidget", "DIMS_2D", "DIMS_3D", "DIMS_SLICES"]

DIMS_2D, DIMS_3D, DIMS_SLICES = "2D", "3D", "3D stack as 2D slices"
NEW_MODEL, FILE_CHOICE = "new model", "model file..."


class TrainWidget(Container):
    """Dock widget: train a U-Net on an image layer and a labels layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.labels = create_widget(annotation=napari.layers.Labels, label="labels")
        # Every setting is a view of the interactive preset of TrainConfig (defaults,
        # choices, ranges and help come from its options).
        defaults = TrainConfig.preset("interactive")
        model = defaults.model
        self.label_mode = option_widget(defaults, "label_mode")
        self.target = option_widget(defaults, "target")
        self.core = option_widget(defaults, "core")
        self.scribble_prior = option_widget(defaults, "scribble_prior")
        self.scribble_boundary = option_widget(defaults, "scribble_boundary")
        self.init = ComboBox(label="start from", choices=self._init_choices,
                             tooltip=options_of(TrainConfig)["init_model"][1].help)
        self.init_file = FileEdit(label="model file", mode="r", filter="*.safetensors",
                                  visible=False)
        self.dims = ComboBox(label="model", value=DIMS_2D,
                             choices=[DIMS_2D, DIMS_3D, DIMS_SLICES])
        self.depth = option_widget(model, "depth")
        self.filters = option_widget(model, "base_filters")
        self.patch = LineEdit(label="patch", value="auto",
                              tooltip="patch per axis, e.g. 256,256 or 32,96,96; auto: "
                                      f"{DEFAULT_PATCH[2]} (2D) or {DEFAULT_PATCH[3]} (3D), "
                                      "fitted to the image")
        self.batch_size = option_widget(defaults, "batch_size")
        self.epochs = option_widget(defaults, "epochs")
        self.steps = option_widget(defaults, "steps_per_epoch")
        self.lr = option_widget(defaults, "lr")
        self.schedule = option_widget(defaults, "schedule")
        self.loss = option_widget(defaults, "loss")
        self.augment = option_widget(defaults, "augment")
        self.invert = option_widget(defaults, "invert")
        self.device = ComboBox(label="device", value=defaults.device, choices=list(DEVICES),
                               tooltip=options_of(TrainConfig)["device"][1].help)
        self.run_dir = FileEdit(label="save run in", mode="d",
                                value=str(Path.home() / "napari-unet-runs" / "run"))
        self.resume = CheckBox(label="resume the run in this folder", value=False)
        self.preview = CheckBox(label="live preview of the view", value=True)
        self.start_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop (keeps checkpoints)", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(value="")
        self.export_path = FileEdit(label="bioimage.io package", mode="w", filter="*.zip",
                                    value="",
                                    tooltip="where to write the run's best model as a "
                                            "bioimage.io model package (default: in the run "
                                            "folder)")
        self.export_button = PushButton(text="Export best model to bioimage.io",
                                        enabled=False)
        self.extend([
            self.image, self.labels, self.label_mode, self.target, self.core,
            self.scribble_prior, self.scribble_boundary, self.init, self.init_file, self.dims,
            self.depth, self.filters, self.patch,
            self.batch_size, self.epochs, self.steps, self.lr, self.schedule, self.loss,
            self.augment, self.invert, self.device, self.run_dir, self.resume, self.preview,
            self.start_button, self.stop_button, self.progress, self.status,
            self.export_path, self.export_button,
        ])
        self.plot = CurvePlot()
        self.native.layout().addWidget(self.plot)
        self.image.changed.connect(self._default_dims)
        self.init.changed.connect(self._init_changed)
        registry.changed.connect(self._refresh_init)
        self.native.destroyed.connect(
            lambda *_: registry.changed.disconnect(self._refresh_init, missing_ok=True))
        self.label_mode.changed.connect(self._label_mode_changed)
        self.target.changed.connect(self._label_mode_changed)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.export_button.changed.connect(self.export)
        self.run_dir.changed.connect(self._update_export)
        self.job: _workers.Job | None = None
        self._preview_job: _workers.Job | None = None
        self._preview_layer: Any = None
        self.result: Any = None
        self._export_job: _workers.Job | None = None
        self._default_dims(self.image.value)
        self._update_export()

    # -- the model to start from ---------------------------------------------------------------
    def _init_choices(self, *_: Any) -> list[str]:
        return [NEW_MODEL, *registry.choices(), FILE_CHOICE]

    def _refresh_init(self) -> None:
        self.init.reset_choices()

    def _init_changed(self, value: Any) -> None:
        self.init_file.visible = value == FILE_CHOICE
        fresh = value == NEW_MODEL  # a model to fine-tune brings its architecture
        for w in (self.depth, self.filters):
            w.enabled = fresh

    def init_model(self) -> str | None:
        """The file of the model to fine-tune, or None for a new model."""
        value = self.init.value
        if value in (None, NEW_MODEL):
            return None
        if value == FILE_CHOICE:
            path = Path(str(self.init_file.value))
            if not path.is_file():
                raise InputError("choose the model file to start from (.safetensors)")
            return str(path)
        path = registry.path(value)
        if path is None:
            raise InputError(f"model {value!r} is not available; choose another to start from")
        return str(path)

    def _label_mode_changed(self, *_: Any) -> None:
        """Options that apply to one label mode (or target) only are enabled for it."""
        instances = self.label_mode.value == "instances"
        self.target.enabled = instances
        self.core.enabled = instances and self.target.value == "classes"
        self.scribble_prior.enabled = self.label_mode.value == "scribbles"
        self.scribble_boundary.enabled = self.label_mode.value == "scribbles"

    def _default_dims(self, layer: Any) -> None:
        """2D for 2D layers; 3D stacks train in 3D unless z is much coarser than x/y."""
        if layer is None:
            return
        ndim = layer_data(layer).ndim - (1 if layer.rgb else 0)
        if ndim == 2:
            self.dims.value = DIMS_2D
        elif ndim == 3:
            sz, sy = float(layer.scale[-3]), float(layer.scale[-2])
            few = layer_data(layer).shape[-3 - (1 if layer.rgb else 0)] < 16
            self.dims.value = DIMS_SLICES if (sz > 4 * sy or few) else DIMS_3D

    # -- configuration -----------------------------------------------------------------------
    def config_and_data(self) -> tuple[Any, Any, Any, Any]:
        """Validated TrainConfig and the arrays to train on (read here, on the GUI thread)."""
        image, labels = self.image.value, self.labels.value
        if image is None:
            raise InputError("no image layer: open or select the image to train on")
        if labels is None:
            raise InputError("no labels layer: paint labels (or scribbles) on a labels layer")
        img, lab = layer_data(image), layer_data(labels)
        spatial = tuple(img.shape[:-1] if image.rgb else img.shape)
        if spatial != tuple(lab.shape):
            raise InputError(
                f"labels layer {labels.name!r} has shape {tuple(lab.shape)} but image "
                f"{image.name!r} has {spatial}; draw the labels on a layer of the image's shape")
        dims = self.dims.value
        sd = 3 if dims == DIMS_3D else 2
        if sd == 3 and len(spatial) != 3:
            raise InputError(f"a 3D model needs a 3D image; {image.name!r} is {len(spatial)}D")
        if dims == DIMS_SLICES and len(spatial) != 3:
            raise InputError("'3D stack as 2D slices' needs a 3D image")
        init = self.init_model()
        if init is None:
            model = ModelConfig(spatial_dims=sd, depth=int(self.depth.value),
                                base_filters=int(self.filters.value))
        else:  # fine-tuning: the architecture is the model's (read from its header)
            from ..model.checkpoint import read_metadata

            model = ModelConfig.from_dict(read_metadata(init)["model"])
            if model.spatial_dims != sd:
                raise InputError(f"the model to start from is {model.spatial_dims}D; choose "
                                 f"{'2D' if model.spatial_dims == 2 else '3D'} or another model")
        patch_spatial = spatial[-sd:]
        patch = parse_ints(self.patch.value)
        if patch is None:
            patch = auto_patch(patch_spatial, model)
        values = {name: option_value(getattr(self, attr), TrainConfig, name) for attr, name in (
            ("label_mode", "label_mode"), ("target", "target"), ("core", "core"),
            ("scribble_prior", "scribble_prior"), ("scribble_boundary", "scribble_boundary"),
            ("batch_size", "batch_size"),
            ("epochs", "epochs"), ("steps", "steps_per_epoch"), ("lr", "lr"),
            ("schedule", "schedule"), ("loss", "loss"), ("augment", "augment"),
            ("invert", "invert"), ("device", "device"))}
        if values["label_mode"] != "instances":
            values["target"] = "classes"
        if values["label_mode"] != "scribbles":
            values["scribble_boundary"] = False
        config = TrainConfig.preset(
            "interactive", model=model, patch_size=patch, **values,
            init_model=init, voxel_size=layer_voxel_size(image, sd),
            anisotropic=sd == 3 and float(image.scale[-3]) > 1.5 * float(image.scale[-1]),
        )
        return config, img, lab, dims

    # -- run ---------------------------------------------------------------------------------
    def start(self) -> _workers.Job | None:
        from ..api import train_iter
        from ..events import EpochEnd, Preview, Progress, StageStarted

        if self.job is not None and self.job.running:
            show_info("napari-unet: training is already running")
            return None
        try:
            config, img, lab, dims = self.config_and_data()
            run_dir = Path(self.run_dir.value)
            if not self.resume.value and (run_dir / "last_state.pt").exists():
                raise InputError(
                    f"{run_dir} already holds a training run: tick 'resume' or choose another "
                    "folder")
        except NapariUnetError as err:  # a refusal is a notification; a bug keeps its traceback
            show_error(f"napari-unet: {err}")
            return None
        image_layer = self.image.value
        resume = bool(self.resume.value)
        if image_layer.rgb:
            import dask.array as da

            img = da.asarray(img)[..., :3].astype("float32").mean(axis=-1)

        # A model trained on the gray average of an RGB layer says so, so that the preview
        # and the segment widget average a colour image the same way.
        metadata = {"rgb_to_gray": True} if image_layer.rgb else None

        def make(job):
            # A stack for a 2D model trains on its slices with labels (napari_unet.axes); the
            # labels are read in the worker, not on the GUI thread.
            return train_iter([(img, lab)], config, None, run_dir, resume,
                              cancel=job.is_cancelled, metadata=metadata)

        def on_event(event):
            if isinstance(event, StageStarted):
                self.status.value = event.message or event.stage
                if event.total:
                    self.progress.max = event.total
            elif isinstance(event, Progress):
                self.progress.value = event.done
                self.status.value = event.message
            elif isinstance(event, Preview):
                # The pixel classifier's classes of the whole image, seconds after Train.
                self._show_preview(event.labels, layer_geometry(
                    image_layer, event.labels.ndim, None))
                self.status.value = "preview: pixel classifier (the network trains on)"
            elif isinstance(event, EpochEnd):
                self.plot.add("train loss", event.epoch, event.train_loss)
                self.plot.add("val loss", event.epoch, event.val_loss)
                self.plot.add("val Dice", event.epoch, event.val_dice)
                self.status.value = (f"epoch {event.epoch}: val Dice {event.val_dice:.3f}, "
                                     f"loss {event.train_loss:.3f}")
                if self.preview.value:
                    self._start_preview(image_layer, run_dir / "last.safetensors", dims)

        def on_done(result):
            self.result = result
            name = registry.add(f"{run_dir.name} (trained)", result.best_model)
            self.status.value = (f"{result.stopped}: best val Dice {result.best_val_dice:.3f}; "
                                 f"model '{name}' is ready in the segment widget")

        def on_finished():
            self.start_button.enabled = True
            self.stop_button.enabled = False
            self._update_export()

        self.plot.clear()
        self.start_button.enabled = False
        self.stop_button.enabled = True
        self.job = _workers.start(make, on_event, on_done, on_finished=on_finished)
        if config.init_model is not None and self.preview.value and not resume:
            # The model to fine-tune, before any step: what the strokes will change.
            self._start_preview(image_layer, Path(config.init_model), dims)
        return self.job

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.value = "stopping: saving the last checkpoint"

    # -- bioimage.io export ------------------------------------------------------------------
    def _best_model(self) -> Path:
        return Path(self.run_dir.value) / "best.safetensors"

    def _update_export(self, *_: Any) -> None:
        self.export_button.enabled = self._best_model().exists()

    def export(self) -> _workers.Job | None:
        """Write the run's best model as a bioimage.io package, off the GUI thread."""
        from ..events import StageStarted

        model = self._best_model()
        if not model.exists():
            show_error(f"napari-unet: {model.parent} holds no trained model yet: train first")
            return None
        chosen = str(self.export_path.value or "")  # an empty FileEdit reads as "."
        out = Path(chosen) if chosen not in ("", ".") else model.parent / "bioimageio.zip"
        self.export_button.enabled = False

        def make(job):
            def run():
                from ..bioimageio_export import export_bioimageio

                yield StageStarted("export", message=f"writing {out}")
                return export_bioimageio(model, out, name=f"napari-unet {model.parent.name}")
            return run()

        def on_event(event):
            self.status.value = event.message

        def on_done(path):
            self.status.value = f"wrote the bioimage.io package {path}"

        self._export_job = _workers.start(make, on_event, on_done,
                                          on_finished=self._update_export)
        return self._export_job

    # -- live preview ------------------------------------------------------------------------
    def _start_preview(self, layer: Any, model_path: Path, dims: str) -> None:
        """Predict the region on screen with the newest checkpoint (skipped while busy)."""
        from ..api import predict_iter
        from ..config import PredictConfig

        if self._preview_job is not None and self._preview_job.running:
            return
        sd = 3 if dims == DIMS_3D else 2
        region = visible_region(self.viewer, layer, sd, depth=32)
        data = layer_data(layer)
        crop = data[region + (slice(None),) * (data.ndim - len(region))]
        geometry = layer_geometry(layer, len(region), region)
        axes = None
        if layer.rgb:
            axes = "YXC" if crop.ndim == 3 else "ZYXC"
        config = PredictConfig(axes=axes, device=self.device.value)

        def make(job):
            return predict_iter(str(model_path), crop, None, config, cancel=job.is_cancelled)

        self._preview_job = _workers.start(make, on_done=lambda r: self._show_preview(r, geometry))
        self._preview_started = time.monotonic()

    def _show_preview(self, labels: Any, geometry: dict[str, Any]) -> None:
        """The training preview layer (made once, then its data replaced)."""
        if self._preview_layer is None or self._preview_layer not in self.viewer.layers:
            self._preview_layer = self.viewer.add_labels(
                labels, name=unique_name(self.viewer, "training preview"), opacity=0.5,
                **geometry)
        else:
            self._preview_layer.data = labels
            self._preview_layer.translate = geometry["translate"]
