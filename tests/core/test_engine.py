"""Invariants of the out-of-core engine: exact identity, block-size independence, axes, resume."""

from __future__ import annotations

from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

import napari_unet as nu
from napari_unet.events import BlockDone, Cancelled, Notice
from napari_unet.io import InputError
from napari_unet.normalize import percentile_normalization

from .helpers import Identity, Levels, LocalConv, Times, tiny_unet


def _normalised(x: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """What the engine should feed the model: percentiles over the whole volume, per channel."""
    arr = x[None] if channel_axis is None else np.moveaxis(x, channel_axis, 0)
    norm = percentile_normalization(da.from_array(arr), 0)
    out = norm.apply(arr, channel_axis=0)
    return out[0] if channel_axis is None else np.moveaxis(out, 0, channel_axis)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "block", "multiple"),
    [
        ((37, 45, 51), (16, 16, 16), 0.3, (20, 24, 28), 4),
        ((13, 70, 9), (8, 32, 32), (3, 7, 1), (13, 30, 9), 8),  # axes shorter than a tile
        ((5, 7, 11), (16, 16, 16), 0.5, None, 1),  # image smaller than one tile
        ((101, 67), (32, 32), 0.25, (50, 40), 16),
        ((64, 3), (16, 16), 0.0, None, 4),
    ],
)
def test_identity_model_returns_normalised_input(shape, tile, overlap, block, multiple, rng):
    x = (rng.random(shape) * 1000).astype(np.float32)
    chunk = block
    out = nu.predict(Identity(len(shape), multiple=multiple), x, mode="logits", tile=tile,
                     overlap=overlap, block_shape=block, chunk_shape=chunk, device="cpu")
    assert out.shape == (1, *shape)
    np.testing.assert_allclose(out[0], _normalised(x), rtol=0, atol=2e-6)


@pytest.mark.parametrize("blending", ["crop", "gaussian", "constant"])
def test_result_does_not_depend_on_block_size(tmp_path, rng, blending):
    x = rng.normal(100, 20, (23, 61, 50)).astype(np.float32)
    model = tiny_unet(3, out_channels=3)
    common = dict(mode="probabilities", probability_dtype="float32", tile=(16, 32, 32),
                  overlap=0.25, blending=blending, device="cpu")
    small = nu.predict(model, x, tmp_path / "small.zarr", block_shape=(8, 16, 16), **common)
    large = nu.predict(model, x, tmp_path / "large.zarr", block_shape=(24, 64, 64),
                       chunk_shape=(8, 16, 16), **common)
    assert small.chunks != large.chunks or small.shape == large.shape
    np.testing.assert_allclose(small[:], large[:], atol=2e-6)
    # Probabilities of a softmax model sum to one.
    np.testing.assert_allclose(small[:].sum(axis=0), 1.0, atol=1e-5)


def test_in_memory_and_zarr_outputs_agree(tmp_path, rng):
    x = rng.normal(0, 1, (50, 70)).astype(np.float32)
    model = tiny_unet(2, out_channels=2)
    a = nu.predict(model, x, mode="semantic", tile=(32, 32), device="cpu")
    b = nu.predict(model, x, tmp_path / "o.zarr", mode="semantic", tile=(32, 32),
                   block_shape=(32, 32), device="cpu")
    assert isinstance(a, np.ndarray)
    assert isinstance(b, zarr.Array)
    np.testing.assert_array_equal(a, b[:])


def test_float_results_are_stored_with_lz4_and_labels_with_zarrs_default(tmp_path, rng):
    from zarr.codecs import BloscCodec, ZstdCodec

    x = rng.normal(0, 1, (40, 48)).astype(np.float32)
    model = tiny_unet(2, out_channels=3)
    opts = dict(tile=(16, 16), block_shape=(32, 32), device="cpu")
    for mode, codec in (("probabilities", BloscCodec), ("logits", BloscCodec),
                        ("instances", ZstdCodec)):
        ref = nu.predict(model, x, mode=mode, **opts)
        out = nu.predict(model, x, tmp_path / f"{mode}.zarr", mode=mode, **opts)
        assert [type(c) for c in out.compressors] == [codec]
        np.testing.assert_array_equal(out[:], ref)


