"""The CUDA paths: run only where a GPU is present (skipped in CI and on CPU machines).

`benchmarks/device_check.sh` runs them on a lent GPU machine together with the GPU benchmarks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.data.synthetic import synthetic_nuclei

from .helpers import tiny_unet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dims", [2, 3])
def test_gpu_fp32_matches_cpu_and_bf16_is_close(dims, rng, tmp_path):
    shape = (70, 90) if dims == 2 else (20, 40, 50)
    x = rng.normal(100, 20, shape).astype(np.float32)
    model = tiny_unet(dims, out_channels=3)
    common = dict(mode="probabilities", probability_dtype="float32", tile=(16,) * dims,
                  overlap=0.25, batch_size=3)
    cpu = nu.predict(model, x, device="cpu", precision="fp32", **common)
    gpu = nu.predict(model, x, tmp_path / "gpu.zarr", device="cuda", precision="fp32",
                     **common)[:]
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    half = nu.predict(model, x, device="cuda", precision="bf16", **common)
    assert np.abs(half - cpu).max() < 0.05


def test_gpu_automatic_batch_gives_the_same_result(rng):
    x = rng.normal(0, 1, (40, 64, 64)).astype(np.float32)
    model = tiny_unet(3, out_channels=2)
    common = dict(mode="probabilities", probability_dtype="float32", tile=(16, 32, 32),
                  device="cuda", precision="fp32")
    auto = nu.predict(model, x, batch_size="auto", **common)
    fixed = nu.predict(model, x, batch_size=1, **common)
    # cuDNN may pick another algorithm per batch size: the same numbers up to rounding.
    np.testing.assert_allclose(auto, fixed, atol=1e-5)


def test_gpu_training_with_autocast_runs_and_resumes(tmp_path):
    pairs = [synthetic_nuclei((24, 64, 64), seed=s, radius=(3, 6)) for s in range(2)]
    cfg = TrainConfig(model=ModelConfig(spatial_dims=3, depth=2, base_filters=4),
                      patch_size=(16, 32, 32), batch_size=2, epochs=2, steps_per_epoch=4,
                      val_patches=2, device="cuda", precision="bf16")
    first = nu.train(pairs, cfg.replace(epochs=1), run_dir=tmp_path / "run")
    assert first.stopped == "finished"
    resumed = nu.train(pairs, cfg, run_dir=tmp_path / "run", resume=True)
    assert resumed.stopped == "finished" and np.isfinite(resumed.best_val_dice)
    model = nu.load_model(resumed.best_model)
    out = nu.predict(model, pairs[0][0], mode="instances", device="cuda")
    assert out.shape == pairs[0][0].shape


def test_gpu_augmentation_matches_the_cpu(rng):
    from napari_unet.training.augment import Augmenter, margin_for
    from napari_unet.training.augment_device import augment_batch

    for dims, patch in ((2, (64, 64)), (3, (16, 32, 32))):
        region = tuple(p + 2 * m for p, m in zip(patch, margin_for(patch), strict=True))
        x = torch.from_numpy(rng.random((6, 1, *region)).astype(np.float32))
        t = torch.from_numpy(rng.integers(0, 4, (6, *region)))
        aug = Augmenter(dims, p_elastic=0.5, p_blur=0.5)
        draws = [aug.draw(np.random.default_rng(s), patch) for s in range(6)]
        xc, tc = augment_batch(x, t, draws, patch)
        xg, tg = augment_batch(x.cuda(), t.cuda(), draws, patch)
        noisy = [d.noise is not None for d in draws]
        for b in range(6):
            if not noisy[b]:  # (the noise comes from each device's own generator)
                torch.testing.assert_close(xg[b].cpu(), xc[b], atol=1e-4, rtol=0)
            assert (tg[b].cpu() != tc[b]).float().mean() < 0.01  # ties may round apart
