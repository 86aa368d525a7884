"""U-Net for 2D and 3D images (Ronneberger et al. 2015; Çiçek et al. 2016).

Encoder/decoder with skip concatenation, two 3x3(x3) convolutions + norm + ReLU per block,
max-pool down, transposed convolution up, dropout in the bottleneck, He initialisation and
logits out.  Pooling factors may differ per level and axis so thin, anisotropic stacks are not
pooled away along z.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig

__all__ = ["UNet"]


class _Conv3d(nn.Conv3d):
    """Conv3d whose weight gradient stays right on the CPU under bf16 autocast.

    torch 2.13 (oneDNN) returns bf16 weight gradients read from uninitialised memory for a
    3x3x3 convolution over an input exactly 2 voxels deep (different on every run, sometimes NaN
    or 1e36; the forward pass is right). Only that case runs in fp32; parameter names are those
    of ``nn.Conv3d``, so checkpoints are unaffected.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[2] == 2 and x.device.type == "cpu" and torch.is_grad_enabled()
                and torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _norm(kind: str, channels: int, spatial_dims: int, groups: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(
            channels, affine=True
        )
    if kind == "group":
        g = min(groups, channels)
        while channels % g:  # largest divisor of channels not above `groups`
            g -= 1
        return nn.GroupNorm(g, channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, cfg: ModelConfig) -> None:
        conv = nn.Conv2d if cfg.spatial_dims == 2 else _Conv3d
        bias = cfg.norm == "none"  # a norm layer right after makes the bias redundant
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=bias),
            _norm(cfg.norm, cout, cfg.spatial_dims, cfg.groups),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=bias),
            _norm(cfg.norm, cout, cfg.spatial_dims, cfg.groups),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """A 2D or 3D U-Net returning logits.

    Parameters
    ----------
    config : ModelConfig, optional
        Architecture; keyword arguments build one when omitted, e.g.
        ``UNet(spatial_dims=3, in_channels=1, out_channels=3, depth=4, base_filters=32)``.

    Notes
    -----
    Spatial input sizes must be multiples of :attr:`size_multiple`; the inference engine pads
    tiles to valid sizes and crops back, so callers of :func:`napari_unet.predict` never have to.
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**kwargs)
        elif kwargs:
            config = config.replace(**kwargs)
        self.config = config
        cfg = config
        conv = nn.Conv2d if cfg.spatial_dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if cfg.spatial_dims == 2 else nn.ConvTranspose3d
        pool = nn.MaxPool2d if cfg.spatial_dims == 2 else nn.MaxPool3d
        f = cfg.filters

        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin = cfg.in_channels
        for level in range(cfg.depth):
            self.encoders.append(_DoubleConv(cin, f[level], cfg))
            factor = cfg.level_factors[level]
            self.pools.append(pool(kernel_size=factor, stride=factor))
            cin = f[level]
        self.bottleneck = _DoubleConv(cin, f[cfg.depth], cfg)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(cfg.depth)):
            factor = cfg.level_factors[level]
            self.ups.append(up(f[level + 1], f[level], kernel_size=factor, stride=factor))
            self.decoders.append(_DoubleConv(2 * f[level], f[level], cfg))
        self.head = conv(f[0], cfg.out_channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) initialisation for ReLU networks; norms start as identity."""
        if any(p.is_meta for p in self.parameters()):
            return  # built to receive saved weights (checkpoint.unet_from_state)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)) or (
                isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.affine
            ):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def spatial_dims(self) -> int:
        return self.config.spatial_dims

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Valid spatial input sizes are multiples of these (product of pooling factors)."""
        return self.config.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = 2 + self.config.spatial_dims
        if x.ndim != expected:
            raise ValueError(
                f"UNet with spatial_dims={self.config.spatial_dims} expects a "
                f"{expected}D tensor (N, C, ...), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet expects {self.config.in_channels} input channel(s), got {x.shape[1]}"
            )
        bad = [s for s, m in zip(x.shape[2:], self.size_multiple, strict=True) if s % m]
        if bad:
            raise ValueError(
                f"spatial input shape {tuple(x.shape[2:])} must be a multiple of "
                f"{self.size_multiple}; pad the input (predict() does this for you)"
            )
        skips = []
        for enc, pool in zip(self.encoders, self.pools, strict=True):
            x = enc(x)
            skips.append(x)
            x = pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
