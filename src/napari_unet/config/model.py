"""Architecture of a U-Net."""

from __future__ import annotations

import dataclasses

from ._base import Config, ConfigError, document, int_tuple, option

__all__ = ["ModelConfig", "NORMS", "EXPORT_FORMATS", "QUANTIZE_MODES"]

NORMS = ("auto", "batch", "instance", "group", "none")
# What ``napari-unet export`` writes, and how an ONNX export may be quantised.
EXPORT_FORMATS = ("bioimageio", "onnx")
QUANTIZE_MODES = ("none", "int8")


@document
@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    """Architecture of a :class:`~napari_unet.model.unet.UNet`."""

    spatial_dims: int = option(2, "2 for YX images, 3 for ZYX volumes.", choices=(2, 3),
                               flag="--dims")
    in_channels: int = option(1, "Input channels.", low=1, cli=False)
    out_channels: int = option(
        2, "Output classes (logits); 1 means a binary model whose logit goes through a "
           "sigmoid.", low=1, cli=False)
    depth: int = option(4, "Number of poolings (3-6 typical).", low=1, high=6)
    base_filters: int = option(16, "Filters of the first level (16-64 typical).", low=1,
                               flag="--filters", label="base filters")
    growth: float = option(2.0, "Filter growth per level (1.5-2 typical).", low=1.0, high=4.0)
    norm: str = option(
        "auto", "Normalisation after each convolution: 'auto' is batch norm in 2D and group "
                "norm in 3D (small 3D batches).", choices=NORMS)
    groups: int = option(8, "Groups of group norm (reduced to a divisor of the channels).",
                         low=1)
    dropout: float = option(0.0, "Dropout probability in the bottleneck.", low=0.0, high=1.0,
                            open_high=True)
    pool_factors: tuple[tuple[int, ...], ...] | None = option(
        None, "Pooling factor per level and axis, e.g. [(1, 2, 2), (1, 2, 2), (2, 2, 2)] for "
              "an anisotropic stack; None: 2 along every axis at every level.", cli=False)

    def _check(self) -> None:
        if self.norm == "auto":
            self._set("norm", "batch" if self.spatial_dims == 2 else "group")
        if self.pool_factors is not None:
            factors = tuple(
                int_tuple(f, f"pool_factors[{i}]", self.spatial_dims)
                for i, f in enumerate(self.pool_factors)
            )
            if len(factors) != self.depth:
                raise ConfigError(
                    f"pool_factors needs one entry per level (depth={self.depth}), "
                    f"got {len(factors)}"
                )
            if any(v < 1 for f in factors for v in f):  # type: ignore[union-attr]
                raise ConfigError(f"pool factors must be >= 1, got {factors}")
            self._set("pool_factors", factors)

    @property
    def level_factors(self) -> tuple[tuple[int, ...], ...]:
        """Pooling factor per level and axis (explicit form of ``pool_factors``)."""
        if self.pool_factors is None:
            return tuple((2,) * self.spatial_dims for _ in range(self.depth))
        return self.pool_factors

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Each spatial size fed to the network must be a multiple of these."""
        out = [1] * self.spatial_dims
        for factors in self.level_factors:
            out = [o * f for o, f in zip(out, factors, strict=True)]
        return tuple(out)

    @property
    def filters(self) -> tuple[int, ...]:
        """Filters per level, from the top level down to the bottleneck."""
        return tuple(
            max(1, int(round(self.base_filters * self.growth**i))) for i in range(self.depth + 1)
        )
