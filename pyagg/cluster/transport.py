"""Gradient transports of the MPI launcher.

``--transport udp`` (and ``mpi`` when available) use LossyMPI
(:mod:`lossympi`: UDP datagrams with a deadline, MPI control plane). This
module adapts it to the server's collector interface and also provides
:class:`MpiServerTransport` / :class:`MpiWorkerTransport`, a plain-MPI
gradient path with the same interface (used for ``--transport mpi`` when
LossyMPI is not installed).

Plain-MPI wire format (everything point-to-point, nothing collective after
start-up, so a dead worker cannot hang the server):

- server -> worker, tag 101: int64 header ``[MAGIC, kind, step, d]`` +
  float32 parameters (kind 1) or nothing (kind 2 = shutdown);
- worker -> server, tag 102: int64 header ``[MAGIC, step, dtype code, count]``
  + raw payload. The server receives into a buffer of fixed size (a larger
  message is truncated by MPI and rejected), checks magic, step, dtype code
  and count against the bytes actually received, and returns the row as sent
  (any dtype/length) for the server's own validation; nothing a worker sends
  is unpickled or used as an offset.

Every wait is a poll with a deadline and a short sleep (MPI's blocking calls
busy-wait, which would starve the workers on a small machine).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = [
    "lossympi_available",
    "MpiServerTransport",
    "MpiWorkerTransport",
    "make_server_transport",
    "make_worker_transport",
    "TransportCollector",
]

MAGIC = 0x50594147  # "PYAG"
TAG_CTRL, TAG_GRAD = 101, 102
KIND_PARAMS, KIND_SHUTDOWN = 1, 2
HDR = 4 * 8
DTYPE_CODES = {0: np.dtype(np.float32), 1: np.dtype(np.float64), 2: np.dtype(np.float16),
               3: np.dtype(np.int32), 4: np.dtype(np.int64)}
CODE_OF = {v: k for k, v in DTYPE_CODES.items()}
POLL = 0.0005


def lossympi_available(transport: str = "mpi") -> bool:
    """True when LossyMPI can carry ``transport`` ("udp" also needs the engine's UDP bindings)."""
    try:
        import lossympi
    except ImportError:
        return False
    if not (hasattr(lossympi, "ServerTransport") and hasattr(lossympi, "WorkerTransport")):
        return False
    if transport == "udp":
        from .. import _ext

        return hasattr(_ext, "UdpReceiver") and hasattr(_ext, "UdpSender")
    return True


# ------------------------------------------------------- plain MPI: server ---
class MpiServerTransport:
    """Server side of the plain-MPI gradient path (see module doc).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        World communicator (rank 0 = this server). Collective at construction
        (a barrier: every rank is ready).
    d : int
        Gradient length.
    deadline : float
        Seconds to wait for a step's gradients.
    dead_after : int
        A worker that misses this many consecutive deadlines is declared dead:
        it gets no more parameters and is not waited for.
    """

    def __init__(self, comm: Any, d: int, deadline: float = 2.0, dead_after: int = 2, **_: Any):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.d = int(d)
        self.deadline = float(deadline)
        self.dead_after = int(dead_after)
        self.workers = list(range(1, comm.Get_size()))
        self.dead: set[int] = set()
        self.misses = {w: 0 for w in self.workers}
        self.cap = HDR + 8 * self.d + 8
        self.bufs = {w: bytearray(self.cap) for w in self.workers}
        self.reqs: dict[int, Any] = {}
        self.pending: list[tuple[Any, Any]] = []
        comm.Barrier()
        for w in self.workers:
            self._post(w)

    def _post(self, w: int) -> None:
        self.reqs[w] = self.comm.Irecv([self.bufs[w], self.MPI.BYTE], source=w, tag=TAG_GRAD)

    def _reap(self) -> None:
        self.pending = [(r, b) for r, b in self.pending if not r.Test()]

    def broadcast(self, step: int, params: np.ndarray) -> None:
        self._reap()
        hdr = np.array([MAGIC, KIND_PARAMS, step, self.d], np.int64).tobytes()
        msg = bytearray(hdr + np.ascontiguousarray(params, np.float32).tobytes())
        for w in self.workers:
            if w not in self.dead:
                self.pending.append((self.comm.Isend([msg, self.MPI.BYTE], dest=w, tag=TAG_CTRL), msg))

    def _parse(self, w: int, nbytes: int, step: int, st: dict) -> np.ndarray | None | str:
        raw = memoryview(self.bufs[w])[:nbytes]
        if nbytes < HDR:
            return "short message"
        magic, s, code, count = np.frombuffer(raw[:HDR], np.int64)
        if magic != MAGIC:
            return "bad magic"
        if s < step:
            st["late"] += 1
            return None
        if s != step:
            return f"step {s} != {step}"
        dt = DTYPE_CODES.get(int(code))
        if dt is None:
            return f"dtype code {code}"
        if count < 0 or HDR + count * dt.itemsize != nbytes:
            return f"count {count} does not match {nbytes - HDR} payload bytes"
        return np.frombuffer(raw[HDR:], dt).copy()

    def receive_rows(self, step: int) -> tuple[list[np.ndarray | None], list[dict]]:
        """Wait (up to the deadline) for every live worker's message of ``step``."""
        MPI = self.MPI
        rows: dict[int, np.ndarray] = {}
        stats = {w: {"received": 0, "late": 0, "rejected": 0, "bytes": 0} for w in self.workers}
        t_end = time.monotonic() + self.deadline
        waiting = [w for w in self.workers if w not in self.dead]
        while waiting:
            progressed = False
            for w in list(waiting):
                status = MPI.Status()
                try:
                    done = self.reqs[w].Test(status)
                except MPI.Exception:  # truncated (oversize) message: consumed, rejected
                    stats[w]["rejected"] += 1
                    rows[w] = None
                    self._post(w)
                    waiting.remove(w)
                    progressed = True
                    continue
                if not done:
                    continue
                progressed = True
                nbytes = status.Get_count(MPI.BYTE)
                out = self._parse(w, nbytes, step, stats[w])
                self._post(w)
                if out is None:  # a late message of an earlier step: keep waiting
                    continue
                if isinstance(out, str):
                    stats[w]["rejected"] += 1
                    stats[w]["reason"] = out
                    rows[w] = None
                else:
                    rows[w] = out
                    stats[w]["received"] = 1
                    stats[w]["bytes"] = nbytes
                waiting.remove(w)
            if not waiting or time.monotonic() >= t_end:
                break
            if not progressed:
                time.sleep(POLL)
        for w in self.workers:
            if w in self.dead:
                continue
            if w in waiting:
                self.misses[w] += 1
                if self.misses[w] >= self.dead_after:
                    self.dead.add(w)
            else:
                self.misses[w] = 0
        return [rows.get(w) for w in self.workers], [stats[w] for w in self.workers]

    def receive(self, step: int) -> tuple[np.ndarray, list[dict]]:
        """lossympi-style: an (n, d) float32 matrix, NaN where nothing valid came."""
        rows, stats = self.receive_rows(step)
        G = np.full((len(rows), self.d), np.nan, np.float32)
        for i, r in enumerate(rows):
            if r is not None and r.dtype == np.float32 and r.shape == (self.d,):
                G[i] = r
        return G, stats

    def shutdown(self, timeout: float = 2.0) -> None:
        hdr = bytearray(np.array([MAGIC, KIND_SHUTDOWN, -1, self.d], np.int64).tobytes())
        reqs = [self.comm.Isend([hdr, self.MPI.BYTE], dest=w, tag=TAG_CTRL)
                for w in self.workers if w not in self.dead]
        t_end = time.monotonic() + timeout
        while reqs and time.monotonic() < t_end:
            reqs = [r for r in reqs if not r.Test()]
            time.sleep(POLL)


# ------------------------------------------------------- plain MPI: worker ---
class MpiWorkerTransport:
    """Worker side of the plain-MPI gradient path.

    ``recv_params()`` returns ``(step, params)`` or ``(None, None)`` on
    shutdown, and raises ``TimeoutError`` when the server is silent for
    ``timeout`` seconds (it died).
    """

    def __init__(self, comm: Any, d: int, timeout: float = 60.0, **_: Any):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.d = int(d)
        self.timeout = float(timeout)
        self.buf = bytearray(HDR + 4 * self.d)
        self.sends: list[tuple[Any, Any]] = []
        comm.Barrier()

    def recv_params(self) -> tuple[int | None, np.ndarray | None]:
        MPI = self.MPI
        t_end = time.monotonic() + self.timeout
        while not self.comm.Iprobe(source=0, tag=TAG_CTRL):
            if time.monotonic() > t_end:
                raise TimeoutError(f"no message from the server for {self.timeout:.0f} s")
            time.sleep(POLL)
        status = MPI.Status()
        self.comm.Recv([self.buf, MPI.BYTE], source=0, tag=TAG_CTRL, status=status)
        n = status.Get_count(MPI.BYTE)
        magic, kind, step, d = np.frombuffer(memoryview(self.buf)[:HDR], np.int64)
        if magic != MAGIC or kind == KIND_SHUTDOWN:
            return None, None
        if d != self.d or n != HDR + 4 * self.d:
            raise ValueError(f"parameters of unexpected size {n} bytes (d={d})")
        return int(step), np.frombuffer(memoryview(self.buf)[HDR:n], np.float32).copy()

    def send(self, step: int, grad: np.ndarray) -> None:
        """Send a gradient; any dtype/length goes out as is (the server validates)."""
        self.sends = [(r, b) for r, b in self.sends if not r.Test()]
        g = np.ascontiguousarray(grad)
        code = CODE_OF.get(g.dtype, 99)
        msg = bytearray(np.array([MAGIC, step, code, g.size], np.int64).tobytes() + g.tobytes())
        self.sends.append((self.comm.Isend([msg, self.MPI.BYTE], dest=0, tag=TAG_GRAD), msg))

    def close(self, timeout: float = 2.0) -> None:
        t_end = time.monotonic() + timeout
        while self.sends and time.monotonic() < t_end:
            self.sends = [(r, b) for r, b in self.sends if not r.Test()]
            time.sleep(POLL)


# ----------------------------------------------------------------- factory ---
def uses_lossympi(transport: str) -> bool:
    """Whether ``--transport`` goes through LossyMPI (udp: always; mpi: when installed)."""
    if transport == "udp":
        if not lossympi_available("udp"):
            raise RuntimeError("--transport udp needs LossyMPI (the lossympi package and the engine's UDP "
                               "bindings, pyagg._ext.UdpReceiver); build them (scripts/dev_build.sh) or use "
                               "--transport mpi")
        return True
    return lossympi_available("mpi")


def make_server_transport(comm: Any, d: int, cfg: Any) -> Any:
    """The server's transport for ``cfg.transport`` (LossyMPI, or the built-in plain-MPI path)."""
    if uses_lossympi(cfg.transport):
        import lossympi

        udp = cfg.transport == "udp"
        host = cfg.udp_host or ("0.0.0.0" if cfg.hostfile else "127.0.0.1")
        return lossympi.ServerTransport(
            comm, d, dtype=np.float32, transport=cfg.transport, deadline=cfg.deadline, fill=cfg.fill,
            drop_rate=cfg.drop_rate if udp else 0.0, seed=cfg.seed, host=host, startup_timeout=cfg.startup_timeout)
    return MpiServerTransport(comm, d, deadline=cfg.deadline)


def make_worker_transport(comm: Any, d: int, cfg: Any) -> Any:
    """A worker's transport (the server sends it the rest of the configuration)."""
    if uses_lossympi(cfg.transport):
        import lossympi

        return lossympi.WorkerTransport(comm, d=d, dtype=np.float32, transport=cfg.transport,
                                        startup_timeout=cfg.startup_timeout, send_timeout=cfg.worker_timeout)
    return MpiWorkerTransport(comm, d, timeout=cfg.worker_timeout)


def recv_params(transport: Any, timeout: float) -> tuple[int | None, np.ndarray | None]:
    """``transport.recv_params`` with a timeout (TimeoutError when the server is silent)."""
    if isinstance(transport, MpiWorkerTransport):
        return transport.recv_params()
    return transport.recv_params(timeout=timeout)


def send_malformed(transport: Any, step: int, g: np.ndarray) -> None:
    """What a Byzantine client does to send a gradient of the wrong length or dtype.

    The honest clients refuse to (LossyMPI's ``WorkerTransport.send`` checks
    both), so this goes under them: over UDP the datagrams are built by the
    worker's own sender with the wrong element count/dtype code; over MPI the
    header and payload are posted directly with the wrong byte count. The
    server must reject either and carry on.
    """
    if isinstance(transport, MpiWorkerTransport):
        transport.send(step, g)
        return
    from lossympi import control

    g = np.ascontiguousarray(g)
    if transport.transport == "udp":
        transport._tx.send(int(step), g)
        return
    from mpi4py import MPI

    comm = transport.comm
    hdr = np.array([int(step), g.nbytes], dtype=np.uint64)
    reqs = [comm.Isend([hdr, MPI.UINT64_T], dest=0, tag=control.TAG_GRAD_HDR),
            comm.Isend([g.view(np.uint8), MPI.BYTE], dest=0, tag=control.TAG_GRAD)]
    transport._grad_pending.append((tuple(reqs), (hdr, g)))


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
    """Server-side collector over a transport (LossyMPI or the built-in plain-MPI path)."""

    def __init__(self, transport: Any, n_workers: int):
        self.t = transport
        self.n_workers = n_workers
        self.ranks = list(getattr(transport, "workers", range(1, n_workers + 1)))

    @property
    def dead(self) -> set[int]:
        return {self.ranks.index(r) for r in getattr(self.t, "dead", ()) if r in self.ranks}

    def broadcast(self, step: int, params: np.ndarray) -> None:
        self.t.broadcast(step, params)

    def receive(self, step: int) -> tuple[list[np.ndarray | None], list[dict]]:
        if hasattr(self.t, "receive_rows"):
            return self.t.receive_rows(step)
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