def test_store_made_with_another_codec_resumes_with_it(tmp_path, rng, monkeypatch):
    from zarr.codecs import ZstdCodec

    from napari_unet.inference import store as store_module

    x = rng.normal(0, 1, (16, 48, 48)).astype(np.float32)
    model = tiny_unet(3)
    opts = dict(mode="probabilities", tile=(16, 16, 16), block_shape=(16, 16, 16),
                device="cpu")
    full = nu.predict(model, x, **opts)
    # A store as versions before the lz4 codec wrote it, interrupted after some blocks.
    monkeypatch.setattr(store_module, "result_compressors", lambda dtype: "auto")
    calls = {"n": 0}

    def cancel_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        nu.predict(model, x, tmp_path / "old.zarr", cancel=cancel_after_three, **opts)
    monkeypatch.undo()
    out = nu.predict(model, x, tmp_path / "old.zarr", **opts)
    assert [type(c) for c in out.compressors] == [ZstdCodec]
    np.testing.assert_array_equal(out[:], full)


@pytest.mark.parametrize("axes,spatial,lead,channel", [
    ("ZYX", "ZYX", "", False), ("CZYX", "ZYX", "", True), ("TZYX", "ZYX", "T", False),
    ("TCZYX", "ZYX", "T", True), ("YXC", "YX", "", True), ("ZYX", "YX", "Z", False),
    ("TZCYX", "YX", "TZ", True),
])
def test_region_read_in_one_call_equals_the_canonical_view(axes, spatial, lead, channel, rng):
    from napari_unet.axes import Layout

    sizes = {"T": 2, "C": 3, "Z": 5, "Y": 7, "X": 6}
    x = rng.random([sizes[a] for a in axes]).astype(np.float32)
    layout = Layout(axes, lead, spatial, channel)
    index = (*(1 for _ in lead), slice(None), *(slice(1, sizes[a] - 1) for a in spatial))
    expected = layout.canonical(da.from_array(x, chunks=2))[index].compute()
    np.testing.assert_array_equal(layout.region(x, index), expected)


@pytest.mark.parametrize("axes,shape,chunks,stored", [
    ("ZYX", (20, 40, 36), (8, 16, 16), "zarr"), ("CZYX", (2, 20, 40, 36), (1, 8, 16, 16), "zarr"),
    ("TZYX", (2, 20, 40, 36), (1, 8, 16, 16), "zarr"), ("YXC", (40, 36, 2), (16, 16, 2), "zarr"),
    ("ZYX", (20, 40, 36), (1, 16, 16), "tiff tiles"), ("ZYX", (20, 40, 36), None, "tiff strips"),
    ("CZYX", (2, 20, 40, 36), (1, 1, 16, 16), "tiff tiles"),
])
def test_zarr_input_read_directly_gives_the_dask_result(tmp_path, rng, axes, shape, chunks,
                                                        stored, monkeypatch):
    import tifffile

    from napari_unet.axes import Layout

    calls = []
    region = Layout.region
    monkeypatch.setattr(Layout, "region", lambda self, *a: calls.append(1) or region(self, *a))
    x = (rng.random(shape) * 1000).astype(np.uint16)
    if stored == "zarr":
        path = tmp_path / "in.zarr"
        z = zarr.create_array(path, shape=shape, chunks=chunks, dtype=x.dtype)
        z[:] = x
    else:  # read through tifffile's zarr interface
        path = tmp_path / "in.tif"
        tifffile.imwrite(path, x, tile=chunks[-2:] if chunks else None)
    dims = len(axes.replace("C", "").replace("T", ""))
    model = tiny_unet(dims, out_channels=2, in_channels=2 if "C" in axes else 1)
    opts = dict(mode="logits", tile=(16,) * dims, block_shape=(16,) * dims, device="cpu",
                axes=axes)
    direct = nu.predict(model, str(path), tmp_path / "a.zarr", **opts)
    n_direct = len(calls)
    through_dask = nu.predict(model, da.from_array(x, chunks=8), tmp_path / "b.zarr", **opts)
    assert n_direct >= 4 and len(calls) == n_direct  # every block of the zarr input, no other
    np.testing.assert_array_equal(direct[:], through_dask[:])


