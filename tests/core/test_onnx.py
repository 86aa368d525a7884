"""ONNX export, INT8 quantisation, and ONNX files predicted through the same engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.errors import InputError

from .helpers import tiny_unet

pytest.importorskip("onnxruntime")

from napari_unet.model.onnx_model import OnnxModel  # noqa: E402
from napari_unet.onnx_export import export_onnx, quantize_onnx  # noqa: E402


def _saved(tmp_path, spatial_dims=2, out_channels=3, **meta):
    model = tiny_unet(spatial_dims, out_channels=out_channels)
    meta.setdefault("label_mode", "instances")
    return model, nu.save_model(model, tmp_path / "m.safetensors", tile=[32] * spatial_dims,
                                **meta)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_exported_network_equals_torch_at_any_size(tmp_path, spatial_dims):
    model, path = _saved(tmp_path, spatial_dims)
    onnx_path = export_onnx(path, tmp_path / "m.onnx")
    loaded = OnnxModel(onnx_path)
    assert (loaded.spatial_dims, loaded.in_channels, loaded.out_channels) == (
        spatial_dims, 1, 3)
    assert loaded.metadata["label_mode"] == "instances"
    # Sizes other than the one traced (dynamic batch and spatial axes).
    for shape in ([1, 1] + [16] * spatial_dims, [3, 1] + [8, 24, 16][:spatial_dims]):
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-4)


def test_predict_with_an_onnx_file_equals_the_torch_model(tmp_path, rng):
    model, path = _saved(tmp_path)
    onnx_path = export_onnx(path, tmp_path / "m.onnx")
    x = rng.random((70, 90)).astype(np.float32)  # several tiles: blending and padding
    expected = nu.predict(model, x, mode="probabilities", device="cpu", precision="fp32")
    got = nu.predict(str(onnx_path), x, mode="probabilities", device="cpu")
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # An ensemble may mix an ONNX file and a torch model.
    assert nu.predict([str(onnx_path), str(path)], x, mode="instances",
                      device="cpu").shape == x.shape


def test_int8_is_close_to_float_and_keeps_the_metadata(tmp_path, rng):
    _, path = _saved(tmp_path)
    plain = export_onnx(path, tmp_path / "m.onnx")
    images = [rng.random((40, 50)).astype(np.float32) * 100 for _ in range(3)]
    q = quantize_onnx(plain, tmp_path / "m8.onnx", images)
    assert q.stat().st_size < plain.stat().st_size
    loaded = OnnxModel(q)
    assert loaded.metadata["quantized"] == "int8"
    assert loaded.metadata["label_mode"] == "instances"
    x = torch.rand(1, 1, 32, 32)
    a, b = OnnxModel(plain)(x).numpy().ravel(), loaded(x).numpy().ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.95
    assert not np.array_equal(a, b)  # quantised for real


def test_job_fingerprint_follows_the_file(tmp_path, rng):
    from napari_unet.inference.spec import resolve_model

    _, path = _saved(tmp_path)
    a = export_onnx(path, tmp_path / "a.onnx")
    b = quantize_onnx(a, tmp_path / "b.onnx", [rng.random((40, 40)).astype(np.float32)])
    assert resolve_model(str(a)).weights_digest() != resolve_model(str(b)).weights_digest()
    assert resolve_model(str(a)).weights_digest() == resolve_model(str(a)).weights_digest()
    # A cluster's workers get a pickled copy; the file's metadata reads as a model file's.
    import pickle

    x = torch.rand(1, 1, 16, 16)
    model = OnnxModel(b)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model))(x).numpy(),
                                  model(x).numpy())
    assert nu.read_metadata(b)["model"]["out_channels"] == 3
    assert nu.read_metadata(b)["quantized"] == "int8"


def test_bad_onnx_inputs_get_clear_errors(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    _, path = _saved(tmp_path)
    with pytest.raises(InputError, match="ends in .onnx"):
        export_onnx(path, tmp_path / "m.zip")
    # An ONNX file from elsewhere: no metadata to tile or normalise with.
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(InputError, match="not exported by napari-unet"):
        nu.predict(str(tmp_path / "other.onnx"), np.zeros((16, 16), np.float32))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="no such ONNX file"):
        OnnxModel(tmp_path / "missing.onnx")


def test_cli_exports_quantises_and_predicts(tmp_path, rng, capsys):
    import tifffile

    _, path = _saved(tmp_path)
    folder = tmp_path / "cal"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"c{i}.tif", (rng.random((40, 48)) * 255).astype(np.uint8))
    assert main(["export", str(path), str(tmp_path / "m8.onnx"), "--quantize", "int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["export", str(path), str(tmp_path / "m8.onnx"), "--quantize", "int8",
                 "--calibration", str(folder), "--quiet"]) == 0
    assert OnnxModel(tmp_path / "m8.onnx").metadata["quantized"] == "int8"
    assert not (tmp_path / "m8.fp32.onnx").exists()  # the intermediate file is removed
    assert main(["predict", "--model", str(tmp_path / "m8.onnx"), str(folder / "c0.tif"),
                 str(tmp_path / "out.zarr"), "--quiet"]) == 0
    assert nu.open_volume(tmp_path / "out.zarr")[0].shape == (40, 48)
