"""Clean stops on SIGINT / SIGTERM.

A process that trains installs :func:`install`: the first SIGINT or SIGTERM
only sets :data:`STOP` (the parameter server finishes its step, writes a
checkpoint, summary.json and the plots, then returns); a second one raises
:class:`Interrupted` (a ``KeyboardInterrupt``) to stop at once. Callers print
one line for either, never a traceback.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["STOP", "StopRequest", "Interrupted", "install", "restore"]


class Interrupted(KeyboardInterrupt):
    """A second stop signal: leave now."""


class StopRequest:
    """The stop flag: ``requested`` (bool) and ``signum`` (the first signal received)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raise_now = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def clear(self) -> None:
        self.signum = None
        self.raise_now = False

    def handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None or self.raise_now:
            if self.signum is None:
                self.signum = signum
            raise Interrupted(signal.Signals(signum).name)
        self.signum = signum


STOP = StopRequest()
"""This process's stop flag."""

_SAVED: dict[int, Any] = {}


def install(raise_now: bool = False) -> None:
    """Route SIGINT and SIGTERM to :data:`STOP` (``raise_now``: the first signal already raises)."""
    STOP.clear()
    STOP.raise_now = raise_now
    for s in (signal.SIGINT, signal.SIGTERM):
        prev = signal.signal(s, STOP.handler)
        _SAVED.setdefault(s, prev)


def restore() -> None:
    """Put back the handlers :func:`install` replaced."""
    for s, h in list(_SAVED.items()):
        signal.signal(s, h)
        del _SAVED[s]