def test_dask_array_of_a_whole_zarr_array_is_read_from_zarr(tmp_path, rng):
    from napari_unet.io import open_volume

    z = zarr.create_array(tmp_path / "in.zarr", shape=(12, 20), chunks=(4, 8), dtype="f4")
    z[:] = rng.random((12, 20)).astype(np.float32)
    assert open_volume(da.from_zarr(z))[1].reader is z
    assert open_volume(da.from_zarr(z, chunks=(6, 20)))[1].reader is z  # chunks do not matter
    for changed in (da.from_zarr(z)[1:], da.from_zarr(z) + 1, da.from_zarr(z).T,
                    da.from_zarr(z).astype("f8")):
        assert open_volume(changed)[1].reader is None


def test_channels_time_and_per_slice_axes(rng):
    # 2D, channel last (RGB-like) and channel first give the same result.
    x = rng.random((40, 50, 3)).astype(np.float32)
    ident = Identity(2, channels=3)
    last = nu.predict(ident, x, mode="logits", tile=(16, 16), device="cpu")
    first = nu.predict(ident, np.moveaxis(x, -1, 0), mode="logits", tile=(16, 16), device="cpu")
    np.testing.assert_allclose(last, first, atol=1e-6)
    np.testing.assert_allclose(last, np.moveaxis(_normalised(x, -1), -1, 0), atol=2e-6)

    # Time axis: frames processed one by one; normalisation over the whole series.
    t = rng.random((3, 9, 20, 22)).astype(np.float32)
    out = nu.predict(Identity(3), t, mode="logits", tile=(8, 8, 8), device="cpu")
    assert out.shape == (3, 1, 9, 20, 22)
    np.testing.assert_allclose(out[:, 0], _normalised(t), atol=2e-6)

    # A 2D model over a z stack runs slice by slice.
    z = rng.random((4, 30, 31)).astype(np.float32)
    out = nu.predict(Identity(2), z, mode="logits", tile=(16, 16), device="cpu")
    assert out.shape == (4, 1, 30, 31)

    # Time + channels + 3D.
    tc = rng.random((2, 2, 6, 10, 12)).astype(np.float32)
    out = nu.predict(Identity(3, channels=2), tc, mode="logits", tile=(8, 8, 8), device="cpu")
    assert out.shape == (2, 2, 6, 10, 12)


def test_instances_are_connected_across_blocks(tmp_path):
    classes_model = Times(3, factor=1.0)  # logit = normalised intensity
    x = np.zeros((10, 64, 64), np.float32)
    x[2:8, 5:60, 30:34] = 1.0  # one long bar crossing several blocks
    x[2:8, 10:20, 5:15] = 1.0  # one blob
    x[4, 40:50, 45:55] = 1.0  # a thin plate
    out = nu.predict(classes_model, x, tmp_path / "inst.zarr", mode="instances",
                     normalize=(0, 100), tile=(8, 16, 16), block_shape=(8, 16, 16),
                     device="cpu")
    labels = out[:]
    assert labels.dtype == np.uint32
    assert len(np.unique(labels[labels > 0])) == 3
    assert len(np.unique(labels[2:8, 5:60, 30:34])) == 1
    # The whole group is readable by open_volume (the result array is found by name).
    arr, _ = nu.open_volume(tmp_path / "inst.zarr")
    np.testing.assert_array_equal(arr.compute(), labels)


