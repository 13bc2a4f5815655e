"""Rank 0 of a LossyMPI job: the parameter server's side of the transport.

Start-up (every message a typed buffer, see :mod:`lossympi.messages`):

1. each worker sends HELLO (its X25519 public key, the MACs it supports); a
   HELLO that does not parse makes that worker faulty (declared dead, told to
   stop) and the job goes on with the others;
2. the server derives each worker's datagram key (:mod:`lossympi.keys`) and
   sends CONFIG (job parameters, no secret);
3. over UDP with source isolation (the default), each worker proves its UDP
   source address with a REGISTER datagram MAC'd under its key; the server's
   receiver gives it a socket connected to that address, and the server
   answers REGISTERED over MPI;
4. each worker answers READY (or its error).

Then every step: ``broadcast`` (PARAMS_HDR + PARAMS, non-blocking; the workers
ACK each broadcast they pick up) and ``receive`` (the gradients, with a
deadline; missing parts filled by policy). A worker is declared dead only for
control-plane reasons: an MPI error, a control message that does not parse, or
``dead_after`` broadcasts it has not acknowledged. What happens on the data
plane (lost or crowded-out datagrams) never kills a worker: it costs at most
that step's row.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from . import messages as m
from .datagram import FILL_POLICIES, GradientReceiver, dtype_code, fill_missing, geometry, mac_available
from .errors import InvalidArgumentError, ProtocolError, TransportError
from .keys import KeyPair, fingerprint, server_datagram_key, server_keys_from_env
from .mpiutil import Backoff, cancel, install_exit_hook, mpi, set_errors_return, skip_mpi_finalize, test

__all__ = ["TRANSPORTS", "ServerTransport"]

TRANSPORTS = ("udp", "mpi")


def _empty_stats(rank: int, step: int) -> dict:
    return {"rank": rank, "step": step, "expected": 1, "received": 0, "filled": 1, "duplicates": 0, "late": 0,
            "dropped": 0, "end_markers": 0, "end_replays": 0, "sent": None, "bytes": 0, "rejected": 0,
            "first_s": None, "last_s": None, "end_s": None, "complete": False, "waited": True,
            "kernel_dropped": 0, "rejected_bad_length": 0, "rejected_bad_header": 0, "rejected_out_of_range": 0,
            "rejected_bad_mac": 0, "rejected_wrong_step": 0}


def _poll(req: Any, status: Any) -> tuple[bool, bool]:
    """(done, truncated) of a receive; a message longer than the buffer completes it, truncated."""
    MPI = mpi()
    try:
        return bool(req.Test(status)), False
    except MPI.Exception as e:
        if e.Get_error_class() == MPI.ERR_TRUNCATE:
            return True, True
        raise


class _MpiGrad:
    """transport='mpi', one worker: a header receive always posted, a data receive on demand."""

    def __init__(self, comm: Any, rank: int, nbytes: int) -> None:
        MPI = mpi()
        self.comm = comm
        self.rank = rank
        self.nbytes = nbytes
        self.hdr = np.zeros(2, dtype=np.uint64)
        self.staging = np.empty(nbytes, dtype=np.uint8)
        self.hdr_status = MPI.Status()
        self.status = MPI.Status()
        self.hdr_req = comm.Irecv([self.hdr, MPI.BYTE], source=rank, tag=m.TAG_GRAD_HDR)
        self.data_req = None
        self.data_step = -1
        self.hdr_ok = False

    def cancel(self) -> None:
        cancel([self.hdr_req, self.data_req])
        self.hdr_req = self.data_req = None


class ServerTransport:
    """Rank 0: receives every worker's gradient each step; broadcasts parameters.

    Parameters
    ----------
    comm : mpi4py communicator (rank 0 of it is the server)
    d : int
        Gradient length.
    dtype : float32 or float64
    transport : 'udp' | 'mpi'
        'udp': LossyMPI datagrams (lossy, authenticated, deadline). 'mpi': the
        gradient travels over MPI point-to-point (reliable), still received with
        the deadline so a dead worker costs at most one deadline.
    deadline : float
        Seconds receive() waits at most per step.
    fill : 'nan' | 'random' | 'zero' | 'last'
    auth : bool
        MAC every datagram (udp). False switches it off, explicitly.
    rate : float or None
        Pacing of every worker (bytes/s of UDP payload); None = unpaced. Workers may override.
    drop_rate, seed : receiver-side loss injection (udp) and the seed of `random` fill.
    host : address the UDP socket binds to; ``advertise`` is what workers send to (default: the bound address).
    dead_after : int or None
        A worker that has not acknowledged that many broadcasts is declared dead. None: only MPI
        errors and malformed control messages declare death.
    startup_timeout : float
        Seconds to wait for the workers at start-up; a worker that has not answered by then is dead.
    keys : KeyPair or None
        This job's server key pair; None reads it from the launcher (:func:`lossympi.keys.server_keys_from_env`).
        Needed for udp with auth.
    isolate : bool
        udp: each worker's datagrams come through a socket connected to its registered source address
        (datagrams from anywhere else are dropped before any MAC work). Default True.
    """

    def __init__(self, comm: Any, d: int, dtype: Any = np.float32, transport: str = "udp", deadline: float = 2.0,
                 fill: str = "nan", auth: bool = True, rate: float | None = None, drop_rate: float = 0.0,
                 seed: int = 0, host: str = "127.0.0.1", *, port: int = 0, advertise: str | None = None,
                 mac: str = "auto", grace: float = 0.005, max_datagram: int = 1472, rcvbuf: int | None = None,
                 burst: int | None = None, gso: bool = True, dead_after: int | None = 3,
                 startup_timeout: float = 120.0, keys: KeyPair | None = None, isolate: bool = True) -> None:
        if transport not in TRANSPORTS:
            raise InvalidArgumentError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if fill not in FILL_POLICIES:
            raise InvalidArgumentError(f"unknown fill policy {fill!r}; known: {', '.join(FILL_POLICIES)}")
        if not (deadline >= 0):
            raise InvalidArgumentError(f"deadline must be >= 0 seconds, got {deadline}")
        if dead_after is not None and int(dead_after) < 1:
            raise InvalidArgumentError(f"dead_after must be >= 1 or None, got {dead_after}")
        if comm.Get_rank() != 0:
            raise InvalidArgumentError(f"ServerTransport runs on rank 0, this is rank {comm.Get_rank()}")
        if comm.Get_size() < 2:
            raise InvalidArgumentError("need at least one worker (communicator size >= 2)")
        if not auth and mac not in ("auto", "none"):
            raise InvalidArgumentError(f"auth=False but mac={mac!r}")
        set_errors_return(comm)
        install_exit_hook()
        self.comm = comm
        self.d = int(d)
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)
        geometry(self.d, self.dtype, max_datagram)  # validates d and max_datagram early
        self.transport = transport
        self.deadline = float(deadline)
        self.fill = fill
        self.seed = int(seed)
        self.max_datagram = int(max_datagram)
        self.dead_after = None if dead_after is None else int(dead_after)
        self.isolate = bool(isolate) and transport == "udp"
        self.workers: list[int] = list(range(1, comm.Get_size()))
        self.dead: set[int] = set()
        self.dead_reason: dict[int, str] = {}
        self.last_info: dict | None = None
        self.address: tuple[str, int] | None = None
        self.socket_info: dict | None = None
        self._closed = False
        self._step: int | None = None       # open step
        self._prev: int | None = None       # the step opened before it
        self._last_bcast = -1
        self._bcasts: list[int] = []        # steps broadcast, in order
        self._acked = {w: -1 for w in self.workers}
        self._ack_rx: dict[int, m.FixedRecv] = {}
        self._pending: dict[int, list] = {w: [] for w in self.workers}  # parameter sends not completed
        self._graveyard: list = []          # requests of dead workers (buffers kept alive)
        self._rx: GradientReceiver | None = None
        self._mpi: dict[int, _MpiGrad] = {}
        self._t_open = time.monotonic()
        t_end = time.monotonic() + startup_timeout
        want_auth = transport == "udp" and auth

        # 1. every worker says hello (a HELLO that does not parse: that worker is faulty)
        hellos = self._collect(m.TAG_HELLO, m.HELLO_SIZE, lambda w, raw: m.parse_hello(raw), t_end, "HELLO")
        self.keys = keys
        if want_auth and self.keys is None:
            self.keys = server_keys_from_env()
        if want_auth and self.keys is None:
            msg = ("no server key pair for this job: start the job through `pyagg train` or pass the mpiexec "
                   "arguments of lossympi.keys.launch_args(), or pass keys= (or auth=False explicitly)")
            self._abort_startup(msg)
            raise TransportError(msg)
        # 2. the MAC every live worker supports; each worker's key from its public key
        if want_auth:
            fp = fingerprint(self.keys.public)
            for w, h in hellos.items():
                if h.server_fingerprint != fp:
                    self.mark_dead(w, "was handed another server public key than this server's (launcher mix-up)")
            wanted = m.MACS if mac == "auto" else (mac,)
            live = [hellos[w] for w in self.live]
            chosen = next((x for x in wanted if mac_available(x) and all(x in h.macs for h in live)), None)
            if chosen is None:
                msg = (f"no MAC among {wanted} is available on the server and every worker; install libsodium "
                       "everywhere or pass auth=False explicitly")
                self._abort_startup(msg)
                raise TransportError(msg)
            self.mac = chosen
        else:
            self.mac = "none"
        self.job_id = secrets.randbits(32)
        if transport == "udp":
            keymap = {}
            for w in self.workers:
                if self.mac != "none" and w in hellos and w not in self.dead:
                    keymap[w] = server_datagram_key(self.keys, hellos[w].public_key, self.job_id, w)
                else:  # a dead worker's row: a random key nobody has
                    keymap[w] = secrets.token_bytes(32)
            try:
                self._rx = GradientReceiver(self.workers, self.d, self.dtype, self.deadline, fill,
                                            keymap if self.mac != "none" else None, auth=self.mac != "none",
                                            mac=self.mac if self.mac != "none" else "auto", host=host, port=port,
                                            job_id=self.job_id, grace=grace, drop_rate=drop_rate, seed=seed,
                                            max_datagram=max_datagram, rcvbuf=rcvbuf, isolate=self.isolate)
            except Exception as e:
                self._abort_startup(f"server could not open its UDP socket: {e}")
                raise
            keymap.clear()
            bound_host, bound_port = self._rx.address
            adv = advertise or bound_host
            if adv in ("0.0.0.0", "::"):
                adv = socket.gethostname()
            self.address = (adv, bound_port)
            self.socket_info = self._rx.socket_info
            self._G = None
        else:
            self._G = np.zeros((len(self.workers), self.d), dtype=self.dtype)
            self._mpi_stats = {w: _empty_stats(w, 0) for w in self.workers}
        self.config = {"version": m.VERSION, "d": self.d, "dtype": self.dtype.str, "transport": transport,
                       "deadline": self.deadline, "fill": fill, "mac": self.mac, "job_id": self.job_id,
                       "rate": rate, "burst": burst, "gso": gso, "max_datagram": self.max_datagram,
                       "tensor_id": 0, "isolate": self.isolate,
                       "host": self.address[0] if self.address else None,
                       "port": self.address[1] if self.address else None}
        # 3. CONFIG to each live worker, point-to-point (nothing secret in it)
        for w in self.live:
            self._send(w, m.TAG_CONFIG, m.pack_config(dict(self.config, rank=w)))
        # 4. registration of UDP sources (isolate) and READY
        errors = self._await_ready(t_end)
        if not self.live:
            self.shutdown()
            reasons = "; ".join(f"rank {w}: {r}" for w, r in sorted(self.dead_reason.items()))
            raise TransportError(f"no worker started: {reasons}")
        for w, err in errors.items():
            print(f"[lossympi] rank {w} could not start: {err}", file=sys.stderr, flush=True)
        for w in self.live:
            self._ack_rx[w] = m.FixedRecv(comm, w, m.TAG_ACK, m.ACK_SIZE)
            if transport == "mpi":
                self._mpi[w] = _MpiGrad(comm, w, self.d * self.dtype.itemsize)

    # -- start-up helpers ----------------------------------------------------
    def _send(self, w: int, tag: int, buf: Any) -> None:
        """A typed send whose request and buffer are kept until completed (or the job ends)."""
        try:
            self._graveyard.append((m.post(self.comm, buf, w, tag), buf))
        except mpi().Exception as e:
            self.mark_dead(w, f"send failed: {e}")

    def _collect(self, tag: int, size: int, parse: Any, t_end: float, what: str, each_round: Any = None,
                 missing: Any = None) -> dict[int, Any]:
        """One fixed-size message from every live worker: {rank: parse(rank, bytes)}.

        A worker whose message does not parse is declared dead (faulty), and so is one still silent at
        `t_end` (reason ``missing(rank)`` or "no <what>"). ``each_round()`` runs once per polling round
        and returns whether it made progress.
        """
        rx = {w: m.FixedRecv(self.comm, w, tag, size) for w in self.live}
        got: dict[int, Any] = {}
        bo = Backoff(hi=5e-3)
        while rx:
            progressed = bool(each_round is not None and each_round())
            for w in list(rx):
                try:
                    raw = rx[w].poll()
                    if raw is None:
                        continue
                    got[w] = parse(w, raw)
                except (ProtocolError, TransportError) as e:
                    self.mark_dead(w, f"malformed {what}: {e}")
                del rx[w]
                progressed = True
            if not rx:
                break
            if time.monotonic() > t_end:
                for w, r in rx.items():
                    r.cancel()
                    self.mark_dead(w, f"no {missing(w) if missing else what} at start-up")
                break
            if progressed:
                bo.reset()
            else:
                bo.sleep()
        return got

    def _await_ready(self, t_end: float) -> dict[int, str]:
        """Registers UDP sources (isolate) and collects READY; returns the workers' start-up errors."""
        told: set[int] = set()

        def register() -> bool:  # a worker's source is registered: tell it (over MPI) to go on
            new = [r["rank"] for r in self._rx.registrations() if r["rank"] not in told and r["rank"] in self.live]
            for w in new:
                told.add(w)
                self._send(w, m.TAG_REGISTERED, m.pack_registered(0))
            return bool(new)

        def parse(w: int, raw: bytes) -> str | None:
            err = m.parse_ready(raw)
            if err is None and self.isolate and w not in told:
                raise ProtocolError("READY before its UDP source was registered")
            return err

        got = self._collect(m.TAG_READY, m.READY_SIZE, parse, t_end, "READY", register if self.isolate else None,
                            lambda w: "UDP registration" if self.isolate and w not in told else "READY")
        errors = {w: err for w, err in got.items() if err is not None}
        for w, err in errors.items():
            self.mark_dead(w, f"start-up failed: {err}")
        return errors

    def _abort_startup(self, msg: str) -> None:
        for w in self.live:
            self._send(w, m.TAG_CONFIG, m.pack_config({"version": m.VERSION, "error": msg}))
        skip_mpi_finalize(1)

    # -- liveness --------------------------------------------------------------
    @property
    def live(self) -> list[int]:
        """Workers not declared dead."""
        return [w for w in self.workers if w not in self.dead]

    def mark_dead(self, rank: int, reason: str = "declared dead by the caller") -> None:
        """Declares `rank` dead: it is no longer waited for or sent parameters, and is told to stop."""
        if rank in self.dead or rank not in self._acked:
            return
        self.dead.add(rank)
        self.dead_reason[rank] = reason
        self._graveyard.extend(self._pending.pop(rank, []))
        self._pending[rank] = []
        ack = self._ack_rx.pop(rank, None)
        if ack is not None:
            ack.cancel()
        g = self._mpi.pop(rank, None)
        if g is not None:
            g.cancel()
        # if it is in fact alive (a straggler), this makes its recv_params() return (None, None)
        with contextlib.suppress(Exception):  # the peer is gone: nothing to tell
            self._send(rank, m.TAG_STOP, m.pack_stop(True, reason))
        skip_mpi_finalize()  # a rank is (or may be) gone: nobody can finalize

    def _progress_params(self) -> bool:
        """Tests pending parameter sends; True if any is still pending."""
        any_pending = False
        for w in self.live:
            keep = []
            for entry in self._pending.get(w, []):
                try:
                    done = all(test(r) for r in entry[1])
                except TransportError as e:
                    self.mark_dead(w, f"parameter send failed: {e}")
                    break
                if not done:
                    keep.append(entry)
            if w in self.dead:
                continue
            self._pending[w] = keep
            any_pending = any_pending or bool(keep)
        return any_pending

    def _progress_acks(self) -> None:
        """Reads the workers' ACKs of broadcasts (a malformed or impossible ACK: faulty worker)."""
        for w in list(self._ack_rx):
            rx = self._ack_rx[w]
            while True:
                try:
                    raw = rx.poll()
                    if raw is None:
                        break
                    step = m.parse_ack(raw)
                    if step > self._last_bcast or step <= self._acked[w]:
                        raise ProtocolError(f"ACK of step {step} (last broadcast {self._last_bcast}, "
                                            f"last acknowledged {self._acked[w]})")
                except (ProtocolError, TransportError) as e:
                    self.mark_dead(w, f"control plane: {e}")
                    break
                self._acked[w] = step
                rx = self._ack_rx[w] = m.FixedRecv(self.comm, w, m.TAG_ACK, m.ACK_SIZE)

    def unacknowledged(self, rank: int) -> int:
        """Broadcasts `rank` has not acknowledged yet."""
        return sum(1 for s in self._bcasts if s > self._acked[rank])

    # -- steps -----------------------------------------------------------------
    def _open_step(self, step: int) -> None:
        if self._step is not None and self._step == step:
            return
        if self._rx is not None:
            self._rx.expect(step)
        if self._step is not None:  # the open step was never received: abandoned
            self._prev = self._step
        self._step = step
        self._t_open = time.monotonic()

    def broadcast(self, step: int, params: np.ndarray) -> None:
        """Sends `params` (1-D float32/float64 array, any length) of `step` to every live worker, reliably.

        Opens `step` on the gradient side first, so no datagram of it can be
        missed. Non-blocking: the sends complete in the background (polled by
        this object); a worker that has not acknowledged `dead_after` broadcasts
        is declared dead.
        """
        self._check_open()
        step = int(step)
        last = max(x for x in (self._step, self._prev, self._last_bcast) if x is not None)
        if step <= last:
            raise InvalidArgumentError(f"broadcast(step={step}): steps must increase (last step: {last})")
        p = np.ascontiguousarray(params).reshape(-1)
        hdr = m.pack_params_hdr(step, p)
        self._open_step(step)
        self._last_bcast = step
        self._bcasts.append(step)
        MPI = mpi()
        for w in self.live:
            try:
                r1 = m.post(self.comm, hdr, w, m.TAG_PARAMS_HDR)
                r2 = self.comm.Isend(p, dest=w, tag=m.TAG_PARAMS)
            except MPI.Exception as e:
                self.mark_dead(w, f"parameter send failed: {e}")
                continue
            self._pending[w].append((step, (r1, r2), (hdr, p)))
        self._progress_params()
        self._progress_acks()
        if self.live:
            keep_from = min(self._acked[w] for w in self.live)
            self._bcasts = [s for s in self._bcasts if s > keep_from]

    def receive(self, step: int, deadline: float | None = None, copy: bool = True) -> tuple[np.ndarray, list[dict]]:
        """Gradients of `step` from every worker: (G, stats).

        G is (n_workers, d), rows in :attr:`workers` order; missing parts (lost
        chunks, late or dead workers) are filled by the fill policy. stats is a
        list of per-worker dicts (see GradientReceiver.receive; plus 'dead').
        Returns within the deadline (plus the grace) whatever the workers do.
        """
        self._check_open()
        step = int(step)
        if self._step != step:
            self._open_step(step)
        dl = self.deadline if deadline is None else float(deadline)
        if self._rx is not None:
            G, stats = self._receive_udp(step, dl, copy)
        else:
            G, stats = self._receive_mpi(step, dl, copy)
        self._step = None
        self._prev = step
        self._progress_acks()
        if self.dead_after is not None:  # liveness is the control plane's: broadcasts left unacknowledged
            for w in self.live:
                k = self.unacknowledged(w)
                if k >= self.dead_after:
                    self.mark_dead(w, f"did not acknowledge the parameters of {k} steps")
        for s in stats:
            s["dead"] = s["rank"] in self.dead
        return G, stats

    def _receive_udp(self, step: int, dl: float, copy: bool):
        wait_for = self.live
        if not self._progress_params():
            G, stats = self._rx.receive(step, deadline=dl, wait_for=wait_for, copy=copy)
        else:
            # keep MPI progressing for parameter sends still in flight while the engine waits
            box: dict = {}

            def run() -> None:
                try:
                    box["r"] = self._rx.receive(step, deadline=dl, wait_for=wait_for, copy=copy)
                except BaseException as e:  # noqa: BLE001 - re-raised below
                    box["e"] = e

            t = threading.Thread(target=run, name="lossympi-collect", daemon=True)
            t.start()
            wait = 20e-6
            while t.is_alive():
                self._progress_params()
                t.join(wait)
                wait = min(wait * 2, 2e-3)
            if "e" in box:
                raise box["e"]
            G, stats = box["r"]
        self.last_info = dict(self._rx.last_info or {})
        self.last_info["dead"] = sorted(self.dead)
        return G, stats

    def _progress_grads(self) -> bool:
        """transport='mpi': routes completed gradient messages; True if something completed.

        Only this worker's own row is ever affected by what it sends: a header or a gradient of
        the wrong size is consumed (MPI truncates an oversized one) and counted as rejected.
        """
        MPI = mpi()
        moved = False
        for w, g in list(self._mpi.items()):
            s = self._mpi_stats[w]
            try:
                if g.data_req is None:
                    done, trunc = _poll(g.hdr_req, g.hdr_status)
                    if done:
                        g.hdr_ok = (not trunc and g.hdr_status.Get_count(MPI.BYTE) == m.GRAD_HDR_SIZE
                                    and int(g.hdr[1]) == g.nbytes)
                        g.data_step = int(g.hdr[0]) if g.hdr_ok else -1
                        g.data_req = self.comm.Irecv([g.staging, MPI.BYTE], source=w, tag=m.TAG_GRAD)
                        g.hdr_req = self.comm.Irecv([g.hdr, MPI.BYTE], source=w, tag=m.TAG_GRAD_HDR)
                        moved = True
                if g.data_req is None:
                    continue
                done, trunc = _poll(g.data_req, g.status)
                if not done:
                    continue
                g.data_req = None
                moved = True
                count = -1 if trunc else g.status.Get_count(MPI.BYTE)
            except MPI.Exception as e:
                self.mark_dead(w, f"gradient receive failed: {e}")
                continue
            if not g.hdr_ok or count != g.nbytes:
                s["rejected_bad_length"] += 1
                s["rejected"] += 1
            elif self._step is not None and g.data_step == self._step:
                if s["received"]:
                    s["duplicates"] += 1
                else:
                    self._G[self.workers.index(w)].view(np.uint8)[:] = g.staging
                    t = time.monotonic() - self._t_open
                    s.update(received=1, filled=0, bytes=count, first_s=t, last_s=t, complete=True)
            elif g.data_step == self._prev:  # the step before the open one, or the one just closed
                s["late"] += 1
            else:
                s["rejected_wrong_step"] += 1
                s["rejected"] += 1
        return moved

    def _receive_mpi(self, step: int, dl: float, copy: bool):
        t0 = time.monotonic()
        t_end = t0 + dl
        bo = Backoff()
        reason = "deadline"
        while True:
            self._progress_params()
            if self._progress_grads():
                bo.reset()
            waited = self.live
            if not waited:
                reason = "nobody"
                break
            if all(self._mpi_stats[w]["received"] for w in waited):
                reason = "complete"
                break
            now = time.monotonic()
            if now >= t_end:
                break
            if bo.t < t_end - now:
                bo.sleep()
            else:  # the last wait ends at the deadline, not a backoff step past it
                time.sleep(t_end - now)
        t1 = time.monotonic()
        stats = []
        for i, w in enumerate(self.workers):
            s = dict(self._mpi_stats[w])
            s["waited"] = w not in self.dead
            s["step"] = step
            if not s["received"]:
                fill_missing(self._G[i], None, self.fill, seed=self.seed, step=step, rank=w,
                             max_datagram=self.max_datagram)
            stats.append(s)
            self._mpi_stats[w] = _empty_stats(w, step)
        self.last_info = {"step": step, "reason": reason, "elapsed_s": t1 - self._t_open, "wait_s": t1 - t0,
                          "datagrams": 0, "unattributed": {}, "dead": sorted(self.dead)}
        return (self._G.copy() if copy else self._G), stats

    # -- shutdown --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the server transport is shut down")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Tells every worker to stop, closes the socket. If a rank died, MPI_Finalize will be skipped."""
        if self._closed:
            return
        self._closed = True
        skip = bool(self.dead)
        reqs = []
        stop = m.pack_stop(skip, "shutdown")
        for w in self.live:
            try:
                reqs.append(m.post(self.comm, stop, w, m.TAG_STOP))
            except mpi().Exception:
                continue
        t_end = time.monotonic() + timeout
        bo = Backoff(hi=5e-3)
        while reqs and time.monotonic() < t_end:
            try:
                reqs = [r for r in reqs if not test(r)]
            except TransportError:
                break
            if reqs:
                bo.sleep()
        for g in self._mpi.values():
            g.cancel()
        for a in self._ack_rx.values():
            a.cancel()
        if self._rx is not None:
            self._rx.close()
        if skip or reqs:
            skip_mpi_finalize()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
