"""Local launcher: every worker simulated in the server's process.

Same :class:`~pyagg.cluster.server.ParameterServer` as the MPI launcher;
only "collect the gradients" differs: the n workers' mini-batch gradients are
computed in one traced TensorFlow function, then the Byzantine workers' rows
are replaced as their attack dictates (gradient attacks see the exact honest
gradients of the step), and network faults are simulated: a lossy link drops
1472-byte datagrams (the LossyMPI chunk size) independently and the missing
coordinates are filled by ``--fill``; a crashed worker sends nothing from its
crash step on.
"""

from __future__ import annotations

import time

import numpy as np

from .byzantine import AttackSpec, byzantine_rows, choose_byzantine, parse_attack, poison_batch
from .faults import crashed, emulate_loss, link_loss_rate, malform
from .config import TrainConfig
from .data import BatchSampler, make_shards
from .workloads import Experiment
from .model import FlatModel

__all__ = ["LocalCollector", "CHUNK_FLOATS"]

# float32 coordinates per datagram: 1472-byte UDP payload minus a 64-byte header/MAC budget.
CHUNK_FLOATS = (1472 - 64) // 4


class LocalCollector:
    """Computes all workers' gradients in-process (see module doc)."""

    def __init__(self, cfg: TrainConfig, exp: Experiment, model: FlatModel | None = None):
        self.cfg, self.exp = cfg, exp
        self.n_workers = cfg.workers
        self.model = model or FlatModel(exp, seed=cfg.seed)
        self.d = self.model.d
        self.shards = make_shards(exp.y_train, cfg.workers, cfg.shards, cfg.alpha, cfg.seed)
        self.samplers = [BatchSampler(s, cfg.batch_size, cfg.seed, i) for i, s in enumerate(self.shards)]
        self.byz = choose_byzantine(cfg.workers, cfg.byzantine, cfg.seed)
        self.byz_set = set(self.byz)
        self.honest = [i for i in range(cfg.workers) if i not in self.byz_set]
        self.spec: AttackSpec = parse_attack(cfg.attack, cfg.attack_args)
        self.rng = np.random.default_rng([cfg.seed, 99])
        self._dead: set[int] = set()
        self._params: np.ndarray | None = None
        self._last: dict[int, np.ndarray] = {}

    @property
    def dead(self) -> set[int]:
        return set(self._dead)

    def broadcast(self, step: int, params: np.ndarray) -> None:
        self._params = params.copy()  # each simulated worker gets its own copy

    def _drop(self, i: int, g: np.ndarray, rate: float, stats: dict, step: int) -> np.ndarray:
        g, lost = emulate_loss(g, rate, self.cfg.fill, self.rng, self.cfg.seed, step, i + 1, self._last.get(i))
        stats["chunks"] = -(-self.d // CHUNK_FLOATS)
        stats["filled"] = lost
        if lost:
            stats["transport_status"] = "partial"
        return g

    def receive(self, step: int) -> tuple[list[np.ndarray | None], list[dict]]:
        cfg, exp, spec = self.cfg, self.exp, self.spec
        t0 = time.perf_counter()
        xs, ys = [], []
        for i in range(self.n_workers):
            idx = self.samplers[i].indices(step)
            x, y = exp.x_train[idx], exp.y_train[idx]
            if i in self.byz_set and spec.kind == "data":
                x, y = poison_batch(spec, x, y, exp.loss, exp.num_classes)
            xs.append(x)
            ys.append(y)
        G, losses = self.model.gradients(np.stack(xs), np.stack(ys), params=self._params)
        t1 = time.perf_counter()
        stats = [{"compute_time": (t1 - t0) / self.n_workers, "train_loss": float(losses[i])}
                 for i in range(self.n_workers)]
        rows: list[np.ndarray | None] = [G[i] for i in range(self.n_workers)]
        if self.byz and spec.kind == "gradient":
            B = byzantine_rows(spec, G[self.honest], len(self.byz), self.n_workers, cfg.seed, step)
            for j, i in enumerate(self.byz):
                rows[i] = B[j]
        for i in self.byz:
            if crashed(spec, True, step):
                self._dead.add(i)
            elif spec.kind == "bad_input":
                rows[i] = malform(spec, rows[i])
        for i in range(self.n_workers):
            if i in self._dead:
                rows[i] = None
                continue
            rate = link_loss_rate(spec, i in self.byz_set, cfg.drop_rate)
            if rate > 0 and rows[i] is not None and rows[i].dtype == np.float32 and rows[i].shape == (self.d,):
                rows[i] = self._drop(i, rows[i], rate, stats[i], step)
                if cfg.fill == "last":
                    self._last[i] = rows[i].copy()
        return rows, stats

    def close(self) -> None:
        pass