def test_cancel_then_resume_skips_finished_blocks(tmp_path, rng):
    x = rng.normal(0, 1, (16, 48, 48)).astype(np.float32)
    model = tiny_unet(3)
    opts = dict(mode="probabilities", tile=(16, 16, 16), block_shape=(16, 16, 16),
                device="cpu")
    full = nu.predict(model, x, tmp_path / "full.zarr", **opts)[:]

    events = []
    calls = {"n": 0}

    def cancel_after_four():
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(Cancelled):
        nu.predict(model, x, tmp_path / "part.zarr", progress=events.append,
                   cancel=cancel_after_four, **opts)
    written = [e for e in events if isinstance(e, BlockDone)]
    assert 0 < len(written) < 9
    events.clear()
    resumed = nu.predict(model, x, tmp_path / "part.zarr", progress=events.append, **opts)
    skipped = [e for e in events if isinstance(e, BlockDone) and e.skipped]
    assert len(skipped) == len(written)
    np.testing.assert_array_equal(resumed[:], full)


def test_chunked_dask_and_zarr_inputs(tmp_path, rng):
    x = rng.normal(0, 1, (30, 40)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=x.shape, chunks=(7, 9),
                          dtype="float32")
    z[:] = x
    model = tiny_unet(2)
    ref = nu.predict(model, x, mode="probabilities", tile=(16, 16), device="cpu")
    for src in (z, da.from_array(x, chunks=(11, 13)), tmp_path / "in.zarr",
                str(tmp_path / "in.zarr")):
        out = nu.predict(model, src, mode="probabilities", tile=(16, 16), device="cpu")
        np.testing.assert_array_equal(out, ref)


