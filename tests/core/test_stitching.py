"""2D models on z stacks: per-slice instances linked into 3D objects by overlap (or kept
per slice), in memory and out of core, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_unet as nu
from napari_unet.events import Cancelled
from napari_unet.inference.stitching import (
    SLICES_ARRAY,
    STITCHED_ARRAY,
    link_slices,
    stitch_labels,
    stitch_slices,
)
from napari_unet.inference.store import OutputStore

from .helpers import Times


def _spheres(shape=(12, 48, 48), n=6, seed=0) -> np.ndarray:
    """Separated balls of various radii (one label each)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    out = np.zeros(shape, np.uint32)
    placed: list[tuple[np.ndarray, float]] = []
    while len(placed) < n:
        r = float(rng.uniform(3, 5))
        c = rng.uniform([r, r, r], np.array(shape) - r)
        if all(np.linalg.norm(c - c2) > r + r2 + 2 for c2, r2 in placed):
            placed.append((c, r))
            out[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] = len(placed)
    return out


def _per_slice(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """What a 2D model gives slice by slice: every slice labelled on its own (ids 1..n in a
    random order)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for z in range(labels.shape[0]):
        ids = np.unique(labels[z][labels[z] > 0])
        lut = np.zeros(int(labels.max()) + 1, labels.dtype)
        lut[ids] = rng.permutation(len(ids)) + 1
        out[z] = lut[labels[z]]
    return out


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the label values: a one-to-one map between the two sets of labels."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_separated_objects_are_stitched_back_into_their_3d_labels():
    truth = _spheres()
    stitched = stitch_labels(_per_slice(truth), threshold=0.25)
    assert _same_partition(stitched, truth)
    assert stitched.max() == truth.max()  # labels 1..n, no gaps


def test_link_rule_one_object_above_continues_once():
    # Slice above: object 7 (100 px).  This slice: object 1 overlaps it 80 px (area 90),
    # object 2 overlaps 20 px (area 20), object 3 overlaps nothing.
    pairs = np.array([[7, 1], [7, 2]])
    counts = np.array([80.0, 20.0])
    mapping, nxt = link_slices(pairs, counts, {7: 100}, {1: 90, 2: 20, 3: 5}, 0.25, 8)
    assert mapping == {1: 7, 2: 8, 3: 9} and nxt == 10
    # Below the threshold nothing continues by IoU alone (Cellpose's rule) ...
    mapping, _ = link_slices(pairs, counts, {7: 100}, {1: 900, 2: 20, 3: 5}, 0.25, 8,
                             contained=None)
    assert mapping[1] == 8
    # ... but an object above lying 80 % inside one here (a nucleus's end slice) does.
    mapping, _ = link_slices(pairs[:1], counts[:1], {7: 100}, {1: 900}, 0.25, 8)
    assert mapping[1] == 7
    mapping, _ = link_slices(pairs[:1], np.array([40.0]), {7: 100}, {1: 900}, 0.25, 8)
    assert mapping[1] == 8  # 40 % of the smaller one: not linked


def _store(tmp_path, slices: np.ndarray, chunks: tuple[int, ...]) -> OutputStore:
    lead = slices.shape[:1]
    spec = dict(shape=slices.shape, chunks=(1, *chunks), dtype="uint32")
    store = OutputStore.open_or_create(
        tmp_path / "s.zarr", {"test": 1}, {"labels": spec, SLICES_ARRAY: dict(spec),
                                           STITCHED_ARRAY: dict(shape=lead, chunks=(1,),
                                                                dtype="int64")},
        "labels", 1, 0, overwrite=True)
    store[SLICES_ARRAY][...] = slices
    return store


def _drain(gen) -> None:
    for _ in gen:
        pass


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 1000), cy=st.sampled_from([4, 8, 16, 48]),
       cx=st.sampled_from([8, 16, 48]), voxels=st.sampled_from([64, 400, 1 << 22]),
       threshold=st.sampled_from([0.1, 0.25, 0.5]))
def test_out_of_core_stitching_equals_in_memory(tmp_path_factory, seed, cy, cx, voxels,
                                                threshold):
    # Touching and crossing objects as well: per-slice labels of random blobs.
    rng = np.random.default_rng(seed)
    truth = _spheres(seed=seed)
    noise = rng.random(truth.shape) < 0.02
    slices = _per_slice(truth, seed)
    slices[noise & (slices > 0)] = 0  # ragged objects, overlaps below 1
    store = _store(tmp_path_factory.mktemp("st"), slices, (cy, cx))
    _drain(stitch_slices(store, slices.shape[:1], 0, threshold, None, voxels=voxels))
    np.testing.assert_array_equal(store.result[...], stitch_labels(slices, threshold))


@pytest.mark.parametrize("stop_at", [1, 5, 11])
def test_cancelled_stitching_resumes_to_the_same_result(tmp_path, stop_at):
    slices = _per_slice(_spheres())
    store = _store(tmp_path, slices, (16, 16))
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > stop_at

    with pytest.raises(Cancelled):
        _drain(stitch_slices(store, slices.shape[:1], 0, 0.25, cancel, voxels=300))
    reopened = OutputStore(zarr.open_group(str(tmp_path / "s.zarr"), mode="r+"), True)
    assert 0 < int(np.count_nonzero(reopened[STITCHED_ARRAY][...])) < slices.shape[0]
    _drain(stitch_slices(reopened, slices.shape[:1], 0, 0.25, None, voxels=300))
    np.testing.assert_array_equal(reopened.result[...], stitch_labels(slices, 0.25))


def _bars() -> np.ndarray:
    """Two objects that touch in z only where one ends and the other begins, barely
    overlapping there: one object in 3D connectivity, two by overlap."""
    x = np.zeros((8, 40, 40), np.float32)
    x[0:4, 5:25, 5:25] = 1.0
    x[4:8, 22:37, 22:37] = 1.0  # overlaps the first one's last slice in 3 x 3 pixels
    x[2:6, 30:36, 2:8] = 1.0  # a third, alone
    return x


def test_predict_links_slices_of_a_2d_model_by_overlap(tmp_path):
    model = Times(2, factor=1.0)  # one foreground logit = the normalised intensity
    x = _bars()
    kw = dict(mode="instances", normalize=(0, 100), tile=(16, 16), device="cpu", min_size=0)
    linked = nu.predict(model, x, **kw)
    assert len(np.unique(linked[linked > 0])) == 3
    assert len(np.unique(linked[0:4, 5:25, 5:25])) == 1
    connected = nu.predict(model, x, z_stitch="3d", **kw)
    assert len(np.unique(connected[connected > 0])) == 2
    per_slice = nu.predict(model, x, z_stitch="slices", **kw)
    assert all(set(np.unique(per_slice[z])) <= {0, 1, 2} for z in range(8))
    # The stored, chunked run is the in-memory stitch of the per-slice labels.
    out = nu.predict(model, x, tmp_path / "o.zarr", block_shape=(16, 16), chunk_shape=(16, 16),
                     **kw)
    np.testing.assert_array_equal(out[...], stitch_labels(per_slice, 0.25))
    np.testing.assert_array_equal(out[...], linked)
    # A stitched job does not resume a per-slice one.
    with pytest.raises(nu.OutputExistsError if hasattr(nu, "OutputExistsError")
                       else Exception, match="overwrite"):
        nu.predict(model, x, tmp_path / "o.zarr", block_shape=(16, 16),
                   chunk_shape=(16, 16), z_stitch="slices", **kw)
