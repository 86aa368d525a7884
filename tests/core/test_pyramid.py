"""Multiscale pyramids of results: every level is level 0 downsampled (nearest for labels,
2 x 2 means for probabilities) whatever order blocks finish in and across resumes, written as
valid OME-Zarr, and absent where switched off."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from ome_zarr_models.v05 import Image, ImageLabel

import napari_unet as nu
from napari_unet.events import Cancelled
from napari_unet.inference.pyramid import PyramidBuilder, downsample, level_shapes
from napari_unet.inference.store import OutputStore

from .helpers import tiny_unet


def _expected(level0: np.ndarray, n: int, how: str) -> list[np.ndarray]:
    levels = [level0]
    for _ in range(n - 1):
        levels.append(downsample(levels[-1], how))
    return levels


def _blocks(shape, block):
    return [(slice(y, min(y + block, shape[0])), slice(x, min(x + block, shape[1])))
            for y in range(0, shape[0], block) for x in range(0, shape[1], block)]


def test_level_shapes_and_downsampling():
    assert level_shapes((3, 1100, 700)) == [(3, 1100, 700), (3, 550, 350), (3, 275, 175)]
    assert level_shapes((512, 512)) == [(512, 512)]
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(downsample(a, "nearest"), a[::2, ::2])
    mean = downsample(a, "mean")
    assert mean.shape == (2, 3) and mean[0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert mean[1, 2] == a[2, 4]  # an odd corner averages its own pixel


@settings(max_examples=25, deadline=None)
@given(h=st.integers(5, 90), w=st.integers(5, 90), chunk=st.integers(2, 12),
       per_block=st.integers(1, 3), max_side=st.integers(2, 20), floats=st.booleans(),
       stop=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_pyramid_is_the_downsampled_level0_whatever_the_order_and_resumes(
        h, w, chunk, per_block, max_side, floats, stop, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w)
    shapes = level_shapes(shape, max_side)
    dtype = "float32" if floats else "uint32"
    level0 = (rng.random(shape).astype(np.float32) if floats
              else rng.integers(0, 50, shape).astype(np.uint32))
    blocks = _blocks(shape, chunk * per_block)  # blocks are whole chunks, as the engine's
    arrays = {"r": dict(shape=shape, chunks=(chunk, chunk), dtype=dtype, levels=shapes[1:])}
    store = OutputStore.open_or_create(None, {"test": 1}, arrays, "r", len(blocks), 0, False)
    order = rng.permutation(len(blocks))
    cut = int(stop * len(blocks))
    builder = PyramidBuilder(store, 0)
    for n, i in enumerate(order):
        if n == cut:  # interrupted: a new run sees the flags in the store
            builder.wait()
            builder = PyramidBuilder(store, 0)
            for j in order[:cut]:
                builder.mark((), blocks[j])
        store.result[blocks[i]] = level0[blocks[i]]
        builder.block_done((), blocks[i])
    list(builder.finish())
    assert builder.todo() == 0
    expected = _expected(level0, len(shapes), "mean" if floats else "nearest")
    for got, want in zip(store.levels, expected, strict=True):
        np.testing.assert_allclose(got[...], want, rtol=1e-6)


def _check_levels(group, name, how):
    levels = [group[f"{name}/{k}"][...] for k in range(len(list(group[name].arrays())))]
    for got, want in zip(levels, _expected(levels[0], len(levels), how), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    return levels


def test_result_of_a_large_image_is_a_valid_multiscale_label_image(tmp_path, rng):
    x = rng.random((1100, 700)).astype(np.float32)
    out = tmp_path / "l.zarr"
    nu.predict(tiny_unet(2, out_channels=3), x, out, mode="instances", device="cpu",
               block_shape=(512, 512))
    group = zarr.open_group(str(out), mode="r")
    levels = _check_levels(group, "labels", "nearest")
    assert [a.shape for a in levels] == [(1100, 700), (550, 350), (275, 175)]
    model = ImageLabel.from_zarr(group["labels"])
    scales = [d.coordinateTransformations[0].scale
              for d in model.ome_attributes.multiscales[0].datasets]
    assert scales == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]
    arr, info = nu.open_volume(out)
    assert arr.shape == x.shape and [a.shape for a in info.multiscale] == [(550, 350),
                                                                             (275, 175)]


def test_interrupted_probabilities_resume_to_the_same_pyramid(tmp_path, rng):
    x = rng.random((600, 560)).astype(np.float32)
    model = tiny_unet(2, out_channels=2)
    opts = dict(mode="probabilities", device="cpu", block_shape=(256, 256),
                chunk_shape=(128, 128))
    calls = {"n": 0}

    def cancel_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "p.zarr"
    with pytest.raises(Cancelled):
        nu.predict(model, x, out, cancel=cancel_after_three, **opts)
    nu.predict(model, x, out, **opts)
    nu.predict(model, x, tmp_path / "ref.zarr", **opts)
    got = _check_levels(zarr.open_group(str(out), mode="r"), "probabilities", "mean")
    ref = _check_levels(zarr.open_group(str(tmp_path / "ref.zarr"), mode="r"),
                        "probabilities", "mean")
    assert len(got) == 2
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    Image.from_zarr(zarr.open_group(str(out / "probabilities"), mode="r"))


def test_stacks_are_halved_in_y_and_x_only_and_pyramid_can_be_off(tmp_path, rng):
    x = rng.random((4, 600, 48)).astype(np.float32)
    nu.predict(tiny_unet(3), x, tmp_path / "s.zarr", mode="semantic", device="cpu")
    levels = _check_levels(zarr.open_group(str(tmp_path / "s.zarr"), mode="r"), "labels",
                           "nearest")
    assert [a.shape for a in levels] == [(4, 600, 48), (4, 300, 24)]
    nu.predict(tiny_unet(3), x, tmp_path / "one.zarr", mode="semantic", device="cpu",
               pyramid=False)
    group = zarr.open_group(str(tmp_path / "one.zarr"), mode="r")
    assert [n for n, _ in group["labels"].arrays()] == ["0"]
    assert not any(n.startswith("pyramid") for n, _ in group.arrays())
