"""Ensembles: several compatible models' probabilities averaged inside one prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.errors import InputError

from .helpers import tiny_unet


def _pair():
    a = tiny_unet(2, out_channels=3)
    torch.manual_seed(1)
    b = nu.UNet(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_filters=4).eval()
    return a, b


def test_ensemble_probabilities_are_the_members_mean(rng):
    a, b = _pair()
    x = rng.random((48, 64)).astype(np.float32)  # one tile: no blending between tiles
    pa = nu.predict(a, x, mode="probabilities", device="cpu")
    pb = nu.predict(b, x, mode="probabilities", device="cpu")
    pe = nu.predict([a, b], x, mode="probabilities", device="cpu")
    np.testing.assert_allclose(pe, (pa + pb) / 2, atol=2e-3)
    assert not np.allclose(pa, pb, atol=1e-2)  # the members do differ
    # Two copies of one model are that model.
    np.testing.assert_array_equal(nu.predict([a, a], x, mode="semantic", device="cpu"),
                                  nu.predict(a, x, mode="semantic", device="cpu"))
    # Test-time augmentation composes with it.
    assert nu.predict([a, b], x, mode="instances", device="cpu", tta=True).shape == x.shape


def test_incompatible_models_are_refused_by_name(tmp_path, rng):
    a, _ = _pair()
    two = tiny_unet(2, out_channels=2)
    with pytest.raises(InputError, match="out_channels 3.*2"):
        nu.predict([a, two], rng.random((32, 32)).astype(np.float32), device="cpu")
    pa = nu.save_model(a, tmp_path / "a.safetensors", label_mode="instances")
    pb = nu.save_model(tiny_unet(2, out_channels=3), tmp_path / "b.safetensors",
                       label_mode="classes")
    with pytest.raises(InputError, match="'label_mode'.*b.safetensors"):
        nu.predict([pa, pb], rng.random((32, 32)).astype(np.float32), device="cpu")


def test_cli_takes_several_models(tmp_path, rng):
    import tifffile
    import zarr

    a, b = _pair()
    pa = nu.save_model(a, tmp_path / "a.safetensors", label_mode="instances")
    pb = nu.save_model(b, tmp_path / "b.safetensors", label_mode="instances")
    x = rng.random((48, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", x)
    assert main(["predict", str(tmp_path / "x.tif"), str(tmp_path / "e.zarr"), "--model",
                 str(pa), "--model", str(pb), "--mode", "probabilities", "--device", "cpu",
                 "--quiet"]) == 0
    got = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["probabilities/0"][:]
    want = nu.predict([pa, pb], tmp_path / "x.tif", mode="probabilities", device="cpu")
    np.testing.assert_allclose(got, want, atol=1e-3)