def test_tiff_input_is_read_lazily(tmp_path, rng):
    import tifffile

    x = (rng.random((6, 40, 44)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", x, tile=(16, 16))
    model = tiny_unet(3)
    arr, info = nu.open_volume(tmp_path / "stack.tif")
    assert isinstance(arr, da.Array) and arr.npartitions > 1
    out = nu.predict(model, tmp_path / "stack.tif", mode="semantic", tile=(8, 16, 16),
                     device="cpu")
    ref = nu.predict(model, x, mode="semantic", tile=(8, 16, 16), device="cpu")
    np.testing.assert_array_equal(out, ref)


def test_binary_model_threshold_and_probabilities(rng):
    x = rng.normal(0, 1, (20, 24)).astype(np.float32)
    model = Times(2, factor=1.0)
    probs = nu.predict(model, x, mode="probabilities", probability_dtype="float32",
                       normalize=(0, 100), tile=(8, 8), device="cpu")
    sem = nu.predict(model, x, mode="semantic", normalize=(0, 100), threshold=0.6,
                     tile=(8, 8), device="cpu")
    np.testing.assert_array_equal(sem, (probs[0] > 0.6).astype(np.uint8))


def test_tta_averages_mirror_images(rng):
    x = rng.random((40, 50)).astype(np.float32)
    ident = nu.predict(Identity(2), x, mode="logits", tile=(16, 16), tta=True, device="cpu")
    np.testing.assert_allclose(ident[0], _normalised(x), atol=2e-6)

    class Asymmetric(Identity):
        def forward(self, x):  # x plus its shift to the right: not mirror-symmetric
            return x + torch.roll(x, 1, dims=-1)

    plain = nu.predict(Asymmetric(2), x, mode="logits", tile=(16, 16), device="cpu")
    tta = nu.predict(Asymmetric(2), x, mode="logits", tile=(16, 16), tta=True, device="cpu")
    assert not np.allclose(plain, tta)  # the mirrored passes really ran


def test_small_fragments_are_dropped_from_instances(tmp_path):
    x = np.zeros((40, 40), np.float32)
    x[5:20, 5:20] = 1.0  # an object
    x[30:32, 30:32] = 1.0  # a 4-pixel fragment
    common = dict(mode="instances", normalize=(0, 100), tile=(16, 16), block_shape=(16, 16),
                  device="cpu")
    kept = nu.predict(Times(2, 1.0), x, tmp_path / "a.zarr", min_size=1, **common)[:]
    dropped = nu.predict(Times(2, 1.0), x, tmp_path / "b.zarr", min_size=10, **common)[:]
    assert len(np.unique(kept)) == 3 and len(np.unique(dropped)) == 2
    assert dropped[30, 30] == 0 and dropped[10, 10] > 0


def test_model_that_inverts_bright_background_sees_fluorescence_either_way(rng):
    # A model trained with invert="auto" (stored in its metadata) is fed bright objects on a
    # dark background whether the image is fluorescence-like or its negative (H&E-like).
    x = (rng.random((40, 48)) * 50).astype(np.float32)
    x[10:20, 12:30] += 900  # bright objects, dark background
    model = Identity(2)
    model.metadata = {"normalization": {"kind": "percentile", "low": 0.0, "high": 100.0,
                                        "invert": "auto"}}
    direct = nu.predict(model, x, mode="logits", device="cpu")
    negative = nu.predict(model, 1000.0 - x, mode="logits", device="cpu")
    np.testing.assert_allclose(negative, direct, atol=1e-5)
    assert direct[0, 15, 20] > 0.9 and direct[0, 0, 0] < 0.1
    model.metadata["normalization"]["invert"] = "never"
    assert nu.predict(model, 1000.0 - x, mode="logits", device="cpu")[0, 15, 20] < 0.1


TOO_LARGE = {
    "out of memory": lambda: torch.OutOfMemoryError("CUDA out of memory (simulated)"),
    # cuDNN's answer for tensors past its size limits (seen on an H200)
    "no cudnn engine": lambda: RuntimeError(
        "GET was unable to find an engine to execute this computation"),
}


@pytest.mark.parametrize("error", list(TOO_LARGE))
def test_out_of_memory_halves_the_batch_and_goes_on(rng, error):
    class RunsOutAboveTwo(torch.nn.Module):
        """Raises the error a GPU raises when more than two tiles are run at once."""

        def __init__(self) -> None:
            super().__init__()
            self.spatial_dims, self.in_channels, self.out_channels = 2, 1, 1
            self.batches = []

        def forward(self, x):
            self.batches.append(x.shape[0])
            if x.shape[0] > 2:
                raise TOO_LARGE[error]()
            return x * 2.0

    x = rng.random((64, 64)).astype(np.float32)
    model = RunsOutAboveTwo()
    events = []
    out = nu.predict(model, x, mode="logits", tile=16, overlap=0.25, batch_size=8,
                     block_shape=(32, 32), device="cpu", progress=events.append)
    expected = nu.predict(Times(2), x, mode="logits", tile=16, overlap=0.25, batch_size=2,
                          block_shape=(32, 32), device="cpu")
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert model.batches[:3] == [8, 4, 2] and max(model.batches[3:]) == 2  # stays at 2
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "2 tile(s) per batch" in notices[0]

    class NeverFits(RunsOutAboveTwo):
        def forward(self, x):
            raise TOO_LARGE[error]()

    with pytest.raises(InputError, match="smaller tile"):
        nu.predict(NeverFits(), x, mode="logits", tile=16, device="cpu")

    class Broken(RunsOutAboveTwo):
        def forward(self, x):
            raise RuntimeError("a bug in the model")

    with pytest.raises(RuntimeError, match="a bug in the model"):  # not taken for memory
        nu.predict(Broken(), x, mode="logits", tile=16, device="cpu")


def test_default_tile_grows_where_that_computes_less():
    import math

    from napari_unet.inference.engine import plan_shapes, resolve_model
    from napari_unet.inference.tiling import TileGrid, fit_tile

    def computed(grid):
        return math.prod(len(o) * t for o, t in zip(grid.origins, grid.tile, strict=True))

    shape = (96, 192, 192)
    spec = resolve_model(tiny_unet(3, depth=4))  # recommended tile 96, multiple 16
    fixed = TileGrid.build(shape, (96, 96, 96), 0.25, (16, 16, 16))
    grid, _, _ = plan_shapes(shape, spec, nu.PredictConfig(blending="gaussian"))
    assert computed(fixed) / math.prod(shape) == pytest.approx(2.25)
    assert grid.tile == (96, 112, 112) and computed(grid) < 0.61 * computed(fixed)
    assert math.prod(grid.tile) <= 1.5 * 96**3  # memory per tile stays bounded
    # An explicit tile is kept as given; a volume that tiles evenly keeps the recommended one.
    assert plan_shapes(shape, spec, nu.PredictConfig(tile=96, blending="gaussian"))[0].tile \
        == (96, 96, 96)
    assert fit_tile((96, 168, 168), (96, 96, 96), 0.25, (16, 16, 16)) == (96, 96, 96)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "block"),
    [
        ((70, 53), (16, 16), (4, 6), None),
        ((19, 40, 33), (8, 16, 16), (4, 4, 4), (8, 16, 16)),
        ((19, 40, 33), (8, 16, 16), (6, 4, 8), (16, 20, 12)),  # blocks that cut tiles
    ],
)
def test_crop_tiles_with_enough_context_match_a_whole_image_pass(shape, tile, overlap, block,
                                                                 rng):
    x = rng.normal(0, 1, shape).astype(np.float32)
    model = LocalConv(len(shape))
    tiled = nu.predict(model, x, mode="logits", tile=tile, overlap=overlap, blending="crop",
                       block_shape=block, chunk_shape=block, normalize=(0, 100),
                       precision="fp32", device="cpu")
    whole = nu.predict(model, x, mode="logits", tile=shape, normalize=(0, 100),
                       precision="fp32", device="cpu")
    # Each tile writes only its cell, which lies >= overlap/2 >= 2 voxels inside it (or at
    # the volume's edge, where both passes pad alike).
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    # Too little context shows at the cells' borders.
    thin = nu.predict(model, x, mode="logits", tile=tile, overlap=(2,) * len(shape),
                      blending="crop",
                      normalize=(0, 100), precision="fp32", device="cpu")
    assert np.abs(thin - whole).max() > 1e-3


