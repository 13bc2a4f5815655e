"""Worker faults, emulated the same way by both launchers.

The local launcher (:mod:`.local`, every worker in one process) and the MPI
workers (:mod:`.worker`, one process per worker) emulate the non-gradient
Byzantine behaviours of :mod:`.byzantine` through this one module:

- ``crash``: the worker is gone from step ``at_step`` on (:func:`crashed`);
  the local launcher stops collecting its row, an MPI worker SIGKILLs itself.
- ``bad_length`` / ``bad_dtype``: the gradient sent is malformed
  (:func:`malform`): ``extra`` more coordinates (fewer when negative), or
  float64 instead of float32. The server must reject and count it.
- lossy link (``lossy`` attack and ``--drop-rate``): each datagram is lost
  independently; a Byzantine ``lossy`` worker's own loss ``rate`` compounds
  with the link's (:func:`link_loss_rate`), and the loss is emulated at the
  sender with LossyMPI's chunk geometry and the engine's fill
  (:func:`emulate_loss`, i.e. :func:`pyagg.cluster.transport.simulate_loss`).
"""

from __future__ import annotations

import numpy as np

from .byzantine import AttackSpec

__all__ = ["crashed", "malform", "link_loss_rate", "emulated_loss_rate", "emulate_loss"]


def crashed(spec: AttackSpec, evil: bool, step: int) -> bool:
    """True when a Byzantine ``crash`` worker is dead at ``step`` (it sends nothing from ``at_step`` on)."""
    return bool(evil) and spec.name == "crash" and int(step) >= int(spec.param("at_step"))


def malform(spec: AttackSpec, g: np.ndarray) -> np.ndarray:
    """The malformed gradient a ``bad_length`` / ``bad_dtype`` worker sends instead of ``g``."""
    if spec.name == "bad_length":
        extra = int(spec.param("extra"))
        return np.concatenate([g, np.zeros(extra, g.dtype)]) if extra >= 0 else g[:extra].copy()
    if spec.name == "bad_dtype":
        return g.astype(np.float64)
    raise ValueError(f"malform: {spec.name!r} is not a bad-input fault (bad_length, bad_dtype)")


def link_loss_rate(spec: AttackSpec, evil: bool, drop_rate: float) -> float:
    """Probability that one datagram of this worker is lost: the link's ``drop_rate`` compounded with a
    Byzantine ``lossy`` worker's own ``rate`` (independent losses: ``1 - (1 - a)(1 - b)``)."""
    own = float(spec.param("rate")) if evil and spec.name == "lossy" else 0.0
    if own == 0.0 or float(drop_rate) == 0.0:  # one source of loss: its rate, exactly
        return max(own, float(drop_rate))
    return 1.0 - (1.0 - float(drop_rate)) * (1.0 - own)


def emulated_loss_rate(spec: AttackSpec, evil: bool, drop_rate: float, transport: str) -> float:
    """The part of :func:`link_loss_rate` an MPI worker emulates at the sender.

    Over UDP the server's transport injects ``drop_rate`` on every link itself,
    so the sender emulates only a ``lossy`` worker's own rate; MPI messages are
    never lost, so the sender emulates both.
    """
    if transport == "mpi":
        return link_loss_rate(spec, evil, drop_rate)
    return link_loss_rate(spec, evil, 0.0)


def emulate_loss(g: np.ndarray, rate: float, fill: str, rng: np.random.Generator, seed: int, step: int,
                 rank: int, prev: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Lose datagram-sized chunks of ``g`` with probability ``rate`` and fill them as the server would.

    Returns (gradient as delivered, chunks lost); a malformed ``g`` (not a
    float32 vector) is returned untouched (it never reaches the chunking).
    """
    if rate <= 0 or g.dtype != np.float32 or g.ndim != 1:
        return g, 0
    from .transport import simulate_loss

    return simulate_loss(g, rate, fill, rng, seed, step, rank, prev)
