"""The built-in model as torch (fp32, and bf16 autocast where the CPU computes it natively),
as an ONNX file (fp32) and INT8-quantised (static, calibrated on DSB 2018 *train* images), on
the 66 DSB 2018 val images: scores and time, measured side by side (each image runs every
variant in turn, so machine noise falls on all of them alike).

    .venv/bin/python benchmarks/onnx_int8.py [--calibration-images 16] [--repeats 2]

The whole prediction is timed (normalisation, tiles, network, labelling), as a user sees it,
and the network alone on a batch of four 256^2 tiles.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _dsb  # noqa: E402

import napari_unet as nu  # noqa: E402
from napari_unet.inference.device import cpu_has_fast_bf16  # noqa: E402
from napari_unet.model.onnx_model import OnnxModel  # noqa: E402


def network_seconds(run, repeats: int = 5) -> float:
    x = torch.rand(4, 1, 256, 256)
    run(x)
    t = time.perf_counter()
    for _ in range(repeats):
        run(x)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="passes over val, timed")
    args = parser.parse_args()
    _, train_images, _, _ = _dsb.load_split(_dsb.DATA, "train")
    stems, images, labels, kinds = _dsb.load_split(_dsb.DATA, "val")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train_images), args.calibration_images, replace=False)
    folder = Path(tempfile.mkdtemp())
    fp32 = nu.export_onnx(None, folder / "nuclei.onnx")
    t = time.perf_counter()
    int8 = nu.quantize_onnx(fp32, folder / "nuclei_int8.onnx",
                            [_dsb.to_gray(train_images[i]) for i in picks])
    print(f"quantised in {time.perf_counter() - t:.1f} s; sizes: fp32 "
          f"{fp32.stat().st_size / 1e6:.1f} MB, int8 {int8.stat().st_size / 1e6:.1f} MB")

    variants = {"torch fp32": (None, "fp32"), "onnx fp32": (str(fp32), "fp32"),
                "onnx int8": (str(int8), "fp32")}
    if cpu_has_fast_bf16():
        variants["torch bf16"] = (None, "bf16")
    preds = {name: [] for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for rep in range(args.repeats):
        for image in images:
            gray = _dsb.to_gray(image)
            for name, (model, precision) in variants.items():
                t = time.perf_counter()
                labels_ = nu.predict(model, gray, mode="instances", precision=precision)
                seconds[name] += time.perf_counter() - t
                if rep == 0:
                    preds[name].append(np.asarray(labels_))

    from napari_unet.inference.device import inference_module
    from napari_unet.model.checkpoint import load_model
    from napari_unet.models import model_path

    module = inference_module(load_model(model_path(None)), torch.device("cpu"), 2)
    with torch.inference_mode():
        net = {"torch fp32": network_seconds(module),
               "onnx fp32": network_seconds(OnnxModel(fp32)),
               "onnx int8": network_seconds(OnnxModel(int8))}
        if "torch bf16" in variants:
            with torch.autocast("cpu", torch.bfloat16):
                net["torch bf16"] = network_seconds(module)

    base = seconds["torch fp32"]
    print("| variant | val, s (66 images) | vs torch fp32 | network 4 x 256^2, ms | vs torch fp32 "
          "| Dice pooled | AP@0.5 pooled (gray / colour) | mean AP pooled | AP@0.5 per image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in variants:
        rows = [{"stem": s, "kind": k, **_dsb.image_counts(p, t)}
                for p, t, k, s in zip(preds[name], labels, kinds, stems, strict=True)]
        sm, bk = _dsb.summarise(rows), _dsb.by_kind(rows)
        print(f"| {name} | {seconds[name] / args.repeats:.1f} | {base / seconds[name]:.2f}x | "
              f"{net[name] * 1e3:.0f} | {net['torch fp32'] / net[name]:.2f}x | "
              f"{sm['dice_pooled']:.3f} | {sm['ap50_pooled']:.3f} "
              f"({bk['gray']['ap50_pooled']:.3f} / {bk['color']['ap50_pooled']:.3f}) | "
              f"{sm['map_pooled']:.3f} | {sm['ap50']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
