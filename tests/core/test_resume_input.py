"""A store resumes only for the input it was computed from: an edited input is refused (or
recomputed with overwrite), never answered with the stale result."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import napari_unet as nu
from napari_unet.events import Cancelled
from napari_unet.inference.input_digest import input_record
from napari_unet.inference.store import OutputExistsError

from .helpers import Levels

OPTS = dict(mode="instances", tile=(32, 32), block_shape=(32, 32), device="cpu")


def _nuclei(shape=(64, 96)) -> np.ndarray:
    img = np.full(shape, 10, np.uint16)
    for y, x in ((16, 16), (16, 60), (48, 30), (48, 80)):
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        img[(yy - y) ** 2 + (xx - x) ** 2 < 64] = 200
    return img


def _model() -> Levels:
    # Background and interior by intensity; no boundary classes needed to count objects.
    return Levels(2, (0.0, 1.0), label_mode="instances")


def _erase_one(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[40:57, 72:89] = 10  # the nucleus at (48, 80)
    return out


def _count(labels) -> int:
    return len(np.unique(np.asarray(labels))) - 1


def test_edited_tiff_is_refused_then_recomputed(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, _nuclei())
    out = tmp_path / "out.zarr"
    assert _count(nu.predict(_model(), path, out, **OPTS)[:]) == 4
    # The same command on the same file resumes (nothing to do) with the same result.
    assert _count(nu.predict(_model(), path, out, **OPTS)[:]) == 4

    tifffile.imwrite(path, _erase_one(_nuclei()))  # edited in place, same shape and dtype
    with pytest.raises(OutputExistsError, match="content changed.*--overwrite"):
        nu.predict(_model(), path, out, **OPTS)
    assert _count(zarr.open_group(str(out), mode="r")["labels/0"][:]) == 4  # kept as it was
    assert _count(nu.predict(_model(), path, out, overwrite=True, **OPTS)[:]) == 3


def test_edited_numpy_array_is_refused(tmp_path):
    img = _nuclei()
    out = tmp_path / "out.zarr"
    nu.predict(_model(), img, out, **OPTS)
    img[40:57, 72:89] = 10  # edited in place: same object, shape and dtype
    with pytest.raises(OutputExistsError, match="content changed"):
        nu.predict(_model(), img, out, **OPTS)


def test_zarr_chunk_edited_in_place_is_refused(tmp_path, monkeypatch):
    from napari_unet.inference import input_digest

    # Only the first chunk sampled: the edit below lies outside the sample, and the files'
    # signature must show it.
    monkeypatch.setattr(input_digest, "SAMPLED_BLOCKS", 1)
    src = zarr.create_array(str(tmp_path / "img.zarr"), shape=(64, 96), chunks=(16, 16),
                            dtype="uint16")
    src[:] = _nuclei()
    out = tmp_path / "out.zarr"
    nu.predict(_model(), tmp_path / "img.zarr", out, **OPTS)
    zarr.open_array(str(tmp_path / "img.zarr"), mode="r+")[48:64, 80:96] = 10
    with pytest.raises(OutputExistsError, match="content changed"):
        nu.predict(_model(), tmp_path / "img.zarr", out, **OPTS)


def test_interrupted_run_on_an_edited_input_does_not_resume(tmp_path):
    img = _nuclei((64, 128))
    out = tmp_path / "out.zarr"
    calls = {"n": 0}

    def cancel_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        nu.predict(_model(), img, out, cancel=cancel_after_two, **OPTS)
    edited = _erase_one(img)
    with pytest.raises(OutputExistsError):
        nu.predict(_model(), edited, out, **OPTS)
    fresh = nu.predict(_model(), edited, **OPTS)
    np.testing.assert_array_equal(nu.predict(_model(), edited, out, overwrite=True,
                                             **OPTS)[:], fresh)


def test_cli_refuses_an_edited_tiff_with_the_command_to_overwrite(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, _nuclei())
    model = tmp_path / "m.safetensors"
    torch_model = nu.UNet(spatial_dims=2, in_channels=1, out_channels=2, depth=1,
                          base_filters=2)
    nu.save_model(torch_model, model, label_mode="classes")
    cmd = [sys.executable, "-m", "napari_unet.cli", "predict", str(path),
           str(tmp_path / "out.zarr"), "--model", str(model), "--device", "cpu"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    assert subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    tifffile.imwrite(path, _erase_one(_nuclei()))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "content changed" in done.stderr and "--overwrite" in done.stderr
    assert subprocess.run([*cmd, "--overwrite"], capture_output=True, env=env).returncode == 0


def test_input_record_covers_every_byte_of_an_array_in_memory(rng):
    x = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    a = input_record(da.from_array(x, chunks=x.shape), "numpy array")
    y = x.copy()
    y[39, 49] ^= 1
    b = input_record(da.from_array(y, chunks=y.shape), "numpy array")
    assert a["digest"]["kind"] == "full"
    assert a != b
    assert a == input_record(da.from_array(x.copy(), chunks=x.shape), "numpy array")
