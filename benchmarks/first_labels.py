"""Time to first labels in the segment widget: from the click on Segment to the first
segmented pixels on screen, for a 2048^2 image with the built-in model on this CPU -- kept in
memory (the widget's choice for an image this size) and written to a zarr store -- next to
the time until the whole result is shown.  Under Xvfb; each case in a fresh viewer.

    xvfb-run -a .venv/bin/python benchmarks/first_labels.py [--side 2048] [--repeats 2]
        [--think 3]   (seconds from opening the widget to the click)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "first_labels.json"


def one(image: np.ndarray, store: str, mode: str, think: float = 0.0) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._napari._segment_widget import SegmentWidget

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(image, name="img")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.reset_choices()
    w.image.value = layer
    w.mode.value = mode
    w.store.value = store
    if store == "zarr file":
        w.store_path.value = str(Path(tempfile.mkdtemp(prefix="nu-first-")) / "r.zarr")
    t_open = time.perf_counter()
    while True:  # the user picks the image and settings before clicking
        app.processEvents()
        if time.perf_counter() - t_open >= think:
            break
        time.sleep(0.01)
    t0 = time.perf_counter()
    job = w.run()
    first = None
    while job.running or first is None:
        app.processEvents()
        result = [lay for lay in viewer.layers if lay is not layer]
        if first is None and result:
            data = result[0].data
            plane = data[0] if getattr(result[0], "multiscale", False) else data
            if np.asarray(plane).any():
                viewer.screenshot(canvas_only=True)  # drawn
                first = time.perf_counter() - t0
        if not job.running and first is None:
            first = float("nan")
        time.sleep(0.01)
    for _ in range(10):
        app.processEvents()
    total = time.perf_counter() - t0
    viewer.close()
    return {"store": store, "mode": mode, "first_labels_s": first, "all_shown_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--think", type=float, default=3.0,
                        help="seconds between opening the widget and the click (a user "
                             "choosing the image and settings)")
    args = parser.parse_args()
    from napari_unet.data.synthetic import synthetic_nuclei

    image, _ = synthetic_nuclei((args.side, args.side), seed=0)
    rows = []
    for _ in range(args.repeats):  # interleaved: the machine is noisy
        for store in ("memory", "zarr file"):
            for mode in ("instances", "semantic"):
                row = one(image, store, mode, args.think)
                print(json.dumps(row), flush=True)
                rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"side": args.side, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
