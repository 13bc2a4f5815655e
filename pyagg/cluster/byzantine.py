"""Byzantine workers: which ranks, which attack, and how colluders collude.

Attack families (``--attack NAME --attack-args k=v,...``):

gradient attacks
    Every name of :data:`pyagg.attacks.ATTACKS` (``sign_flip``, ``gaussian``,
    ``nan``, ``inf``, ``zero``, ``alie``, ``ipm``, ``mimic``). The Byzantine
    workers replace their gradient by the attack's output, a function of the
    honest gradients ``H`` of the step (see *collusion* below).
data attacks
    ``label_flip`` (class ``c`` -> ``C-1-c``; binary ``y`` -> ``1-y``;
    regression ``y`` -> ``-y``) and ``corrupt_inputs`` (inputs multiplied by
    ``scale``, default ``-1e12`` as in AggregaThor's experiment). The
    Byzantine worker computes an honest gradient of poisoned data.
network faults
    ``lossy``: the worker sits behind a lossy link that drops each datagram
    with probability ``rate`` (default 0.3); ``crash``: the worker dies
    (SIGKILL, no goodbye) before sending the gradient of step ``at_step``
    (default 5). In both cases the server fills what is missing (``--fill``)
    and the rule treats the damage as a Byzantine fault.
bad input
    ``bad_length`` (a gradient with ``extra`` more coordinates, default 7, or
    fewer when ``extra`` < 0) and ``bad_dtype`` (float64 instead of float32).
    The server rejects such a gradient, counts it and fills the row.

Collusion channel
-----------------
Omniscient gradient attacks need the honest gradients of the step.

- Local launcher: all workers live in one process; the attack gets the exact
  honest gradients of the step (full omniscience, the threat model of the
  papers).
- MPI launcher: the Byzantine ranks share a private MPI communicator
  (:class:`Collusion`), built at start-up by the colluders alone with
  ``MPI_Comm_create_group`` (collective over the group's members only, on
  the dedicated tag :data:`COLLUSION_TAG`): the server and the honest workers
  call nothing for it, so a rank that skips it can stall only the colluders,
  never the server. Nobody else is in it and the server never reads it. Each
  Byzantine rank computes ``estimate`` honest gradients at the step's
  parameters on mini-batches of its own shard (default: enough for the pool
  to hold about ``n - f`` rows, at most 8 per rank), the pool is gathered on
  the lowest Byzantine rank, which runs the attack and scatters one Byzantine
  row to each colluder (typed non-blocking collectives polled with a
  timeout). With iid data the pool is a sample of the distribution the honest
  gradients are drawn from, so the attackers know what honest workers send
  without reading their traffic.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import attacks as _attacks

__all__ = [
    "GRADIENT_ATTACKS",
    "DATA_ATTACKS",
    "NETWORK_FAULTS",
    "BAD_INPUTS",
    "ALL_ATTACKS",
    "AttackSpec",
    "parse_attack",
    "choose_byzantine",
    "poison_batch",
    "byzantine_rows",
    "Collusion",
    "COLLUSION_TAG",
]

GRADIENT_ATTACKS = tuple(_attacks.ATTACKS)
DATA_ATTACKS = ("label_flip", "corrupt_inputs")
NETWORK_FAULTS = ("lossy", "crash")
BAD_INPUTS = ("bad_length", "bad_dtype")
ALL_ATTACKS = ("none",) + GRADIENT_ATTACKS + DATA_ATTACKS + NETWORK_FAULTS + BAD_INPUTS

_DEFAULTS: dict[str, dict[str, Any]] = {
    "corrupt_inputs": {"scale": -1e12},
    "lossy": {"rate": 0.3},
    "crash": {"at_step": 5},
    "bad_length": {"extra": 7},
    "bad_dtype": {},
    "label_flip": {},
}


@dataclass
class AttackSpec:
    """An attack name and its parameters."""

    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``none``, ``gradient``, ``data``, ``network`` or ``bad_input``."""
        if self.name == "none":
            return "none"
        if self.name in GRADIENT_ATTACKS:
            return "gradient"
        if self.name in DATA_ATTACKS:
            return "data"
        if self.name in NETWORK_FAULTS:
            return "network"
        return "bad_input"

    def param(self, key: str) -> Any:
        return self.params.get(key, _DEFAULTS.get(self.name, {}).get(key))

    def describe(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in self.params.items()) + ")"


def parse_attack(name: str | None, params: dict[str, Any] | None = None) -> AttackSpec:
    """Validate an attack name (see module doc) and its parameters."""
    name = (name or "none").replace("-", "_")
    if name not in ALL_ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ALL_ATTACKS)}")
    params = dict(params or {})
    if name in GRADIENT_ATTACKS:
        fn = _attacks.ATTACKS[name]
        accepted = set(inspect.signature(fn).parameters) - {"H", "f"}
        accepted.add("estimate")
        unknown = set(params) - accepted
        if unknown:
            raise ValueError(f"attack {name!r}: unknown parameter(s) {sorted(unknown)}; accepted: {sorted(accepted)}")
    elif name != "none":
        unknown = set(params) - set(_DEFAULTS.get(name, {}))
        if unknown:
            raise ValueError(
                f"attack {name!r}: unknown parameter(s) {sorted(unknown)}; accepted: {sorted(_DEFAULTS[name])}"
            )
    if name == "lossy" and not 0.0 <= float(params.get("rate", 0.3)) <= 1.0:
        raise ValueError(f"attack lossy: rate must be in [0, 1], got {params['rate']}")
    return AttackSpec(name, params)


