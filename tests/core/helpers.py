"""Small models and data shared by the core tests."""

from __future__ import annotations

import torch


class Identity(torch.nn.Module):
    """Returns its input: the engine must give back the normalised image exactly."""

    def __init__(self, spatial_dims: int, channels: int = 1, multiple: int = 1) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = channels
        self.out_channels = channels
        self.size_multiple = (multiple,) * spatial_dims
        self.metadata = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Times(torch.nn.Module):
    """Multiplies by a weight: a 'model' with parameters, for checkpoint-free invariance tests."""

    def __init__(self, spatial_dims: int, factor: float = 2.0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = 1
        self.out_channels = 1
        self.w = torch.nn.Parameter(torch.tensor(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class LocalConv(torch.nn.Module):
    """Two 3x3(x3) convolutions: each output voxel sees only 2 voxels around it, so tiles
    with at least that much context reproduce a whole-image pass.  Counts the voxels it
    computes."""

    def __init__(self, spatial_dims: int, multiple: int = 1) -> None:
        super().__init__()
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.Tanh(),
                                       conv(4, 2, 3, padding=1))
        self.spatial_dims = spatial_dims
        self.in_channels = 1
        self.out_channels = 2
        self.size_multiple = (multiple,) * spatial_dims
        self.metadata = {}
        self.voxels = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.voxels += x.shape[0] * x[0, 0].numel()
        return self.net(x)


def tiny_unet(spatial_dims: int = 3, out_channels: int = 2, **kw):
    from napari_unet import UNet

    torch.manual_seed(0)
    model = UNet(spatial_dims=spatial_dims, in_channels=kw.pop("in_channels", 1),
                 out_channels=out_channels, depth=kw.pop("depth", 2),
                 base_filters=kw.pop("base_filters", 4), norm=kw.pop("norm", "batch"), **kw)
    # Non-trivial BatchNorm statistics, as in a trained model.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


class Levels(torch.nn.Module):
    """Intensity level -> class: the class whose level is nearest the normalised intensity
    wins (e.g. 0 background, 1 interior, 0.5 boundary, 0.25 contact)."""

    def __init__(self, spatial_dims: int, levels: tuple[float, ...], **metadata) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = 1
        self.out_channels = len(levels)
        self.register_buffer("levels", torch.tensor(levels).view(1, -1, *[1] * spatial_dims))
        self.metadata = dict(metadata)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -100.0 * (x - self.levels) ** 2


class DistanceOracle(torch.nn.Module):
    """A ``distance`` model that reads its answer off the input: the normalised image is the
    foreground (> 0) and each voxel's normalised distance (its value, 0-1)."""

    def __init__(self, spatial_dims: int, grow: int = 8, seed_threshold: float = 0.5) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = 1
        self.out_channels = 2
        self.metadata = {"label_mode": "instances", "output": "distance", "grow": grow,
                         "seed_threshold": seed_threshold}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.where(x > 0, 10.0, -10.0), torch.log(d / (1 - d))], dim=1)
