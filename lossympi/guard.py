"""Launch guard for MPI ranks that may die: ``python -m lossympi.guard script.py args...``.

MPICH's hydra (mpiexec) SIGKILLs every rank of the job as soon as one of the
processes it launched is killed by a signal, whatever ``-disable-auto-cleanup``
says (it only spares the job when a rank *exits*). Under this guard the rank is
a child of the guard: when it dies by signal N the guard exits normally with
status 128+N, so the other ranks keep running. The guard also ignores the
SIGUSR1 that hydra sends to every rank when one dies (its default action would
kill the guard) and forwards SIGTERM/SIGINT/SIGHUP to the rank.

Usage::

    mpiexec -disable-auto-cleanup -n 9 python -m lossympi.guard train.py --workers 8
    mpiexec -disable-auto-cleanup -n 9 python -m lossympi.guard -m mypkg.train ...
    mpiexec -disable-auto-cleanup -n 9 python -m lossympi.guard -- ./native_binary ...

The child inherits the environment and every file descriptor (hydra's PMI
connection), so MPI_Init works unchanged; the guard's pid is in
LOSSYMPI_GUARD_PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def command(argv: list[str]) -> list[str]:
    if not argv:
        raise SystemExit("usage: python -m lossympi.guard script.py [args] | -m module [args] | -- cmd [args]")
    if argv[0] == "--":
        return argv[1:]
    return [sys.executable, *argv]


def main(argv: list[str] | None = None) -> int:
    cmd = command(list(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    env = dict(os.environ, LOSSYMPI_GUARD_PID=str(os.getpid()))
    child = subprocess.Popen(cmd, close_fds=False, env=env)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main())
