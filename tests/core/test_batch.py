"""Batch prediction over folders, globs and lists of mixed formats: one mask, overlay and
summary row per image, failures reported and skipped, finished files skipped on a rerun."""

from __future__ import annotations

import csv

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.errors import InputError

from .helpers import Levels


def _model():
    # Background, interior, boundary by intensity: objects are the bright nuclei.
    return Levels(2, (0.0, 1.0, 0.5), label_mode="instances")


def _rows(out) -> list[dict]:
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    a, _ = synthetic_nuclei((64, 80), seed=0)
    b, _ = synthetic_nuclei((48, 48), seed=1)
    c, _ = synthetic_nuclei((4, 40, 40), seed=2)
    tifffile.imwrite(d / "a.tif", a)
    iio.imwrite(d / "b.png", (b / max(1, b.max()) * 255).astype(np.uint8))
    tifffile.imwrite(d / "c.tif", c, photometric="minisblack")  # a z stack: slice by slice
    zarr.create_array(str(d / "e.zarr"), data=a[:48, :48])
    (d / "broken.png").write_bytes(b"not an image")
    (d / "notes.txt").write_text("ignored")
    return d


def test_folder_of_mixed_formats_gives_masks_overlays_and_a_summary(folder, tmp_path):
    out = tmp_path / "out"
    result = nu.predict_many(_model(), folder, out, objects=True, device="cpu")
    rows = {r["file"].split("/")[-1]: r for r in _rows(out)}
    assert set(rows) == {"a.tif", "b.png", "c.tif", "e.zarr", "broken.png"}
    assert rows["broken.png"]["status"] == "failed" and rows["broken.png"]["error"]
    assert len(result.failed) == 1
    for name, mask in (("a.tif", "masks/a.tif"), ("b.png", "masks/b.png"),
                       ("c.tif", "masks/c.tif"), ("e.zarr", "masks/e.zarr")):
        assert rows[name]["status"] == "done" and rows[name]["mask"] == mask
        overlay = iio.imread(out / rows[name]["overlay"])
        assert overlay.ndim == 3 and overlay.shape[-1] == 3
    # The masks are what predict gives for each image alone.
    a = tifffile.imread(folder / "a.tif")
    expected = nu.predict(_model(), a, mode="instances", device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out / "masks/a.tif"), expected)
    assert int(rows["a.tif"]["objects"]) == len(np.unique(expected[expected > 0])) > 0
    assert float(rows["a.tif"]["foreground_fraction"]) == pytest.approx((expected > 0).mean())
    assert tifffile.imread(out / "masks/c.tif").shape == (4, 40, 40)
    assert iio.imread(out / "masks/b.png").dtype == np.uint16
    stored, _ = nu.open_volume(out / "masks/e.zarr")
    np.testing.assert_array_equal(
        np.asarray(stored), nu.predict(_model(), a[:48, :48], mode="instances", device="cpu"))
    # Per-object table: areas add up to the foreground of each image.
    with open(out / "objects.csv", newline="") as fh:
        objects = list(csv.DictReader(fh))
    areas = sum(float(o["area"]) for o in objects if o["file"].endswith("a.tif"))
    assert areas == (expected > 0).sum()
    assert {"label", "centroid-0", "intensity_mean", "bbox-3"} <= set(objects[0])


def test_rerun_skips_finished_files_and_redoes_changed_ones(folder, tmp_path):
    out = tmp_path / "out"
    nu.predict_many(_model(), folder, out, device="cpu")
    before = (out / "masks/a.tif").stat().st_mtime_ns
    b, _ = synthetic_nuclei((48, 48), seed=5)
    iio.imwrite(folder / "b.png", (b / max(1, b.max()) * 255).astype(np.uint8))
    nu.predict_many(_model(), folder, out, device="cpu")
    rows = {r["file"].split("/")[-1]: r["status"] for r in _rows(out)}
    assert rows["a.tif"] == rows["c.tif"] == rows["e.zarr"] == "skipped (done)"
    assert rows["b.png"] == "done" and rows["broken.png"] == "failed"
    assert (out / "masks/a.tif").stat().st_mtime_ns == before
    # Other settings are another job: everything is done again.
    nu.predict_many(_model(), folder, out, device="cpu", min_size=3)
    assert {r["status"] for r in _rows(out)} == {"done", "failed"}


def test_glob_list_and_cli(folder, tmp_path):
    result = nu.predict_many(_model(), [str(folder / "*.tif"), folder / "b.png"],
                             tmp_path / "o1", device="cpu", overlays=False)
    assert [r["file"].split("/")[-1] for r in result.rows] == ["a.tif", "c.tif", "b.png"]
    assert not (tmp_path / "o1" / "overlays").exists()
    path = nu.save_model(nu.UNet(spatial_dims=2, in_channels=1, out_channels=3, depth=2,
                                 base_filters=4), tmp_path / "m.safetensors",
                         label_mode="instances")
    code = main(["predict", str(folder / "a.tif"), str(folder / "b.png"), str(tmp_path / "o2"),
                 "--model", str(path), "--device", "cpu", "--quiet"])
    assert code == 0 and len(_rows(tmp_path / "o2")) == 2
    assert main(["predict", str(folder), str(tmp_path / "o3"), "--model", str(path),
                 "--device", "cpu", "--quiet"]) == 1  # broken.png failed: said, not fatal
    assert len(_rows(tmp_path / "o3")) == 5


def test_bad_batches_are_refused_clearly(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("")
    with pytest.raises(InputError, match="no images in"):
        nu.predict_many(_model(), empty, tmp_path / "o", device="cpu")
    with pytest.raises(InputError, match="no images match"):
        nu.predict_many(_model(), str(tmp_path / "*.tif"), tmp_path / "o", device="cpu")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(InputError, match="is a file"):
        nu.predict_many(_model(), folder, tmp_path / "file", device="cpu")
    assert (tmp_path / "file").read_text() == "precious"
    with pytest.raises(InputError, match="label masks"):
        nu.predict_many(_model(), folder, tmp_path / "o", mode="probabilities", device="cpu")
