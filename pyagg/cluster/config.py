"""Training configuration (what ``pyagg train`` parses) and small helpers."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "parse_pre", "OPTIMIZERS", "FILLS"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
FILLS = ("nan", "random", "zero", "last")


@dataclass
class TrainConfig:
    """Every knob of a training run (see ``pyagg train --help``)."""

    experiment: str = "digits-mlp"
    experiment_args: dict[str, Any] = field(default_factory=dict)
    workers: int = 5
    byzantine: int = 0
    declared_f: int | None = None
    rule: str = "multi-krum"
    rule_args: dict[str, Any] = field(default_factory=dict)
    pre: list[Any] = field(default_factory=list)
    attack: str = "none"
    attack_args: dict[str, Any] = field(default_factory=dict)
    transport: str = "udp"
    deadline: float = 2.0
    fill: str = "nan"
    drop_rate: float = 0.0
    launcher: str = "local"
    steps: int = 300
    batch_size: int = 32
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 10
    checkpoint_every: int = 50
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: int = 3
    seed: int = 0
    out: str = "runs/train"
    shards: str = "iid"
    alpha: float = 0.5
    hostfile: str | None = None
    mpiexec: str | None = None
    worker_timeout: float = 60.0
    agg_threads: int = 1
    udp_host: str | None = None
    startup_timeout: float = 300.0
    progress: bool = True
    tensorboard: bool = True
    quiet: bool = False

    @property
    def f(self) -> int:
        """Declared f (what the rule is told)."""
        return self.byzantine if self.declared_f is None else int(self.declared_f)

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not 0 <= self.byzantine <= self.workers:
            raise ValueError(f"--byzantine must be in [0, --workers={self.workers}], got {self.byzantine}")
        if self.f < 0:
            raise ValueError(f"--declared-f must be >= 0, got {self.f}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.fill not in FILLS:
            raise ValueError(f"--fill must be one of {FILLS}, got {self.fill!r}")
        if self.transport not in ("udp", "mpi"):
            raise ValueError(f"--transport must be udp or mpi, got {self.transport!r}")
        if self.launcher not in ("local", "mpi"):
            raise ValueError(f"--launcher must be local or mpi, got {self.launcher!r}")
        if not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError(f"--drop-rate must be in [0, 1], got {self.drop_rate}")
        if not self.deadline > 0:
            raise ValueError(f"--deadline must be > 0, got {self.deadline}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("--eval-every and --checkpoint-every must be >= 0")
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: continue the run or replace it")
        if self.shards not in ("iid", "dirichlet"):
            raise ValueError(f"--shards must be iid or dirichlet, got {self.shards!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (steps, eval, transport... may change)."""
        keys = ("experiment", "experiment_args", "workers", "rule", "rule_args", "pre", "optimizer",
                "seed", "shards", "alpha", "batch_size")
        d = self.to_dict()
        return json.loads(json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str))


def parse_pre(items: list[str] | None) -> list[Any]:
    """``["nnm", "bucketing:s=2", "clipping:tau=5:adaptive=1"]`` -> pyagg ``pre=`` list."""
    from .workloads import _convert

    out: list[Any] = []
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, *kvs = part.split(":")
            params = {}
            for kv in kvs:
                if "=" not in kv:
                    raise ValueError(f"--pre {part!r}: expected name:key=value[:key=value]")
                k, v = kv.split("=", 1)
                params[k.strip()] = _convert(v.strip())
            out.append((name, params) if params else name)
    return out
