"""Rank supervisor: ``python -m pyagg.cluster.rank CMD ARGS...``.

MPICH's hydra takes the whole job down when one of the processes it started
dies from a signal, even with ``-disable-auto-cleanup``; and with that option
it notifies the survivors with SIGUSR1, whose default action is to terminate.
So each rank runs under this small supervisor: it ignores SIGUSR1 (and so
does the child, which inherits the disposition), starts CMD with every file
descriptor inherited (the PMI connection), forwards SIGINT/SIGTERM/SIGHUP to
it, and exits with its status (128 + signal number when it was killed). A
SIGKILLed worker is then just a rank that exited with status 137: the server
carries on without it. (hydra's own exit status is the bitwise OR of every
rank's status.) ``PYAGG_RANK_DEBUG=1`` prints each child's status.

Two failures end the whole job instead, on purpose: the server (rank 0)
ending with a non-zero status (nothing can go on without it), and any rank
exiting with :data:`FATAL` (86), which a rank uses for a failure before
training started (bad configuration, an experiment that does not load):
without this, the other ranks would wait for it until their start-up
timeout. The supervisor then kills itself with SIGKILL, which makes hydra
tear the job down at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


FATAL = 86


def _rank() -> str | None:
    for k in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        if k in os.environ:
            return os.environ[k]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m pyagg.cluster.rank CMD [ARGS...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    child = subprocess.Popen(argv, close_fds=False)

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
    if os.environ.get("PYAGG_RANK_DEBUG"):
        print(f"[rank-shim {os.getpid()}] child {child.pid} exited {rc}", file=sys.stderr, flush=True)
    if rc == FATAL or (rc != 0 and _rank() == "0"):
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # hydra then ends every rank of the job
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    os._exit(main())
