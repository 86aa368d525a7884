"""Property-based tests (hypothesis) of the invariants the engine rests on: tiling, planning,
normalisation, resume and instance labelling, over random shapes, tiles, overlaps, blocks and
chunks."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_unet as nu
from napari_unet.config import PredictConfig
from napari_unet.errors import NapariUnetError
from napari_unet.events import Cancelled
from napari_unet.inference.plan import plan_shapes
from napari_unet.inference.spec import resolve_model
from napari_unet.inference.tiling import TileGrid, block_regions
from napari_unet.normalize import percentile_normalization

from .helpers import Identity, Levels, LocalConv

FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

shapes = st.lists(st.integers(1, 70), min_size=2, max_size=3).map(tuple)


@st.composite
def crop_grids(draw):
    shape = draw(shapes)
    nd = len(shape)
    multiple = draw(st.sampled_from([1, 2, 4, 8]))
    tile = tuple(draw(st.integers(1, 40)) for _ in range(nd))
    # A cell is at most the tile the network takes (the tile rounded up to the multiple).
    cell = tuple(draw(st.integers(1, -(-t // multiple) * multiple)) for t in tile)
    return TileGrid.build_crop(shape, tile, cell, (multiple,) * nd)


@FAST
@given(grid=crop_grids(), data=st.data())
def test_crop_grid_writes_every_voxel_exactly_once_and_reads_inside(grid, data):
    """Per axis, tile spans partition the volume; each span lies inside its tile and the
    tile's in-volume part lies inside the volume."""
    for s, origins, spans, t in zip(grid.shape, grid.origins, grid.spans, grid.tile,
                                    strict=True):
        covered = np.zeros(s, int)
        for o, (a, b) in zip(origins, spans, strict=True):
            covered[a:b] += 1
            assert 0 <= o and o <= a and b <= o + t  # written voxels are inside the tile
            assert o + min(t, s) <= s  # the tile reads nothing outside the volume
        assert (covered == 1).all()
    # Any block shape: the pieces of all blocks write each voxel once.
    block = tuple(data.draw(st.integers(1, 50)) for _ in grid.shape)
    counts = np.zeros(grid.shape, int)
    for region in block_regions(grid.shape, block, grid):
        for _, span in grid.pieces(region):
            counts[tuple(slice(a, b) for a, b in span)] += 1
    assert (counts == 1).all()


@FAST
@given(shape=shapes, data=st.data())
def test_blending_grid_covers_the_volume_and_reads_inside(shape, data):
    nd = len(shape)
    tile = tuple(data.draw(st.integers(1, 40)) for _ in range(nd))
    overlap = data.draw(st.floats(0, 0.9))
    grid = TileGrid.build(shape, tile, overlap, (1,) * nd)
    for s, origins, t in zip(shape, grid.origins, grid.tile, strict=True):
        covered = np.zeros(s, bool)
        for o in origins:
            assert 0 <= o and o + min(t, s) <= s
            covered[o : o + t] = True
        assert covered.all()


@FAST
@given(shape=shapes, data=st.data())
def test_planned_shapes_are_valid_or_refused_clearly(shape, data):
    nd = len(shape)
    spec = resolve_model(Identity(nd, multiple=data.draw(st.sampled_from([1, 4, 16]))))
    ints = st.lists(st.integers(1, 80), min_size=nd, max_size=nd).map(tuple)
    config = PredictConfig(
        tile=data.draw(st.none() | ints), block_shape=data.draw(st.none() | ints),
        chunk_shape=data.draw(st.none() | ints), blending=data.draw(
            st.sampled_from(["crop", "gaussian"])), batch_size=4)
    try:
        grid, block, chunk = plan_shapes(shape, spec, config)
    except NapariUnetError as err:
        assert str(err)  # a message, not a crash
        return
    assert all(1 <= c <= s for c, s in zip(chunk, shape, strict=True))
    assert all(b % c == 0 or b >= s for b, c, s in zip(block, chunk, shape, strict=True))
    assert grid.shape == tuple(shape)