def test_default_crop_grid_computes_every_tile_once():
    import math

    from napari_unet.axes import Layout
    from napari_unet.inference.engine import plan_shapes, resolve_model
    from napari_unet.inference.plan import Plan

    spec = resolve_model(tiny_unet(3, depth=4))  # recommended tile 96, overlap 24
    for shape, most in [((96, 192, 192), 0.8), ((130, 300, 250), 0.85),
                        ((1024, 512, 512), 0.6)]:
        grid, block, chunk = plan_shapes(shape, spec, nu.PredictConfig())
        blend, blend_block, _ = plan_shapes(shape, spec, nu.PredictConfig(blending="gaussian"))
        plan = Plan(Layout("ZYX", "", "ZYX", False), (), shape, grid, block, chunk)
        runs = [o for _, region in plan.units for o in grid.tiles_touching(region)]
        assert len(runs) == len(set(runs)) == grid.n_tiles  # no tile computed twice
        assert all(b % c == 0 for b, c in zip(block, chunk, strict=True))
        # at most the voxels per forward pass of the default batch of grown tiles
        assert math.prod(grid.tile) <= 1.5 * 4 * 96**3
        # each cell keeps the context of the recommended tile's overlap (24) around it
        assert all((t - c) // 2 >= 12 for t, c, s in zip(grid.tile, grid.cell, shape,
                                                         strict=True) if t < s)
        blend_plan = Plan(plan.layout, (), shape, blend, blend_block, chunk)
        blend_runs = sum(len(blend.tiles_touching(r)) for _, r in blend_plan.units)
        # fewer voxels than Gaussian blending's default grid, whose tiles that straddle
        # block borders run once per block
        assert grid.computed_voxels() < most * blend_runs * math.prod(blend.tile)


