"""Every bad input is refused with a clear message before work starts, and nothing is damaged."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import napari_unet as nu
from napari_unet.config import ConfigError, PredictConfig
from napari_unet.inference.store import OutputExistsError
from napari_unet.io import InputError

from .helpers import Identity, tiny_unet


@pytest.fixture
def model3d():
    return tiny_unet(3)


def test_wrong_ndim_and_channels(model3d):
    with pytest.raises(InputError, match="cannot take a 2D image"):
        nu.predict(model3d, np.zeros((30, 30), np.float32), device="cpu")
    with pytest.raises(InputError, match="cannot take a 6D image"):
        nu.predict(model3d, np.zeros((2, 2, 2, 8, 8, 8), np.float32), device="cpu")
    two_channel = tiny_unet(2, in_channels=2)
    with pytest.raises(InputError, match="no axis of size 2"):
        nu.predict(two_channel, np.zeros((3, 30, 30), np.float32), device="cpu")
    with pytest.raises(InputError, match="has 3 channel"):
        nu.predict(two_channel, np.zeros((3, 30, 30), np.float32), axes="CYX", device="cpu")
    with pytest.raises(InputError, match="looks like an RGB"):
        nu.predict(tiny_unet(2), np.zeros((64, 64, 3), np.uint8), device="cpu")
    with pytest.raises(InputError, match="do not match"):
        nu.predict(model3d, np.zeros((8, 8, 8), np.float32), axes="YX", device="cpu")


def test_nan_and_dtype(model3d, tmp_path):
    x = np.ones((8, 16, 16), np.float32)
    x[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        nu.predict(model3d, x, tmp_path / "o.zarr", device="cpu")
    assert not (tmp_path / "o.zarr").exists()  # refused before any output was made
    with pytest.raises(InputError, match="not supported"):
        nu.predict(model3d, np.zeros((8, 8, 8), np.complex64), device="cpu")


def test_nan_outside_the_sample_stops_without_damaging_finished_blocks(tmp_path, rng):
    # A volume too large to sample whole: the NaN is found when its block is read.
    from napari_unet.normalize import _sample_windows

    x = rng.random((4, 600, 1800)).astype(np.float32)
    sampled = np.zeros(x.shape, bool)
    for window in _sample_windows((), x.shape, 4_000_000):
        sampled[window] = True
    z, y, xx = np.argwhere(~sampled)[-1]
    x[z, y, xx] = np.inf
    model = Identity(3)
    with pytest.raises(InputError, match="finished blocks are kept"):
        nu.predict(model, x, tmp_path / "o.zarr", mode="logits", tile=(4, 128, 128),
                   block_shape=(4, 256, 256), prefetch=1, device="cpu")
    done = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["blocks_done"][:]
    assert done.sum() > 0 and not done.all()


def test_missing_and_non_array_paths(model3d, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        nu.predict(model3d, tmp_path / "nope.zarr", device="cpu")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="neither a zarr store nor a TIFF"):
        nu.predict(model3d, txt, device="cpu")
    fake_tif = tmp_path / "fake.tif"
    fake_tif.write_text("hello")
    with pytest.raises(InputError, match="not a readable TIFF"):
        nu.predict(model3d, fake_tif, device="cpu")
    with pytest.raises(InputError, match="cannot read an image"):
        nu.predict(model3d, {"a": 1}, device="cpu")


def test_existing_output_is_refused_unless_overwrite(model3d, tmp_path, rng):
    x = rng.random((8, 16, 16)).astype(np.float32)
    # A zarr store someone else wrote.
    foreign = zarr.create_array(str(tmp_path / "theirs.zarr"), shape=(3,), dtype="i4")
    foreign[:] = [1, 2, 3]
    with pytest.raises(OutputExistsError, match="did not write"):
        nu.predict(model3d, x, tmp_path / "theirs.zarr", device="cpu")
    assert list(zarr.open_array(str(tmp_path / "theirs.zarr"))[:]) == [1, 2, 3]

    # Our own output of a different job.
    nu.predict(model3d, x, tmp_path / "ours.zarr", mode="semantic", device="cpu")
    with pytest.raises(OutputExistsError, match="job with other settings \\(mode"):
        nu.predict(model3d, x, tmp_path / "ours.zarr", mode="probabilities", device="cpu")
    out = nu.predict(model3d, x, tmp_path / "ours.zarr", mode="probabilities", overwrite=True,
                     device="cpu")
    assert out.shape == (2, 8, 16, 16)

    # A plain folder or file is never deleted, even with overwrite.
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        nu.predict(model3d, x, folder, overwrite=True, device="cpu")
    assert (folder / "keep.txt").read_text() == "precious"


def test_store_interrupted_while_being_created_is_replaced(model3d, tmp_path, rng, monkeypatch):
    from napari_unet.inference.store import STORE_FORMAT, OutputStore

    x = rng.random((8, 16, 16)).astype(np.float32)
    calls = {"n": 0}
    real = zarr.Group.create_array

    def crash_on_second_array(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run is stopped while the store is being made
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", crash_on_second_array)
    with pytest.raises(KeyboardInterrupt):
        nu.predict(model3d, x, tmp_path / "o.zarr", mode="instances", device="cpu")
    monkeypatch.undo()
    record = OutputStore._existing_record(tmp_path / "o.zarr")
    assert record == {"format": STORE_FORMAT, "creating": True}
    # The next run (another job, even) replaces it without asking for overwrite.
    out = nu.predict(model3d, x, tmp_path / "o.zarr", mode="semantic", device="cpu")
    assert out.shape == (8, 16, 16)


def test_output_cannot_replace_input(model3d, tmp_path, rng):
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(8, 16, 16), dtype="f4")
    z[:] = rng.random((8, 16, 16))
    with pytest.raises(InputError, match="overwrite the input"):
        nu.predict(model3d, tmp_path / "in.zarr", tmp_path / "in.zarr", overwrite=True,
                   device="cpu")
    assert zarr.open_array(str(tmp_path / "in.zarr"))[:].any()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="mode must be one of"):
        PredictConfig(mode="blobs")
    with pytest.raises(ConfigError, match="overlap"):
        PredictConfig(overlap=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        PredictConfig(batch_size=0)
    with pytest.raises(ConfigError, match="'auto' or an integer"):
        PredictConfig(batch_size="many")
    assert PredictConfig.from_dict(PredictConfig().to_dict()).batch_size == "auto"
    with pytest.raises(ConfigError, match="zoom must be a range"):
        nu.TrainConfig(zoom=(1.5, 0.8))
    assert nu.TrainConfig.from_dict(nu.TrainConfig(zoom=(0.6, 1.6)).to_dict()).zoom == (0.6,
                                                                                          1.6)
    with pytest.raises(ConfigError, match="unknown option"):
        PredictConfig.from_dict({"tile_size": 3})
    with pytest.raises(ConfigError, match="axes"):
        PredictConfig(axes="QYX")
    with pytest.raises(InputError, match="multiple of the output chunk_shape"):
        nu.predict(tiny_unet(2), np.zeros((64, 64), np.float32), block_shape=(32, 32),
                   chunk_shape=(24, 24), device="cpu")


def test_missing_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        nu.predict(tiny_unet(2), np.zeros((32, 32), np.float32), device="cuda")


def test_config_round_trip(tmp_path):
    cfg = PredictConfig(mode="instances", tile=(32, 64, 64), overlap=(4, 8, 8),
                        block_shape=(64, 128, 128), axes="zyx")
    for name in ("c.json", "c.yaml"):
        cfg.save(tmp_path / name)
        assert PredictConfig.load(tmp_path / name) == cfg
    assert cfg.axes == "ZYX"