def choose_byzantine(n_workers: int, n_byzantine: int, seed: int) -> list[int]:
    """The Byzantine workers (0-based worker indices; MPI rank = index + 1), drawn from ``seed``."""
    if not 0 <= n_byzantine <= n_workers:
        raise ValueError(f"--byzantine must be in [0, {n_workers}], got {n_byzantine}")
    rng = np.random.default_rng([int(seed), 31337])
    return sorted(int(i) for i in rng.choice(n_workers, size=n_byzantine, replace=False))


def poison_batch(spec: AttackSpec, x: np.ndarray, y: np.ndarray, loss: str, num_classes: int | None):
    """Apply a data attack to one batch (returns new arrays)."""
    if spec.name == "label_flip":
        if loss == "sparse_categorical_crossentropy":
            return x, (int(num_classes) - 1 - y).astype(y.dtype)
        if loss == "binary_crossentropy":
            return x, (1.0 - y).astype(y.dtype)
        return x, (-y).astype(y.dtype)
    if spec.name == "corrupt_inputs":
        return (x * np.float32(spec.param("scale"))).astype(np.float32), y
    return x, y


def _attack_kwargs(spec: AttackSpec, n_workers: int, seed: int, step: int) -> dict[str, Any]:
    fn = _attacks.ATTACKS[spec.name]
    sig = inspect.signature(fn).parameters
    kw = {k: v for k, v in spec.params.items() if k != "estimate"}
    if "seed" in sig and "seed" not in kw:
        kw["seed"] = int(seed) * 1_000_003 + int(step)  # fresh noise every step, reproducible
    if "n" in sig and "n" not in kw:
        kw["n"] = int(n_workers)
    return kw


def byzantine_rows(spec: AttackSpec, H: np.ndarray, f: int, n_workers: int, seed: int, step: int) -> np.ndarray:
    """Run a gradient attack on the honest gradients ``H``: (f, d) rows."""
    return _attacks.make_byzantine(spec.name, H, f, **_attack_kwargs(spec, n_workers, seed, step))


def default_estimate(spec: AttackSpec, n_workers: int, f: int) -> int:
    """Honest gradients each colluder computes per step (MPI launcher)."""
    if spec.params.get("estimate") is not None:
        return max(1, int(spec.params["estimate"]))
    if spec.name in ("nan", "inf", "zero"):
        return 1
    return max(1, min(8, math.ceil((n_workers - f) / max(f, 1))))


COLLUSION_TAG = 0x7C0B
"""Tag of ``MPI_Comm_create_group`` that builds the colluders' communicator (<= 32767, MPI's minimum tag bound)."""


class Collusion:
    """The colluders' private channel: an MPI communicator of the Byzantine ranks.

    Created by the Byzantine ranks only (every one of them, before the
    transport), with ``comm.Create_group`` (``MPI_Comm_create_group``): a
    collective over the group's members alone, so the server and the honest
    workers take no part and call nothing. The group is ordered by rank: the
    lowest Byzantine rank is rank 0 of the channel (it gathers the pool).
    The creation itself blocks until every colluder has joined (no MPI call
    creates a communicator with a timeout): a colluder that never does stalls
    only the other colluders, which the server then treats as absent workers.
    The per-step exchanges (:meth:`attack`) are polled with a timeout.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The job's communicator (``COMM_WORLD``).
    byzantine_ranks : list of int
        The colluders' ranks in ``comm``; the calling rank must be one of them.
    """

    def __init__(self, comm: Any, byzantine_ranks: list[int]):
        ranks = sorted({int(r) for r in byzantine_ranks})
        rank = comm.Get_rank()
        if rank not in ranks:
            raise ValueError(f"Collusion: rank {rank} is not a colluder ({ranks}); honest ranks create nothing")
        group = comm.Get_group()
        try:
            members = group.Incl(ranks)
        finally:
            group.Free()
        try:
            self.comm = comm.Create_group(members, COLLUSION_TAG)
        finally:
            members.Free()
        self.member = True
        self.ranks = ranks
        self.f = len(ranks)

    def attack(
        self, spec: AttackSpec, own: np.ndarray, n_workers: int, seed: int, step: int, timeout: float = 60.0
    ) -> np.ndarray:
        """Pool ``own`` ((k, d) honest gradients of this colluder), return this colluder's Byzantine row.

        Non-blocking collectives polled with a timeout: a colluder that is gone
        (stopped by the server, crashed) makes the others give up with a
        ``TimeoutError`` instead of hanging in a collective.
        """
        from mpi4py import MPI

        c = self.comm
        k, d = own.shape
        own = np.ascontiguousarray(own, dtype=np.float32)
        root = c.Get_rank() == 0
        pool = np.empty((c.Get_size() * k, d), dtype=np.float32) if root else None
        self._wait(c.Igather([own, MPI.FLOAT], [pool, MPI.FLOAT] if root else None, root=0), timeout, step)
        rows = None
        if root:
            rows = np.ascontiguousarray(byzantine_rows(spec, pool, self.f, n_workers, seed, step), dtype=np.float32)
        mine = np.empty(d, dtype=np.float32)
        self._wait(c.Iscatter([rows, MPI.FLOAT] if root else None, [mine, MPI.FLOAT], root=0), timeout, step)
        return mine

    @staticmethod
    def _wait(req: Any, timeout: float, step: int) -> None:
        import time

        t_end = time.monotonic() + timeout
        pause = 2e-5
        while not req.Test():
            if time.monotonic() > t_end:
                raise TimeoutError(f"collusion channel: a colluder did not answer within {timeout} s (step {step})")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)
