"""Command line, lazy imports, and resuming a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import napari_unet as nu
from napari_unet.cli import main

from .helpers import tiny_unet

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _volume(path: Path, shape=(16, 64, 64), chunks=(8, 32, 32), seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)
    z = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="float32")
    z[:] = x
    return x


def test_import_is_light():
    code = (
        "import sys, napari_unet, napari_unet._napari._reader, napari_unet._napari._sample_data;"
        "import napari_unet.config, napari_unet.events;"
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         check=True)
    assert out.stdout.strip() == ""


def test_cli_predict_matches_api(tmp_path, capsys):
    x = _volume(tmp_path / "in.zarr")
    model = tiny_unet(3, out_channels=3)
    nu.save_model(model, tmp_path / "m.safetensors")
    code = main(["--quiet", "predict", str(tmp_path / "in.zarr"), str(tmp_path / "cli.zarr"),
                 "--model", str(tmp_path / "m.safetensors"), "--mode", "probabilities",
                 "--tile", "16,32,32", "--block", "8,32,32", "--device", "cpu"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    cli = zarr.open_group(str(tmp_path / "cli.zarr"), mode="r")["probabilities/0"][:]
    api = nu.predict(nu.load_model(tmp_path / "m.safetensors"), x, mode="probabilities",
                     tile=(16, 32, 32), block_shape=(8, 32, 32), device="cpu")
    np.testing.assert_array_equal(cli, api)

    # Same command again: the job is complete, nothing to redo, same result.
    assert main(["--quiet", "predict", str(tmp_path / "in.zarr"), str(tmp_path / "cli.zarr"),
                 "--model", str(tmp_path / "m.safetensors"), "--mode", "probabilities",
                 "--tile", "16,32,32", "--block", "8,32,32", "--device", "cpu"]) == 0

    # A different job into the same store is refused with exit code 2 and a message.
    code = main(["--quiet", "predict", str(tmp_path / "in.zarr"), str(tmp_path / "cli.zarr"),
                 "--model", str(tmp_path / "m.safetensors"), "--mode", "semantic"])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_info_and_errors(tmp_path, capsys):
    nu.save_model(tiny_unet(2), tmp_path / "m.safetensors", label_mode="classes")
    assert main(["info", str(tmp_path / "m.safetensors")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["label_mode"] == "classes" and meta["model"]["spatial_dims"] == 2
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--quiet", "predict", str(tmp_path / "none.zarr"), str(tmp_path / "o.zarr"),
                 "--model", str(tmp_path / "m.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_killed_with_sigkill_resumes_to_identical_result(tmp_path):
    _volume(tmp_path / "in.zarr", shape=(16, 96, 96), chunks=(8, 32, 32))
    nu.save_model(tiny_unet(3, base_filters=6), tmp_path / "m.safetensors")
    args = [sys.executable, "-m", "napari_unet", "--quiet", "predict",
            str(tmp_path / "in.zarr"), None, "--model", str(tmp_path / "m.safetensors"),
            "--mode", "probabilities", "--tile", "8,16,16", "--block", "8,16,16",
            "--device", "cpu", "--batch-size", "1"]
    ref_args = list(args)
    ref_args[6] = str(tmp_path / "ref.zarr")
    subprocess.run(ref_args, check=True, env=ENV)

    args[6] = str(tmp_path / "killed.zarr")
    marks = tmp_path / "killed.zarr" / "blocks_done" / "c"
    proc = subprocess.Popen(args, env=ENV)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if marks.exists() and len(list(marks.iterdir())) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("the run finished before it could be killed; make it longer")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    n_done = len(list(marks.iterdir()))
    assert 3 <= n_done < 72
    subprocess.run(args, check=True, env=ENV)
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")["probabilities/0"][:]
    got = zarr.open_group(str(tmp_path / "killed.zarr"), mode="r")["probabilities/0"][:]
    np.testing.assert_array_equal(got, ref)
