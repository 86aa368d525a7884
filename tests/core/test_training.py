"""Training engine: targets, losses, augmentation, determinism, resume, scribbles, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_unet as nu
from napari_unet.cli import main
from napari_unet.config import ConfigError, ModelConfig, TrainConfig
from napari_unet.data.synthetic import synthetic_nuclei
from napari_unet.evaluation import otsu_baseline
from napari_unet.events import EpochEnd
from napari_unet.io import InputError
from napari_unet.metrics import dice
from napari_unet.training.augment import Augmenter
from napari_unet.training.losses import make_loss, soft_dice_loss
from napari_unet.training.targets import IGNORE, make_target

TINY = dict(model=ModelConfig(spatial_dims=2, depth=2, base_filters=4), patch_size=(32, 32),
            batch_size=4, epochs=2, steps_per_epoch=3, val_patches=4, lr=3e-3, device="cpu")


def test_instance_target_separates_touching_objects():
    labels = np.zeros((8, 12), int)
    labels[2:6, 1:6] = 1
    labels[2:6, 6:11] = 2  # touching object 1
    t = make_target(labels, "instances", boundary_width=1)
    assert set(np.unique(t)) == {0, 1, 2, 3}
    assert (t[2:6, 5] == 3).all() and (t[2:6, 6] == 3).all()  # the contact line
    assert (t[3:5, 1] == 2).all() and (t[2, 1:5] == 2).all()  # edges facing background
    assert (t[3:5, 2:5] == 1).all() and (t[3:5, 7:10] == 1).all()
    wide = make_target(labels, "instances", boundary_width=2)
    assert (wide[2:6, 4:8] == 3).all() and (wide[3:5, 2:4] == 2).all()
    # 3D, and ids that are not ordered along the contact
    vol = np.zeros((6, 6, 8), np.uint16)
    vol[1:5, 1:5, 1:4] = 7
    vol[1:5, 1:5, 4:7] = 3
    t3 = make_target(vol, "instances", boundary_width=1)
    assert (t3[2:4, 2:4, 3:5] == 3).all() and (t3[2:4, 2:4, 2] == 1).all()
    assert (t3[0] == 0).all() and (t3[1, 2:4, 1:3] == 2).all()
    s = make_target(np.array([[0, 1, 2]]), "scribbles")
    assert s.tolist() == [[IGNORE, 0, 1]]


@pytest.mark.parametrize("shape", [(40, 50), (12, 20, 24)])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_instance_target_matches_textbook_form(shape, width):
    """The shifted-view target equals find_boundaries + dilation, with contacts from
    maximum / minimum filters over the L1 ball (another object within ``width``)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(width)
    coarse = rng.integers(0, 6, size=tuple(n // 4 + 1 for n in shape)).astype(np.int32)
    labels = ndi.zoom(coarse, 4, order=0)[tuple(slice(n) for n in shape)]  # touching blocks
    fg = labels > 0
    edge = find_boundaries(labels, connectivity=1, mode="inner") & fg
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1) & fg
    ball = ndi.iterate_structure(ndi.generate_binary_structure(len(shape), 1), width)
    higher = ndi.maximum_filter(labels, footprint=ball) > labels
    lower = ndi.minimum_filter(np.where(fg, labels, labels.max() + 1), footprint=ball) < labels
    expected = fg.astype(np.int64)
    expected[edge] = 2
    expected[edge & (higher | lower)] = 3
    got = make_target(labels, "instances", boundary_width=width)
    assert (expected == 3).any() and (expected == 2).any()
    np.testing.assert_array_equal(got, expected)


def test_core_target_keeps_touching_seeds_apart_by_a_share_of_their_size():
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    from napari_unet.training.targets import grow_distance

    labels = np.zeros((30, 50), int)
    labels[3:27, 3:25] = 1
    labels[3:27, 25:47] = 2  # touching object 1 along a column
    plain = make_target(labels, "instances", boundary_width=1)
    t = make_target(labels, "instances", boundary_width=1, core=0.5)
    assert ((t == 3) == (plain == 3)).all() and ((t == 0) == (plain == 0)).all()
    assert ((t == 1) <= (plain == 1)).all() and (t == 1).sum() < 0.5 * (plain == 1).sum()
    cores = ndi.label(t == 1)[0]
    assert cores.max() == 2
    # the two cores lie apart by far more than the contact's width
    rows, cols = np.nonzero(t == 1)
    left, right = cols[cols < 25].max(), cols[cols >= 25].min()
    assert right - left > 8
    # one core per object; regrown by grow_distance they give the objects back but for
    # the farthest 1 % of the ring (the corners); the split between them follows the nearer
    # core, exactly the contact here where the objects are mirror images
    grow = grow_distance([t], boundary_width=1)
    assert grow > 2
    regrown = np.where(t > 0, expand_labels(cores, grow), 0)
    for k in (1, 2):
        ids = np.unique(regrown[labels == k])
        ids = ids[ids > 0]
        assert len(ids) == 1 and (regrown == ids[0]).sum() > 0.99 * (labels == k).sum()
        assert ((regrown == ids[0]) <= (labels == k)).all()
    assert grow_distance([plain], boundary_width=1) == 2
    with pytest.raises(ConfigError, match="core"):
        TrainConfig(core=1.0)


@pytest.mark.parametrize("shape", [(60, 70), (16, 30, 34)])
def test_core_target_matches_whole_image_distances(shape):
    """Cores found object by object equal those of one distance transform of the image."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 6, size=tuple(n // 6 + 1 for n in shape)).astype(np.int32)
    labels = ndi.zoom(coarse, 6, order=0)[tuple(slice(n) for n in shape)]
    plain = make_target(labels, "instances", boundary_width=1)
    distance = ndi.distance_transform_edt(plain == 1)
    largest = np.zeros(labels.max() + 1)
    ids = np.unique(labels)
    largest[ids] = ndi.maximum(distance, labels, ids)
    expected = plain.copy()
    expected[(plain == 1) & ~(distance > 0.4 * largest[labels])] = 2
    got = make_target(labels, "instances", boundary_width=1, core=0.4)
    assert (got == 1).any() and (got != plain).any()
    np.testing.assert_array_equal(got, expected)


def test_core_model_stores_how_far_its_seeds_regrow(tmp_path):
    pairs = [synthetic_nuclei((64, 64), radius=(5, 8), seed=s) for s in range(2)]
    cfg = TrainConfig(**{**TINY, "epochs": 1}, label_mode="instances", boundary_width=1,
                      core=0.4)
    model = nu.load_model(nu.train(pairs, cfg, run_dir=tmp_path / "r").last_model)
    assert model.metadata["core"] == 0.4
    assert 2 < model.metadata["grow"] <= 8  # ring of 0.4 x the radius, radius 5-8
    plain = nu.train(pairs, cfg.replace(core=0.0), run_dir=tmp_path / "p").last_model
    assert "grow" not in nu.load_model(plain).metadata


def test_run_from_before_core_seeds_resumes_as_it_was_trained(tmp_path):
    from napari_unet.training.loop import STATE_FILE

    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(2)]
    old = TrainConfig(**TINY, label_mode="instances", core=0.0)
    whole = nu.train(pairs, old, run_dir=tmp_path / "whole")
    steps = {"n": 0}

    def cancel():
        steps["n"] += 1
        return steps["n"] > 4

    nu.train(pairs, old, run_dir=tmp_path / "run", cancel=cancel)
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    del state["config"]["core"]  # as saved before the option existed
    torch.save(state, tmp_path / "run" / STATE_FILE)
    resumed = nu.train(pairs, old.replace(core=0.3), run_dir=tmp_path / "run", resume=True)
    assert [e.val_dice for e in resumed.history] == [e.val_dice for e in whole.history]


def test_losses_ignore_unlabelled_voxels():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE
    for name in ("ce_dice", "dice", "ce", "focal"):
        loss = make_loss(name, binary=False, class_weights=torch.tensor([1.0, 2.0, 3.0]))
        value = loss(logits, target)
        value.backward()
        assert torch.isfinite(value)
        # Gradients reach no voxel that is ignored.
        assert logits.grad[:, :, :4].abs().sum() == 0
        logits.grad = None
    binary = make_loss("bce_dice", binary=True)
    assert torch.isfinite(binary(torch.randn(2, 1, 8, 8), target.clamp(max=1)))
    perfect = torch.full((1, 1, 4, 4), 20.0)
    assert soft_dice_loss(perfect, torch.ones(1, 4, 4, dtype=torch.long)) < 1e-3


@pytest.mark.parametrize("device_path", [False, True])
def test_losses_match_torch_and_vanish_without_labels(device_path, monkeypatch):
    """The losses ask the device nothing mid-step on a GPU (device_path: the branches a GPU
    takes, run here); values as torch's own, and 0 with zero gradients where all is ignored."""
    import torch.nn.functional as F

    import napari_unet.training.losses as losses

    if device_path:
        monkeypatch.setattr(losses, "_free_to_ask", lambda x: False)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :3] = IGNORE
    w = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(make_loss("ce", False, w)(logits, target),
                               F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE))
    torch.testing.assert_close(make_loss("ce_dice", False, w)(logits, target),
                               _reference_ce_dice(logits, target, w))
    b_logits, b_target = logits[:, :1], target.clamp(max=1)
    valid = b_target != IGNORE
    torch.testing.assert_close(
        losses._bce(b_logits, b_target),
        F.binary_cross_entropy_with_logits(b_logits[:, 0][valid], b_target[valid].float()))
    bw = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(
        losses._bce(b_logits, b_target, bw),
        F.binary_cross_entropy_with_logits(b_logits[:, 0][valid], b_target[valid].float(),
                                           pos_weight=bw[1] / bw[0]))
    # Focal loss: the weighted mean over the labelled voxels, written out.
    keep = target != IGNORE
    logp = F.log_softmax(logits, 1).gather(1, target.clamp_min(0)[:, None])[:, 0][keep]
    wv = w[target[keep]]
    torch.testing.assert_close(make_loss("focal", False, w)(logits, target),
                               (-((1 - logp.exp()) ** 2) * logp * wv).sum() / wv.sum())
    for name, binary, lo in (("ce_dice", False, logits), ("ce", False, logits),
                             ("focal", False, logits), ("bce_dice", True, b_logits)):
        lo = lo.clone().requires_grad_(True)
        value = make_loss(name, binary, None)(lo, torch.full_like(target, IGNORE))
        value.backward()
        assert torch.isfinite(value) and float(lo.grad.abs().sum()) == 0.0


