"""Export a model as a bioimage.io model package (format 0.5), for the model zoo and the tools
that read it (ilastik, deepImageJ, bioimageio.core, ...).

The package holds TorchScript weights of the network followed by its activation (softmax, or
a sigmoid for one-channel models), so consumers get class probabilities without knowing the
architecture; the input's preprocessing is the model's own percentile normalisation
(``scale_range``); the output axes carry a halo (the context the model wants around a tile);
a test image and the model's output for it let any consumer check the weights. Instance
labelling (seeds from the interior class, regrown within the foreground) cannot be said in
the format: the generated documentation describes it, and napari-unet's ``predict`` does it.

Needs the optional dependency ``bioimageio.spec`` (``pip install napari-unet[bioimageio]``).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import InputError

__all__ = ["MissingDependencyError", "export_bioimageio"]

_CITE_UNET = ("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
              "Segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28")


class _WithActivation(torch.nn.Module):
    """The network followed by its activation: class probabilities out."""

    def __init__(self, net: torch.nn.Module, sigmoid: bool) -> None:
        super().__init__()
        self.net = net
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.sigmoid(y) if self.sigmoid else torch.softmax(y, dim=1)


from .errors import MissingDependencyError  # noqa: E402


def _spec():
    try:
        import bioimageio.spec as spec
        from bioimageio.spec.model import v0_5
    except ImportError as err:
        raise MissingDependencyError(
            "exporting to bioimage.io needs the bioimageio.spec package: "
            "pip install 'napari-unet[bioimageio]'"
        ) from err
    return spec, v0_5


def _test_image(model: Any, spatial: Sequence[int], image: Any
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(1, C, *spatial)`` float32 test input, as given and normalised as the package's
    preprocessing does (``scale_range``)."""
    from .data.synthetic import synthetic_nuclei

    cfg = model.config
    if image is None:
        image, _ = synthetic_nuclei(tuple(spatial), seed=0)
        image = np.repeat(image[None], cfg.in_channels, axis=0)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == cfg.spatial_dims:
        image = image[None]
    if image.ndim != cfg.spatial_dims + 1 or image.shape[0] != cfg.in_channels:
        raise InputError(
            f"test image of shape {image.shape}: the model takes {cfg.in_channels} channel(s) "
            f"of {cfg.spatial_dims}D images; give (C, {'Z, ' if cfg.spatial_dims == 3 else ''}"
            "Y, X) or, for one channel, the image alone"
        )
    bad = [s for s, m in zip(image.shape[1:], cfg.size_multiple, strict=True) if s % m]
    if bad:
        raise InputError(
            f"test image of shape {image.shape}: its sizes must be multiples of "
            f"{cfg.size_multiple} (the network's pooling); crop it"
        )
    percentiles = _percentiles(model)
    if percentiles is None:
        return image[None], image[None]
    axes = tuple(range(1, image.ndim))
    lo = np.percentile(image, percentiles[0], axis=axes, keepdims=True)
    hi = np.percentile(image, percentiles[1], axis=axes, keepdims=True)
    return image[None], ((image - lo) / (hi - lo + 1e-6))[None].astype(np.float32)


def _percentiles(model: Any) -> tuple[float, float] | None:
    """The model's normalisation percentiles, as ``predict`` uses them (None: none)."""
    from .normalize import DEFAULT_PERCENTILES

    norm = model.metadata.get("normalization") or {}
    if norm.get("kind") == "none":
        return None
    if norm.get("kind") != "percentile":
        return DEFAULT_PERCENTILES
    return float(norm["low"]), float(norm["high"])


