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
from collections.abc import Callable
from typing import Any

import numpy as np

from .byzantine import Collusion, choose_byzantine, default_estimate, parse_attack, poison_batch
from .config import TrainConfig
from .data import BatchSampler, make_shards
from .workloads import Experiment
from .model import FlatModel
from .faults import crashed, emulate_loss, emulated_loss_rate, malform
from .transport import make_worker_transport, require_lossympi

__all__ = ["run_worker"]


def run_worker(comm: Any, cfg: TrainConfig, exp: Experiment, collusion: Collusion | None,
               on_started: Callable[[], None] | None = None) -> int:
    """Worker loop of rank ``comm.Get_rank()`` (>= 1); returns an exit status.

    ``on_started()`` is called once the transport is up (training started).
    """
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
    # Loss on this worker's link (faults.emulated_loss_rate: what the sender emulates, per transport).
    emulate_rate = emulated_loss_rate(spec, evil, cfg.drop_rate, cfg.transport)
    require_lossympi(cfg.transport)
    transport = make_worker_transport(comm, d, cfg)
    if on_started is not None:
        on_started()
    rng = np.random.default_rng([cfg.seed, rank, 5])
    estimate = default_estimate(spec, cfg.workers, len(byz)) if spec.kind == "gradient" else 0
    prev: np.ndarray | None = None
    try:
        while True:
            try:
                step, params = transport.recv_params(timeout=cfg.worker_timeout)
            except TimeoutError as exc:
                print(f"[worker {rank}] {exc}: exiting", file=sys.stderr, flush=True)
                return 3
            if step is None:
                break
            if crashed(spec, evil, step):
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
                transport.send_unchecked(step, malform(spec, g))
                continue
            if emulate_rate > 0 and g.shape == (d,):
                g, _ = emulate_loss(g, emulate_rate, cfg.fill, rng, cfg.seed, step, rank, prev)
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

