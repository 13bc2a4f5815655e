"""``pyagg train``: Byzantine-resilient distributed training (also ``python -m pyagg.train``).

Rank 0 is the trusted parameter server, ranks 1..n the workers::

    # a real cluster: 1 server + 5 workers, one of them Byzantine, UDP gradients
    pyagg train --launcher mpi --transport udp --workers 5 --byzantine 1 \\
                --attack gaussian --rule multi-krum --out runs/demo

    # the same server code with every worker simulated in one process (fast)
    pyagg train --workers 19 --byzantine 1 --attack corrupt_inputs --rule average

    # across hosts: pass an MPICH host file (the command is the same everywhere)
    pyagg train --launcher mpi --hostfile hosts --workers 18 ...

``--launcher mpi`` starts the venv's MPICH ``mpiexec -disable-auto-cleanup``
on ``python -m lossympi.guard -m pyagg.train ...``, rank 0 (the server) in an
MPMD section of its own: each rank runs under the transport's tiny supervisor
(:mod:`lossympi.guard`) that turns its death into an exit status, so that hydra
does not take the whole job down when one worker is killed (while a failure of
the server, or of any rank before training started, ends the job at once); and
the launcher makes this job's X25519 key pair (:mod:`lossympi.keys`): the public
key goes to every rank, the secret key to rank 0 only (a 0600 file under
``--out`` that rank 0 deletes when it starts). To launch by hand, use the same
shape (the command is printed before it runs)::

    mpiexec -disable-auto-cleanup -f hosts -genv LOSSYMPI_SERVER_PUBLIC_KEY <hex> \\
        -n 1 -env LOSSYMPI_SERVER_KEY_FILE <file> python -m lossympi.guard -m pyagg.train --launcher mpi ... : \\
        -n 19 python -m lossympi.guard -m pyagg.train --launcher mpi ...

Outputs (``--out DIR``): metrics.csv (one row per step), workers.csv (one row
per step and worker), summary.json, accuracy.png, loss.png, tensorboard/
(``tensorboard --logdir DIR/tensorboard``), checkpoint.npz (atomic; the last
``--keep-checkpoints`` are kept as checkpoint-<step>.npz; ``--resume``
continues from it). An existing run is never replaced without ``--overwrite``.
SIGINT / SIGTERM (Ctrl-C, ``timeout``, a batch scheduler) stop the run after
the current step, on every rank: checkpoint, summary and plots are written and
``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from .cluster.config import FILLS, OPTIMIZERS, TrainConfig, parse_pre
from .cluster.workloads import EXPERIMENTS, parse_kv

__all__ = ["build_parser", "config_from_args", "run", "main"]


def _rule_names() -> list[str]:
    try:
        from . import api

        return list(api.rules())
    except Exception:  # noqa: BLE001 - help must work even with a broken build
        return []


def _attack_names() -> list[str]:
    from .cluster.byzantine import ALL_ATTACKS

    return list(ALL_ATTACKS)


def build_parser(prog: str = "pyagg train", add_help: bool = True) -> argparse.ArgumentParser:
    """The ``pyagg train`` argument parser."""
    p = argparse.ArgumentParser(
        prog=prog, add_help=add_help,
        description="Train a Keras model with a trusted parameter server and n workers, "
        "up to f of them Byzantine, aggregating gradients with a robust rule (AggregaThor).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("experiment")
    g.add_argument("--experiment", default="digits-mlp",
                   help=f"built-in ({', '.join(EXPERIMENTS)}) or 'package.module:factory' returning an Experiment")
    g.add_argument("--experiment-args", default="", metavar="K=V,...",
                   help="factory keyword arguments, e.g. dim=100000,task=linear for synthetic")
    g.add_argument("--shards", choices=["iid", "dirichlet"], default="iid", help="how the data is split")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration for --shards dirichlet")
    g = p.add_argument_group("cluster")
    g.add_argument("--workers", type=int, default=5, help="number of workers n (MPI ranks 1..n)")
    g.add_argument("--byzantine", type=int, default=0, help="number of workers that really are Byzantine "
                   "(ranks drawn from --seed)")
    g.add_argument("--declared-f", type=int, default=None, help="f told to the rule (default: --byzantine)")
    g.add_argument("--launcher", choices=["mpi", "local"], default="local",
                   help="mpi: a real mpiexec cluster; local: all workers simulated in one process")
    g.add_argument("--transport", choices=["udp", "mpi"], default="udp",
                   help="gradient path of the mpi launcher: LossyMPI UDP datagrams or MPI messages")
    g.add_argument("--deadline", type=float, default=2.0, help="seconds the server waits for a step's gradients")
    g.add_argument("--fill", choices=FILLS, default="nan", help="what replaces a lost or rejected gradient part")
    g.add_argument("--drop-rate", type=float, default=0.0, help="injected datagram loss on every worker's link")
    g.add_argument("--hostfile", default=None, help="MPICH host file for --launcher mpi")
    g.add_argument("--mpiexec", default=None, help="mpiexec to use (default: the one next to this Python)")
    g.add_argument("--worker-timeout", type=float, default=60.0,
                   help="a worker that hears nothing from the server this long exits")
    g.add_argument("--startup-timeout", type=float, default=300.0,
                   help="seconds the server waits for every worker to start (TensorFlow import, tracing)")
    g.add_argument("--udp-host", default=None,
                   help="address the server's UDP socket binds to (default 127.0.0.1, or 0.0.0.0 with --hostfile)")
    g = p.add_argument_group("robustness")
    g.add_argument("--rule", default="multi-krum", help="aggregation rule: " + ", ".join(_rule_names()))
    g.add_argument("--rule-args", default="", metavar="K=V,...", help="rule parameters, e.g. m=10")
    g.add_argument("--pre", action="append", default=[], metavar="NAME[:K=V...]",
                   help="pre-aggregator (repeatable, applied in order): nnm, bucketing:s=2, clipping:tau=5")
    g.add_argument("--agg-threads", type=int, default=1,
                   help="OpenMP threads of the aggregation on the server (0: OpenMP's default); more only "
                   "pays for large d on a server that does not share its cores with workers")
    g.add_argument("--attack", default="none", help="what the Byzantine workers do (needs --byzantine >= 1): "
                   + ", ".join(_attack_names()))
    g.add_argument("--attack-args", default="", metavar="K=V,...",
                   help="attack parameters, e.g. sigma=200 (gaussian), scale=-1e12 (corrupt_inputs), "
                   "rate=0.3 (lossy), at_step=5 (crash)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=300, help="number of synchronous steps")
    g.add_argument("--batch-size", type=int, default=32, help="mini-batch size per worker")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="server-side optimizer")
    g.add_argument("--momentum", type=float, default=0.9, help="momentum coefficient (momentum, nesterov)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    g.add_argument("--seed", type=int, default=0, help="seed of everything (init, shards, batches, Byzantine ranks)")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default="runs/train", help="output directory")
    g.add_argument("--eval-every", type=int, default=10, help="evaluate on the test set every N steps (0: at the end)")
    g.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint every N steps (0: never)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.npz")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, and without --resume, an existing run "
                   "is refused and left intact)")
    g.add_argument("--keep-checkpoints", type=int, default=3, metavar="K",
                   help="keep the last K checkpoints (checkpoint-<step>.npz; checkpoint.npz is the newest)")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event file (DIR/tensorboard)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Namespace -> validated TrainConfig."""
    cfg = TrainConfig(
        experiment=a.experiment, experiment_args=parse_kv(a.experiment_args), workers=a.workers,
        byzantine=a.byzantine, declared_f=a.declared_f, rule=a.rule, rule_args=parse_kv(a.rule_args),
        pre=parse_pre(a.pre), attack=a.attack, attack_args=parse_kv(a.attack_args), transport=a.transport,
        deadline=a.deadline, fill=a.fill, drop_rate=a.drop_rate, launcher=a.launcher, steps=a.steps,
        batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer, momentum=a.momentum,
        weight_decay=a.weight_decay, eval_every=a.eval_every, checkpoint_every=a.checkpoint_every,
        resume=a.resume, overwrite=a.overwrite, keep_checkpoints=a.keep_checkpoints, tensorboard=not a.no_tensorboard,
        seed=a.seed, out=a.out, shards=a.shards, alpha=a.alpha, hostfile=a.hostfile,
        mpiexec=a.mpiexec, worker_timeout=a.worker_timeout, agg_threads=a.agg_threads,
        startup_timeout=a.startup_timeout, udp_host=a.udp_host, progress=not a.no_progress, quiet=a.quiet,
    )
    cfg.validate()
    return cfg


