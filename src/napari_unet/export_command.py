"""``napari-unet export``: a model as a bioimage.io package (.zip) or an ONNX file (.onnx),
optionally INT8-quantised for CPUs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import EXPORT_FORMATS, QUANTIZE_MODES
from .errors import InputError

__all__ = ["add_export_parser"]


def _export(args: argparse.Namespace) -> int:
    fmt = args.format or ("onnx" if str(args.out).lower().endswith(".onnx") else "bioimageio")
    if fmt == "onnx":
        return _export_onnx(args)
    if args.quantize != "none":
        raise InputError("--quantize applies to --format onnx only")
    from .bioimageio_export import export_bioimageio

    test_image = _read(args.test_image) if args.test_image else None
    path = export_bioimageio(
        args.model, args.out, name=args.name,
        description=args.description, authors=args.author or ("napari-unet user",),
        license=args.license, test_image=test_image)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), a valid bioimage.io model package")
    return 0


def _read(path: str) -> Any:
    import numpy as np

    from .io import open_volume

    return np.asarray(open_volume(path)[0])


def _export_onnx(args: argparse.Namespace) -> int:
    from .folders import batch_inputs
    from .onnx_export import export_onnx, quantize_onnx

    out = Path(args.out)
    if args.quantize == "int8" and not args.calibration:
        raise InputError("--quantize int8 needs --calibration IMAGES (a folder, glob or files "
                         "of typical inputs: activations are calibrated on them)")
    calibration = batch_inputs(args.calibration) if args.calibration else []
    if args.quantize == "none":
        path = export_onnx(args.model, out)
    else:
        plain = out.with_name(out.stem + ".fp32.onnx")
        export_onnx(args.model, plain)
        try:
            path = quantize_onnx(plain, out, (_read(str(p)) for p in calibration))
        finally:
            plain.unlink(missing_ok=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); predict with it as with any "
          f"model file: napari-unet predict --model {path} IMAGE OUT")
    return 0


def add_export_parser(sub: Any) -> None:
    """The ``export`` subcommand of the ``napari-unet`` parser."""
    p = sub.add_parser("export", help="write a model as a bioimage.io model package (.zip) or "
                                      "an ONNX file (.onnx)")
    p.add_argument("model", help="a model file, or 'nuclei' for the built-in model")
    p.add_argument("out", help="the file to write: a package (.zip) or an ONNX file (.onnx)")
    p.add_argument("--format", choices=EXPORT_FORMATS,
                   help="default: onnx for an .onnx file name, else bioimageio")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                   help="onnx: 'int8' quantises weights and activations (static, calibrated "
                        "on --calibration images) for faster CPU inference")
    p.add_argument("--calibration", nargs="+",
                   help="images to calibrate INT8 activations on (a folder, glob or files)")
    p.add_argument("--name", help="bioimageio: model name shown by the zoo (default: the "
                                  "model's)")
    p.add_argument("--description", help="bioimageio: one-line description")
    p.add_argument("--author", action="append", help="bioimageio: author name (repeat)")
    p.add_argument("--license", default="CC-BY-4.0", help="bioimageio: SPDX licence of the "
                                                          "weights")
    p.add_argument("--test-image", help="bioimageio: test input (.tif / .zarr), sizes a "
                                        "multiple of the network's pooling (default: a "
                                        "synthetic image)")
    p.set_defaults(func=_export)
