"""Ctrl-C (SIGINT) and SIGTERM stop a long command within seconds, always, leaving resumable state.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to be; raised inside a
weakref callback or a ``__del__`` it is printed as "Exception ignored" and lost, and the command ran on to its end
(seen once in 5 tries during extract). SIGTERM, by default, ends the process with no cleanup at all. So the
commands run under ``handled()``, whose handler takes both: it records the signal and raises ``KeyboardInterrupt`` as
usual, and the long loops (each decoded video of extract, each training batch of train-probe, ``--seeds`` and
sweeps) call ``raise_if_stopping()``, which raises it again while a stop is pending: a swallowed interrupt is
re-raised at the next step. The commands' existing interrupt paths then publish whole videos, re-queue trials,
and keep the last commit, exactly as for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested: int | None = None  # the signal that asked to stop, until the command ends


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = signum
    raise KeyboardInterrupt


def _record(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = signum


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """``with handled():`` SIGINT and SIGTERM are stop requests inside (main thread only: Python delivers signals
    there); the previous handlers and no pending request are restored on the way out, so a process that runs
    several commands (a test, a notebook) keeps no stale request."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if previous[signal.SIGINT] not in (_handler, _record):  # else the command's start-up (install()) or an outer
        _requested = None  # handled(): a request made so far is kept
    for sig in previous:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested = None


def install() -> None:
    """Take SIGINT and SIGTERM as stop requests from now on, for the whole process (the ``step-cache`` command, before
    it imports its commands and torch). During that start-up a signal is recorded, not raised: raised inside an
    import, its ``KeyboardInterrupt`` was either swallowed (an early Ctrl-C was lost and the run went to its end) or
    ended the command with a traceback and exit -2 (a Ctrl-C in the first 0.4 s). The command raises it as it
    begins (``handled()`` keeps it; ``raise_if_stopping``), and exits 130 / 143 like any stop."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _record)


def requested() -> int | None:
    """The signal number that asked to stop, or None."""
    return _requested


def raise_if_stopping() -> None:
    """``KeyboardInterrupt`` when a stop was requested (again, if the first one was swallowed)."""
    if _requested is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """``with deferred():`` a step that must not be cut in the middle (starting a worker process, whose bootstrap
    prints an EOFError traceback when its parent stops mid-start): a stop request inside is recorded, then raised as
    ``KeyboardInterrupt`` once the step is done. Only under ``handled()``; elsewhere the step runs as it is."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not _handler:
        yield
        return

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _record)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _handler)
    raise_if_stopping()
