"""npe2 contributions: the reader opens zarr / OME-Zarr / TIFF lazily; sample data loads."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import napari_unet as nu
from napari_unet._napari._reader import get_reader

from ..core.helpers import Times, tiny_unet


def test_reader_claims_only_what_it_reads(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert get_reader(str(tmp_path / "a.txt")) is None
    z = zarr.create_array(str(tmp_path / "img.zarr"), shape=(4, 8), dtype="u2")
    z[:] = 1
    assert get_reader(str(tmp_path / "img.zarr")) is not None


def test_reader_returns_lazy_layers(tmp_path):
    x = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    tifffile.imwrite(tmp_path / "s.tif", x, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 3.0, "axes": "ZYX"})
    [(data, meta, kind)] = get_reader(str(tmp_path / "s.tif"))(str(tmp_path / "s.tif"))
    assert isinstance(data, da.Array) and kind == "image"
    assert meta["scale"] == pytest.approx((3.0, 0.5, 0.5))
    np.testing.assert_array_equal(data.compute(), x)

    # A napari-unet label result opens as a labels layer.
    out = tmp_path / "seg.zarr"
    nu.predict(tiny_unet(3), x.astype(np.float32), out, mode="instances", device="cpu")
    [(data, meta, kind)] = get_reader(str(out))(str(out))
    assert kind == "labels" and data.shape == x.shape


def test_ome_zarr_multiscale(tmp_path):
    root = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    for i, s in enumerate((64, 32)):
        a = root.create_array(str(i), shape=(s, s), dtype="u1")
        a[:] = i
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]},
        ],
    }]
    [(data, meta, kind)] = get_reader(str(tmp_path / "ome.zarr"))(str(tmp_path / "ome.zarr"))
    assert meta["multiscale"] and len(data) == 2 and data[0].shape == (64, 64)
    assert meta["scale"] == (0.5, 0.5)


def test_viewer_opens_with_plugin_and_samples(make_napari_viewer, tmp_path):
    z = zarr.create_array(str(tmp_path / "vol.zarr"), shape=(8, 16, 16), dtype="f4")
    z[:] = 1.0
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "vol.zarr"), plugin="napari-unet")
    assert layers[0].data.shape == (8, 16, 16)
    viewer.open_sample("napari-unet", "nuclei-2d")
    viewer.open_sample("napari-unet", "dsb2018-nuclei")
    names = [layer.name for layer in viewer.layers]
    assert "nuclei 2D" in names and "nuclei 2D labels" in names
    assert viewer.layers["DSB 2018 nuclei labels"].data.max() > 100


def test_a_result_opens_in_napari_with_and_without_naming_the_plugin(make_napari_viewer,
                                                                    tmp_path):
    x = np.zeros((4, 32, 32), np.float32)
    x[1:3, 4:12, 4:12] = 1.0
    tifffile.imwrite(tmp_path / "s.tif", x, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 3.0, "axes": "ZYX"})
    out = tmp_path / "seg.zarr"
    result = nu.predict(Times(2, 1.0), tmp_path / "s.tif", out, mode="instances",
                        normalize=(0, 100), device="cpu")
    viewer = make_napari_viewer()
    # viewer.open's default reader (napari's built-in) opens the store's result group.
    [layer] = viewer.open(str(out))
    np.testing.assert_array_equal(np.asarray(layer.data[0] if isinstance(layer.data, list)
                                             else layer.data), result[...])
    # Through napari-unet's reader: a labels layer with the input's voxel size.
    [labels] = viewer.open(str(out), plugin="napari-unet")
    assert labels._type_string == "labels"
    assert tuple(labels.scale) == pytest.approx((3.0, 0.5, 0.5))


def test_napari_with_the_plugin_does_not_import_torch(tmp_path):
    z = zarr.create_array(str(tmp_path / "vol.zarr"), shape=(8, 16, 16), dtype="f4")
    z[:] = 1.0
    code = (
        "import sys, napari\n"
        "v = napari.Viewer(show=False)\n"
        f"v.open({str(tmp_path / 'vol.zarr')!r}, plugin='napari-unet')\n"
        "v.open_sample('napari-unet', 'nuclei-3d')\n"
        "assert len(v.layers) == 3, v.layers\n"
        "print('torch' in sys.modules)\n"
        "v.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_writers_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((6, 40, 50), np.uint32)
    labels[2:4, 10:20, 10:30] = 7
    layer = viewer.add_labels(labels, name="seg", scale=(3.0, 0.5, 0.5))
    for name in ("seg.zarr", "seg.tif"):
        written = layer.save(str(tmp_path / name), plugin="napari-unet")
        data, _ = nu.open_volume(written[0] if isinstance(written, list) else written)
        np.testing.assert_array_equal(np.asarray(data), labels)