def check(cfg: TrainConfig, memory: bool = True) -> None:
    """Everything that can refuse this run, before TensorFlow loads (names with did-you-mean, bounds,
    the output directory, the memory need); raises ValueError."""
    from .cluster.checks import check_config
    from .cluster.rundir import check_out_path

    check_out_path(cfg.out)
    check_config(cfg, memory=memory)


# ------------------------------------------------------------------ local ---
_CACHE: dict[str, Any] = {}


def _models(cfg: TrainConfig):
    """Experiment + server model + workers' model, reused across in-process runs of the same experiment.

    Building and tracing the Keras models costs seconds; runs of a matrix
    (``pyagg experiment``) differ in rule and attack only. The models are
    rebuilt when the experiment, its arguments or the seed change; a reused
    model starts from the same initial parameters (``FlatModel.initial``).
    """
    from .cluster.workloads import load_experiment
    from .cluster.model import FlatModel

    key = json.dumps([cfg.experiment, cfg.experiment_args, cfg.seed], sort_keys=True, default=str)
    if _CACHE.get("key") != key:
        _CACHE.clear()
        exp = load_experiment(cfg.experiment, seed=cfg.seed, **cfg.experiment_args)
        _CACHE.update(key=key, exp=exp, server=FlatModel(exp, seed=cfg.seed), workers=FlatModel(exp, seed=cfg.seed))
    return _CACHE["exp"], _CACHE["server"], _CACHE["workers"]


