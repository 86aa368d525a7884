"""One contract from API to CLI: the same defaults, choices and axes everywhere, and the
surprises a new user met, each fixed (these tests failed before)."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet.axes import resolve_layout, training_layout
from napari_unet.cli import build_parser, main
from napari_unet.config import ModelConfig, PredictConfig, TrainConfig, options_of
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.errors import NapariUnetError
from napari_unet.events import Cancelled, Progress, StageStarted
from napari_unet.io import InputError

from .helpers import Levels, tiny_unet

# -- one source of options ------------------------------------------------------------------


def test_every_option_has_a_flag_and_the_cli_defaults_are_the_configs():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse's own
    for command, classes in (("predict", [PredictConfig]),
                             ("train", [TrainConfig, ModelConfig])):
        dests = {a.dest for a in sub[command]._actions}
        for cls in classes:
            prefix = "model." if cls is ModelConfig else ""
            for name, (_f, opt, _h) in options_of(cls).items():
                if opt.cli:
                    assert prefix + name in dests, f"{command} has no flag for {name}"
    args = parser.parse_args(["predict", "in.tif", "out.zarr"])
    flags = [n for n, (_f, o, _h) in options_of(PredictConfig).items() if o.cli]
    assert all(getattr(args, n) is None for n in flags)  # left out: the config decides


def test_overlap_in_voxels_and_quiet_after_the_subcommand():
    args = build_parser().parse_args(["predict", "a.tif", "b.zarr", "--overlap", "16",
                                      "--quiet", "--block", "64,64,64"])
    assert args.quiet and args.overlap == (16,) and args.block_shape == (64, 64, 64)
    assert PredictConfig(overlap=args.overlap).overlap == (16,)
    assert PredictConfig(overlap=16).overlap == (16,)
    assert PredictConfig(overlap=0.3).overlap == 0.3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "a.tif", "b.zarr", "--overlap", "1.5"])


def test_train_preset_is_the_defaults_changed_by_name():
    interactive = TrainConfig.preset("interactive")
    assert interactive.epochs == 30 and interactive.lr == TrainConfig().lr
    assert ModelConfig(spatial_dims=3).norm == "group" and ModelConfig().norm == "batch"
    with pytest.raises(NapariUnetError, match="preset"):
        TrainConfig.preset("fast")


def test_mode_auto_gives_objects_for_object_models_and_classes_otherwise():
    img = np.zeros((40, 40), np.float32)
    img[5:15, 5:15] = 1.0
    objects = Levels(2, (0.0, 1.0), label_mode="instances")
    out = nu.predict(objects, img, device="cpu", normalize=(0, 100))
    assert out.dtype == np.uint32 and out.max() == 1
    classes = Levels(2, (0.0, 0.5, 1.0), label_mode="classes")
    out = nu.predict(classes, img, device="cpu", normalize=(0, 100))
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 2}


# -- axes: one rule --------------------------------------------------------------------------

@pytest.mark.parametrize(("image", "labels", "sd", "axes", "lead"), [
    ((64, 80), (64, 80), 2, "YX", ""),
    ((3, 64, 80), (64, 80), 2, "CYX", ""),
    ((64, 80, 3), (64, 80), 2, "YXC", ""),
    ((10, 64, 80), (10, 64, 80), 2, "ZYX", "Z"),  # a stack: trained slice by slice
    ((10, 64, 80), (64, 80), 2, "CYX", ""),  # ten channels
    ((5, 10, 64, 80), (5, 10, 64, 80), 2, "TZYX", "TZ"),
    ((10, 64, 80), (10, 64, 80), 3, "ZYX", ""),
    ((2, 10, 64, 80), (10, 64, 80), 3, "CZYX", ""),
    ((10, 64, 80, 2), (10, 64, 80), 3, "ZYXC", ""),
    ((4, 10, 64, 80), (4, 10, 64, 80), 3, "TZYX", "T"),
])
def test_training_axes_follow_the_labels(image, labels, sd, axes, lead):
    layout = training_layout(image, labels, sd)
    assert (layout.axes, layout.lead_axes) == (axes, lead)


def test_training_axes_given_or_refused():
    assert training_layout((64, 80, 10), (64, 80, 10), 2, axes="YXZ").lead_axes == "Z"
    with pytest.raises(InputError, match="do not match"):
        training_layout((64, 80), (60, 80), 2)
    with pytest.raises(InputError, match="do not match"):
        training_layout((3, 64, 80), (64, 80), 2, axes="YXC")


@pytest.mark.parametrize(("shape", "channels", "axes", "lead"), [
    ((64, 80), 1, "YX", ""),
    ((10, 64, 80), 1, "ZYX", "Z"),  # the same stack a 2D model trained on slice by slice
    ((10, 64, 80), 10, "CYX", ""),  # ... and the same ten channels
    ((64, 80, 3), 3, "YXC", ""),
])
def test_prediction_axes_match_training_axes(shape, channels, axes, lead):
    layout = resolve_layout(shape, 2, channels)
    assert (layout.axes, layout.lead_axes) == (axes, lead)


def test_a_stack_trains_a_2d_model_on_its_labelled_slices(tmp_path):
    image, labels = synthetic_nuclei((4, 64, 64), radius=(5, 8), seed=1)
    labels[1] = 0  # an unlabelled slice is skipped, not an error
    events = []
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                      patch_size=(32, 32), batch_size=2, epochs=1, steps_per_epoch=2,
                      val_patches=2, device="cpu")
    nu.train([(image, labels)], cfg, run_dir=tmp_path / "r", progress=events.append,
             val_data=[(image[:1], labels[:1])])
    note = next(e.message for e in events if isinstance(e, StageStarted) and e.stage == "train")
    assert note.startswith("3 training / 1 validation pairs")
    # ... and ten channels where the labels are one image.
    chans = np.random.default_rng(0).random((10, 64, 64)).astype(np.float32)
    result = nu.train([(chans, labels[0])], cfg, [(chans, labels[0])], tmp_path / "c")
    assert nu.load_model(result.last_model).config.in_channels == 10


# -- surprises and bugs ------------------------------------------------------------------------

def test_a_block_larger_than_the_volume_is_the_volume(tmp_path):
    x = np.random.default_rng(0).random((20, 40, 40)).astype(np.float32)
    out = nu.predict(tiny_unet(3), x, tmp_path / "o.zarr", mode="probabilities",
                     block_shape=(64, 64, 64), device="cpu")
    assert out.shape == (2, 20, 40, 40)


def test_an_output_named_like_an_image_file_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"zarr folder.*out\.zarr"):
        nu.predict(tiny_unet(2), np.zeros((32, 32), np.float32), tmp_path / "out.tif",
                   device="cpu")
    assert not (tmp_path / "out.tif").exists()


def test_an_image_too_small_to_segment_is_refused():
    with pytest.raises(InputError, match="too small"):
        nu.predict(tiny_unet(2), np.zeros((1, 1), np.float32), device="cpu")


def test_plan_errors_come_before_the_pass_over_the_input(tmp_path):
    events = []
    with pytest.raises(InputError, match="multiple of the output chunk_shape"):
        nu.predict(tiny_unet(3), np.zeros((40, 40, 40), np.float32), tmp_path / "o.zarr",
                   block_shape=(24, 24, 24), chunk_shape=(16, 16, 16), device="cpu",
                   progress=events.append)
    assert not [e for e in events if isinstance(e, StageStarted)]
    assert not (tmp_path / "o.zarr").exists()


def test_the_callers_model_keeps_its_mode_and_device_after_an_error():
    model = tiny_unet(3, norm="group")  # nothing to fold: the engine runs the model itself
    model.train()
    with pytest.raises(InputError):
        nu.predict(model, np.full((16, 16, 16), np.nan, np.float32), device="cpu")
    assert model.training


def test_a_full_disk_says_where_and_the_rerun_resumes_to_the_same_result(tmp_path,
                                                                        monkeypatch):
    from napari_unet.inference import executors

    x = np.random.default_rng(1).random((48, 64)).astype(np.float32)
    model = tiny_unet(2)
    opts = dict(mode="probabilities", tile=(16, 16), block_shape=(16, 16), device="cpu")
    full = nu.predict(model, x, tmp_path / "full.zarr", **opts)[:]
    real = executors.write_block
    calls = {"n": 0}

    def write(*a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(executors, "write_block", write)
    with pytest.raises(InputError, match=r"no space left.*part\.zarr.*run the same command "
                                         r"again.*resumes"):
        nu.predict(model, x, tmp_path / "part.zarr", **opts)
    monkeypatch.setattr(executors, "write_block", real)
    np.testing.assert_array_equal(nu.predict(model, x, tmp_path / "part.zarr", **opts)[:],
                                  full)


def test_labelling_one_frame_out_of_core_can_be_cancelled_and_resumes(tmp_path, monkeypatch):
    from napari_unet.inference import labelling

    monkeypatch.setattr(labelling, "IN_MEMORY_LABEL_VOXELS", 32 * 32)
    image, _ = synthetic_nuclei((128, 128), radius=(5, 8), seed=2)
    model = Levels(2, (0.0, 1.0), label_mode="classes")
    opts = dict(mode="instances", device="cpu", tile=(32, 32), block_shape=(32, 32))
    whole = nu.predict(model, image, tmp_path / "whole.zarr", **opts)[:]
    seen = {"seeds": False}

    def progress(event):
        if isinstance(event, Progress) and event.stage == "label" and event.message == "seeds":
            seen["seeds"] = True

    with pytest.raises(Cancelled, match="labelling cancelled"):
        nu.predict(model, image, tmp_path / "part.zarr", progress=progress,
                   cancel=lambda: seen["seeds"], **opts)
    np.testing.assert_array_equal(nu.predict(model, image, tmp_path / "part.zarr",
                                             **opts)[:], whole)


def test_run_config_says_what_the_model_is(tmp_path):
    import yaml

    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(2)]
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                      patch_size=(32, 32), batch_size=2, epochs=1, steps_per_epoch=2,
                      val_patches=2, device="cpu")
    result = nu.train(pairs, cfg, run_dir=tmp_path / "r")
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["model"]["out_channels"] == nu.load_model(result.best_model).config \
        .out_channels == 4
    # The run's own config.yaml resumes it.
    again = nu.train(pairs, TrainConfig.load(tmp_path / "r" / "config.yaml").replace(epochs=2),
                     run_dir=tmp_path / "r", resume=True)
    assert [e.epoch for e in again.history] == [1, 2]


def test_a_model_trained_on_gray_rgb_takes_rgb_images(tmp_path):
    image, labels = synthetic_nuclei((64, 64), seed=3, dtype="uint8")
    rgb = np.stack([image, image // 2, image], axis=-1)
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                      patch_size=(32, 32), batch_size=2, epochs=1, steps_per_epoch=2,
                      val_patches=2, device="cpu")
    gray = rgb.astype(np.float32).mean(axis=-1)
    result = nu.train([(gray, labels)], cfg, [(gray, labels)], tmp_path / "r",
                      metadata={"rgb_to_gray": True})
    out = nu.predict(result.best_model, rgb, mode="probabilities", device="cpu")
    assert out.shape[1:] == (64, 64)


def test_train_cli_reads_png_folders_and_input_errors_exit_2(tmp_path, capsys):
    import imageio.v3 as iio

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for s in range(2):
        image, labels = synthetic_nuclei((64, 64), seed=s, dtype="uint8")
        iio.imwrite(tmp_path / "img" / f"n{s}.png", image)
        iio.imwrite(tmp_path / "lab" / f"n{s}.png", labels.astype(np.uint8))
    args = ["train", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
            "--out", str(tmp_path / "run"), "--patch", "32,32", "--depth", "2",
            "--filters", "4", "--epochs", "1", "--steps", "2", "--val-patches", "2",
            "--device", "cpu", "--quiet"]
    assert main(args) == 0
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert main([*args[:1], "--images", str(tmp_path / "empty"), *args[3:5], "--out",
                 str(tmp_path / "r2")]) == 2
    assert "no images" in capsys.readouterr().err


def test_setup_has_no_license_deprecation():
    """project.license is an SPDX string (setuptools warned about the table form)."""
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert isinstance(meta["project"]["license"], str)


def test_cli_predict_defaults_to_objects_for_the_builtin_model(tmp_path):
    image, _ = synthetic_nuclei((96, 96), seed=4)
    tifffile.imwrite(tmp_path / "img.tif", image)
    done = subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict",
                           str(tmp_path / "img.tif"), str(tmp_path / "o.zarr"), "--device",
                           "cpu", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    labels = nu.open_volume(tmp_path / "o.zarr")[0].compute()
    assert labels.dtype == np.uint32 and labels.max() > 3


def test_an_unknown_option_names_the_valid_ones():
    from napari_unet.config import PredictConfig
    from napari_unet.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'overlap'.*valid options"):
        PredictConfig().replace(overlpa=0.5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['out'\]"):
        nu.predict(None, np.zeros((32, 32), np.float32), out="x.zarr")
