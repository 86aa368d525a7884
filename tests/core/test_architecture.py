"""The Qt-free core boundary is enforced by an import-linter contract that covers every module."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import napari_unet

ROOT = Path(__file__).resolve().parents[2]


def test_contract_lists_every_core_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    listed = set(contract["source_modules"])
    modules = {f"napari_unet.{m.name}" for m in pkgutil.iter_modules(napari_unet.__path__)
               if m.name not in ("_napari", "__main__")}
    assert modules <= listed, f"add {sorted(modules - listed)} to the import-linter contract"


def test_import_linter_contract_is_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
