"""Rank supervisor for MPI jobs whose ranks may die: ``python -m lossympi.guard ...``.

MPICH's hydra (mpiexec) SIGKILLs every rank of the job as soon as one of the
processes it launched is killed by a signal, whatever ``-disable-auto-cleanup``
says (it only spares the job when a rank *exits*); and with that option it
notifies the survivors with SIGUSR1, whose default action is to terminate. So
each rank runs under this small supervisor: the rank is a child of the guard,
which

- ignores SIGUSR1 (and so does the child, which inherits the disposition);
- starts the rank with the environment and every file descriptor inherited
  (hydra's PMI connection), so MPI_Init works unchanged; the guard's pid is
  in ``LOSSYMPI_GUARD_PID``;
- forwards SIGINT, SIGTERM and SIGHUP to it;
- exits with the rank's status, 128 + N when it was killed by signal N. A
  SIGKILLed worker is then just a rank that exited with status 137: the
  other ranks keep running. (hydra's own exit status is the bitwise OR of
  every rank's status.)

Two failures end the whole job instead, on purpose: rank 0 ending with a
non-zero status (by convention the job's coordinator, e.g. a parameter
server: nothing can go on without it), and any rank exiting with
:data:`FATAL` (86), which a rank uses for a failure before the job started
(bad configuration, a model that does not load): without this the other
ranks would wait for it until their start-up timeout. The guard then kills
itself with SIGKILL, which makes hydra tear the job down at once.

``LOSSYMPI_GUARD_DEBUG=1`` prints each rank's exit status on stderr.

Usage (the three forms of the command)::

    mpiexec -disable-auto-cleanup -n 9 python -m lossympi.guard train.py --workers 8
    mpiexec -disable-auto-cleanup -n 9 python -m lossympi.guard -m mypkg.train ...
    mpiexec -disable-auto-cleanup -n 9 python -m lossympi.guard -- ./native_binary ...

A script or ``-m module`` runs under this Python (``sys.executable``); after
``--`` the command runs as given.

This module is deliberately tiny and imports only the standard library (no
numpy, no MPI, nothing of the application): it runs before the rank and must
not initialise MPI itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

__all__ = ["FATAL", "DEBUG_ENV", "command", "main"]

FATAL = 86
"""Exit status of a rank that failed before the job started: the guard then ends the whole job."""

DEBUG_ENV = "LOSSYMPI_GUARD_DEBUG"
"""Set (non-empty) to print each rank's exit status."""

USAGE = "usage: python -m lossympi.guard script.py [ARGS...] | -m module [ARGS...] | -- CMD [ARGS...]"


def command(argv: list[str]) -> list[str]:
    """The rank's command line: ``-- CMD ARGS`` as given, else ``sys.executable`` + argv (script or -m)."""
    if argv and argv[0] == "--":
        argv = argv[1:]
        if not argv:
            raise ValueError(USAGE)
        return list(argv)
    if not argv:
        raise ValueError(USAGE)
    return [sys.executable, *argv]


def _rank() -> str | None:
    """This process's rank as the launcher says it (MPICH/hydra PMI, PMIx, Open MPI)."""
    for k in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        if k in os.environ:
            return os.environ[k]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the rank, return its exit status (or SIGKILL this guard to end the whole job)."""
    try:
        cmd = command(list(sys.argv[1:] if argv is None else argv))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # hydra's "a rank died" notice
    env = dict(os.environ, LOSSYMPI_GUARD_PID=str(os.getpid()))
    try:
        child = subprocess.Popen(cmd, close_fds=False, env=env)
    except OSError as exc:
        print(f"lossympi.guard: cannot start {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    if os.environ.get(DEBUG_ENV):
        print(f"[lossympi.guard {os.getpid()} rank {_rank()}] child {child.pid} exited {rc}",
              file=sys.stderr, flush=True)
    if rc == FATAL or (rc != 0 and _rank() == "0"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # hydra then ends every rank of the job
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    _code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_code)  # no interpreter teardown: the status is the rank's, nothing else
