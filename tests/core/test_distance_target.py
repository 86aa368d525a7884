"""The ``distance`` instance target: per-object normalised distances, the model's two
outputs, the seed threshold chosen after training, and labelling in memory and out of core."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet import postprocess
from napari_unet.config import ConfigError, ModelConfig, TrainConfig
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.training.loop import lr_factor
from napari_unet.training.losses import distance_loss
from napari_unet.training.targets import (
    DISTANCE_LEVELS,
    IGNORE,
    distance_levels,
    levels_to_classes,
    make_target,
)

from .helpers import DistanceOracle, Levels

TINY = dict(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4), patch_size=(32, 32),
            batch_size=4, epochs=2, steps_per_epoch=3, val_patches=4, device="cpu")


def _blocky_labels(shape, seed=1):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, size=tuple(n // 6 + 1 for n in shape)).astype(np.int32)
    return ndi.zoom(coarse, 6, order=0)[tuple(slice(n) for n in shape)]


@pytest.mark.parametrize("shape", [(60, 70), (16, 30, 34)])
def test_distance_levels_equal_one_whole_image_transform_per_object(shape):
    labels = _blocky_labels(shape)
    # Whole image: the distance of each voxel to the nearest voxel of another label (touching
    # objects are edges; the image border is not).
    expected = np.zeros(shape, np.int16)
    for k in np.unique(labels[labels > 0]):
        d = ndi.distance_transform_edt(labels == k)
        d = np.where(labels == k, d, 0)
        expected[labels == k] = 1 + np.rint(d[labels == k] / d.max() * DISTANCE_LEVELS)
    got = distance_levels(labels)
    np.testing.assert_array_equal(got, expected)
    assert got.max() == 1 + DISTANCE_LEVELS and ((got > 0) == (labels > 0)).all()
    assert (make_target(labels, "instances", target="distance") == got).all()


def test_levels_to_classes_and_semantic_agree():
    levels = np.array([0, 1, 50, 130, 200, 255], np.int16)
    np.testing.assert_array_equal(levels_to_classes(levels, 0.5), [0, 2, 2, 1, 1, 1])
    # The model's logits for the same distances give the same classes.
    d = np.clip((levels - 1) / DISTANCE_LEVELS, 1e-4, 1 - 1e-4)
    fg = np.where(levels > 0, 5.0, -5.0)
    logits = torch.tensor(np.stack([fg, np.log(d / (1 - d))]), dtype=torch.float32)
    got = postprocess.semantic(logits, 0.5, "distance", 0.5).numpy()
    np.testing.assert_array_equal(got, levels_to_classes(levels, 0.5))


def test_distance_loss_ignores_unlabelled_voxels_and_is_minimal_at_the_target():
    target = torch.tensor([[[0, 1, 128, 255], [IGNORE, IGNORE, 0, 64]]])
    d = ((target - 1).clamp_min(0) / DISTANCE_LEVELS).float().clamp(1e-4, 1 - 1e-4)
    good = torch.stack([torch.where(target > 0, 9.0, -9.0), torch.log(d / (1 - d))], 1)
    bad = good.clone()
    bad[:, :, 1, :2] = -good[:, :, 1, :2]  # ignored voxels: anything
    assert torch.isclose(distance_loss(good, target), distance_loss(bad, target))
    worse = good.clone()
    worse[0, 1, 0, 2] += 2.0
    assert distance_loss(worse, target) > distance_loss(good, target)


def test_distance_model_trains_and_chooses_its_seeds(tmp_path):
    pairs = [synthetic_nuclei((96, 96), radius=(5, 8), seed=s) for s in range(3)]
    cfg = TrainConfig(**TINY, label_mode="instances", target="distance")
    result = nu.train(pairs[:2], cfg, pairs[2:], tmp_path / "run")
    model = nu.load_model(result.best_model)
    meta = model.metadata
    assert meta["output"] == "distance" and model.config.out_channels == 2
    assert meta["seed_threshold"] in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert len(meta["seed_threshold_scores"]) == 6 and meta["grow"] >= 3
    image = synthetic_nuclei((150, 170), radius=(5, 8), seed=7)[0]
    assert nu.predict(model, image, mode="instances", device="cpu").shape == image.shape
    probs = nu.predict(model, image, mode="probabilities", device="cpu")
    assert probs.shape == (2, 150, 170) and 0 <= probs.min() and probs.max() <= 1


@pytest.mark.parametrize("shape", [(150, 170), (40, 60, 70)])
def test_distance_model_labels_the_same_objects_in_blocks_and_whole(shape, tmp_path,
                                                                    monkeypatch):
    """Seeds crossing block and labelling-chunk borders are one object, regrown alike."""
    from napari_unet.inference import labelling
    from napari_unet.metrics import match_instances

    labels = synthetic_nuclei(shape, radius=(5, 9), seed=3)[1]
    image = ((distance_levels(labels) - 1).clip(0) / DISTANCE_LEVELS).astype(np.float32)
    image[labels > 0] = np.maximum(image[labels > 0], 0.01)
    model = DistanceOracle(len(shape))
    opts = dict(mode="instances", device="cpu", normalize=(0, 100))
    whole = nu.predict(model, image, **opts)
    small = (48,) * len(shape) if len(shape) == 2 else (16, 24, 24)
    monkeypatch.setattr(labelling, "IN_MEMORY_LABEL_VOXELS", int(np.prod(small)))
    blocks = nu.predict(model, image, tmp_path / "out.zarr", tile=small, block_shape=small,
                        **opts)[:]
    np.testing.assert_array_equal(whole > 0, blocks > 0)
    same = match_instances(blocks, whole, (0.999,))[0]
    assert same.fp == same.fn == 0 and same.tp == len(np.unique(whole)) - 1 > 5
    truth = match_instances(whole, labels, (0.5,))[0]
    assert truth.tp >= 0.9 * (len(np.unique(labels)) - 1)


def test_distance_seeds_become_instances_exactly():
    """A 'model' that outputs the true foreground and distances labels the truth back."""
    labels = np.zeros((64, 96), np.int32)
    yy, xx = np.ogrid[:64, :96]
    for k, (y, x) in enumerate(((20, 20), (20, 34), (45, 60)), start=1):  # two touch
        labels[((yy - y) ** 2 + (xx - x) ** 2 < 64) & (labels == 0)] = k
    levels = distance_levels(labels)
    classes = levels_to_classes(levels, 0.5).astype(np.uint8)
    _, inst = postprocess.instances_in_memory(classes, "instances", expand=6, min_size=0)
    assert len(np.unique(inst)) == 4
    from napari_unet.metrics import match_instances

    assert match_instances(inst, labels, (0.8,))[0].tp == 3


def test_target_needs_instances_and_schedules_are_checked():
    with pytest.raises(ConfigError, match="target"):
        TrainConfig(target="flows")
    with pytest.raises(ConfigError, match="label_mode"):
        TrainConfig(target="distance", label_mode="classes")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="step")


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_per_step_schedules_warm_up_then_decay_to_the_end(schedule):
    total = 200
    f = [lr_factor(schedule, s, total) for s in range(total + 1)]
    peak = int(np.argmax(f))
    assert f[peak] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(f[:peak], f[1 : peak + 1], strict=True))
    assert all(a >= b - 1e-12 for a, b in zip(f[peak:-1], f[peak + 1 :], strict=True))
    assert f[-1] < 1e-3


def test_cosine_run_resumes_exactly(tmp_path):
    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(3)]
    cfg = TrainConfig(**TINY, label_mode="instances", schedule="cosine", lr=1e-2)
    whole = nu.train(pairs, cfg, run_dir=tmp_path / "whole")
    assert whole.history[-1].lr < whole.history[0].lr
    steps = {"n": 0}

    def cancel():
        steps["n"] += 1
        return steps["n"] > 4

    nu.train(pairs, cfg, run_dir=tmp_path / "run", cancel=cancel)
    resumed = nu.train(pairs, cfg, run_dir=tmp_path / "run", resume=True)
    assert [e.lr for e in resumed.history] == [e.lr for e in whole.history]
    wa = nu.load_model(whole.last_model).state_dict()
    wb = nu.load_model(resumed.last_model).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_levels_model_is_labelled_like_a_distance_model():
    """Levels' classes 0/1/2 stand for background / seed / rest, as a distance model's."""
    m = Levels(2, (0.0, 1.0, 0.5), label_mode="instances")
    img = np.zeros((40, 40), np.float32)
    img[5:15, 5:15] = 0.5
    img[8:12, 8:12] = 1.0
    out = nu.predict(m, img, mode="instances", device="cpu", normalize=(0, 100))
    assert len(np.unique(out)) == 2
