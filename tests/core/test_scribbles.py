"""Scribble training: the pixel-classifier prior, fine-tuning an instance model from strokes,
and splitting touching objects of two-class models (in memory and out of core)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_unet as nu
from napari_unet import postprocess
from napari_unet.config import ConfigError, ModelConfig, PredictConfig, TrainConfig
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.metrics import dice, match_instances
from napari_unet.training.losses import partial_scribble_loss
from napari_unet.training.pixel_classifier import PixelClassifier
from napari_unet.training.targets import IGNORE


def _strokes(labels: np.ndarray) -> np.ndarray:
    """A horizontal stroke through the middle of every object, and background strokes."""
    from scipy import ndimage as ndi

    marks = np.zeros(labels.shape, np.uint8)
    for box in ndi.find_objects(labels):
        if box is not None:
            y = (box[0].start + box[0].stop) // 2
            x0, x1 = box[1].start + 2, box[1].stop - 2
            marks[y, x0:x1] = 2
    far = ~ndi.binary_dilation(labels > 0, iterations=4)
    marks[::16, :][far[::16, :]] = 1
    return np.where(labels[..., :] > 0, marks, np.where(marks == 1, 1, 0)).astype(np.uint8)


def test_pixel_classifier_learns_objects_from_strokes():
    image, labels = synthetic_nuclei((128, 128), radius=(6, 9), seed=2)
    marks = _strokes(labels)
    clf = PixelClassifier(n_estimators=16).fit([image[None]], [marks])
    proba = clf.predict_proba(image[None])
    assert proba.shape == (2, 128, 128)
    np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-5)
    assert dice(proba[1] > 0.5, labels > 0) > 0.8


def test_partial_scribble_loss_counts_any_object_class():
    target = torch.tensor([[[0, 1, IGNORE], [1, 0, IGNORE]]])
    logits = torch.zeros(1, 4, 2, 3)
    logits[0, 2, 0, 1] = 10.0  # the object stroke predicted as boundary: right
    logits[0, 3, 1, 0] = 10.0  # ... as contact: right
    logits[0, 0, 0, 0] = logits[0, 0, 1, 1] = 10.0  # background strokes: right
    good = partial_scribble_loss(logits, target)
    assert good < 1e-3
    other = logits.clone()
    other[0, :, :, 2] = torch.randn(4, 2)  # unlabelled: anything
    assert torch.isclose(partial_scribble_loss(other, target), good)
    wrong = logits.clone()
    wrong[0, 0, 0, 1] = 20.0
    assert partial_scribble_loss(wrong, target) > 1.0


TINY = dict(patch_size=(32, 32), batch_size=4, epochs=2, steps_per_epoch=3, val_patches=4,
            device="cpu")


def test_forest_prior_trains_and_keeps_the_validation_strokes(tmp_path):
    image, labels = synthetic_nuclei((96, 96), radius=(6, 9), seed=3)
    marks = _strokes(labels)
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                      label_mode="scribbles", scribble_prior="forest", **TINY)
    events = []
    result = nu.train([(image, marks)], cfg, run_dir=tmp_path / "r", progress=events.append)
    stages = [getattr(e, "stage", None) for e in events]
    assert "forest" in stages and result.best_model.exists()
    from napari_unet.events import Preview

    (preview,) = [e for e in events if isinstance(e, Preview)]
    assert preview.labels.shape == labels.shape and dice(preview.labels > 0, labels > 0) > 0.7
    note = next(e.message for e in events if getattr(e, "stage", None) == "train")
    assert "every stroke" in note
    with pytest.raises(ConfigError, match="scribble_prior"):
        TrainConfig(scribble_prior="crf")


def test_instance_model_fine_tuned_from_scribbles_keeps_its_classes(tmp_path):
    from .helpers import tiny_unet

    base = tiny_unet(2, out_channels=4)
    init = nu.save_model(base, tmp_path / "inst.safetensors", label_mode="instances",
                         core=0.3, grow=5, interior_threshold=0.6,
                         class_names=["background", "interior", "boundary", "contact"],
                         normalization={"kind": "percentile", "low": 2.0, "high": 99.0,
                                        "invert": "auto"})
    image, labels = synthetic_nuclei((96, 96), radius=(6, 9), seed=4)
    marks = _strokes(labels)
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                      label_mode="scribbles", init_model=str(init), **TINY)
    result = nu.train([(image, marks)], cfg, run_dir=tmp_path / "r")
    model = nu.load_model(result.last_model)
    meta = model.metadata
    assert model.config.out_channels == 4 and meta["label_mode"] == "instances"
    assert meta["grow"] == 5 and meta["core"] == 0.3 and meta["interior_threshold"] == 0.6
    # The init model's normalisation was used (and stored), not the config's defaults.
    assert meta["normalization"] == {"kind": "percentile", "low": 2.0, "high": 99.0,
                                     "invert": "auto"}
    # Batch-norm statistics are kept (one image's patches would replace them).
    before = {k: v for k, v in base.state_dict().items() if "running" in k}
    after = model.state_dict()
    assert before and all(torch.allclose(v, after[k]) for k, v in before.items())
    weights = [k for k in before if "running_mean" in k]
    assert weights
    assert not all(torch.equal(base.state_dict()[k.replace("running_mean", "weight")],
                               after[k.replace("running_mean", "weight")]) for k in weights)
    three = np.where(marks == 2, 3, marks).astype(np.uint8)
    with pytest.raises(nu.InputError, match="two values"):
        nu.train([(image, three)], cfg, run_dir=tmp_path / "x")


def test_partial_loss_teacher_term_is_zero_at_the_teacher_and_only_where_unpainted():
    target = torch.tensor([[[0, 1, IGNORE], [1, 0, IGNORE]]])
    logits = torch.randn(1, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    plain = partial_scribble_loss(logits, target)
    assert torch.isclose(partial_scribble_loss(logits, target, logits.clone()), plain)
    teacher = logits.clone()
    teacher[0, :, :, :2] = torch.randn(4, 2, 2)  # painted voxels: the strokes decide there
    assert torch.isclose(partial_scribble_loss(logits, target, teacher), plain)
    teacher[0, 1, :, 2] += 5.0  # unpainted voxels the teacher calls interior
    assert partial_scribble_loss(logits, target, teacher) > plain + 0.1


def test_model_prior_keeps_the_instance_model_where_nothing_is_painted(tmp_path):
    from .helpers import tiny_unet

    torch.manual_seed(1)
    base = tiny_unet(2, out_channels=3)
    init = nu.save_model(base, tmp_path / "inst.safetensors", label_mode="instances",
                         grow=5, class_names=["background", "interior", "boundary"],
                         normalization={"kind": "percentile", "low": 1.0, "high": 99.8,
                                        "invert": "never"})
    image, labels = synthetic_nuclei((96, 96), radius=(6, 9), seed=4)
    marks = _strokes(labels)
    unpainted = marks == 0
    before = np.asarray(nu.predict(str(init), image, mode="probabilities", device="cpu"))
    drift = {}
    for prior in ("none", "model"):
        cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                          label_mode="scribbles", init_model=str(init), scribble_prior=prior,
                          lr=3e-2, **{**TINY, "epochs": 3})
        result = nu.train([(image, marks)], cfg, run_dir=tmp_path / prior)
        after = np.asarray(nu.predict(str(result.last_model), image, mode="probabilities",
                                      device="cpu"))
        drift[prior] = float(np.abs(after - before).sum(0)[unpainted].mean())
    assert drift["model"] < 0.7 * drift["none"], drift
    with pytest.raises(ConfigError, match="init_model"):
        TrainConfig(label_mode="scribbles", scribble_prior="model")
    scribble_model = nu.train([(image, marks)], TrainConfig(
        model=ModelConfig(spatial_dims=2, depth=2, base_filters=4), label_mode="scribbles",
        **TINY), run_dir=tmp_path / "two").last_model
    with pytest.raises(nu.InputError, match="instance model"):
        nu.train([(image, marks)], TrainConfig(
            model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
            label_mode="scribbles", init_model=str(scribble_model), scribble_prior="model",
            **TINY), run_dir=tmp_path / "bad")


def _discs(shape, centres, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    fg = np.zeros(shape, bool)
    for y, x in centres:
        fg |= (yy - y) ** 2 + (xx - x) ** 2 < radius**2
    return fg


def test_split_touching_separates_two_discs_and_keeps_one_whole():
    pair = _discs((60, 90), [(30, 30), (30, 52)], 12)
    c = postprocess.split_classes(pair, 12)
    _, inst = postprocess.instances_in_memory(c, "instances", 12, 0)
    assert inst.max() == 2 and ((inst > 0) == pair).all()
    one = _discs((60, 90), [(30, 40)], 14)
    _, inst = postprocess.instances_in_memory(postprocess.split_classes(one, 12),
                                              "instances", 12, 0)
    assert inst.max() == 1
    with pytest.raises(ConfigError, match="split_touching"):
        PredictConfig(split_touching=-1)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), radius=st.integers(3, 8),
       chunk=st.integers(10, 40))
def test_split_classes_chunk_by_chunk_equal_whole(seed, radius, chunk):
    """With objects up to twice the radius, the out-of-core split equals the whole one."""
    _, labels = synthetic_nuclei((70, 80), radius=(radius, 2 * radius), seed=seed)
    fg = (labels > 0).astype(np.uint8)
    whole = postprocess.split_classes(fg, radius)
    lazy = postprocess.split_classes_lazy(da.from_array(fg, chunks=chunk), radius)
    np.testing.assert_array_equal(lazy.compute(), whole)


def test_scribble_model_instances_split_in_blocks_like_whole(tmp_path, monkeypatch):
    from napari_unet.inference import labelling

    from .helpers import Levels

    fg = _discs((150, 170), [(40, 40), (40, 60), (100, 120), (110, 30), (120, 50)], 11)
    image = fg.astype(np.float32)
    model = Levels(2, (0.0, 1.0), label_mode="scribbles")
    opts = dict(mode="instances", device="cpu", normalize=(0, 100), split_touching=11)
    whole = nu.predict(model, image, **opts)
    assert whole.max() == 5
    monkeypatch.setattr(labelling, "IN_MEMORY_LABEL_VOXELS", 40 * 40)
    blocks = nu.predict(model, image, tmp_path / "o.zarr", tile=(40, 40), block_shape=(40, 40),
                        **opts)[:]
    same = match_instances(blocks, whole, (0.999,))[0]
    assert same.tp == 5 and same.fp == same.fn == 0
    plain = nu.predict(model, image, mode="instances", device="cpu", normalize=(0, 100))
    assert plain.max() == 3  # connected components merge the touching pairs


def test_boundary_strokes_make_an_instance_model(tmp_path):
    from .helpers import Levels

    image, labels = synthetic_nuclei((96, 96), radius=(6, 9), seed=3)
    marks = _strokes(labels)
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4),
                      label_mode="scribbles", scribble_boundary=True, **TINY)
    # Without a boundary stroke yet, the model already has its three outputs.
    result = nu.train([(image, marks)], cfg, run_dir=tmp_path / "r")
    model = nu.load_model(result.best_model)
    assert model.config.out_channels == 3 and model.metadata["scribble_boundary"]
    assert model.metadata["class_names"] == ["background", "object", "boundary"]
    out = nu.predict(model, image, device="cpu")  # auto: instances
    assert out.dtype == np.uint32
    with pytest.raises(ConfigError, match="scribbles"):
        TrainConfig(scribble_boundary=True)
    bad = marks.copy()
    bad[0, 0] = 4
    with pytest.raises(nu.InputError, match="3 boundary"):
        nu.train([(image, bad)], cfg, run_dir=tmp_path / "b")
    # Two touching discs split by a line of the boundary class: two objects; the same
    # classes read as three semantic classes without the flag.
    yy, xx = np.mgrid[:40, :60]
    img = np.zeros((40, 60), np.float32)
    img[((yy - 20) ** 2 + (xx - 20) ** 2 < 120) | ((yy - 20) ** 2 + (xx - 39) ** 2 < 120)] = 1
    img[:, 29:31] = np.where(img[:, 29:31] > 0, 0.5, 0)
    oracle = Levels(2, (0.0, 1.0, 0.5), label_mode="scribbles", scribble_boundary=True)
    inst = nu.predict(oracle, img, device="cpu", normalize=(0, 100))
    assert len(np.unique(inst[inst > 0])) == 2
    plain = Levels(2, (0.0, 1.0, 0.5), label_mode="scribbles")
    assert set(np.unique(nu.predict(plain, img, device="cpu", normalize=(0, 100)))) == {0, 1, 2}
