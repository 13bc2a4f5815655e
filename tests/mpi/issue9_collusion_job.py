"""MPI job of tests/test_issue9_defects.py: the collusion channel is built by the colluders alone.

    mpiexec -n 5 python tests/mpi/issue9_collusion_job.py OUT.json

Ranks 2 and 4 collude (they build :class:`pyagg.cluster.byzantine.Collusion`
and run one ``sign_flip`` attack on their pooled rows); ranks 0, 1 and 3 call
nothing for it and write their report straight away, without any collective:
with a channel built by a collective over COMM_WORLD (``comm.Split``) the
colluders would wait for them forever. Each rank writes ``OUT.rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import mpi4py

mpi4py.rc.finalize = False  # the honest ranks leave without waiting for anyone
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pyagg.cluster.byzantine import Collusion, parse_attack  # noqa: E402

COLLUDERS = [2, 4]
D = 6


def main() -> None:
    out = sys.argv[1]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rep: dict = {"rank": rank}
    t0 = time.monotonic()
    if rank in COLLUDERS:
        ch = Collusion(comm, COLLUDERS)
        own = np.full((2, D), float(rank), np.float32)
        own[1] += 0.5
        row = ch.attack(parse_attack("sign_flip"), own, n_workers=4, seed=0, step=1, timeout=30.0)
        rep.update(member=True, channel_rank=ch.comm.Get_rank(), channel_size=ch.comm.Get_size(),
                   row=row.tolist())
    else:
        rep["member"] = False  # calls nothing for the channel
    rep["seconds"] = time.monotonic() - t0
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump(rep, fh)
    sys.stdout.flush()
    os._exit(0)  # no MPI_Finalize: nobody waits for anybody (run with -disable-auto-cleanup)


if __name__ == "__main__":
    main()
