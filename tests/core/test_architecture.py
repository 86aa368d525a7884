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
    contract = config["tool"]["importlinter"]["contracts"][0]
    assert "napari_unet._napari" in contract["forbidden_modules"]
    listed = set(contract["source_modules"])
    modules = {f"napari_unet.{m.name}" for m in pkgutil.iter_modules(napari_unet.__path__)
               if m.name not in ("_napari", "__main__")}
    assert modules <= listed, f"add {sorted(modules - listed)} to the import-linter contract"


def test_import_linter_contract_is_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_engine_modules_are_small_and_layered():
    """The engine is split by job (the layers contract orders them); no core module grows
    past ~400 lines without saying why in its docstring."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [c["name"] for c in config["tool"]["importlinter"]["contracts"]]
    assert "The engine's parts import one way" in names
    assert "Planning is pure geometry: no torch" in names
    src = ROOT / "src" / "napari_unet"
    long = []
    for path in src.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 420 and "lines:" not in text.split('"""')[1]:
            long.append(f"{path.relative_to(src)} ({text.count(chr(10))} lines)")
    assert not long, long