def test_default_crop_run_computes_what_the_grid_says(tmp_path, rng):
    x = rng.normal(0, 1, (300, 260)).astype(np.float32)
    model = LocalConv(2, multiple=4)
    model.metadata = {"tile": [64, 64]}
    out = nu.predict(model, x, tmp_path / "o.zarr", mode="logits", normalize=(0, 100),
                     batch_size=2, chunk_shape=(32, 32), device="cpu")
    from napari_unet.inference.engine import plan_shapes, resolve_model

    grid, _, _ = plan_shapes(x.shape, resolve_model(model),
                             nu.PredictConfig(batch_size=2, chunk_shape=(32, 32)))
    assert model.voxels == grid.computed_voxels()  # every tile ran exactly once
    whole = nu.predict(model, x, mode="logits", tile=x.shape, normalize=(0, 100),
                       device="cpu")
    np.testing.assert_allclose(out[:], whole, rtol=0, atol=1e-5)


def test_batch_that_fits_free_memory():
    from napari_unet.inference.device import CPU_BATCH, batch_that_fits, measure_batch_size

    gib = 1 << 30
    assert batch_that_fits(10 * gib, gib) == 4  # 60 % of 10 GiB holds 6 tiles -> 4
    assert batch_that_fits(80 * gib, gib) == 32
    assert batch_that_fits(80 * gib, 0.1 * gib) == 64  # capped
    assert batch_that_fits(gib, 4 * gib) == 1  # even one tile may not fit: OOM handling
    # 80 GiB would hold 32 tiles, but their largest activation would pass 2**30 elements.
    assert batch_that_fits(80 * gib, gib, per_tile_elements=2**25 + 1) == 16

    # What the GPU probe counts: the U-Net's largest tensor is a decoder input (the
    # upsampled features concatenated with the skip: 2 x base filters at full size).
    from napari_unet.inference.device import largest_tensor

    net = nu.UNet(spatial_dims=2, depth=2, base_filters=4, out_channels=2).eval()
    with torch.no_grad():
        assert largest_tensor(net, torch.zeros(1, 1, 32, 32)) == 2 * 4 * 32 * 32
    assert measure_batch_size(tiny_unet(2), (64, 64), 1, torch.device("cpu"), "fp32") == (
        CPU_BATCH)


def test_automatic_batch_resumes_a_store_planned_with_another(tmp_path, rng):
    """A run with batch_size="auto" resumes a store of the same job that was planned with
    another batch size (another GPU's free memory), instead of refusing the output."""
    x = rng.normal(0, 1, (320, 320)).astype(np.float32)
    model = tiny_unet(2)
    model.metadata = {"tile": [64, 64]}  # small default tiles, so the batch changes the plan
    opts = dict(mode="probabilities", device="cpu")
    from napari_unet.inference import engine
    from napari_unet.inference.store import OutputExistsError

    grids = [engine.plan_shapes(x.shape, engine.resolve_model(model),
                                nu.PredictConfig(batch_size=b)) for b in (4, 16)]
    assert grids[0][0].tile != grids[1][0].tile  # the batch size sets the default tile
    calls = {"n": 0}

    def cancel_after_one():
        calls["n"] += 1
        return calls["n"] > 1

    events = []
    with pytest.raises(Cancelled):
        nu.predict(model, x, tmp_path / "part.zarr", batch_size=16, cancel=cancel_after_one,
                   progress=events.append, **opts)
    written = [e for e in events if isinstance(e, BlockDone)]
    events.clear()
    resumed = nu.predict(model, x, tmp_path / "part.zarr", progress=events.append, **opts)
    skipped = [e for e in events if isinstance(e, BlockDone) and e.skipped]
    assert 0 < len(skipped) == len(written)
    full = nu.predict(model, x, batch_size=16, **opts)
    np.testing.assert_array_equal(resumed[:], full)
    with pytest.raises(OutputExistsError, match="other settings"):
        nu.predict(model, x, tmp_path / "part.zarr", batch_size=4, **opts)  # explicit: no