def run(cfg: TrainConfig, observer: Any = None) -> dict[str, Any]:
    """Run one training with the local launcher (in this process); returns summary.json's content.

    ``observer(step, G)``, when given, sees every step's validated gradient matrix.
    """
    if cfg.launcher != "local":
        raise ValueError("run() drives the local launcher; use main() or launch_mpi() for --launcher mpi")
    from .cluster.checks import ensure_cwd_importable
    from .cluster.rundir import prepare_run_dir

    cfg.validate()
    ensure_cwd_importable()
    if cfg.experiment in EXPERIMENTS:  # refuse what the machine cannot hold (also for library callers)
        from .cluster.checks import check_memory

        check_memory(cfg)
    prepare_run_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    from .cluster.byzantine import choose_byzantine
    from .cluster.local import LocalCollector
    from .cluster.model import setup_tf
    from .cluster.server import ParameterServer

    setup_tf()
    exp, server_model, worker_model = _models(cfg)
    collector = LocalCollector(cfg, exp, model=worker_model)
    byz = choose_byzantine(cfg.workers, cfg.byzantine, cfg.seed)
    server = ParameterServer(cfg, exp, collector, cfg.out, model=server_model, extra_summary={
        "byzantine_workers": byz, "byzantine_ranks": [b + 1 for b in byz], "launcher": "local",
        "transport": "in-process"}, observer=observer)
    return server.run()