@settings(max_examples=6, deadline=None)
@given(shape=st.lists(st.integers(6, 30), min_size=2, max_size=3).map(tuple), data=st.data())
def test_results_do_not_depend_on_block_and_chunk(shape, data):
    nd = len(shape)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    x = rng.random(shape).astype(np.float32)
    model = LocalConv(nd)
    ints = st.lists(st.integers(4, 48), min_size=nd, max_size=nd).map(tuple)
    chunk = data.draw(ints)
    mult = data.draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd))
    block = tuple(c * m for c, m in zip(chunk, mult, strict=True))
    common = dict(mode="logits", tile=(16,) * nd, overlap=(4,) * nd, device="cpu")
    whole = nu.predict(model, x, **common)
    blocks = nu.predict(model, x, block_shape=block, chunk_shape=chunk, **common)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_normalisation_matches_numpy_percentiles(data):
    """Against numpy's percentiles computed independently (whole image, per channel)."""
    channels = data.draw(st.integers(1, 3))
    shape = (channels, data.draw(st.integers(4, 60)), data.draw(st.integers(4, 60)))
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    x = (rng.gamma(2.0, 50.0, shape) * data.draw(st.floats(0.01, 100))).astype(np.float32)
    lo_p = data.draw(st.floats(0, 10))
    hi_p = data.draw(st.floats(90, 100))
    norm = percentile_normalization(da.from_array(x, chunks=(1, 7, 9)), 0, (lo_p, hi_p))
    for c in range(channels):
        lo, hi = np.percentile(x[c].astype(np.float64), [lo_p, hi_p])
        if hi - lo < 1e-6 * max(1.0, abs(lo)):
            continue  # flat: normalised by a unit range instead
        assert norm.low[c] == pytest.approx(lo, rel=1e-6, abs=1e-6)
        assert norm.high[c] == pytest.approx(hi, rel=1e-6, abs=1e-6)
        y = norm.apply(x, channel_axis=0)[c]
        np.testing.assert_allclose(y, (x[c] - lo) / (hi - lo), rtol=1e-4, atol=1e-4)


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_resume_after_a_cancel_at_a_random_block_equals_an_uninterrupted_run(tmp_path_factory,
                                                                            data):
    tmp = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    x = rng.random((40, 56)).astype(np.float32)
    model = LocalConv(2)
    opts = dict(mode="probabilities", tile=(16, 16), block_shape=(16, 16), device="cpu")
    full = nu.predict(model, x, tmp / "full.zarr", **opts)[:]
    stop = data.draw(st.integers(1, 11))
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > stop

    try:
        nu.predict(model, x, tmp / "part.zarr", cancel=cancel, **opts)
    except Cancelled:
        pass
    np.testing.assert_array_equal(nu.predict(model, x, tmp / "part.zarr", **opts)[:], full)


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_instance_labels_equal_across_block_shapes(tmp_path_factory, monkeypatch, data):
    """Objects crossing blocks and labelling chunks come out whole and the same."""
    from napari_unet.data.synthetic import synthetic_nuclei
    from napari_unet.inference import labelling
    from napari_unet.metrics import match_instances

    tmp = tmp_path_factory.mktemp("labels")
    _, labels = synthetic_nuclei((72, 88), radius=(4, 9), seed=data.draw(st.integers(0, 99)))
    x = (labels > 0).astype(np.float32)
    model = Levels(2, (0.0, 1.0), label_mode="classes")
    opts = dict(mode="instances", device="cpu", normalize=(0, 100))
    whole = nu.predict(model, x, **opts)
    side = data.draw(st.sampled_from([16, 24, 40]))
    monkeypatch.setattr(labelling, "IN_MEMORY_LABEL_VOXELS", side * side)
    blocks = nu.predict(model, x, tmp / "o.zarr", tile=(32, 32), block_shape=(side, side),
                        **opts)[:]
    same = match_instances(blocks, whole, (0.999,))[0]
    assert same.fp == same.fn == 0
    np.testing.assert_array_equal(blocks > 0, whole > 0)
    monkeypatch.undo()


def test_properties_cover_both_grid_kinds():
    """The strategies draw crop and blending grids of 2D and 3D volumes."""
    kinds = {(nd, crop) for nd, crop in itertools.product((2, 3), (True, False))}
    assert len(kinds) == 4
