"""UNet architecture and safe, atomic checkpoints."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.config import ConfigError, ModelConfig
from napari_unet.model.checkpoint import CheckpointError, read_metadata

from .helpers import tiny_unet


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_unet_shapes_and_norms(dims, norm):
    model = nu.UNet(spatial_dims=dims, in_channels=2, out_channels=3, depth=3, base_filters=3,
                    growth=1.5, norm=norm, groups=4, dropout=0.2).eval()
    shape = (16, 24, 32) if dims == 3 else (24, 40)
    out = model(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)
    assert model.config.filters == (3, 4, 7, 10)  # base 3, growth 1.5, rounded


def test_unet_anisotropic_pooling_and_depth_limits():
    model = nu.UNet(spatial_dims=3, depth=3, base_filters=2,
                    pool_factors=[(1, 2, 2), (1, 2, 2), (2, 2, 2)])
    assert model.size_multiple == (2, 8, 8)
    assert model.eval()(torch.randn(1, 1, 4, 16, 24)).shape == (1, 2, 4, 16, 24)
    with pytest.raises(ValueError, match="multiple of"):
        model(torch.randn(1, 1, 3, 16, 16))
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 3, 4, 16, 16))
    with pytest.raises(ConfigError, match="depth"):
        ModelConfig(depth=7)
    with pytest.raises(ConfigError, match="one entry per level"):
        ModelConfig(spatial_dims=3, depth=2, pool_factors=[(1, 2, 2)])
    with pytest.raises(ConfigError, match="base_filters"):
        ModelConfig(base_filters=0)


def test_he_initialisation():
    model = nu.UNet(spatial_dims=2, depth=1, base_filters=64)
    w = model.encoders[0][3].weight  # 64 -> 64 conv, fan_out = 64 * 9
    assert w.std().item() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.1)


def test_save_load_round_trip(tmp_path):
    model = tiny_unet(3, out_channels=3)
    path = nu.save_model(model, tmp_path / "m.safetensors", label_mode="instances",
                         normalization={"kind": "percentile", "low": 1, "high": 99.8},
                         class_names=["bg", "in", "edge"], tile=[32, 64, 64])
    loaded = nu.load_model(path)
    assert loaded.config == model.config
    assert not loaded.training
    x = torch.randn(1, 1, 8, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    meta = read_metadata(path)
    assert meta["label_mode"] == "instances" and meta["tile"] == [32, 64, 64]
    assert meta["spatial_dims"] == 3 and meta["napari_unet_version"] == nu.__version__
    assert meta["model"]["out_channels"] == 3


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    nu.save_model(tiny_unet(2), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        nu.save_model(tiny_unet(2, out_channels=4), path)
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp left


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        nu.load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a model at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        nu.load_model(junk)
    # Truncated file.
    good = nu.save_model(tiny_unet(2), tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        nu.load_model(cut)
    # A valid safetensors file that is not ours.
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(CheckpointError, match="not a napari-unet model"):
        nu.load_model(other)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["NU_PWNED"]),))


def test_malicious_pickle_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("NU_PWNED", str(marker))
    payload = pickle.dumps({"state_dict": _Exploit()})
    for name in ("evil.safetensors", "evil.pt", "evil.pth"):
        evil = tmp_path / name
        evil.write_bytes(payload)
        with pytest.raises(CheckpointError):
            nu.load_model(evil)
    # A torch.save()'d zip with a pickled object inside is refused as well.
    zipped = tmp_path / "evil_zip.safetensors"
    torch.save({"x": _Exploit()}, zipped)
    with pytest.raises(CheckpointError):
        nu.load_model(zipped)
    assert not marker.exists()


def test_builtin_model_by_name_and_as_the_default(tmp_path, monkeypatch):
    from napari_unet.data.synthetic import synthetic_nuclei

    model = nu.load_model("nuclei")
    assert model.config.spatial_dims == 2
    assert model.metadata["normalization"]["invert"] == "auto"
    image, _ = synthetic_nuclei((64, 64), seed=0)
    by_name = nu.predict("nuclei", image, mode="probabilities", device="cpu")
    np.testing.assert_array_equal(nu.predict(None, image, mode="probabilities", device="cpu"),
                                  by_name)
    # A file of that name in the working directory wins over the built-in model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="nuclei"):
        nu.load_model("nuclei")