@pytest.mark.parametrize("dims", [2, 3])
def test_engine_folds_batch_norm_into_a_copy_and_leaves_the_model_alone(dims, rng):
    from napari_unet.inference.device import inference_module

    model = tiny_unet(dims, base_filters=4)
    with torch.no_grad():  # affine parameters away from the identity
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = inference_module(model, torch.device("cpu"), dims)
    assert folded is not model
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d))
                   for m in folded.modules())
    x = torch.from_numpy(rng.random((2, 1) + (16,) * dims).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    model.train()

    # predict runs the folded copy: same logits as the model itself, model untouched
    image = rng.random((24,) * dims).astype(np.float32)
    out = nu.predict(model, image, mode="logits", tile=(24,) * dims, precision="fp32",
                     device="cpu")
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(_normalised(image))[None, None].float())[0]
    model.train()
    assert model.training
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("shape", [(60, 70), (3, 40, 50)])
def test_small_frames_are_labelled_in_memory_with_the_same_result(shape, rng, monkeypatch,
                                                                   tmp_path):
    import napari_unet.inference.labelling as labelling

    x = rng.random(shape).astype(np.float32)
    model = tiny_unet(len(shape), out_channels=4)
    model.metadata = {"label_mode": "instances"}  # background / interior / boundary / contact
    opts = dict(mode="instances", tile=(16,) * len(shape), device="cpu", min_size=3)
    fast = nu.predict(model, x, tmp_path / "fast.zarr", **opts)[:]
    monkeypatch.setattr(labelling, "IN_MEMORY_LABEL_VOXELS", 0)  # every frame through dask-image
    slow = nu.predict(model, x, tmp_path / "slow.zarr", **opts)[:]
    assert fast.max() > 1
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("in_memory", [True, False])
def test_core_seeds_regrow_as_far_as_the_model_says(tmp_path, monkeypatch, in_memory):
    """Seeds of a core model (``grow`` in its metadata) refill the whole object; without it
    they regrow by the boundary ring's width only."""
    import napari_unet.inference.labelling as labelling

    if not in_memory:
        monkeypatch.setattr(labelling, "IN_MEMORY_LABEL_VOXELS", 0)
    yy, xx = np.mgrid[:70, :64]
    x = np.zeros((70, 64), np.float32)  # its last rows of chunks are thinner than the growth
    for cy, cx in ((20, 20), (20, 41), (46, 30), (62, 52)):  # two of them touch
        r = np.hypot(yy - cy, xx - cx)
        x[(r < 11) & (x == 0)] = 0.5  # boundary
        x[r < 4] = 1.0  # core
    opts = dict(mode="instances", normalize=(0, 100), tile=(32, 32), block_shape=(32, 32),
                device="cpu")
    ring = nu.predict(Levels(2, (0.0, 1.0, 0.5), label_mode="instances", boundary_width=1),
                      x, tmp_path / "ring.zarr", **opts)[:]
    core = nu.predict(Levels(2, (0.0, 1.0, 0.5), label_mode="instances", boundary_width=1,
                             grow=8), x, tmp_path / "core.zarr", **opts)[:]
    assert len(np.unique(core[core > 0])) == 4
    np.testing.assert_array_equal(core > 0, x > 0)  # refilled
    assert ((ring > 0) & (x == 0.5)).sum() < 0.5 * (x == 0.5).sum()  # grew 2 px only


def test_regrowth_keeps_the_chunks_it_is_stored_in():
    from napari_unet import postprocess

    classes = da.from_array(np.ones((70, 64), np.uint8), chunks=32)  # last chunk: 6 rows
    seeds = postprocess.seed_labels(classes, "instances")
    grown = postprocess.grow_instances(seeds, classes, "instances", expand=9)
    assert grown.chunks == seeds.chunks == ((32, 32, 6), (32, 32))


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_uses_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    from napari_unet.inference import device as dev

    # The module's own warnings reference is replaced: the suite's global warning state
    # (filters, hooks installed by napari) must not decide what this test sees.
    said: list[str] = []
    monkeypatch.setattr(dev, "warnings", SimpleNamespace(warn=lambda m, *a, **k: said.append(m)))
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert dev.select_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert dev.select_precision("fp32", cpu) == "fp32"
    assert said == []
    assert dev.select_precision("bf16", cpu) == "bf16"
    assert (said == []) if native else ("emulated" in said[0])
