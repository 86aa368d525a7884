"""Figures as files: training curves, evaluation panels and the per-image score summary."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.cli import main
from napari_unet.errors import InputError

pytest.importorskip("matplotlib")

from napari_unet import figures  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000


def test_training_writes_history_png_next_to_the_csv(tmp_path):
    from napari_unet.events import EpochEnd
    from napari_unet.training.run_folder import RunFolder

    history = [EpochEnd(1, 10, 0.9, None, None, 1e-3, 1.0),  # no validation yet
               EpochEnd(2, 20, 0.7, 0.8, 0.6, 5e-4, 2.0),
               EpochEnd(3, 30, 0.5, 0.6, 0.7, 1e-4, 3.0)]
    run = RunFolder(tmp_path)
    run.write_history(history)
    assert (tmp_path / "history.csv").is_file()
    assert _is_png(tmp_path / "history.png")
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left over


def test_error_overlay_colours_matched_false_and_missed_objects():
    truth = np.zeros((20, 30), np.int32)
    pred = np.zeros_like(truth)
    truth[2:8, 2:8] = 1
    pred[2:8, 2:9] = 5  # matched (IoU 36 / 42)
    pred[12:16, 12:16] = 6  # false positive
    truth[12:18, 22:28] = 2  # missed
    rgb = figures.error_overlay(pred, truth)
    np.testing.assert_allclose(rgb[4, 4], figures.MATCHED)
    np.testing.assert_allclose(rgb[13, 13], figures.FALSE_POSITIVE)
    np.testing.assert_allclose(rgb[14, 24], figures.MISSED)
    np.testing.assert_allclose(rgb[0, 0], 0)
    # Below the matching threshold the same object counts as false and missed.
    shifted = np.zeros_like(pred)
    shifted[5:11, 5:11] = 1
    rgb = figures.error_overlay(shifted, truth)
    np.testing.assert_allclose(rgb[8, 8], figures.FALSE_POSITIVE)
    np.testing.assert_allclose(rgb[2, 2], figures.MISSED)  # its outline, where not covered


def test_cli_evaluate_writes_summary_and_worst_image_figures(tmp_path, rng, capsys):
    import tifffile

    for name in ("pred", "truth", "images"):
        (tmp_path / name).mkdir()
    for k in range(3):
        truth = np.zeros((32, 40), np.uint16)
        truth[4:14, 4:14], truth[18:28, 20:34] = 1, 2
        pred = truth.copy()
        if k == 1:
            pred[pred == 2] = 0  # one object missed: the worst image
        tifffile.imwrite(tmp_path / "truth" / f"im{k}.tif", truth)
        tifffile.imwrite(tmp_path / "pred" / f"im{k}.tif", pred)
        tifffile.imwrite(tmp_path / "images" / f"im{k}.tif",
                         (truth > 0) * 200 + (rng.random(truth.shape) * 30).astype(np.uint8))
    out = tmp_path / "figs"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--figures",
                 str(out), "--worst", "1", "--images", str(tmp_path / "images")]) == 0
    assert "wrote 2 figures" in capsys.readouterr().out
    assert _is_png(out / "summary.png")
    assert _is_png(out / "worst01_im1.png")  # the image that missed an object
    (tmp_path / "file").write_text("x")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--figures",
                 str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_figures_without_matplotlib_say_how_to_get_it(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert not figures.available()
    with pytest.raises(InputError, match=r"napari-unet\[figures\]"):
        figures.history_figure([], tmp_path / "h.png")
