"""From blended logits to probabilities, class labels and instance labels.

Instance labels come from dask-image's ``ndmeasure.label``, which resolves components that
cross chunk borders through a global relabelling pass, so the result is correct on volumes
larger than memory.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

__all__ = [
    "probabilities",
    "semantic",
    "semantic_dtype",
    "label_instances",
    "BOUNDARY_MODE",
]

# Label mode of models trained on instance masks as background / interior / boundary.
BOUNDARY_MODE = "instances"


def probabilities(logits):  # torch.Tensor (C, ...) -> (C, ...)
    """Sigmoid for one-channel (binary) models, softmax over classes otherwise."""
    import torch

    if logits.shape[0] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=0)


def semantic(logits, threshold: float = 0.5):  # torch.Tensor (C, ...) -> (...)
    """Class index per voxel: ``p > threshold`` for binary models, argmax otherwise."""
    if logits.shape[0] == 1:
        cut = math.log(threshold / (1.0 - threshold))  # threshold in logit space
        return (logits[0] > cut).to(dtype=_torch_dtype(semantic_dtype(1)))
    return logits.argmax(dim=0).to(dtype=_torch_dtype(semantic_dtype(logits.shape[0])))


def semantic_dtype(out_channels: int) -> str:
    return "uint8" if out_channels <= 255 else "uint16"


def _torch_dtype(name: str):
    import torch

    return {"uint8": torch.uint8, "uint16": torch.int32}[name]


def _expand_into_mask(labels: np.ndarray, mask: np.ndarray, distance: int) -> np.ndarray:
    from skimage.segmentation import expand_labels

    grown = expand_labels(labels, distance=distance)
    return np.where(mask, grown, 0).astype(labels.dtype)


def label_instances(
    classes: da.Array, label_mode: str | None = None, expand: int = 2
) -> da.Array:
    """Instance labels of one frame (2D or 3D) of a class map.

    Parameters
    ----------
    classes : dask.array.Array
        Class index per voxel (0 = background).
    label_mode : str, optional
        ``"instances"`` for a background / interior / boundary model: interiors are the
        seeds, then grown by ``expand`` voxels into the boundary class so touching objects
        stay apart.  Anything else: connected components of all foreground classes.
    expand : int
        Growth of interior seeds into the boundary class, in voxels.

    Returns
    -------
    dask.array.Array
        uint32 labels, 0 = background, ids unique across the whole frame.
    """
    from dask_image.ndmeasure import label

    if label_mode == BOUNDARY_MODE:
        seeds = classes == 1
        labels, _ = label(seeds)
        labels = labels.astype(np.uint32)
        mask = classes > 0
        return da.map_overlap(
            _expand_into_mask, labels, mask, depth=expand, boundary="none",
            dtype=np.uint32, distance=expand,
        )
    labels, _ = label(classes > 0)
    return labels.astype(np.uint32)
