"""Body of an MPI rank: rank 0 runs the parameter server, ranks 1..n the workers."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from .config import TrainConfig

__all__ = ["run_rank", "STARTED"]

STARTED = [False]
"""Set once this rank's transport is up (training started)."""


def _exit(code: int) -> None:
    """Leave without MPI_Finalize (its barrier would wait for dead ranks forever)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_rank(cfg: TrainConfig) -> int:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # hydra's "a rank died" notice
    import mpi4py

    mpi4py.rc.finalize = False
    from mpi4py import MPI

    from lossympi.guard import FATAL

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    code = 1
    from . import stop as _stop
    from .checks import ensure_cwd_importable

    ensure_cwd_importable()
    if rank == 0:
        # SIGINT/SIGTERM (forwarded by the launcher): finish the step, save, tell the workers to stop.
        # Before training starts there is nothing to save: the first signal already leaves.
        _stop.install(raise_now=True)
    else:
        # A worker stopped from outside leaves at once and quietly; the server sees it as gone.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda signum, frame: _exit(128 + signum))
    try:
        if size != cfg.workers + 1:
            raise ValueError(f"--workers {cfg.workers} needs {cfg.workers + 1} MPI ranks, got {size}")
        code = _server(comm, cfg) if rank == 0 else _worker(comm, cfg)
    except KeyboardInterrupt as exc:  # a stop signal before training started, or a second one
        print(f"[rank {rank}] stopped by {exc or 'SIGINT'}", file=sys.stderr)
        code = FATAL
    except BaseException as exc:  # noqa: BLE001 - report and leave without hanging the job
        print(f"[rank {rank}] error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not isinstance(exc, (ValueError, TimeoutError)):
            traceback.print_exc()
        # Before training started, a failing rank takes the job down (see lossympi.guard);
        # afterwards a worker's failure is a crash fault the server tolerates.
        code = FATAL if (rank == 0 or not STARTED[0]) else 1
    _exit(code)
    return code  # pragma: no cover


def _common(comm: Any, cfg: TrainConfig):
    from .byzantine import Collusion, choose_byzantine, parse_attack
    from .workloads import load_experiment
    from .model import setup_tf

    setup_tf(1)
    exp = load_experiment(cfg.experiment, seed=cfg.seed, **cfg.experiment_args)
    byz = choose_byzantine(cfg.workers, cfg.byzantine, cfg.seed)
    spec = parse_attack(cfg.attack, cfg.attack_args)
    # Created by the colluders alone (MPI_Comm_create_group over their group): the server and
    # the honest workers take no part in it, so no rank can stall them through it.
    colluders = [b + 1 for b in byz]
    collusion = None
    if spec.kind == "gradient" and comm.Get_rank() in colluders:
        collusion = Collusion(comm, colluders)
    pid_dir = os.path.join(cfg.out, "pids")
    os.makedirs(pid_dir, exist_ok=True)
    with open(os.path.join(pid_dir, f"rank{comm.Get_rank()}.pid"), "w") as fh:
        fh.write(str(os.getpid()))
    return exp, byz, collusion


def _server(comm: Any, cfg: TrainConfig) -> int:
    from .model import FlatModel
    from .server import ParameterServer
    from .transport import TransportCollector, make_server_transport

    done = os.path.join(cfg.out, "server.done")
    if os.path.exists(done):
        os.unlink(done)
    exp, byz, _ = _common(comm, cfg)
    model = FlatModel(exp, seed=cfg.seed)
    model.evaluate()  # trace before the start-up barrier
    transport = make_server_transport(comm, model.d, cfg)
    collector = TransportCollector(transport, cfg.workers)
    server = ParameterServer(cfg, exp, collector, cfg.out, model=model, extra_summary={
        "byzantine_workers": byz, "byzantine_ranks": [b + 1 for b in byz], "launcher": "mpi",
        "transport": f"{cfg.transport} (lossympi)"})
    from . import stop as _stop

    _stop.STOP.raise_now = False  # from here a stop signal ends the run cleanly after the current step
    try:
        summary = server.run()
    finally:
        collector.close()
    with open(done, "w") as fh:
        fh.write("ok\n" if summary.get("completed") else "incomplete\n")
    return 0 if summary.get("completed") or summary.get("stopped_by") else 1


def _worker(comm: Any, cfg: TrainConfig) -> int:
    from .worker import run_worker

    exp, _, collusion = _common(comm, cfg)
    return run_worker(comm, cfg, exp, collusion, on_started=lambda: STARTED.__setitem__(0, True))
