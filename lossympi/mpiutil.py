"""MPI plumbing shared by the server and worker sides of the control plane.

Polling helpers (MPI's blocking waits spin and would starve a small machine),
request cancellation, and the exit path that skips MPI_Finalize once a rank
died (MPI_Finalize then hangs in the survivors).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from typing import Any

from .errors import TransportError

__all__ = [
    "Backoff",
    "cancel",
    "exit_job",
    "install_exit_hook",
    "mpi",
    "mpi_finalize_skipped",
    "set_errors_return",
    "skip_mpi_finalize",
    "test",
    "wait_request",
]


# ----------------------------------------------------------------- exit -----
_EXIT = {"skip": False, "code": 0, "hooked": False}


def _exit_hook() -> None:
    if _EXIT["skip"]:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway
                f.flush()
        os._exit(int(_EXIT["code"]))


def install_exit_hook() -> None:
    """Registers the exit path of :func:`skip_mpi_finalize` (idempotent)."""
    if _EXIT["hooked"]:
        return
    _EXIT["hooked"] = True
    previous = sys.excepthook

    def hook(t, v, tb):  # an uncaught exception: exit status 1 even when finalize is skipped
        _EXIT["code"] = 1
        previous(t, v, tb)

    sys.excepthook = hook
    atexit.register(_exit_hook)  # registered early: runs after later-registered handlers


def skip_mpi_finalize(code: int | None = None) -> None:
    """Make this process exit without MPI_Finalize (which hangs once a rank died).

    The process still runs its atexit handlers, then leaves with os._exit
    (status `code`, default 0, or 1 after an uncaught exception). Every live
    rank must agree, or the ones that do finalize wait for the others forever:
    the server decides and tells the workers in the STOP message.
    """
    install_exit_hook()
    _EXIT["skip"] = True
    if code is not None:
        _EXIT["code"] = int(code)


def mpi_finalize_skipped() -> bool:
    return bool(_EXIT["skip"])


def exit_job(code: int = 0) -> None:
    """Exit with `code`, skipping MPI_Finalize if the job lost a rank."""
    if _EXIT["skip"]:
        _EXIT["code"] = int(code)
    sys.exit(code)


# ---------------------------------------------------------------- polling ---
class Backoff:
    """Sleeps between polls: 20 us doubling up to `hi` (MPI waits spin; this leaves the CPU to others)."""

    def __init__(self, hi: float = 1e-3) -> None:
        self.t = 20e-6
        self.hi = hi

    def sleep(self) -> None:
        time.sleep(self.t)
        self.t = min(self.t * 2, self.hi)

    def reset(self) -> None:
        self.t = 20e-6


def mpi():
    from mpi4py import MPI

    return MPI


def set_errors_return(comm: Any) -> None:
    """MPI errors become exceptions (a dead peer must not abort this process)."""
    MPI = mpi()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    if comm != MPI.COMM_WORLD:
        MPI.COMM_WORLD.Set_errhandler(MPI.ERRORS_RETURN)


def test(req: Any, status: Any = None) -> bool:
    """Request.Test() that turns an MPI error into TransportError."""
    MPI = mpi()
    try:
        return bool(req.Test(status) if status is not None else req.Test())
    except MPI.Exception as e:  # e.g. the peer died
        raise TransportError(f"MPI error: {e}") from e


def cancel(reqs: list, timeout: float = 1.0) -> None:
    """Cancels requests and completes them (a cancelled request must still be waited for)."""
    MPI = mpi()
    live = []
    for r in reqs:
        if r is None:
            continue
        try:
            if not r.Test():
                r.Cancel()
                live.append(r)
        except MPI.Exception:
            pass
    t_end = time.monotonic() + timeout
    while live and time.monotonic() < t_end:
        try:
            live = [r for r in live if not r.Test()]
        except MPI.Exception:
            break
        if live:
            time.sleep(1e-3)


def wait_request(req: Any, timeout: float, what: str = "a control message") -> None:
    """Polls `req` until it completes; TransportError after `timeout` seconds."""
    t_end = time.monotonic() + timeout
    bo = Backoff(hi=5e-3)
    while not test(req):
        if time.monotonic() > t_end:
            raise TransportError(f"{what} was not delivered within {timeout} s")
        bo.sleep()