def _reference_ce_dice(logits, target, weight):
    """CE + soft Dice written out with a one-hot tensor (the textbook form)."""
    import torch.nn.functional as F

    valid = (target != IGNORE).unsqueeze(1).float()
    probs = torch.softmax(logits, 1) * valid
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).movedim(-1, 1).float() * valid
    dims = (0, *range(2, logits.ndim))
    dice = (2 * (probs * onehot).sum(dims) + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    return ce + 1 - dice[1:].mean()


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 8, 9), (2, 4, 4, 6, 5)])
def test_fused_ce_dice_equals_the_textbook_form(shape, ignore):
    torch.manual_seed(0)
    logits = torch.randn(*shape, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    if ignore:
        target[:, :2] = IGNORE
    weight = torch.linspace(1.0, 2.0, shape[1])
    ours = make_loss("ce_dice", binary=False, class_weights=weight)(logits, target)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = _reference_ce_dice(logits, target, weight)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_keeps_image_and_labels_aligned(dims, rng):
    shape = (48, 48) if dims == 2 else (24, 40, 40)
    patch = (32, 32) if dims == 2 else (16, 24, 24)
    # Two values only: a linear mix of 0 and 2 could not then pass for a flat 1.
    coarse = rng.integers(0, 2, tuple(s // 8 for s in shape))
    labels = np.kron(coarse, np.ones((8,) * dims, int))  # flat 8-voxel blocks
    image = labels[None].astype(np.float32)  # the image *is* the label map
    aug = Augmenter(dims, p_elastic=1.0, p_rotate=1.0, p_scale=1.0, p_gamma=0,
                    p_contrast=0, p_brightness=0, p_noise=0, p_blur=0)
    for seed in range(5):
        x, t = aug(image, labels, patch, np.random.default_rng(seed))
        assert x.shape == (1, *patch) and t.shape == patch
        # Nearest-neighbour labels and linear image agree where the image is locally flat.
        flat = np.abs(x[0] - np.round(x[0])) < 1e-4
        assert flat.mean() > 0.3
        np.testing.assert_array_equal(np.round(x[0][flat]), t[flat])


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(3)]
    cfg = TrainConfig(**TINY, label_mode="instances")
    a = nu.train(pairs, cfg, run_dir=tmp_path / "a")
    b = nu.train(pairs, cfg, run_dir=tmp_path / "b")
    wa = nu.load_model(a.last_model).state_dict()
    wb = nu.load_model(b.last_model).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # Cancel in the middle of epoch 2, then resume: same weights as the uninterrupted run.
    steps = {"n": 0}

    def cancel():
        steps["n"] += 1
        return steps["n"] > 4

    c = nu.train(pairs, cfg, run_dir=tmp_path / "c", cancel=cancel)
    assert c.stopped == "cancelled" and len(c.history) == 1
    c = nu.train(pairs, cfg, run_dir=tmp_path / "c", resume=True)
    assert c.stopped == "finished" and [e.epoch for e in c.history] == [1, 2]
    wc = nu.load_model(c.last_model).state_dict()
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert [e.val_dice for e in c.history] == [e.val_dice for e in a.history]
    with pytest.raises(InputError, match="already holds a training run"):
        nu.train(pairs, cfg, run_dir=tmp_path / "c")


def test_scribbles_beat_otsu(tmp_path):
    image, labels = synthetic_nuclei((192, 192), density=0.3, radius=(6, 10), seed=3)
    # Uneven illumination defeats a global threshold.
    yy, xx = np.mgrid[:192, :192]
    image = (image * (0.3 + 1.4 * xx / 191)).astype(np.float32)
    rng = np.random.default_rng(0)
    scribbles = np.zeros_like(labels, dtype=np.uint8)
    fg = np.argwhere(labels > 0)
    bg = np.argwhere(labels == 0)
    for points, value, inside in ((fg, 2, labels > 0), (bg, 1, labels == 0)):
        for y, x in points[rng.choice(len(points), 100, replace=False)]:
            stroke = (y, slice(max(0, x - 1), x + 2))  # a short stroke, kept in its class
            scribbles[stroke][inside[stroke]] = value
    assert (scribbles > 0).mean() < 0.02  # a few strokes, not a full annotation
    cfg = TrainConfig(model=ModelConfig(spatial_dims=2, depth=3, base_filters=8),
                      label_mode="scribbles", patch_size=(64, 64), batch_size=8, epochs=6,
                      steps_per_epoch=10, lr=3e-3, val_patches=8, device="cpu")
    result = nu.train([(image, scribbles)], cfg, run_dir=tmp_path / "run")
    model = nu.load_model(result.best_model)
    pred = nu.predict(model, image, mode="semantic", device="cpu")
    ours = dice(pred > 0, labels > 0)
    otsu = dice(otsu_baseline(image) > 0, labels > 0)
    print(f"scribbles Dice {ours:.3f} vs Otsu {otsu:.3f}")
    assert ours > otsu + 0.05, (ours, otsu)


def test_training_bad_input_is_named(tmp_path):
    cfg = TrainConfig(**TINY)
    img = np.zeros((64, 64), np.float32)
    good = np.zeros((64, 64), np.uint16)
    good[10:20, 10:20] = 1
    cases = [
        ([], "no training data"),
        ([(img, good[:32])], "do not match"),
        ([(img, np.zeros((64, 64), np.uint16))], "all zero"),
        ([(img, good.astype(np.float32))], "float type"),
        ([(img[:16, :16], good[:16, :16])], "smaller than patch_size"),
        ([(np.full((64, 64), np.nan, np.float32), good)], "NaN"),
        ([(img, good), (np.zeros((2, 64, 64), np.float32), good)], "channel"),
    ]
    for k, (pairs, message) in enumerate(cases):
        with pytest.raises(InputError, match=message):
            nu.train(pairs, cfg, run_dir=tmp_path / f"r{k}")
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(**{**TINY, "patch_size": (30, 30)})
    with pytest.raises(InputError, match="two classes"):
        nu.train([(img, good)], TrainConfig(**TINY, label_mode="scribbles"),
                 run_dir=tmp_path / "s")


def test_train_cli_resume_and_cross_validation(tmp_path, capsys):
    import tifffile

    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for s in range(3):
        image, labels = synthetic_nuclei((48, 48), seed=s)
        tifffile.imwrite(tmp_path / "images" / f"im{s}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"im{s}.tif", labels.astype(np.uint16))
    common = ["--quiet", "train", "--images", str(tmp_path / "images"), "--labels",
              str(tmp_path / "labels"), "--dims", "2", "--depth", "2", "--filters", "4",
              "--patch", "32,32", "--batch-size", "2", "--steps", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "run"), "--epochs", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "run"), "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "best validation Dice" in out
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    assert main([*common, "--out", str(tmp_path / "cv"), "--epochs", "1", "--folds", "3"]) == 0
    assert "mean" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cv").iterdir()) == ["fold1", "fold2", "fold3"]
    # Folds by group: im0 and im1 come from one animal, so 2 folds hold them together.
    (tmp_path / "groups.csv").write_text("image,group\nim0.tif,mouse A\nim1,mouse A\n"
                                         "im2.tif,mouse B\n")
    assert main([*common, "--out", str(tmp_path / "cvg"), "--epochs", "1", "--folds", "2",
                 "--fold-groups", str(tmp_path / "groups.csv")]) == 0
    assert "mean" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("image,group\nim0.tif,a\n")
    assert main([*common, "--out", str(tmp_path / "cvb"), "--folds", "2", "--fold-groups",
                 str(tmp_path / "bad.csv")]) == 2
    assert "no group for 2 image(s)" in capsys.readouterr().err

    # evaluate CLI on hand-made files: a perfect prediction scores 1.
    assert main(["evaluate", str(tmp_path / "labels"), str(tmp_path / "labels")]) == 0
    assert "1.0000 [1.0000, 1.0000]" in capsys.readouterr().out


def test_3d_training_runs_and_repeats_in_bf16(tmp_path):
    # The bottleneck of this model is 2 voxels deep: the case where bf16 conv3d weight
    # gradients on the CPU are read from uninitialised memory unless the model guards it.
    pairs = [synthetic_nuclei((16, 32, 32), radius=(3, 5), seed=s) for s in range(2)]
    cfg = TrainConfig(model=ModelConfig(spatial_dims=3, depth=2, base_filters=4),
                      patch_size=(8, 16, 16), batch_size=2, epochs=2, steps_per_epoch=2,
                      val_patches=2, device="cpu", anisotropic=True, label_mode="classes",
                      precision="bf16", invert="auto", pair_sampling="uniform")
    data = [(i, (lab > 0).astype(np.uint8)) for i, lab in pairs]
    events = []
    result = nu.train(data, cfg, run_dir=tmp_path / "r3", progress=events.append)
    again = nu.train(data, cfg, run_dir=tmp_path / "r3b")
    assert any(isinstance(e, EpochEnd) for e in events)
    losses = [(h.train_loss, h.val_loss) for h in result.history]
    assert all(np.isfinite(v) for pair in losses for v in pair)
    assert losses == [(h.train_loss, h.val_loss) for h in again.history]
    model = nu.load_model(result.best_model)
    assert model.config.spatial_dims == 3 and model.config.out_channels == 1
    assert model.metadata["normalization"]["invert"] == "auto"
    assert model.metadata["label_mode"] == "classes"


def test_pair_sampling_and_invert_are_checked_and_applied():
    with pytest.raises(ConfigError, match="pair_sampling"):
        TrainConfig(pair_sampling="by_area")
    with pytest.raises(ConfigError, match="invert"):
        TrainConfig(invert="yes")
    from napari_unet.training.data import PatchSampler, prepare_pairs

    small = synthetic_nuclei((32, 32), seed=0)
    large = synthetic_nuclei((96, 96), seed=1)
    pairs, _ = prepare_pairs([small, large], 2, "instances", (32, 32), (1.0, 99.8))
    by_size = PatchSampler(pairs, (32, 32), "instances", 1, 0.5, None)
    uniform = PatchSampler(pairs, (32, 32), "instances", 1, 0.5, None, uniform=True)
    np.testing.assert_allclose(by_size.weights, [0.1, 0.9])
    np.testing.assert_allclose(uniform.weights, [0.5, 0.5])
    # invert="auto" flips only the image whose background is bright.
    negative = (small[0].max() - small[0], small[1])
    auto, _ = prepare_pairs([small, negative], 2, "instances", (32, 32), (1.0, 99.8),
                            invert="auto")
    assert auto[0].norm.low < auto[0].norm.high and auto[1].norm.low > auto[1].norm.high


def test_patch_pipeline_and_batches_do_not_depend_on_it():
    import concurrent.futures as cf

    from napari_unet.training.augment import Augmenter as Aug
    from napari_unet.training.batches import batches as _batches
    from napari_unet.training.batches import patch_pipeline
    from napari_unet.training.data import PatchSampler, prepare_pairs

    assert patch_pipeline(torch.device("cpu"), cpus=2) == (2, 0)  # cut between steps
    assert patch_pipeline(torch.device("cuda"), cpus=16) == (8, 8)  # work ahead
    assert patch_pipeline(torch.device("cuda"), cpus=2) == (2, 2)
    assert patch_pipeline(torch.device("cuda"), cpus=16, on_device=True) == (4, 4)
    pairs, _ = prepare_pairs([synthetic_nuclei((96, 96), seed=1)], 2, "instances", (32, 32),
                             (1.0, 99.8))
    sampler = PatchSampler(pairs, (32, 32), "instances", 1, 0.5, Aug(2))
    config = TrainConfig(**{**TINY, "steps_per_epoch": 6})
    runs = []
    for threads, ahead in ((1, 0), (3, 0), (1, 1), (4, 4)):
        with cf.ThreadPoolExecutor(threads) as pool:
            runs.append(list(_batches(sampler, config, 0, 0, pool, ahead)))
    runs.append(list(_batches(sampler, config, 0, 2, None, 0)))  # resumed mid-epoch
    for run in runs[1:]:
        assert [s for s, _ in run] == [s for s, _ in runs[0]][-len(run):]
        for (_, (x0, t0)), (_, (x1, t1)) in zip(runs[0][-len(run):], run, strict=True):
            np.testing.assert_array_equal(x0, x1)
            np.testing.assert_array_equal(t0, t1)
    assert [s for s, _ in runs[0]] == list(range(6))
    first = runs[0][0][1][0]
    assert not np.array_equal(first, runs[0][1][1][0])  # steps differ
    assert not np.array_equal(first[0], first[1])  # and so do the patches of a batch


@pytest.mark.parametrize("dims", [2, 3])
def test_device_augmentation_makes_the_cpu_path_patches(dims, rng):
    """augment_batch (what a GPU runs) follows the same choices as the patch threads' scipy
    path: same resampling, same intensity changes; only the noise comes from elsewhere."""
    import dataclasses

    from scipy import ndimage as ndi

    from napari_unet.training.augment import margin_for
    from napari_unet.training.augment_device import augment_batch
    from napari_unet.training.data import PatchSampler, prepare_pairs

    patch = (48, 64) if dims == 2 else (16, 24, 32)
    region = tuple(p + 2 * m for p, m in zip(patch, margin_for(patch), strict=True))
    image = ndi.gaussian_filter(rng.random((2, *region)), 2).astype(np.float32)
    target = (ndi.gaussian_filter(rng.random(region), 3) * 40).astype(np.int64) % 4
    aug = Augmenter(dims, anisotropic=dims == 3, p_elastic=0.5, p_blur=0.5)
    draws = [aug.draw(np.random.default_rng(s), patch) for s in range(12)]
    draws = [dataclasses.replace(d, noise=None) for d in draws]
    assert {d.fields is None for d in draws} == {True, False}
    assert {d.blur is None for d in draws} == {True, False}
    x, t = augment_batch(torch.from_numpy(np.stack([image] * 12)),
                         torch.from_numpy(np.stack([target] * 12)), draws, patch)
    assert x.shape == (12, 2, *patch) and t.shape == (12, *patch) and t.dtype == torch.int64
    for b, d in enumerate(draws):
        xn, tn = aug._spatial(image, target, patch, d)
        xn = Augmenter._intensity(xn, d, None)
        np.testing.assert_allclose(x[b].numpy(), xn, atol=2e-5)
        np.testing.assert_array_equal(t[b].numpy(), tn)

    # The blur mirrors like scipy's, also along an axis shorter than its kernel.
    from napari_unet.training.augment_device import _gaussian_blur

    thin = rng.random((1, 2, 5, 9)).astype(np.float32)
    np.testing.assert_allclose(_gaussian_blur(torch.from_numpy(thin), 0.9).numpy(),
                               ndi.gaussian_filter(thin, [0, 0.9, 0.9, 0.9]), atol=1e-6)

    # The noise: seeded per patch (repeatable), of the drawn strength.
    noisy = dataclasses.replace(draws[0], gamma=None, contrast=None, brightness=None,
                                blur=None, noise=0.05, noise_seed=7)
    calm = dataclasses.replace(noisy, noise=None)
    args = (torch.from_numpy(image[None]), torch.from_numpy(target[None]))
    n1 = augment_batch(*args, [noisy], patch)[0] - augment_batch(*args, [calm], patch)[0]
    n2 = augment_batch(*args, [noisy], patch)[0] - augment_batch(*args, [calm], patch)[0]
    assert torch.equal(n1, n2) and abs(float(n1.std()) - 0.05) < 0.005

    # The sampler's regions + draws give the patches of its CPU path.
    pairs, _ = prepare_pairs([synthetic_nuclei((64, 96) if dims == 2 else (24, 48, 64),
                                               seed=1)], dims, "instances", patch, (1, 99.8))
    quiet = Augmenter(dims, p_noise=0.0)
    sampler = PatchSampler(pairs, patch, "instances", 1, 0.5, quiet)
    xs, ts, ds = sampler.batch(4, (0, 0, 3), regions=True)
    xa, ta = augment_batch(torch.from_numpy(xs), torch.from_numpy(ts), ds, patch)
    xc, tc = sampler.batch(4, (0, 0, 3))
    np.testing.assert_allclose(xa.numpy(), xc, atol=2e-5)
    np.testing.assert_array_equal(ta.numpy(), tc)


def test_training_with_device_augmentation_repeats(tmp_path, monkeypatch):
    """The GPU's training path (augmentation on the device), run on the CPU."""
    import napari_unet.training.loop as loop

    monkeypatch.setattr(loop, "augment_on_device", lambda device, augmenter: True)
    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(3)]
    cfg = TrainConfig(**TINY, label_mode="instances")
    a = nu.train(pairs, cfg, run_dir=tmp_path / "a")
    b = nu.train(pairs, cfg, run_dir=tmp_path / "b")
    assert a.stopped == "finished" and np.isfinite(a.best_val_dice)
    wa = nu.load_model(a.last_model).state_dict()
    wb = nu.load_model(b.last_model).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_diverged_training_stops_with_advice_and_saves_nothing_new(tmp_path, monkeypatch):
    import napari_unet.training.setup as setup

    monkeypatch.setattr(setup, "make_loss",
                        lambda *a, **k: lambda logits, t: logits.float().mean() * float("nan"))
    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(2)]
    with pytest.raises(FloatingPointError, match="diverged at epoch 1, step 1.*learning rate"):
        nu.train(pairs, TrainConfig(**TINY), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_fp32_on_cuda_turns_tensorfloat32_off_for_the_run():
    """precision="fp32" on CUDA: TF32 off inside the run, as it was afterwards (the switches
    are plain settings, so this runs without a GPU)."""
    from napari_unet.inference.device import _tf32_switches, exact_fp32

    switches = _tf32_switches()
    before = [getattr(o, a) for o, a, _ in switches]
    with exact_fp32(torch.device("cuda"), "fp32"):
        assert [getattr(o, a) for o, a, _ in switches] == [v for _, _, v in switches]
    assert [getattr(o, a) for o, a, _ in switches] == before
    for device, precision in ((torch.device("cuda"), "bf16"), (torch.device("cpu"), "fp32")):
        with exact_fp32(device, precision):
            assert [getattr(o, a) for o, a, _ in switches] == before


def test_out_of_memory_in_training_says_what_to_change_and_keeps_the_weights(tmp_path,
                                                                              monkeypatch):
    import napari_unet.training.setup as setup

    class Hungry(setup.UNet):
        """Raises what a GPU raises when more than two patches are trained at once."""

        def forward(self, x):
            if self.training and x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    pairs = [synthetic_nuclei((64, 64), seed=s) for s in range(2)]
    fits = nu.train(pairs, TrainConfig(**{**TINY, "batch_size": 2, "epochs": 1}),
                    run_dir=tmp_path / "fits")
    monkeypatch.setattr(setup, "UNet", Hungry)
    with pytest.raises(InputError, match=r"ran out of memory on cpu at epoch 1, step 1 "
                                         r"\(batch_size 4 .*e\.g\. 2\).*init_model"):
        nu.train(pairs, TrainConfig(**{**TINY, "batch_size": 4}), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "last.safetensors").exists()
    # The weights kept are a model that loads (the untrained start, here).
    assert nu.load_model(tmp_path / "run" / "last.safetensors").config == \
        nu.load_model(fits.last_model).config


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 7), min_size=2, max_size=40), k=st.integers(2, 5),
       seed=st.integers(0, 100))
def test_group_folds_keep_groups_whole_and_cover_every_pair_once(labels, k, seed):
    from napari_unet.training.crossval import fold_indices

    groups = [f"g{v}" for v in labels]
    if len(set(groups)) < k:
        with pytest.raises(InputError, match="at least"):
            fold_indices(len(groups), k, seed, groups)
        return
    folds = fold_indices(len(groups), k, seed, groups)
    assert len(folds) == k and all(len(f) for f in folds)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    owner = {}
    for i, fold in enumerate(folds):
        for j in fold:
            assert owner.setdefault(groups[j], i) == i  # a group never straddles folds
    assert [f.tolist() for f in fold_indices(len(groups), k, seed, groups)] == [
        f.tolist() for f in folds]
