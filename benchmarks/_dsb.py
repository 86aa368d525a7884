"""DSB 2018 helpers shared by the benchmarks and the built-in model's training script:
loading a split, gray / colour inputs, and scores pooled over objects and averaged per image,
by modality."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.metrics import DEFAULT_THRESHOLDS, match_instances

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018"


def load_split(root: Path, split: str
               ) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[str]]:
    """Stems, images, labels (int32) and kinds ("gray" / "color") of one split."""
    with open(root / "manifest.csv") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["split"] == split),
                      key=lambda r: r["stem"])
    stems = [r["stem"] for r in rows]
    images = [tifffile.imread(root / split / "images" / f"{s}.tif") for s in stems]
    labels = [tifffile.imread(root / split / "labels" / f"{s}.tif").astype(np.int32)
              for s in stems]
    return stems, images, labels, [r["kind"] for r in rows]


def to_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        return image[..., :3].astype(np.float32).mean(axis=-1)
    return image.astype(np.float32)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Channels-first RGB: colour images keep their colour, gray ones are repeated."""
    image = np.asarray(image).astype(np.float32)
    if image.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(image[..., :3], -1, 0))
    return np.repeat(image[None], 3, axis=0)


def image_counts(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Per-image counts from which pooled and per-image scores are both computed."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    scores = match_instances(pred, truth, DEFAULT_THRESHOLDS)
    fp_, ft = pred > 0, truth > 0
    return {
        "tp": [s.tp for s in scores], "fp": [s.fp for s in scores],
        "fn": [s.fn for s in scores],
        "inter": int((fp_ & ft).sum()), "area_pred": int(fp_.sum()), "area_true": int(ft.sum()),
    }


def summarise(rows: Sequence[dict]) -> dict[str, float]:
    """Pooled (objects of all images together, as StarDist's ``matching_dataset``) and
    per-image-mean Dice, AP@0.5, AP@0.75 and mean AP over 0.5:0.95."""
    if not rows:
        return {}
    tp = np.array([r["tp"] for r in rows], float)
    fp = np.array([r["fp"] for r in rows], float)
    fn = np.array([r["fn"] for r in rows], float)
    th = list(DEFAULT_THRESHOLDS)
    i50, i75 = th.index(0.5), th.index(0.75)
    pooled_ap = tp.sum(0) / np.maximum(1, (tp + fp + fn).sum(0))
    denom = tp + fp + fn
    per_image_ap = np.where(denom > 0, tp / np.maximum(denom, 1), 1.0)
    inter = np.array([r["inter"] for r in rows], float)
    areas = np.array([r["area_pred"] + r["area_true"] for r in rows], float)
    dice_img = np.where(areas > 0, 2 * inter / np.maximum(areas, 1), 1.0)
    return {
        "n": len(rows),
        "dice_pooled": float(2 * inter.sum() / max(1.0, areas.sum())),
        "ap50_pooled": float(pooled_ap[i50]), "ap75_pooled": float(pooled_ap[i75]),
        "map_pooled": float(pooled_ap.mean()),
        "dice": float(dice_img.mean()), "ap50": float(per_image_ap[:, i50].mean()),
        "ap75": float(per_image_ap[:, i75].mean()), "map": float(per_image_ap.mean()),
    }


def by_kind(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Summaries over all images and per modality (``kind`` of each row)."""
    out = {"all": summarise(rows)}
    for kind in sorted({r["kind"] for r in rows}):
        out[kind] = summarise([r for r in rows if r["kind"] == kind])
    return out


def save(path: Path, name: str, rows: list[dict], **meta) -> dict:
    record = {"name": name, **meta, "scores": by_kind(rows), "images": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


COLUMNS = ("dice_pooled", "ap50_pooled", "ap75_pooled", "map_pooled", "dice", "ap50", "map")


def table(records: Sequence[dict]) -> str:
    """Markdown table: one row per method, pooled and per-image scores, AP@0.5 by modality."""
    head = ("| method | budget | Dice (pooled) | AP@0.5 pooled (gray / colour) | AP@0.75 pooled "
            "| mean AP pooled | Dice per image | AP@0.5 per image (gray / colour) | "
            "mean AP per image |")
    lines = [head, "|" + "---|" * 9]
    for r in records:
        s = r["scores"]
        a, g, c = s["all"], s.get("gray", {}), s.get("color", {})
        lines.append(
            f"| {r['name']} | {r.get('budget', '')} | {a['dice_pooled']:.3f} | "
            f"{a['ap50_pooled']:.3f} ({g.get('ap50_pooled', float('nan')):.3f} / "
            f"{c.get('ap50_pooled', float('nan')):.3f}) | {a['ap75_pooled']:.3f} | "
            f"{a['map_pooled']:.3f} | {a['dice']:.3f} | {a['ap50']:.3f} "
            f"({g.get('ap50', float('nan')):.3f} / {c.get('ap50', float('nan')):.3f}) | "
            f"{a['map']:.3f} |")
    return "\n".join(lines)
