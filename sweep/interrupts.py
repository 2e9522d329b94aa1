"""Ctrl-C and SIGTERM that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread happens to be. Raised
inside a weakref callback or a `__del__` (garbage collection runs them at any
point), it is printed as "Exception ignored in ..." and dropped, and a sweep
would go on as if nothing had been asked; waiting on Keras's callback futures,
a worker lands there often. So the handler also records the request, and
`check()`, called at the end of every epoch and before every trial, raises it
again if it was lost; and since it is not lost, Python's "Exception ignored"
report of it (a traceback on a user's Ctrl-C) is not printed.
"""

from __future__ import annotations

import signal
import sys

_requested: int | None = None


def install() -> None:
    """Makes SIGINT and SIGTERM raise KeyboardInterrupt, recorded for `check`.

    SIGINT is set even though Python sets it by default: a process started in
    the background of a script inherits SIGINT ignored.
    """
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    if sys.unraisablehook is not _quiet_recorded_stop:
        global _unraisablehook
        _unraisablehook = sys.unraisablehook
        sys.unraisablehook = _quiet_recorded_stop


_unraisablehook = sys.unraisablehook


def _quiet_recorded_stop(unraisable) -> None:
    """Drops the report of a recorded stop that Python dropped; `check` raises it."""
    if _requested is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        return
    _unraisablehook(unraisable)


def _handle(signum, frame) -> None:
    global _requested
    _requested = signum
    raise KeyboardInterrupt


def requested() -> bool:
    """Whether a stop was asked (whether or not it was raised)."""
    return _requested is not None


def check() -> None:
    """Raises KeyboardInterrupt if a stop was asked (even one already raised)."""
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {signal.Signals(_requested).name}")