def _documentation(model: Any, name: str, halo: Sequence[int]) -> str:
    meta = model.metadata
    cfg = model.config
    classes = meta.get("class_names") or [f"class {i}" for i in range(cfg.out_channels)]
    percentiles = _percentiles(model)
    lines = [
        f"# {name}",
        "",
        f"A {cfg.spatial_dims}D U-Net (depth {cfg.depth}, {cfg.base_filters} filters in the "
        f"first level) trained with napari-unet {meta.get('napari_unet_version', '')}.",
        "",
        "## Input",
        f"{cfg.in_channels} channel(s), " + (
            "not normalised." if percentiles is None else
            f"each scaled so that its {percentiles[0]}th percentile maps to 0 and its "
            f"{percentiles[1]}th to 1 (napari-unet computes the percentiles once per volume)."),
    ]
    norm = meta.get("normalization") or {}
    if norm.get("invert") in ("auto", "always"):
        lines += ["", "napari-unet inverts images with dark objects on a bright background "
                  f"(`invert={norm['invert']!r}`); invert such images before using this "
                  "package elsewhere."]
    if meta.get("rgb_to_gray"):
        lines += ["", "Colour images are averaged to gray first."]
    lines += [
        "", "## Output",
        "Class probabilities, one channel per class: " + ", ".join(map(str, classes)) + ".",
        f"Give each tile {', '.join(map(str, halo))} voxels of context per side (the halo).",
    ]
    if meta.get("label_mode") == "instances":
        from .config import PredictConfig

        grow = meta.get("grow") or int(meta.get("boundary_width", 1)) + 1
        lines += [
            "", "## Instances",
            "napari-unet labels objects as the connected components of the pixels whose most "
            f"likely class is `interior` (components under {PredictConfig().min_size} pixels "
            f"dropped), each grown by up to {grow} pixels into the pixels whose most likely "
            "class is not `background`.",
        ]
    for key, title in (("training_data", "Training data"), ("val_scores", "Validation scores"),
                       ("reproduce", "Reproduce")):
        if meta.get(key):
            lines += ["", f"## {title}", str(meta[key])]
    return "\n".join(lines) + "\n"


