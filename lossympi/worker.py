"""Ranks >= 1 of a LossyMPI job: a worker's side of the transport.

The worker makes its own X25519 key pair, sends its public key in HELLO,
derives its datagram key from the server's public key (handed over by the
launcher) once CONFIG names the job, registers its UDP source address with a
MAC'd REGISTER datagram (udp with isolation), and answers READY. Then it
receives parameters (acknowledging each broadcast it picks up) and sends
gradients. It only ever receives from rank 0; messages are typed buffers.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import messages as m
from .datagram import GradientSender, mac_available
from .errors import DeadlineError, InvalidArgumentError, ProtocolError, TransportError
from .keys import KeyPair, fingerprint, generate_keys, server_public_key_from_env, worker_datagram_key
from .mpiutil import Backoff, cancel, install_exit_hook, mpi, set_errors_return, skip_mpi_finalize, test, wait_request

__all__ = ["WorkerTransport"]

_FROM_SERVER: Any = object()
MAX_PARAMS = 1 << 34  # elements; a PARAMS_HDR naming more is refused


class WorkerTransport:
    """Rank r >= 1: receives parameters, sends gradients (configuration comes from the server).

    Arguments left out (d, dtype, transport) are taken from the server's
    configuration; given ones must match it. `rate` (bytes/s, None = unpaced)
    overrides the server's pacing for this worker. `server_public_key` (32
    bytes) defaults to what the launcher put in the environment
    (:data:`lossympi.keys.ENV_PUBLIC`); it is required for authenticated UDP.
    """

    def __init__(self, comm: Any, d: int | None = None, dtype: Any = None, transport: str | None = None,
                 rate: Any = _FROM_SERVER, *, burst: Any = _FROM_SERVER, gso: bool | None = None,
                 startup_timeout: float = 120.0, send_timeout: float = 600.0,
                 server_public_key: bytes | None = None) -> None:
        set_errors_return(comm)
        install_exit_hook()
        self.comm = comm
        self.rank = comm.Get_rank()
        if self.rank == 0:
            raise InvalidArgumentError("WorkerTransport runs on ranks >= 1; rank 0 is the server")
        self.send_timeout = float(send_timeout)
        self._stopped = False
        self.stop_reason: str | None = None
        self._inflight: list = []   # (requests, buffers kept alive)
        self._tx: GradientSender | None = None
        self.step: int | None = None
        self._t_params: float | None = None  # when the parameters of self.step arrived
        self._pump: ThreadPoolExecutor | None = None  # runs UDP sends while this thread watches MPI
        self._pump_lock = threading.Lock()
        self.sends_abandoned = 0
        self.params_skipped = 0
        t_end = time.monotonic() + startup_timeout
        spk = server_public_key if server_public_key is not None else server_public_key_from_env()
        macs = {x: bool(mac_available(x)) for x in m.MACS}
        try:
            own = generate_keys()
        except TransportError:  # built without libsodium: no key agreement, no MAC
            own = KeyPair(os.urandom(32), b"")
            macs = {x: False for x in m.MACS}
        hello = m.pack_hello(macs, os.getpid(), own.public, fingerprint(spk) if spk else bytes(8))
        self._post(hello, m.TAG_HELLO)
        cfg = m.parse_config(self._recv_config(t_end))
        if cfg.get("error"):
            raise TransportError(f"server aborted start-up: {cfg['error']}")
        err = self._check_config(cfg, d, dtype, transport)
        self.config = cfg
        self.d = int(cfg["d"])
        self.dtype = np.dtype(cfg["dtype"])
        self.transport = cfg["transport"]
        self.deadline = float(cfg["deadline"])
        if err is None and self.transport == "udp":
            r = cfg["rate"] if rate is _FROM_SERVER else rate
            b = cfg["burst"] if burst is _FROM_SERVER else burst
            self.config["rate"] = r
            try:
                key = None
                if cfg["mac"] != "none":
                    if spk is None:
                        raise TransportError(
                            "no server public key: the launcher must set LOSSYMPI_SERVER_PUBLIC_KEY (pyagg train "
                            "does), or pass server_public_key=")
                    key = worker_datagram_key(own, spk, cfg["job_id"], self.rank)
                self._tx = GradientSender((cfg["host"], cfg["port"]), key, r, rank=self.rank,
                                          auth=cfg["mac"] != "none",
                                          mac=cfg["mac"] if cfg["mac"] != "none" else "auto",
                                          job_id=cfg["job_id"], tensor_id=cfg["tensor_id"],
                                          max_datagram=cfg["max_datagram"], burst=b,
                                          gso=cfg["gso"] if gso is None else gso)
                del key
                if cfg.get("isolate"):
                    self._register(t_end)
            except (TransportError, InvalidArgumentError, OSError) as e:
                err = f"{type(e).__name__}: {e}"
        if self._stopped:
            raise TransportError(f"rank {self.rank}: stopped by the server at start-up ({self.stop_reason})")
        wait_request(self._post(m.pack_ready(err), m.TAG_READY), max(1.0, t_end - time.monotonic()), "READY")
        if err is not None:
            raise TransportError(f"rank {self.rank}: {err}")

    # -- start-up --------------------------------------------------------------
    @staticmethod
    def _check_config(cfg: dict, d: Any, dtype: Any, transport: Any) -> str | None:
        for k in ("d", "dtype", "transport", "deadline", "mac", "job_id", "max_datagram", "tensor_id", "rank"):
            if k not in cfg:
                raise ProtocolError(f"CONFIG lacks {k!r}")
        if d is not None and int(d) != cfg["d"]:
            return f"d={d} but the server uses d={cfg['d']}"
        if dtype is not None and np.dtype(dtype) != np.dtype(cfg["dtype"]):
            return f"dtype={np.dtype(dtype)} but the server uses {np.dtype(cfg['dtype'])}"
        if transport is not None and transport != cfg["transport"]:
            return f"transport={transport!r} but the server uses {cfg['transport']!r}"
        return None

    def _post(self, buf: Any, tag: int) -> Any:
        req = m.post(self.comm, buf, 0, tag)
        self._inflight.append(((req,), buf))
        return req

    def _probe(self, tag: int) -> int | None:
        """Byte count of the next message from the server on `tag`, or None."""
        MPI = mpi()
        st = MPI.Status()
        if not self.comm.Iprobe(source=0, tag=tag, status=st):
            return None
        return st.Get_count(MPI.BYTE)

    def _recv_bytes(self, tag: int, n: int) -> bytes:
        MPI = mpi()
        buf = bytearray(n)
        req = self.comm.Irecv([buf, MPI.BYTE], source=0, tag=tag)
        bo = Backoff()
        while not test(req):
            bo.sleep()
        return bytes(buf)

    def _recv_config(self, t_end: float) -> bytes:
        bo = Backoff(hi=5e-3)
        while True:
            if self._check_stop():
                raise TransportError(f"rank {self.rank}: the server stopped this worker at start-up "
                                     f"({self.stop_reason})")
            n = self._probe(m.TAG_CONFIG)
            if n is not None:
                if n > m.CONFIG_MAX:
                    raise ProtocolError(f"CONFIG of {n} bytes exceeds {m.CONFIG_MAX}")
                return self._recv_bytes(m.TAG_CONFIG, n)
            if time.monotonic() > t_end:
                raise TransportError(f"rank {self.rank}: no CONFIG from the server in time")
            bo.sleep()

    def _register(self, t_end: float) -> None:
        """Sends REGISTER datagrams until the server confirms this worker's UDP source (or stops it)."""
        period = 0.02
        while True:
            self._tx.register()
            t_next = time.monotonic() + period
            bo = Backoff(hi=2e-3)
            while time.monotonic() < t_next:
                n = self._probe(m.TAG_REGISTERED)
                if n is not None:
                    if n != 16:
                        raise ProtocolError(f"REGISTERED of {n} bytes")
                    m.parse_registered(self._recv_bytes(m.TAG_REGISTERED, 16))
                    return
                if self._check_stop():
                    return
                bo.sleep()
            if time.monotonic() > t_end:
                raise TransportError("the server did not confirm this worker's UDP registration in time")
            period = min(period * 2, 0.5)

    # -- steps -----------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stopped

    def _check_stop(self) -> bool:
        n = self._probe(m.TAG_STOP)
        if n is None:
            return False
        raw = self._recv_bytes(m.TAG_STOP, n) if n == m.STOP_SIZE else None
        skip, reason = m.parse_stop(raw) if raw is not None else (True, f"malformed STOP ({n} bytes)")
        self._stopped = True
        self.stop_reason = reason
        if skip:
            skip_mpi_finalize()
        self._drop_inflight()
        if self._tx is not None:
            self._tx.close()
        return True

    def _drop_inflight(self) -> None:
        for reqs, _keep in self._inflight:
            cancel(list(reqs))
        self._inflight = []

    def _progress_sends(self) -> None:
        self._inflight = [(reqs, keep) for reqs, keep in self._inflight if not all(test(r) for r in reqs)]

    def recv_params(self, timeout: float | None = None) -> tuple[int | None, np.ndarray | None]:
        """Blocks until the next parameters: (step, params); (None, None) once stopped.

        If several broadcasts are already queued (this worker fell behind), the
        newest one is returned and the older ones are skipped (params_skipped).
        Each broadcast picked up is acknowledged to the server (its liveness signal).
        timeout: seconds (None: wait for the server as long as it takes).
        """
        if self._stopped:
            return None, None
        t_end = None if timeout is None else time.monotonic() + timeout
        bo = Backoff()
        got: tuple[int | None, np.ndarray | None] | None = None
        while True:
            if self._check_stop():
                return None, None
            if self._probe(m.TAG_PARAMS_HDR) is not None:
                got = self._recv_params_body()
                if got[0] is None:
                    return None, None
                if self._probe(m.TAG_PARAMS_HDR) is not None:  # a newer broadcast is queued: drain
                    self.params_skipped += 1
                    continue
                step, params = got
                self._post(m.pack_ack(step), m.TAG_ACK)
                self.step = step
                self._t_params = time.monotonic()
                return step, params
            if self._inflight:
                self._progress_sends()
            if t_end is not None and time.monotonic() > t_end:
                raise DeadlineError(f"rank {self.rank}: no parameters within {timeout} s")
            bo.sleep()

    def _recv_params_body(self) -> tuple[int | None, np.ndarray | None]:
        n = self._probe(m.TAG_PARAMS_HDR)
        if n != 32:
            raise ProtocolError(f"PARAMS_HDR of {n} bytes")
        step, count, dt = m.parse_params_hdr(self._recv_bytes(m.TAG_PARAMS_HDR, 32), MAX_PARAMS)
        buf = np.empty(count, dtype=dt)
        req = self.comm.Irecv(buf, source=0, tag=m.TAG_PARAMS)
        bo = Backoff()
        while not test(req):
            if self._check_stop():
                cancel([req])
                return None, None
            bo.sleep()
        return step, buf

    def send(self, step: int, grad: np.ndarray) -> dict:
        """Sends the gradient of `step`: lossy UDP datagrams, or MPI (reliable) with transport='mpi'."""
        g = np.ascontiguousarray(grad).reshape(-1)
        if g.size != self.d:
            raise InvalidArgumentError(f"gradient has {g.size} elements, the job uses d={self.d}")
        if g.dtype != self.dtype:
            raise InvalidArgumentError(f"gradient dtype {g.dtype} but the job uses {self.dtype}")
        return self.send_unchecked(step, g)

    def send_unchecked(self, step: int, grad: np.ndarray) -> dict:
        """Sends `grad` as it is, whatever its length or dtype (float32/float64).

        What a faulty or Byzantine worker can do: the server must (and does)
        reject such a gradient as this worker's own and carry on. Honest code
        uses :meth:`send`.
        """
        if self._stopped:
            raise TransportError(f"rank {self.rank}: the transport was stopped ({self.stop_reason})")
        g = np.ascontiguousarray(grad).reshape(-1)
        if self.transport == "udp":
            return self._send_udp(int(step), g)
        MPI = mpi()
        t0 = time.monotonic()
        hdr = np.array([int(step), g.nbytes], dtype=np.uint64)
        reqs = (m.post(self.comm, hdr, 0, m.TAG_GRAD_HDR),
                self.comm.Isend([g.view(np.uint8), MPI.BYTE], dest=0, tag=m.TAG_GRAD))
        t_end = t0 + self.send_timeout
        bo = Backoff()
        while not all(test(r) for r in reqs):
            if self._check_stop():
                return {"step": int(step), "bytes": 0, "seconds": time.monotonic() - t0, "stopped": True}
            if time.monotonic() > t_end:
                # left in flight (completed or cancelled later): `grad` must not be modified meanwhile
                self._inflight.append((reqs, (hdr, g)))
                raise DeadlineError(f"rank {self.rank}: gradient of step {step} not delivered in "
                                    f"{self.send_timeout} s")
            bo.sleep()
        return {"step": int(step), "bytes": int(g.nbytes), "seconds": time.monotonic() - t0}

    def _send_udp(self, step: int, g: np.ndarray) -> dict:
        """A cancellable UDP send: the engine sends on a helper thread (without the GIL) while this
        thread watches the control plane. The send is abandoned (no more datagrams, no END marker) as
        soon as newer parameters or STOP are queued from the server, that step being closed at the
        server, or when the server's deadline for this step has passed (counted from the arrival of
        this step's parameters). Only this thread calls MPI."""
        tx = self._tx
        deadline = None
        if self.step == step and self._t_params is not None:
            deadline = max(self.deadline - (time.monotonic() - self._t_params), 1e-6)
        with self._pump_lock:
            if self._pump is None:
                self._pump = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lossympi-send-{self.rank}")
            fut = self._pump.submit(tx.send, step, g, deadline)
        finished = threading.Event()
        fut.add_done_callback(lambda _f: finished.set())
        # The control plane is checked at 0.2, 0.6, 1.4, 2.4, 3.4 ... ms: an abandon is rarely
        # needed, and every wake-up of this thread takes the GIL and a core from the senders
        # (polling from 20 us cost about as much CPU as the send itself with 8 workers on 2 cores).
        poll = 200e-6
        watching = True
        stop = False
        while True:
            if finished.wait(poll):
                break
            poll = min(poll * 2, 1e-3)
            if watching:
                if self._probe(m.TAG_STOP) is not None:
                    tx.abandon(step)
                    watching = False
                    stop = True
                elif self._probe(m.TAG_PARAMS_HDR) is not None:  # a newer step started: this one closed
                    tx.abandon(step)
                    watching = False
        st = fut.result()
        if st.get("abandoned"):
            self.sends_abandoned += 1
        if stop:
            self._check_stop()
            st["stopped"] = True
        return st

    def close(self) -> None:
        """Closes the UDP socket (the server's STOP, or the end of the job, ends the MPI side)."""
        self._drop_inflight()
        if self._tx is not None:
            self._tx.abandon((1 << 48) - 1)
            self._tx.close()
        with self._pump_lock:
            if self._pump is not None:
                self._pump.shutdown(wait=True)
                self._pump = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