# -------------------------------------------------------------------- mpi ---
def in_mpi_job() -> bool:
    """True when this process was started by mpiexec (hydra / Open MPI / Slurm PMI)."""
    env = os.environ
    return any(k in env for k in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"))


def find_mpiexec(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("mpiexec not found: install MPICH (pip install mpich) or pass --mpiexec")
    return found


def mpi_command(cfg: TrainConfig, argv: list[str]) -> list[str]:
    """The mpiexec command line that runs this training as a cluster.

    MPMD form: rank 0 (the server) in a section of its own, so that only it is
    told where this job's secret key is (:func:`lossympi.keys.launch_args`:
    a fresh X25519 key pair per job, the secret in a 0600 file under --out that
    rank 0 deletes at start-up, the public key in every rank's environment).
    """
    from lossympi.keys import launch_args

    os.makedirs(cfg.out, exist_ok=True)
    genv, server_env, _ = launch_args(cfg.out)
    cmd = [find_mpiexec(cfg.mpiexec), "-disable-auto-cleanup"]
    if cfg.hostfile:
        cmd += ["-f", cfg.hostfile]
    # Each rank under the transport's supervisor; "-m" runs the module with this same Python.
    rank = [sys.executable, "-m", "lossympi.guard", "-m", "pyagg.train"] + list(argv)
    return cmd + genv + ["-n", "1", *server_env, *rank, ":", "-n", str(cfg.workers), *rank]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def rank_pids(out: str) -> dict[int, int]:
    """Rank -> pid, from the ``pids/rank<r>.pid`` files the ranks write at start-up."""
    d = os.path.join(out, "pids")
    found = {}
    for name in os.listdir(d) if os.path.isdir(d) else []:
        if name.startswith("rank") and name.endswith(".pid"):
            try:
                with open(os.path.join(d, name)) as fh:
                    found[int(name[4:-4])] = int(fh.read().strip())
            except (OSError, ValueError):
                continue
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch_mpi(cfg: TrainConfig, argv: list[str], timeout: float | None = None) -> int:
    """Start the cluster with mpiexec, wait for it, report; returns an exit status.

    mpiexec runs in a process group (session) of its own, so a terminal's
    Ctrl-C reaches only this launcher. On SIGINT / SIGTERM the launcher asks
    the server (rank 0) to stop: it finishes its step, writes checkpoint,
    summary and plots, and tells the workers to stop. Should the job not be
    gone ``grace`` seconds later, the whole group gets SIGTERM, then SIGKILL;
    and every rank still alive once mpiexec is gone is killed: nothing is left
    running (nor re-parented to PID 1).
    """
    from .cluster import stop as _stop

    cmd = mpi_command(cfg, argv)
    os.makedirs(cfg.out, exist_ok=True)
    if not cfg.quiet:
        print("[pyagg] " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMP_NUM_THREADS", "1")
    # --experiment mymod:factory: every rank finds the modules of the launcher's current directory
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if sys.stderr.isatty() and cfg.progress:
        env["PYAGG_TTY"] = "1"
        env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    summary_path = os.path.join(cfg.out, "summary.json")
    done_path = os.path.join(cfg.out, "server.done")
    for p in (done_path,):
        if os.path.exists(p):
            os.unlink(p)
    pid_dir = os.path.join(cfg.out, "pids")
    for name in os.listdir(pid_dir) if os.path.isdir(pid_dir) else []:
        os.unlink(os.path.join(pid_dir, name))  # a resumed run's old pids are not this job's
    grace = max(5.0, 2 * cfg.deadline + 3.0)
    _stop.install()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    t_end = None if timeout is None else time.monotonic() + timeout
    asked = termed = killed = None
    seen: dict[int, int] = {}
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            seen.update(rank_pids(cfg.out))
            now = time.monotonic()
            if t_end is not None and now > t_end and _stop.STOP.signum is None:
                _stop.STOP.signum = signal.SIGTERM
            if _stop.STOP.requested and asked is None:
                asked = now
                if 0 in seen and _alive(seen[0]):
                    os.kill(seen[0], signal.SIGTERM)  # the server stops the job cleanly
                else:  # not started yet: nothing to save
                    _signal_group(proc.pid, signal.SIGTERM)
                    termed = now
                if not cfg.quiet:
                    print(f"[pyagg] {_stop.STOP.name}: stopping the cluster (checkpoint, summary, plots)...",
                          file=sys.stderr, flush=True)
            if asked is not None and termed is None and now - asked > grace:
                _signal_group(proc.pid, signal.SIGTERM)
                termed = now
            if termed is not None and killed is None and now - termed > 3.0:
                _signal_group(proc.pid, signal.SIGKILL)
                killed = now
        rc = proc.returncode
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = 130
    finally:
        _stop.restore()
        # Nothing of this job outlives the launcher: its process group, then any rank that left it.
        _signal_group(proc.pid, signal.SIGKILL)
        seen.update(rank_pids(cfg.out))
        for pid in seen.values():
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    stopped = _stop.STOP.signum
    ok = os.path.exists(done_path) and os.path.exists(summary_path)
    if ok:
        with open(summary_path) as fh:
            s = json.load(fh)
        from .cluster.server import summary_line

        if not cfg.quiet or stopped:
            dead = [w["worker"] + 1 for w in s.get("workers", []) if w.get("dead")]
            print(f"[pyagg] {summary_line(s)}" + (f"; dead worker ranks: {dead}" if dead and not stopped else ""),
                  file=sys.stderr)
        if stopped:
            return 128 + int(stopped)
        return 0 if s.get("completed") else 1
    if stopped:
        print(f"[pyagg] stopped by {signal.Signals(stopped).name} before the server could write its summary "
              f"(mpiexec status {rc}); no rank is left running", file=sys.stderr)
        return 128 + int(stopped)
    print(f"[pyagg] the cluster ended (mpiexec status {rc}) without the server finishing", file=sys.stderr)
    return rc or 1


def run_rank(cfg: TrainConfig) -> int:
    """Body of one MPI rank (server or worker)."""
    from .cluster.mpi import run_rank as _run_rank

    return _run_rank(cfg)


def main(argv: list[str] | None = None, prog: str = "pyagg train") -> int:
    """Entry point of ``pyagg train`` / ``python -m pyagg.train``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if cfg.launcher == "mpi" and in_mpi_job():
        return run_rank(cfg)  # the launcher checked everything before starting the job
    try:  # fail here, in milliseconds: not after a TensorFlow import, nor in a cluster of waiting workers
        check(cfg)
        from .cluster.rundir import prepare_run_dir

        if cfg.launcher == "mpi":
            from .cluster.transport import require_lossympi

            require_lossympi(cfg.transport)
        prepare_run_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    except (ValueError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if cfg.launcher == "mpi":
        return launch_mpi(cfg, argv)
    from .cluster import stop as _stop
    from .cluster.server import summary_line

    _stop.install()
    try:
        s = run(cfg)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        name = _stop.STOP.name or "SIGINT"
        print(f"[pyagg] interrupted by a second {name}: stopped at once (the last periodic checkpoint, if any, "
              "is intact)", file=sys.stderr)
        return 128 + int(_stop.STOP.signum or signal.SIGINT)
    finally:
        _stop.restore()
    if not cfg.quiet or s.get("stopped_by"):
        print(f"[pyagg] {summary_line(s)}", file=sys.stderr)
    if s.get("stopped_by"):
        return 128 + int(signal.Signals[s["stopped_by"]])
    return 0 if s.get("completed") else 1


if __name__ == "__main__":
    sys.exit(main())
