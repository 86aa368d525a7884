"""Levers at inference time for the built-in model on DSB 2018 val (66 images): instance
post-processing and test-time rescaling, scored as anchors_dsb.py scores (pooled over objects
and per image).

    .venv/bin/python benchmarks/builtin_levers.py postprocess
    .venv/bin/python benchmarks/builtin_levers.py scale

``postprocess``: the model's probabilities once, then labelled with variants of the rule the
engine uses (seeds: argmax interior; foreground: argmax not background; seeds grown 9 px;
seeds under 10 px dropped): seed and foreground thresholds on the probabilities, growth
distance, a watershed instead of growth, smallest seed.
``scale``: each image resized by a factor before prediction and the labels resized back
(nearest), factors 0.75 / 1 / 1.5 / 2; per image the best factor (an oracle, what a perfect
size estimate could give) and a rule on the median object area of the factor-1 prediction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _dsb  # noqa: E402

import napari_unet as nu  # noqa: E402


def label(p: np.ndarray, seed_t=None, fg_t=None, grow="expand", dist=9, min_size=10):
    from skimage.segmentation import expand_labels, watershed

    cls = p.argmax(0)
    seeds = ndi.label((cls == 1) if seed_t is None else (p[1] > seed_t))[0]
    fg = (cls > 0) if fg_t is None else (p[0] < 1 - fg_t)
    keep = np.bincount(seeds.ravel()) >= min_size
    keep[0] = False
    seeds = np.where(keep[seeds], seeds, 0)
    if grow == "expand":
        grown = expand_labels(seeds, dist)
    else:  # watershed on the background (+ boundary classes) probability
        grown = watershed(p[0] + (p[2] + p[3] if grow == "watershed-boundary" else 0), seeds,
                          mask=fg)
    return np.where(fg, grown, 0)


def line(name: str, rows: list[dict]) -> str:
    sm, bk = _dsb.summarise(rows), _dsb.by_kind(rows)
    return (f"| {name} | {sm['dice_pooled']:.3f} | {sm['ap50_pooled']:.3f} "
            f"({bk['gray']['ap50_pooled']:.3f} / {bk['color']['ap50_pooled']:.3f}) | "
            f"{sm['ap75_pooled']:.3f} | {sm['map_pooled']:.3f} | {sm['ap50']:.3f} |")


HEADER = ("| variant | Dice pooled | AP@0.5 pooled (gray / colour) | AP@0.75 pooled | "
          "mean AP pooled | AP@0.5 per image |\n|---|---|---|---|---|---|")


def postprocess(stems, images, labels, kinds) -> None:
    probs = [np.asarray(nu.predict(None, _dsb.to_gray(i), mode="probabilities"),
                        dtype=np.float32) for i in images]
    variants = {"engine's rule": {}}
    variants |= {f"seeds p(interior) > {t}": {"seed_t": t} for t in (0.3, 0.4, 0.5, 0.6)}
    variants |= {f"foreground p > {t}": {"fg_t": t} for t in (0.3, 0.4, 0.6)}
    variants |= {f"grow {d} px": {"dist": d} for d in (5, 7, 12, 20)}
    variants |= {"watershed on p(background)": {"grow": "watershed"},
                 "watershed on p(background + boundary)": {"grow": "watershed-boundary"}}
    variants |= {f"smallest seed {m} px": {"min_size": m} for m in (0, 20, 40)}
    print(HEADER)
    for name, kw in variants.items():
        rows = [{"stem": s, "kind": k, **_dsb.image_counts(label(p, **kw), t)}
                for p, t, k, s in zip(probs, labels, kinds, stems, strict=True)]
        print(line(name, rows), flush=True)


def scale(stems, images, labels, kinds) -> None:
    from skimage.transform import resize

    factors = (0.75, 1.0, 1.5, 2.0)
    rows = {f: [] for f in factors}
    areas = []
    for image, truth, kind, stem in zip(images, labels, kinds, stems, strict=True):
        gray = _dsb.to_gray(image)
        for f in factors:
            x = gray if f == 1 else resize(gray, [round(n * f) for n in gray.shape], order=1,
                                           preserve_range=True, anti_aliasing=f < 1)
            pred = np.asarray(nu.predict(None, x.astype(np.float32), mode="instances"))
            if f != 1:
                pred = resize(pred, truth.shape, order=0, preserve_range=True,
                              anti_aliasing=False).astype(np.int32)
            rows[f].append({"stem": stem, "kind": kind, **_dsb.image_counts(pred, truth)})
            if f == 1:
                sizes = np.bincount(pred.ravel())[1:]
                areas.append(float(np.median(sizes[sizes > 0])) if (sizes > 0).any() else 0)
    print(HEADER)
    for f in factors:
        print(line(f"factor {f}", rows[f]))

    def ap50(r: dict) -> float:
        return r["tp"][0] / max(1, r["tp"][0] + r["fp"][0] + r["fn"][0])

    best = [max((rows[f][i] for f in factors), key=ap50) for i in range(len(images))]
    print(line("best factor per image (oracle)", best))
    for limit in (80, 100, 150, 200):
        chosen = [rows[1.5 if areas[i] < limit else 1.0][i] for i in range(len(images))]
        print(line(f"factor 1.5 where the median object < {limit} px", chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lever", choices=("postprocess", "scale"))
    args = parser.parse_args()
    split = _dsb.load_split(_dsb.DATA, "val")
    {"postprocess": postprocess, "scale": scale}[args.lever](*split)


if __name__ == "__main__":
    main()
