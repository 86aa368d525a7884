"""Take the documentation screenshots: each widget at work on the bundled sample data.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python scripts/screenshots.py

Uses the built-in nuclei model for segmentation and trains a small model for the train widget.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def wait(job, timeout: float = 900) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while job is not None and job.running and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import imageio.v3 as iio
    import napari

    from napari_unet._napari._evaluate_widget import EvaluateWidget
    from napari_unet._napari._segment_widget import SegmentWidget
    from napari_unet._napari._train_widget import TrainWidget

    def shot(viewer, name):
        img = viewer.screenshot(canvas_only=False, flash=False)
        iio.imwrite(args.out / name, img)
        print("wrote", args.out / name, img.shape)

    # Segment + evaluate: the real DSB sample with the built-in model.
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-unet", "dsb2018-nuclei")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment with U-Net")
    seg.reset_choices()
    seg.image.value = viewer.layers["DSB 2018 nuclei"]
    wait(seg.run())
    viewer.layers["DSB 2018 nuclei labels"].visible = False
    shot(viewer, "segment_widget.png")

    ev = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(ev, name="Evaluate segmentation")
    ev.reset_choices()
    ev.pred.value = viewer.layers["DSB 2018 nuclei instances"]
    ev.truth.value = viewer.layers["DSB 2018 nuclei labels"]
    wait(ev.run())
    viewer.layers["DSB 2018 nuclei instances"].visible = False
    shot(viewer, "evaluate_widget.png")
    viewer.close()

    # Train: synthetic 2D nuclei, a short run with the live plot and preview.
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 1000)
    viewer.open_sample("napari-unet", "nuclei-2d")
    tr = TrainWidget(viewer)
    viewer.window.add_dock_widget(tr, name="Train U-Net")
    tr.reset_choices()
    tr.image.value = viewer.layers["nuclei 2D"]
    tr.labels.value = viewer.layers["nuclei 2D labels"]
    tr.depth.value, tr.filters.value = 3, 8
    tr.patch.value = "128,128"
    tr.epochs.value, tr.steps.value, tr.batch_size.value = 8, 15, 8
    tr.lr.value = 3e-3
    tr.run_dir.value = tempfile.mkdtemp(prefix="nu-shot-")
    wait(tr.start())
    if tr._preview_job is not None:
        wait(tr._preview_job)
    viewer.layers["nuclei 2D labels"].visible = False
    shot(viewer, "train_widget.png")
    viewer.close()


if __name__ == "__main__":
    main()
