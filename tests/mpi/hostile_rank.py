"""A hostile MPI rank (run by tests/test_hostile_rank.py in an MPMD job as one of the workers).

It speaks no protocol at all: on every tag the project uses (and a few more),
to the server and to every other rank, it sends pickled objects (mpi4py's
lowercase send/isend pickle) whose unpickling would create a marker file. If
any receiver anywhere unpickled worker bytes, the marker would appear.
Then it waits a little (so that its messages are matched while the job runs)
and leaves without MPI_Finalize.
"""

from __future__ import annotations

import argparse
import os
import time

from mpi4py import MPI


class Payload:
    """Unpickling this object calls open(path, "w"): it creates the marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--marker", required=True)
    ap.add_argument("--linger", type=float, default=20.0)
    a, _ = ap.parse_known_args()
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    me, size = comm.Get_rank(), comm.Get_size()
    tags = list(range(7100, 7112)) + [0, 1, 101, 102, 7200, 7201, 7300, 7301]
    evil = [Payload(a.marker), {"op": "hello", "x": Payload(a.marker)}, [Payload(a.marker)] * 3]
    reqs = []
    for rnd in range(3):
        for dest in range(size):
            if dest == me:
                continue
            for tag in tags:
                try:
                    reqs.append(comm.isend(evil[rnd % len(evil)], dest=dest, tag=tag))
                except MPI.Exception:
                    pass
        time.sleep(a.linger / 3)
    os._exit(0)


if __name__ == "__main__":
    main()
