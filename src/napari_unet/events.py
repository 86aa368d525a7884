"""Plain events emitted by long-running work (prediction, training).

Long work in napari-unet is a generator that yields these and returns its result, so the same
code runs synchronously in a script (:func:`drain`), prints a progress bar in the CLI and runs
as a cancellable ``thread_worker`` in napari.  No event carries a GUI object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["Progress", "BlockDone", "StageStarted", "Notice", "EpochEnd", "Preview", "Writing",
           "Cancelled", "drain"]

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class StageStarted:
    """A new stage of work began (e.g. "normalise", "predict", "label")."""

    stage: str
    total: int = 0
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the work (e.g. a smaller batch)."""

    stage: str
    message: str


@dataclasses.dataclass(frozen=True)
class Progress:
    """Generic progress: ``done`` of ``total`` units of ``stage``."""

    stage: str
    done: int
    total: int
    message: str = ""


@dataclasses.dataclass(frozen=True)
class BlockDone:
    """One output block is written (``skipped`` when a resumed run found it finished)."""

    index: int
    region: tuple[slice, ...]
    done: int
    total: int
    skipped: bool = False


@dataclasses.dataclass(frozen=True)
class Writing:
    """The array blocks are being written into, to show while it fills: level 0 of the
    result, or the class map of an instance job (labelled at the end).  Also for results
    kept in memory, so a viewer can show the first blocks of any run."""

    array: Any  # a zarr array

    def __repr__(self) -> str:
        return f"Writing(shape={getattr(self.array, 'shape', None)})"


@dataclasses.dataclass(frozen=True)
class Preview:
    """A first result to show while work goes on, e.g. the pixel classifier's classes of the
    training image (0 = background) seconds after scribble training starts."""

    stage: str
    labels: Any  # numpy array, the training image's spatial shape

    def __repr__(self) -> str:  # the array would flood a log
        return f"Preview(stage={self.stage!r}, shape={getattr(self.labels, 'shape', None)})"


@dataclasses.dataclass(frozen=True)
class EpochEnd:
    """End of a training epoch with its metrics."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None
    val_dice: float | None
    lr: float
    elapsed: float


class Cancelled(Exception):
    """Raised by a synchronous run whose cancel hook returned True."""

    @classmethod
    def after_blocks(cls, done: int, total: int) -> Cancelled:
        """Prediction stopped after ``done`` of ``total`` blocks."""
        return cls(f"prediction cancelled after {done} of {total} blocks; finished blocks are "
                   "kept and running the same command again resumes")


def drain(
    gen: Generator[Any, None, R], callback: Callable[[Any], None] | None = None
) -> R:
    """Run a generator of events to the end and return its result.

    Parameters
    ----------
    gen : generator
        Yields events, returns the result.
    callback : callable, optional
        Called with every event (e.g. to drive a progress bar).
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
