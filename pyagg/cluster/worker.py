"""A worker rank: receive parameters, compute a gradient on its shard, send it.

Honest workers do exactly that. Byzantine workers (ranks drawn from the seed)
run their attack (:mod:`.byzantine`): poison their batch (data attacks),
replace their gradient through the collusion channel (gradient attacks),
drop datagrams (``lossy``), die (``crash``) or send malformed gradients.
A worker only holds its own copy of the data and of the parameters: it
cannot touch the server's model or another worker's data or gradient.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import numpy as np

from .byzantine import Collusion, choose_byzantine, default_estimate, parse_attack, poison_batch
from .config import TrainConfig
from .data import BatchSampler, make_shards
from .experiments import Experiment
from .model import FlatModel
from .transport import make_worker_transport, recv_params, send_malformed, uses_lossympi

__all__ = ["run_worker", "simulate_loss"]


def simulate_loss(g: np.ndarray, rate: float, fill: str, rng: np.random.Generator, chunk: int,
                  prev: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Drop each ``chunk``-float datagram of ``g`` with probability ``rate``; fill the holes."""
    d = g.shape[0]
    chunks = -(-d // chunk)
    lost = np.flatnonzero(rng.random(chunks) < rate)
    if lost.size == 0:
        return g, 0
    g = g.copy()
    for c in lost:
        sl = slice(c * chunk, min((c + 1) * chunk, d))
        if fill == "zero":
            g[sl] = 0
        elif fill == "random":
            g[sl] = rng.standard_normal(sl.stop - sl.start, dtype=np.float32)
        elif fill == "last" and prev is not None:
            g[sl] = prev[sl]
        else:
            g[sl] = np.nan
    return g, int(lost.size)


def run_worker(comm: Any, cfg: TrainConfig, exp: Experiment, collusion: Collusion | None) -> int:
    """Worker loop of rank ``comm.Get_rank()`` (>= 1); returns an exit status."""
    from .local import CHUNK_FLOATS

    rank = comm.Get_rank()
    me = rank - 1
    spec = parse_attack(cfg.attack, cfg.attack_args)
    byz = choose_byzantine(cfg.workers, cfg.byzantine, cfg.seed)
    evil = me in byz
    shards = make_shards(exp.y_train, cfg.workers, cfg.shards, cfg.alpha, cfg.seed)
    shard = shards[me]
    sampler = BatchSampler(shard, cfg.batch_size, cfg.seed, me)
    extra: dict[int, BatchSampler] = {}
    model = FlatModel(exp, seed=cfg.seed)
    d = model.d
    # Warm up (trace the gradient function) before the start-up barrier, so step 0 is not slow.
    x0 = exp.x_train[shard[: cfg.batch_size]]
    model.gradient(x0, exp.y_train[shard[: cfg.batch_size]])
    model.gradients(x0[None], exp.y_train[shard[: cfg.batch_size]][None], params=model.initial)
    # Loss on this worker's link. Over UDP the server injects --drop-rate on every link; a Byzantine
    # "lossy" worker additionally loses `rate` of its datagrams, emulated at the sender (the lost
    # chunks are replaced by what the server's fill would put there). MPI never loses anything:
    # both are emulated at the sender.
    emulate_rate = float(spec.param("rate")) if evil and spec.name == "lossy" else 0.0
    if cfg.transport == "mpi":
        emulate_rate = 1 - (1 - cfg.drop_rate) * (1 - emulate_rate)
    uses_lossympi(cfg.transport)
    transport = make_worker_transport(comm, d, cfg)
    from .mpi import STARTED

    STARTED[0] = True
    rng = np.random.default_rng([cfg.seed, rank, 5])
    estimate = default_estimate(spec, cfg.workers, len(byz)) if spec.kind == "gradient" else 0
    prev: np.ndarray | None = None
    try:
        while True:
            try:
                step, params = recv_params(transport, cfg.worker_timeout)
            except TimeoutError as exc:
                print(f"[worker {rank}] {exc}: exiting", file=sys.stderr, flush=True)
                return 3
            if step is None:
                break
            if evil and spec.name == "crash" and step >= int(spec.param("at_step")):
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            idx = sampler.indices(step)
            x, y = exp.x_train[idx], exp.y_train[idx]
            if evil and spec.kind == "data":
                x, y = poison_batch(spec, x, y, exp.loss, exp.num_classes)
            g = model.gradients(x[None], y[None], params=params)[0][0]  # set params + gradient, one call
            if evil and spec.kind == "gradient" and collusion is not None:
                own = [g]
                for k in range(1, estimate):
                    if k not in extra:
                        extra[k] = BatchSampler(shard, cfg.batch_size, cfg.seed, me + 1000 * k)
                    idk = extra[k].indices(step)
                    own.append(model.gradient(exp.x_train[idk], exp.y_train[idk])[0])
                g = collusion.attack(spec, np.stack(own), cfg.workers, cfg.seed, step, timeout=cfg.worker_timeout)
            if evil and spec.kind == "bad_input":
                if spec.name == "bad_length":
                    n_extra = int(spec.param("extra"))
                    g = np.concatenate([g, np.zeros(n_extra, g.dtype)]) if n_extra >= 0 else g[:n_extra].copy()
                else:
                    g = g.astype(np.float64)
                send_malformed(transport, step, g)
                continue
            if emulate_rate > 0 and g.dtype == np.float32 and g.shape == (d,):
                g, _ = simulate_loss(g, emulate_rate, cfg.fill, rng, CHUNK_FLOATS, prev)
                prev = g
            try:
                transport.send(step, g)
            except Exception:  # noqa: BLE001 - stopped by the server while sending: leave quietly
                if getattr(transport, "stopped", False):
                    break
                raise
    finally:
        try:
            transport.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    return 0

