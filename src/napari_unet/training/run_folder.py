"""A run folder holds everything needed to use or continue a run::

    best.safetensors   model with the best validation Dice (what to segment with)
    last.safetensors   model at the last save (epoch end or cancel)
    last_state.pt      optimiser, scheduler, RNG, counters (tensors and plain data only)
    config.yaml        the TrainConfig of the run (the architecture as trained)
    history.csv        one row per epoch
    history.png        its curves (loss, validation Dice / IoU, learning rate), where
                       matplotlib is installed (the ``figures`` extra)

Files are written under a temporary name and renamed into place: a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..events import EpochEnd
from ..io import InputError

__all__ = ["RunFolder", "STATE_FILE"]

STATE_FILE = "last_state.pt"


def _save_state(path: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_history(path: Path, history: Sequence[EpochEnd]) -> None:
    fields = [f.name for f in dataclasses.fields(EpochEnd)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for e in history:
            w.writerow([getattr(e, f) for f in fields])
    os.replace(tmp, path)




@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The files of one run (see the module docstring)."""

    path: Path

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def open(self, resume: bool) -> dict[str, Any] | None:
        """Check the folder for a new run or a resumed one; the saved state when resuming."""
        if resume and not self.state_file.exists():
            raise InputError(f"cannot resume: {str(self.state_file)!r} does not exist")
        if not resume and self.state_file.exists():
            raise InputError(
                f"{str(self.path)!r} already holds a training run; pass resume=True (CLI: "
                "--resume) to continue it, or choose another run folder"
            )
        if not resume:
            return None
        state = torch.load(self.state_file, weights_only=True)
        if "core" not in state["config"]:
            # A run from before core seeds (its interior reached the boundary ring) goes on so.
            state["config"]["core"] = 0.0
            state["legacy_core"] = True
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        _save_state(self.state_file, state)

    def write_history(self, history: Sequence[EpochEnd]) -> None:
        _write_history(self.path / "history.csv", history)
        from .. import figures

        if figures.available() and history:
            try:
                figures.history_figure([dataclasses.asdict(e) for e in history],
                                       self.path / "history.png")
            except Exception as err:  # a figure never ends a training run
                warnings.warn(f"history.png not written: {err}", stacklevel=2)