def export_bioimageio(
    model: Any,
    path: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-unet user",),
    license: str = "CC-BY-4.0",
    test_image: Any = None,
    tags: Sequence[str] = ("napari-unet", "unet", "segmentation"),
) -> Path:
    """Write ``model`` as a bioimage.io model package (a ``.zip``), validated.

    Parameters
    ----------
    model : UNet, path, "nuclei" or None
        The model (None or "nuclei": the built-in nuclei model).
    path : path-like
        The package to write; ``.zip`` is added when missing.  An existing file is replaced
        only once the new package is complete.
    name, description : str, optional
        Shown by the model zoo; default: the model's own name, or one made from its setup.
    authors : sequence of str
        Names of the model's authors.
    license : str
        SPDX licence identifier of the weights.
    test_image : array, optional
        A test input (``(C, *spatial)``, or the image alone for one channel) with sizes that
        are multiples of the network's pooling; default: a synthetic nuclei image of the
        model's recommended tile.
    tags : sequence of str
        Zoo keywords.

    Returns
    -------
    Path
        The written package.
    """
    from .inference.engine import recommended_tile, resolve_model
    from .inference.tiling import overlap_voxels
    from .model.unet import UNet

    spec, v = _spec()
    import pydantic  # bioimageio.spec's own dependency
    model_spec = resolve_model(model)
    net = model_spec.module
    if not isinstance(net, UNet):
        raise TypeError(f"only napari-unet UNet models can be exported, got {type(net).__name__}")
    net = net.float().eval()
    if not hasattr(net, "metadata"):  # a model made in this session, never saved
        net.metadata = {}
    cfg = net.config
    meta = net.metadata
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_name(path.name + ".zip")
    name = name or meta.get("name") or f"napari-unet {cfg.spatial_dims}D U-Net"
    classes = [str(c) for c in (meta.get("class_names")
                                or [f"class{i}" for i in range(cfg.out_channels)])]
    spatial_ids = ("z", "y", "x")[-cfg.spatial_dims:]
    tile = recommended_tile(model_spec)
    halo = tuple(o // 2 for o in overlap_voxels(tile, 0.25))
    percentiles = _percentiles(net)

    raw, x = _test_image(net, tile, test_image)
    wrapped = _WithActivation(net, sigmoid=cfg.out_channels == 1).eval()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        weights = tmp / "weights.pt"
        with torch.no_grad():
            y = wrapped(torch.from_numpy(x)).numpy()
            # The forward's size check is a constant in a trace; TorchScript is deprecated in
            # torch but is the format's portable PyTorch weights (ilastik, deepImageJ, ...).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.trace(wrapped, torch.from_numpy(x), check_trace=False)
                torch.jit.save(traced, str(weights))
        np.save(tmp / "test_input.npy", raw)
        np.save(tmp / "test_output.npy", y.astype(np.float32))
        (tmp / "README.md").write_text(_documentation(net, name, halo))
        _cover(x, y, tmp / "cover.png")

        in_axes = [v.BatchAxis(),
                   v.ChannelAxis(channel_names=[v.Identifier(f"channel{i}")
                                                for i in range(cfg.in_channels)])]
        # The smallest tile leaves output once its halo is cropped.
        in_axes += [v.SpaceInputAxis(id=v.AxisId(a),
                                     size=v.ParameterizedSize(min=(2 * h // m + 1) * m, step=m))
                    for a, m, h in zip(spatial_ids, cfg.size_multiple, halo, strict=True)]
        out_axes = [v.BatchAxis(),
                    v.ChannelAxis(channel_names=[v.Identifier(_identifier(c)) for c in classes])]
        out_axes += [v.SpaceOutputAxisWithHalo(
            id=v.AxisId(a), halo=h,
            size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId(a)))
            for a, h in zip(spatial_ids, halo, strict=True)]
        try:
            descr = v.ModelDescr(
                name=name,
                description=description or (
                    f"{cfg.spatial_dims}D U-Net from napari-unet: "
                    + ", ".join(classes) + " probabilities"),
                authors=[v.Author(name=a) for a in authors],
                cite=[v.CiteEntry(text=_CITE_UNET[0], doi=v.Doi(_CITE_UNET[1]))],
                license=v.LicenseId(license),
                tags=list(tags),
                documentation=v.FileDescr(source=tmp / "README.md"),
                covers=[v.FileDescr(source=tmp / "cover.png")],
                inputs=[v.InputTensorDescr(
                    id=v.TensorId("raw"), axes=in_axes,
                    test_tensor=v.FileDescr(source=tmp / "test_input.npy"),
                    data=v.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[] if percentiles is None else [
                        v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                            axes=[v.AxisId(a) for a in spatial_ids],
                            min_percentile=percentiles[0], max_percentile=percentiles[1]))],
                )],
                outputs=[v.OutputTensorDescr(
                    id=v.TensorId("probabilities"), axes=out_axes,
                    test_tensor=v.FileDescr(source=tmp / "test_output.npy"),
                    data=v.IntervalOrRatioDataDescr(type="float32"),
                )],
                weights=v.WeightsDescr(torchscript=v.TorchscriptWeightsDescr(
                    source=weights,
                    pytorch_version=v.Version(torch.__version__.split("+")[0]),
                )),
            )
        except pydantic.ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in err.errors())
            raise InputError(f"the bioimage.io format refuses this package: {problems}") from err
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial.zip")
        spec.save_bioimageio_package(descr, output_path=partial)
        partial.replace(path)
    return path


def _identifier(text: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in text)
    return out if out and out[0].isalpha() else f"c_{out}"


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Input and most likely class side by side (the middle plane of a 3D tile)."""
    import imageio.v3 as iio

    img = x[0, 0]
    classes = y[0].argmax(0) if y.shape[1] > 1 else (y[0, 0] > 0.5).astype(int)
    if img.ndim == 3:
        img, classes = img[img.shape[0] // 2], classes[classes.shape[0] // 2]
    gray = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 200, 0], [0, 160, 255], [255, 60, 60],
                        [120, 255, 120], [200, 120, 255]], dtype=np.uint8)
    colour = palette[classes % len(palette)]
    iio.imwrite(path, np.concatenate([np.repeat(gray[..., None], 3, -1), colour], axis=1))
