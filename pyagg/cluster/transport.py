"""Gradient transports of the MPI launcher: LossyMPI, adapted to the server's collector interface.

``--transport udp`` sends gradients as authenticated UDP datagrams (lossy,
deadline-based, each worker isolated on its own registered source);
``--transport mpi`` sends them over MPI point-to-point (reliable, still with
the deadline). Both are :mod:`lossympi`; the control plane is typed buffers
(nothing a worker sends is unpickled). The dependency runs one way: the cluster
uses lossympi's public API, lossympi knows nothing of pyagg.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "TransportCollector",
    "lossympi_available",
    "make_server_transport",
    "make_worker_transport",
    "require_lossympi",
    "simulate_loss",
]


def lossympi_available(transport: str = "udp") -> bool:
    """True when LossyMPI's engine bindings (``lossympi._wire``) are built (both transports need them)."""
    try:
        import lossympi
    except ImportError:
        return False
    return lossympi.available()


def require_lossympi(transport: str) -> None:
    """Raises a clear RuntimeError when ``--transport`` cannot run here."""
    if transport not in ("udp", "mpi"):
        raise RuntimeError(f"--transport must be udp or mpi, got {transport!r}")
    if not lossympi_available(transport):
        raise RuntimeError("the MPI launcher needs LossyMPI's engine bindings (lossympi._wire), which are not "
                           "built: rebuild pyagg (pip install -e . or scripts/dev_build.sh)")


def make_server_transport(comm: Any, d: int, cfg: Any) -> Any:
    """The server's transport for ``cfg.transport``."""
    import lossympi

    require_lossympi(cfg.transport)
    udp = cfg.transport == "udp"
    host = cfg.udp_host or ("0.0.0.0" if cfg.hostfile else "127.0.0.1")
    return lossympi.ServerTransport(
        comm, d, dtype=np.float32, transport=cfg.transport, deadline=cfg.deadline, fill=cfg.fill,
        drop_rate=cfg.drop_rate if udp else 0.0, seed=cfg.seed, host=host, startup_timeout=cfg.startup_timeout)


def make_worker_transport(comm: Any, d: int, cfg: Any) -> Any:
    """A worker's transport (the server sends it the rest of the configuration)."""
    import lossympi

    require_lossympi(cfg.transport)
    return lossympi.WorkerTransport(comm, d=d, dtype=np.float32, transport=cfg.transport,
                                    startup_timeout=cfg.startup_timeout, send_timeout=cfg.worker_timeout)


def simulate_loss(g: np.ndarray, rate: float, fill: str, rng: np.random.Generator, seed: int, step: int, rank: int,
                  prev: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Loses each datagram-sized chunk of ``g`` with probability ``rate`` and fills it as the server would.

    The chunks are LossyMPI's (:func:`lossympi.geometry`) and the fill is the
    engine's own (:func:`lossympi.fill_missing`), so a loss emulated at a
    sender looks exactly like one at the receiver: 'last' keeps that chunk of
    ``prev`` (this sender's previous gradient as delivered; zeros before any).
    Returns (gradient as delivered, chunks lost).
    """
    import lossympi

    geo = lossympi.geometry(g.shape[0], g.dtype)
    received = rng.random(geo["chunk_count"]) >= rate
    lost = int(geo["chunk_count"] - received.sum())
    if lost == 0:
        return g, 0
    if fill == "last":
        out = np.zeros_like(g) if prev is None else np.array(prev, dtype=g.dtype, copy=True)
        ce = geo["chunk_elems"]
        for c in np.flatnonzero(received):
            out[c * ce:(c + 1) * ce] = g[c * ce:(c + 1) * ce]
    else:
        out = np.array(g, copy=True)
    lossympi.fill_missing(out, received, fill, seed=seed, step=step, rank=rank)
    return out, lost


def _transport_status(s: dict) -> str | None:
    """A LossyMPI per-worker stats dict -> the server's row status (None: let the server decide)."""
    if s.get("dead"):
        return "dead"
    if s.get("complete"):
        return None
    exp = s.get("expected") or 0
    got = s.get("received") or 0
    if got and exp and got < exp:
        return "partial"
    if s.get("rejected"):
        return "rejected"
    return "missing"


class TransportCollector:
    """Server-side collector over a LossyMPI ServerTransport."""

    def __init__(self, transport: Any, n_workers: int):
        self.t = transport
        self.n_workers = n_workers
        self.ranks = list(transport.workers)

    @property
    def dead(self) -> set[int]:
        return {self.ranks.index(r) for r in self.t.dead if r in self.ranks}

    @property
    def dead_reasons(self) -> dict[int, str]:
        """Worker index -> why the transport declared it dead."""
        return {self.ranks.index(r): why for r, why in self.t.dead_reason.items() if r in self.ranks}

    def broadcast(self, step: int, params: np.ndarray) -> None:
        self.t.broadcast(step, params)

    def receive(self, step: int) -> tuple[list[np.ndarray | None], list[dict]]:
        G, stats = self.t.receive(step)
        out = []
        for s in stats:
            s = {k: v for k, v in s.items() if k not in ("rank", "step")}
            st = _transport_status(s)
            if st is not None:
                s["transport_status"] = st
            out.append(s)
        return [G[i] for i in range(G.shape[0])], out

    def close(self) -> None:
        self.t.shutdown()
