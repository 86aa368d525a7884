"""bioimage.io model packages: valid for the format's own validator, weights that give the
model's probabilities, and errors that say what to do."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.bioimageio_export import export_bioimageio
from napari_unet.cli import main
from napari_unet.io import InputError

from .helpers import tiny_unet

pytest.importorskip("bioimageio.spec")
# Reading the TorchScript weights back: deprecated in torch, but the format's own.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _package_output(path, tmp_path):
    """The package's TorchScript weights run on its test input after its preprocessing."""
    import yaml

    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "pkg")
    rdf = yaml.safe_load((tmp_path / "pkg" / "rdf.yaml").read_text())
    raw = np.load(tmp_path / "pkg" / "test_input.npy")
    expected = np.load(tmp_path / "pkg" / "test_output.npy")
    x = raw
    for step in rdf["inputs"][0].get("preprocessing", []):
        if step["id"] == "scale_range":
            kw = step["kwargs"]
            axes = tuple(range(2, raw.ndim))
            lo = np.percentile(raw, kw["min_percentile"], axis=axes, keepdims=True)
            hi = np.percentile(raw, kw["max_percentile"], axis=axes, keepdims=True)
            x = ((raw - lo) / (hi - lo + 1e-6)).astype(np.float32)
    net = torch.jit.load(str(tmp_path / "pkg" / "weights.pt"))
    with torch.no_grad():
        out = net(torch.from_numpy(x)).numpy()
    return rdf, x, out, expected


@pytest.mark.parametrize("dims", [2, 3])
def test_exported_package_is_valid_and_gives_the_models_probabilities(tmp_path, dims):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    model = tiny_unet(dims, out_channels=4)
    model.metadata = dict(label_mode="instances", grow=3,
                          class_names=["background", "interior", "boundary", "contact"],
                          tile=[32] * dims)
    path = export_bioimageio(model, tmp_path / "model", authors=["A. Person"])
    assert path.name == "model.zip" and path.exists()
    descr = load_description(path)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status == "valid-format"

    rdf, x, out, expected = _package_output(path, tmp_path)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with torch.no_grad():
        own = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(out, own, atol=1e-5)
    out_axes = rdf["outputs"][0]["axes"]
    assert out_axes[1]["channel_names"] == ["background", "interior", "boundary", "contact"]
    assert [a["halo"] for a in out_axes[2:]] == [4] * dims  # half of 0.25 x the tile
    readme = (tmp_path / "pkg" / "README.md").read_text()
    assert "up to 3 pixels" in readme  # how instances are made


def test_one_channel_model_exports_a_sigmoid_and_a_given_test_image(tmp_path, rng):
    model = tiny_unet(2, out_channels=1)
    image = (rng.random((48, 64)) * 1000).astype(np.uint16)
    path = export_bioimageio(model, tmp_path / "m.zip", test_image=image)
    _, x, out, expected = _package_output(path, tmp_path)
    assert x.shape == (1, 1, 48, 64)
    with torch.no_grad():
        own = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(out, own, atol=1e-5)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_model_without_normalisation_exports_no_preprocessing(tmp_path, rng):
    model = tiny_unet(2, out_channels=2)
    model.metadata = {"normalization": {"kind": "none"}}
    image = rng.normal(0, 1, (32, 32)).astype(np.float32)
    path = export_bioimageio(model, tmp_path / "m.zip", test_image=image)
    rdf, x, out, expected = _package_output(path, tmp_path)
    assert all(p["id"] != "scale_range" for p in rdf["inputs"][0].get("preprocessing", []))
    np.testing.assert_array_equal(x[0, 0], image)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_bad_test_image_and_missing_package_say_what_to_do(tmp_path, monkeypatch):
    model = tiny_unet(2)
    with pytest.raises(InputError, match="multiples of"):
        export_bioimageio(model, tmp_path / "m.zip", test_image=np.zeros((50, 64)))
    with pytest.raises(InputError, match="channel"):
        export_bioimageio(model, tmp_path / "m.zip", test_image=np.zeros((2, 3, 48, 64)))
    assert not (tmp_path / "m.zip").exists()
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(ImportError, match=r"napari-unet\[bioimageio\]"):
        export_bioimageio(model, tmp_path / "m.zip")


def test_cli_export(tmp_path, capsys):
    model = tiny_unet(2)
    nu.save_model(model, tmp_path / "m.safetensors")
    args = ["export", str(tmp_path / "m.safetensors"), str(tmp_path / "out.zip"),
            "--author", "A. Person", "--name"]
    assert main([*args, "tiny"]) == 2  # the format wants names of 5 characters or more
    assert "name" in capsys.readouterr().err
    assert not (tmp_path / "out.zip").exists()
    assert main([*args, "tiny model"]) == 0
    assert "valid bioimage.io model package" in capsys.readouterr().out
    assert (tmp_path / "out.zip").exists()
    assert main(["export", str(tmp_path / "missing.safetensors"), str(tmp_path / "o.zip")]) == 2
