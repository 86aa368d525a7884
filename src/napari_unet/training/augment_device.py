"""The augmentation of :mod:`.augment` applied to a whole batch on the training device.

On a GPU the model trains faster than the CPU threads can resample patches one by one (the
H200 figures are in benchmarks/README.md).  The patch threads then only cut the regions around
the patches and draw the random choices (:class:`~.augment.Draw`); the resampling and the
intensity changes of the whole batch run here, as a handful of tensor operations.

The result follows the same choices as the CPU path: the same coordinate map (linear for the
image, nearest for the target; out-of-region samples mirrored at the region's border, as
``scipy.ndimage``'s "reflect"), the same intensity changes.  The noise comes from the device's
own generator, seeded per patch, so a run is repeatable on its device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import Draw

__all__ = ["augment_batch"]


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without waiting for it: a copy from pageable memory
    would first wait for everything queued on the device (the previous step)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _coordinates(draws: Sequence[Draw], patch: tuple[int, ...], device: torch.device
                 ) -> torch.Tensor:
    """Input coordinates ``(B, nd, *patch)`` of every output voxel, relative to the centre
    of the region, in voxels."""
    nd = len(patch)
    axes = [torch.arange(p, dtype=torch.float32, device=device) - (p - 1) / 2.0 for p in patch]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    m = _to_device(np.stack([d.matrix for d in draws]).astype(np.float32), device)
    coords = torch.einsum("bij,j...->bi...", m, grid)
    elastic = [d for d in draws if d.fields is not None]
    if elastic:
        coarse = next(f for f in elastic[0].fields if f is not None).shape
        fields = np.zeros((len(draws), nd, *coarse), dtype=np.float32)
        for b, d in enumerate(draws):
            for axis, f in enumerate(d.fields or ()):
                if f is not None:
                    fields[b, axis] = f
        # Linear interpolation with the end points aligned, as the CPU path does.
        coords = coords + F.interpolate(_to_device(fields, device), size=tuple(patch),
                                        mode="bilinear" if nd == 2 else "trilinear",
                                        align_corners=True)
    return coords


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (C, *spatial) smoothed along its spatial axes (mirrored at the border with the
    edge voxel repeated, kernel to 4 sigma: ``scipy.ndimage.gaussian_filter``'s defaults)."""
    r = int(4.0 * sigma + 0.5)
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    nd = x.ndim - 1
    conv = F.conv2d if nd == 2 else F.conv3d
    y = x[None]
    for axis in range(nd):
        dim = axis + 2
        n = y.shape[dim]
        # Half-sample symmetric padding, repeated as often as the kernel needs (scipy's
        # "reflect", also along an axis shorter than the kernel; torch's skips the edge).
        idx = torch.arange(-r, n + r, device=x.device) % (2 * n)
        y = y.index_select(dim, torch.where(idx < n, idx, 2 * n - 1 - idx))
        shape = [1] * nd
        shape[axis] = 2 * r + 1
        weight = k.view(1, 1, *shape).expand(x.shape[0], 1, *shape)
        y = conv(y, weight, groups=x.shape[0])
    return y[0]


def _intensity(x: torch.Tensor, draws: Sequence[Draw]) -> torch.Tensor:
    """The intensity changes of each patch of ``x`` (B, C, *patch), in the CPU path's order.
    Which patch gets which change is known on the host: nothing here waits for the device."""
    b_axes = tuple(range(1, x.ndim))
    c_axes = tuple(range(2, x.ndim))
    view = (-1,) + (1,) * (x.ndim - 1)
    # Per patch: gamma on, gamma, contrast on, contrast, brightness.
    params = _to_device(np.array(
        [[d.gamma is not None, d.gamma or 1.0, d.contrast is not None, d.contrast or 1.0,
          d.brightness or 0.0] for d in draws], dtype=np.float32), x.device)
    col = [params[:, k].view(view) for k in range(params.shape[1])]
    if any(d.gamma is not None for d in draws):
        lo, hi = x.amin(dim=b_axes, keepdim=True), x.amax(dim=b_axes, keepdim=True)
        span = (hi - lo).clamp_min(1e-12)
        changed = ((x - lo) / span).clamp_min(0.0) ** col[1] * span + lo
        x = torch.where((col[0] > 0) & (hi > lo), changed, x)  # a flat patch stays as it is
    if any(d.contrast is not None for d in draws):
        mean = x.mean(dim=c_axes, keepdim=True)
        x = torch.where(col[2] > 0, (x - mean) * col[3] + mean, x)
    if any(d.brightness is not None for d in draws):
        x = x + col[4]
    if any(d.blur is not None for d in draws):
        x = torch.stack([_gaussian_blur(xi, d.blur) if d.blur is not None else xi
                         for xi, d in zip(x, draws, strict=True)])
    if any(d.noise is not None for d in draws):
        noise = []
        for xi, d in zip(x, draws, strict=True):
            if d.noise is None:
                noise.append(torch.zeros_like(xi))
                continue
            gen = torch.Generator(device=x.device).manual_seed(d.noise_seed)
            noise.append(torch.randn(xi.shape, generator=gen, device=x.device) * d.noise)
        x = x + torch.stack(noise)
    return x


@torch.no_grad()
def augment_batch(
    x: torch.Tensor, t: torch.Tensor, draws: Sequence[Draw], patch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented patches from the regions around them, on the regions' device.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(B, C, *region)``, float32: each patch with its margin
        (:func:`~.augment.margin_for`) on every side.
    t : torch.Tensor
        Targets ``(B, *region)``, integer.
    draws : sequence of Draw
        The random choices of each patch (:meth:`~.augment.Augmenter.draw`).
    patch : sequence of int
        The patch size.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Images ``(B, C, *patch)`` and targets ``(B, *patch)`` (the dtype of ``t``).
    """
    patch = tuple(int(p) for p in patch)
    region = tuple(int(r) for r in x.shape[2:])
    coords = _coordinates(draws, patch, x.device)
    # grid_sample's grid: the last axis holds (x, y[, z]) scaled to [-1, 1], where -1 and 1
    # are the outer edges of the end voxels (align_corners=False), so that its "reflection"
    # mirrors at the border as scipy's "reflect" does.  Voxel c of an axis of r voxels is
    # at (2c + 1) / r - 1, and c = coords + (r - 1) / 2.
    grid = torch.stack([coords[:, a] * (2.0 / r) for a, r in enumerate(region)], dim=-1)
    grid = grid.flip(-1)
    xo = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection",
                       align_corners=False)
    to = F.grid_sample(t[:, None].float(), grid, mode="nearest", padding_mode="reflection",
                       align_corners=False)[:, 0]
    return _intensity(xo, draws), torch.round(to).to(t.dtype)

