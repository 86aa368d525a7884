"""Microscope files through bioio: lazily, axes and voxel size from their metadata, and clear
errors where bioio or a format's plugin is missing."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_unet as nu
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.errors import InputError
from napari_unet.io import open_with_bioio

from .helpers import Levels


def _ome_tiff(path: Path, data: np.ndarray, dims: str, **sizes) -> Path:
    pytest.importorskip("bioio_ome_tiff")
    from bioio.writers import OmeTiffWriter
    from bioio_base.types import PhysicalPixelSizes

    OmeTiffWriter.save(data, str(path), dim_order=dims,
                       physical_pixel_sizes=PhysicalPixelSizes(**sizes) if sizes else None)
    return path


def test_bioio_gives_the_planes_axes_and_voxel_size(tmp_path, rng):
    data = rng.integers(0, 255, (1, 5, 32, 40), dtype=np.uint8)  # one channel, five slices
    path = _ome_tiff(tmp_path / "stack.ome.tiff", data, "CZYX", Z=2.0, Y=0.5, X=0.25)
    arr, info = open_with_bioio(path)
    assert info.axes == "ZYX" and arr.shape == (5, 32, 40)
    assert info.scale == (2.0, 0.5, 0.25)
    np.testing.assert_array_equal(np.asarray(arr), data[0])
    two = _ome_tiff(tmp_path / "two.ome.tiff", rng.integers(0, 9, (2, 16, 16), dtype=np.uint8),
                    "CYX")
    arr, info = open_with_bioio(two)
    assert info.axes == "CYX" and arr.shape == (2, 16, 16) and info.scale is None


def test_vendor_files_get_actionable_errors(tmp_path, monkeypatch):
    pytest.importorskip("bioio")
    junk = tmp_path / "scan.czi"
    junk.write_bytes(b"not a czi file")
    with pytest.raises(InputError, match="pip install bioio-czi"):
        nu.open_volume(junk)
    nd2 = tmp_path / "scan.nd2"
    nd2.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "bioio", None)  # bioio not installed
    with pytest.raises(InputError, match="pip install bioio bioio-nd2"):
        nu.open_volume(nd2)


def test_a_folder_with_an_unreadable_vendor_file_still_segments_the_rest(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    image, _ = synthetic_nuclei((48, 56), seed=0)
    tifffile.imwrite(folder / "a.tif", image)
    (folder / "b.lif").write_bytes(b"not a lif file")
    out = tmp_path / "out"
    result = nu.predict_many(Levels(2, (0.0, 1.0, 0.5), label_mode="instances"), folder, out,
                             device="cpu")
    with open(out / "summary.csv", newline="") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    assert rows["a.tif"]["status"] == "done"
    assert rows["b.lif"]["status"] == "failed" and "bioio" in rows["b.lif"]["error"]
    assert len(result.failed) == 1
