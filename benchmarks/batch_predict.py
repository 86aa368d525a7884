"""Batch prediction against what a user does without it: one ``napari-unet predict`` per
file from a shell loop (a process, torch and the model loaded per image), and a Python loop
of ``nu.predict`` calls writing each mask, side by side with ``napari-unet predict FOLDER``
(``predict_many``: model loaded once, masks + overlays + summary.csv) on the 66 DSB 2018
``val/`` images with the built-in model, CPU.

    .venv/bin/python benchmarks/batch_predict.py [--limit 66]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

RESULTS = Path(__file__).resolve().parent / "results" / "batch_predict.json"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018" / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=66)
    parser.add_argument("--data", type=Path, default=DATA / "images")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.tif"))[: args.limit]
    tmp = Path(tempfile.mkdtemp(prefix="nu-batch-"))
    folder = tmp / "images"
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    exe = Path(sys.executable).parent / "napari-unet"
    rows = {}
    try:
        # A shell loop: one process per image, writing a zarr store each (what predict takes).
        t = time.perf_counter()
        for f in files:
            subprocess.run([str(exe), "predict", str(f), str(tmp / "loop" / f"{f.stem}.zarr"),
                            "--mode", "instances", "--device", "cpu", "--quiet"],
                           check=True, capture_output=True)
        rows["shell loop of napari-unet predict"] = time.perf_counter() - t
        # A Python loop of predict in one process, each mask written as TIFF.
        import napari_unet as nu

        model = None  # the built-in model (loaded per call, as predict does)
        t = time.perf_counter()
        (tmp / "pyloop").mkdir()
        for f in files:
            labels = nu.predict(model, str(f), mode="instances", device="cpu")
            tifffile.imwrite(tmp / "pyloop" / f.name, np.asarray(labels))
        rows["python loop of nu.predict"] = time.perf_counter() - t
        # The batch command: masks, overlays and summary.csv.
        t = time.perf_counter()
        subprocess.run([str(exe), "predict", str(folder), str(tmp / "batch"), "--mode",
                        "instances", "--device", "cpu", "--quiet"], check=True,
                       capture_output=True)
        rows["napari-unet predict FOLDER (with overlays)"] = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([str(exe), "predict", str(folder), str(tmp / "batch"), "--mode",
                        "instances", "--device", "cpu", "--quiet"], check=True,
                       capture_output=True)
        rows["the same again (all finished: skipped)"] = time.perf_counter() - t
        same = all(np.array_equal(tifffile.imread(tmp / "batch" / "masks" / f.name),
                                  tifffile.imread(tmp / "pyloop" / f.name)) for f in files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows["shell loop of napari-unet predict"]
    record = {"images": len(files), "seconds": rows,
              "images_per_s": {k: len(files) / v for k, v in rows.items()},
              "speedup_vs_shell_loop": {k: base / v for k, v in rows.items()},
              "masks_identical_to_python_loop": same}
    print(json.dumps(record, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
