"""The one place that starts threads for the napari layer.

Core work is a generator of events (see :mod:`napari_unet.events`).  Here it runs in a napari
``GeneratorWorker``: events arrive on the GUI thread through Qt signals, errors become napari
notifications (never swallowed), and cancellation goes through the core's own cancel hook so
the engine stops cleanly between blocks or steps and keeps what is done.

Set ``NAPARI_UNET_SYNC=1`` to run everything synchronously on the calling thread (debugging).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["Job", "start"]


class Job:
    """A running piece of work: cancel it, or ask whether it is still running."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self.worker: Any = None
        self.running = True

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_cancelled(self) -> bool:  # the core's cancel hook
        return self._cancel.is_set()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _report_error(err: BaseException) -> None:
    from napari.utils.notifications import show_error, show_info

    from ..errors import NapariUnetError
    from ..events import Cancelled

    if isinstance(err, Cancelled):
        show_info(str(err))
    elif isinstance(err, NapariUnetError):
        # A problem with the input or the setup: a message, not a traceback dialog.
        show_error(f"napari-unet: {err}")
    else:  # a bug: napari shows it with its traceback
        raise err


def start(
    make: Callable[[Job], Generator[Any, None, Any]],
    on_event: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> Job:
    """Run the generator built by ``make(job)`` off the GUI thread.

    ``on_event`` gets every yielded event, ``on_done`` the return value, ``on_error`` an
    exception (after it was shown as a notification), ``on_finished`` is called last in all
    cases.  All callbacks run on the GUI thread.
    """
    job = Job()
    gen = make(job)

    def finished() -> None:
        job.running = False
        if on_finished is not None:
            on_finished()

    def errored(err: BaseException) -> None:
        try:
            _report_error(err)
        finally:
            if on_error is not None:
                on_error(err)

    if os.environ.get("NAPARI_UNET_SYNC"):
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    if on_done is not None:
                        on_done(stop.value)
                    break
                if on_event is not None:
                    on_event(event)
        except Exception as err:  # noqa: BLE001 - reported like the threaded path
            errored(err)
        finally:
            finished()
        return job

    from napari.qt.threading import create_worker

    def run() -> Generator[Any, None, Any]:
        # Errors travel back as a value: napari's worker treats a RuntimeError as "thread
        # deleted" and would drop it (and its finished signal) silently.
        try:
            return (yield from gen)
        except Exception as err:  # noqa: BLE001 - re-raised on the GUI thread below
            return _Failed(err)

    def returned(value: Any) -> None:
        if isinstance(value, _Failed):
            errored(value.error)
        elif on_done is not None:
            on_done(value)

    worker = create_worker(run, _start_thread=False)
    if on_event is not None:
        worker.yielded.connect(on_event)
    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    job.worker = worker
    worker.start()
    return job
