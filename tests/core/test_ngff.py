"""Results are OME-Zarr (NGFF 0.5): validated by ome-zarr-models, an independent
implementation of the specification; voxel sizes carried from the input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05 import Image, ImageLabel

import napari_unet as nu
from napari_unet.errors import OutputExistsError
from napari_unet.ngff import multiscale_attrs, ngff_axes_ok, scale_for_axes

from .helpers import Times, tiny_unet


def _axes(model) -> list[str]:
    return [a.name for a in model.ome_attributes.multiscales[0].axes]


def _scale(model) -> list[float]:
    ds = model.ome_attributes.multiscales[0].datasets[0]
    return list(ds.coordinateTransformations[0].scale)


def test_labels_and_probabilities_are_valid_ome_zarr(tmp_path, rng):
    x = rng.random((40, 48)).astype(np.float32)
    model = tiny_unet(2, out_channels=3)
    nu.predict(model, x, tmp_path / "l.zarr", mode="instances", device="cpu")
    nu.predict(model, x, tmp_path / "p.zarr", mode="probabilities", device="cpu")
    labels = ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "l.zarr/labels"), mode="r"))
    assert _axes(labels) == ["y", "x"] and _scale(labels) == [1.0, 1.0]
    probs = Image.from_zarr(zarr.open_group(str(tmp_path / "p.zarr/probabilities"), mode="r"))
    assert _axes(probs) == ["c", "y", "x"]
    # The result opens as before, through the store's path.
    arr, info = nu.open_volume(tmp_path / "l.zarr")
    assert arr.shape == x.shape and info.scale == (1.0, 1.0)


def test_voxel_sizes_go_from_the_input_to_the_result(tmp_path):
    # An ImageJ TIFF z stack (z 2.5, y / x 0.4 um) through a 2D model slice by slice.
    x = np.zeros((6, 32, 32), np.float32)
    x[1:5, 8:20, 8:20] = 1.0
    tifffile.imwrite(tmp_path / "s.tif", x, imagej=True, resolution=(2.5, 2.5),
                     metadata={"spacing": 2.5, "axes": "ZYX"})
    out = tmp_path / "s.zarr"
    nu.predict(Times(2, 1.0), tmp_path / "s.tif", out, mode="instances",
               normalize=(0, 100), device="cpu")
    model = ImageLabel.from_zarr(zarr.open_group(str(out / "labels"), mode="r"))
    assert _axes(model) == ["z", "y", "x"]
    assert _scale(model) == pytest.approx([2.5, 0.4, 0.4])
    _, info = nu.open_volume(out)
    assert info.scale == pytest.approx((2.5, 0.4, 0.4))


def test_axes_outside_ome_zarrs_order_get_no_metadata_but_a_result(tmp_path, rng):
    # Probabilities of a 2D model over a z stack are (Z, C, Y, X): not an NGFF order.
    x = rng.random((3, 32, 32)).astype(np.float32)
    out = tmp_path / "zc.zarr"
    nu.predict(tiny_unet(2), x, out, mode="probabilities", device="cpu")
    group = zarr.open_group(str(out / "probabilities"), mode="r")
    assert "ome" not in group.attrs
    arr, _ = nu.open_volume(out)
    assert arr.shape == (3, 2, 32, 32)


def test_store_of_the_earlier_format_is_not_resumed(tmp_path, rng):
    x = rng.random((32, 32)).astype(np.float32)
    out = tmp_path / "o.zarr"
    model = tiny_unet(2)
    nu.predict(model, x, out, mode="semantic", device="cpu")
    group = zarr.open_group(str(out), mode="r+")
    record = dict(group.attrs["napari_unet"])
    group.attrs["napari_unet"] = {**record, "format": 1}
    with pytest.raises(OutputExistsError, match="another version of napari-unet"):
        nu.predict(model, x, out, mode="semantic", device="cpu")
    nu.predict(model, x, out, mode="semantic", device="cpu", overwrite=True)


def test_ngff_axes_rules():
    assert ngff_axes_ok("YX") and ngff_axes_ok("TCZYX") and ngff_axes_ok("CZYX")
    assert not ngff_axes_ok("ZCYX") and not ngff_axes_ok("X") and not ngff_axes_ok("YXC")
    assert scale_for_axes("ZYX", "CZYX", (1.0, 3.0, 0.5, 0.5)) == [3.0, 0.5, 0.5]
    assert scale_for_axes("CYX", None, None) == [1.0, 1.0, 1.0]
    attrs = multiscale_attrs("ZYX", [2.0, 1.0, 1.0], "x", labels=False, n_levels=2,
                             factors=[(1, 1, 1), (1, 2, 2)], unit="micrometer")
    ds = attrs["ome"]["multiscales"][0]["datasets"]
    assert ds[1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="order"):
        multiscale_attrs("ZCYX", [1.0] * 4, "x", labels=False)


def test_training_voxel_size_is_stored_and_prediction_warns_on_another(tmp_path, rng):
    from napari_unet.config import ModelConfig, TrainConfig
    from napari_unet.events import Notice

    image, labels = _tiff_pair(tmp_path, 0.5)
    config = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                         patch_size=(32, 32), batch_size=2, epochs=1, steps_per_epoch=2,
                         val_patches=2, device="cpu", label_mode="instances")
    result = nu.train([(image, labels)], config, run_dir=tmp_path / "run")
    model = nu.load_model(result.last_model)
    assert model.metadata["voxel_size"] == [0.5, 0.5]

    def notices(img, **kw) -> list[str]:
        events = []
        nu.predict(model, img, device="cpu", progress=events.append, **kw)
        return [e.message for e in events if isinstance(e, Notice) and "voxels" in e.message]

    assert notices(image) == []  # the same voxel size
    far, _ = _tiff_pair(tmp_path, 2.0)
    (message,) = notices(far)
    assert "0.5 x 0.5" in message and "2 x 2" in message and "rescale" in message
    assert notices(far, voxel_size=(0.6, 0.6)) == []  # the user's word over the metadata
    assert notices(rng.random((48, 48)).astype(np.float32)) == []  # nothing known: silent
    # Given in the config, it is stored whatever the files say.
    cfg = config.replace(voxel_size=(0.2, 0.2), epochs=1)
    result = nu.train([(image, labels)], cfg, run_dir=tmp_path / "run2")
    assert nu.load_model(result.last_model).metadata["voxel_size"] == [0.2, 0.2]


def _tiff_pair(tmp_path, size: float):
    from napari_unet.data.synthetic import synthetic_nuclei

    image, labels = synthetic_nuclei((64, 64), seed=3)
    path = tmp_path / f"img{size}.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / size, 1 / size),
                     metadata={"axes": "YX"})
    return path, labels


def test_voxel_size_given_goes_to_the_result(tmp_path, rng):
    x = rng.random((40, 48)).astype(np.float32)
    nu.predict(tiny_unet(2), x, tmp_path / "v.zarr", mode="semantic", device="cpu",
               voxel_size=(0.3, 0.3))
    model = ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "v.zarr/labels"), mode="r"))
    assert _scale(model) == pytest.approx([0.3, 0.3])
    from napari_unet.errors import InputError

    with pytest.raises(InputError, match="one per axis"):
        nu.predict(tiny_unet(2), x, device="cpu", voxel_size=(1.0, 0.3, 0.3))


def _ome_image(path, data, scale, version="0.5"):
    if version == "0.5":
        root = zarr.open_group(str(path), mode="w")
        root.attrs.update(multiscale_attrs("YX", scale, "img", labels=False))
        root.create_array("0", data=data, chunks=(32, 32))
    else:
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        root.attrs["multiscales"] = [{"version": "0.4", "axes": [
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": list(scale)}]}]}]
        root.create_array("0", data=data, chunks=(32, 32))


def test_labels_go_into_an_ome_zarr_images_labels_group(tmp_path):
    from ome_zarr_models.v05 import Labels

    from napari_unet.data.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((64, 96), seed=4)
    img = tmp_path / "img.zarr"
    _ome_image(img, image, [0.5, 0.5])
    model = tiny_unet(2, out_channels=3)
    out = img / "labels" / "nuclei"
    nu.predict(model, img, out, mode="instances", device="cpu")
    labels_group = zarr.open_group(str(img / "labels"), mode="r")
    assert Labels.from_zarr(labels_group).ome_attributes.labels == ["nuclei"]
    label = ImageLabel.from_zarr(zarr.open_group(str(out), mode="r"))  # at NAME itself
    assert _scale(label) == pytest.approx([0.5, 0.5])
    paths = [d.path for d in label.ome_attributes.multiscales[0].datasets]
    level0 = zarr.open_group(str(out), mode="r")[paths[0]][:]
    np.testing.assert_array_equal(level0, nu.predict(model, image, mode="instances",
                                                     device="cpu"))
    # Written into the image's folder, yet the image is unchanged: the run resumes, and a
    # second label image is listed beside the first.
    nu.predict(model, img, out, mode="instances", device="cpu")
    nu.predict(model, img, img / "labels" / "classes", mode="semantic", device="cpu")
    assert Labels.from_zarr(zarr.open_group(str(img / "labels"), mode="r")
                            ).ome_attributes.labels == ["nuclei", "classes"]


def test_labels_into_an_ome_zarr_04_image_are_refused_before_writing(tmp_path, rng):
    from napari_unet.errors import InputError

    img = tmp_path / "old.zarr"
    _ome_image(img, rng.random((64, 64)).astype(np.float32), [1.0, 1.0], version="0.4")
    with pytest.raises(InputError, match="0.4"):
        nu.predict(tiny_unet(2), img, img / "labels" / "x", device="cpu")
    assert not (img / "labels").exists()
