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
    parser.add_argument("--only", choices=("widgets", "large", "batch"),
                        help="one part (default: all)")
    parser.add_argument("--large-side", type=int, default=12288)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "widgets"):
        widgets(args)
    if args.only in (None, "large"):
        large_result(args)
    if args.only in (None, "batch"):
        batch(args)


def _shot(viewer, path: Path) -> None:
    import imageio.v3 as iio

    img = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(path, img)
    print("wrote", path, img.shape)


def large_result(args) -> None:
    """A large result segmented into a zarr store from the segment widget: a multiscale
    labels layer, shown with the whole image in view and at one screen pixel per pixel."""
    import napari
    import numpy as np

    from napari_unet._napari._segment_widget import SegmentWidget
    from napari_unet.data.synthetic import synthetic_nuclei

    side, tile = args.large_side, 2048
    image = np.zeros((side, side), np.uint16)
    for n, y in enumerate(range(0, side, tile)):
        for m, x in enumerate(range(0, side, tile)):
            block, _ = synthetic_nuclei((tile, tile), seed=n * 16 + m)
            image[y:y + tile, x:x + tile] = block[: side - y, : side - x]
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    layer = viewer.add_image(image, name=f"nuclei {side}x{side}")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment with U-Net")
    seg.reset_choices()
    seg.image.value = layer
    seg.store.value = "zarr file"
    seg.store_path.value = str(Path(tempfile.mkdtemp(prefix="nu-shot-")) / "large.zarr")
    t0 = time.time()
    wait(seg.run(), timeout=3600)
    print(f"segmented {side}^2 in {time.time() - t0:.0f} s")
    viewer.reset_view()
    wait(None)
    _shot(viewer, args.out / "large_result_whole.png")
    viewer.camera.zoom = 1.0
    viewer.camera.center = (side * 0.4, side * 0.55)
    wait(None)
    _shot(viewer, args.out / "large_result_1to1.png")
    viewer.close()


def batch(args) -> None:
    """The batch widget after segmenting a folder of DSB 2018 val images (from
    ../shared/data when present, else the bundled sample), with one overlay opened."""
    import napari

    from napari_unet._napari._batch_widget import BatchWidget

    shared = Path(__file__).resolve().parents[1].parent / "shared/data/dsb2018/val/images"
    files = sorted(shared.glob("*.tif"))[:12] or [
        Path(__file__).resolve().parents[1] / "src/napari_unet/data/samples/dsb2018_nuclei.tif"]
    tmp = Path(tempfile.mkdtemp(prefix="nu-shot-"))
    (tmp / "images").mkdir()
    for f in files:
        (tmp / "images" / f.name).symlink_to(f)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment a folder")
    w.inputs.value = str(tmp / "images")
    w.output.value = str(tmp / "out")
    w.objects.value = True
    wait(w.run())
    overlay = sorted((tmp / "out" / "overlays").glob("*.png"))[1]
    viewer.open(overlay, name=f"overlay {overlay.stem[:12]}")
    wait(None)
    _shot(viewer, args.out / "batch_widget.png")
    viewer.close()


def widgets(args) -> None:

    import napari

    from napari_unet._napari._evaluate_widget import EvaluateWidget
    from napari_unet._napari._segment_widget import SegmentWidget
    from napari_unet._napari._train_widget import TrainWidget

    def shot(viewer, name):
        _shot(viewer, args.out / name)

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
