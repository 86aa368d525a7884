"""A model's ``interior_threshold``: interior voxels seed instances only where the model is
sure of them, so a doubtful neck between two objects no longer joins their seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import postprocess
from napari_unet.errors import NapariUnetError


class SoftLevels(torch.nn.Module):
    """Background / interior / boundary by intensity (levels 0, 1, 0.5), with soft logits:
    intensity 1 is interior at p ~0.92, intensity 0.8 still interior by the argmax at ~0.62."""

    def __init__(self, **metadata) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.out_channels = 2, 1, 3
        self.register_buffer("levels", torch.tensor([0.0, 1.0, 0.5]).view(1, -1, 1, 1))
        self.metadata = {"label_mode": "instances", "normalization": {"kind": "none"},
                         "grow": 6, **metadata}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -10.0 * (x - self.levels) ** 2


def _two_squares_and_a_neck() -> np.ndarray:
    image = np.zeros((40, 60), np.float32)
    image[10:30, 5:25] = image[10:30, 35:55] = 1.0
    image[17:23, 25:35] = 0.8  # the neck: interior by the argmax, but doubtful
    return image


def test_semantic_demotes_doubtful_interior_to_boundary():
    logits = torch.tensor([[5.0, 0.0, 0.0, -5.0],  # background
                           [0.0, 0.3, 5.0, -5.0],  # interior
                           [0.0, 0.0, 0.0, 5.0]]).view(3, 1, 4)  # boundary
    np.testing.assert_array_equal(postprocess.semantic(logits).numpy().ravel(), [0, 1, 1, 2])
    np.testing.assert_array_equal(
        postprocess.semantic(logits, interior_threshold=0.6).numpy().ravel(), [0, 2, 1, 2])
    # Only instance labelling of instance models uses it.
    meta = {"label_mode": "instances", "interior_threshold": 0.6}
    assert postprocess.interior_threshold(meta, "instances") == 0.6
    assert postprocess.interior_threshold(meta, "semantic") is None
    assert postprocess.interior_threshold({**meta, "label_mode": "classes"}, "instances") is None


def test_a_doubtful_neck_no_longer_merges_two_objects():
    image = _two_squares_and_a_neck()
    merged = nu.predict(SoftLevels(), image, mode="instances", device="cpu")
    apart = nu.predict(SoftLevels(interior_threshold=0.75), image, mode="instances",
                       device="cpu")
    assert len(np.unique(merged)) - 1 == 1
    assert len(np.unique(apart)) - 1 == 2
    assert ((merged > 0) == (apart > 0)).all()  # the same foreground, split


def test_a_changed_threshold_never_resumes_a_store_of_the_old_one(tmp_path):
    image = _two_squares_and_a_neck()
    out = tmp_path / "out.zarr"
    nu.predict(SoftLevels(), image, out, mode="instances", device="cpu")
    with pytest.raises(NapariUnetError, match="overwrite"):
        nu.predict(SoftLevels(interior_threshold=0.75), image, out, mode="instances",
                   device="cpu")
    again = nu.predict(SoftLevels(interior_threshold=0.75), image, out, mode="instances",
                       device="cpu", overwrite=True)
    assert len(np.unique(np.asarray(again))) - 1 == 2
