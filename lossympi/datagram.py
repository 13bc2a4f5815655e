"""UDP data plane of LossyMPI, without MPI: a gradient receiver and a sender.

These wrap the engine (C++: chunking, MACs, pacing, batched send, a receive
thread that validates every datagram and reassembles every worker's gradient
into preallocated rows). The MPI control plane (:mod:`lossympi.control`) builds
on them; tests and benchmarks use them directly on loopback.

Example::

    keys = {1: os.urandom(32)}
    rx = GradientReceiver([1], d=1000, keys=keys, deadline=1.0)
    tx = GradientSender(rx.address, keys[1], rank=1)
    rx.expect(0)
    tx.send(0, np.ones(1000, np.float32))
    G, stats = rx.receive(0)        # G: (1, 1000); stats: one dict per rank

Wire format (version 1; integers big-endian; see engine/include/pyagg/transport.h)::

    off size field
     0   4   magic "LMPI" (0x4C4D5049)
     4   1   version = 1
     5   1   kind: 1 DATA, 2 END (end-of-gradient marker)
     6   1   mac: 0 none, 1 AES-256-GCM (GMAC), 2 ChaCha20-Poly1305-IETF
     7   1   dtype: 0 float32, 1 float64
     8   4   job id (random per job)
    12   4   sender rank
    16   8   step (< 2^48)
    24   2   tensor id
    26   2   header length = 48
    28   4   chunk index (END: 0xFFFFFFFF)
    32   4   chunk count
    36   4   payload length L
    40   8   total elements d
    48   L   payload: DATA = elements [i*chunk_elems, ...) little-endian; END = u32 chunks sent, u32 0
    48+L 16  MAC tag over bytes [0, 48+L): authenticate-only AEAD with the sender's 32-byte key,
             nonce = step (low 48 bits) || tensor id || chunk index (12 bytes, big-endian)

Every chunk but the last carries floor((max_datagram - 64) / elem) elements:
1408 bytes (352 float32, 176 float64) in a 1472-byte datagram, which fits one
1500-byte Ethernet frame with the IPv4 and UDP headers.
"""

from __future__ import annotations

import os

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _wire
from .errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "FILL_POLICIES",
    "HEADER_SIZE",
    "TAG_SIZE",
    "GradientReceiver",
    "GradientSender",
    "dtype_code",
    "fill_missing",
    "geometry",
    "mac_available",
    "resolve_mac",
    "seal_datagram",
]

FILL_POLICIES = ("nan", "random", "zero", "last")
_CONST = _wire.transport_constants()
HEADER_SIZE: int = _CONST["header_size"]
TAG_SIZE: int = _CONST["tag_size"]
DEFAULT_MAX_DATAGRAM: int = _CONST["max_datagram"]
KIND_DATA, KIND_END = 1, 2
END_CHUNK_INDEX: int = _CONST["end_chunk_index"]


def dtype_code(dtype: Any) -> int:
    """Engine dtype code (0 float32, 1 float64) of a numpy dtype-like."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return 0
    if dt == np.float64:
        return 1
    raise InvalidArgumentError(f"gradients must be float32 or float64, got {dt}")


def mac_available(mac: str) -> bool:
    """Whether this build (libsodium) and this CPU provide the MAC `mac` ('none' always)."""
    return bool(_wire.transport_mac_available(mac))


def resolve_mac(mac: str, auth: bool) -> str:
    """The concrete MAC algorithm: 'none' only when auth is explicitly False."""
    if not auth:
        if mac not in ("auto", "none"):
            raise InvalidArgumentError(f"auth=False but mac={mac!r}; pass one or the other")
        return "none"
    if mac == "none":
        raise InvalidArgumentError("mac='none' switches authentication off: pass auth=False explicitly")
    return _wire.transport_mac_resolve(mac)


def geometry(d: int, dtype: Any = np.float32, max_datagram: int = DEFAULT_MAX_DATAGRAM) -> dict:
    """How d elements are chunked: chunk_elems, chunk_bytes, chunk_count, total_bytes."""
    return _wire.transport_geometry(int(d), dtype_code(dtype), int(max_datagram))


def fill_missing(row: np.ndarray, received: np.ndarray | None, policy: str, *, seed: int, step: int, rank: int,
                 max_datagram: int = DEFAULT_MAX_DATAGRAM) -> np.ndarray:
    """Fills the chunks of one gradient row that did not arrive, in place, exactly as the receiver does.

    row: 1-D C-contiguous float32/float64 array (the row as received so far).
    received: one bool per chunk of ``geometry(row.size, row.dtype, max_datagram)`` (True = arrived),
    or None when nothing arrived. policy: 'nan', 'random' (reproducible from seed, step, rank, chunk),
    'zero' or 'last' (left untouched: the row keeps what it held). The one implementation of the fill
    policies is the engine's; this is how the MPI path and sender-side loss emulation use it.
    """
    if policy not in FILL_POLICIES:
        raise InvalidArgumentError(f"unknown fill policy {policy!r}; known: {', '.join(FILL_POLICIES)}")
    if not (isinstance(row, np.ndarray) and row.ndim == 1 and row.flags.c_contiguous and row.flags.writeable):
        raise InvalidArgumentError("row must be a writeable 1-D C-contiguous numpy array")
    geo = geometry(row.size, row.dtype, max_datagram)
    bits = None
    if received is not None:
        rec = np.asarray(received, dtype=bool).reshape(-1)
        if rec.size != geo["chunk_count"]:
            raise InvalidArgumentError(f"received must have {geo['chunk_count']} entries (chunks), got {rec.size}")
        bits = np.packbits(rec, bitorder="little")
    _wire.fill_chunks(row.ctypes.data, row.size, dtype_code(row.dtype), policy, 0 if bits is None else bits.ctypes.data,
                      int(seed), int(step), int(rank), int(max_datagram))
    return row


def seal_datagram(*, rank: int, step: int, chunk_index: int, chunk_count: int, total_elems: int,
                  payload: bytes, key: bytes | None, mac: str = "auto", dtype: Any = np.float32,
                  job_id: int = 0, tensor_id: int = 0, kind: int = KIND_DATA, header_len: int = HEADER_SIZE) -> bytes:
    """A complete datagram with these header fields, MAC'd with `key` (tests and tools).

    Nothing is validated: this is how tests craft hostile datagrams that carry a
    valid MAC (out-of-range index, wrong length, another job...).
    """
    mac_name = "none" if mac == "none" else _wire.transport_mac_resolve(mac)
    return _wire.transport_seal(kind=kind, mac=mac_name, dtype=dtype_code(dtype), job_id=job_id, rank=rank,
                               step=step, tensor_id=tensor_id, chunk_index=chunk_index, chunk_count=chunk_count,
                               total_elems=total_elems, payload=bytes(payload), key=key, header_len=header_len)


def _keys_blob(ranks: Sequence[int], keys: Mapping[int, bytes] | Sequence[bytes] | None) -> bytes:
    if keys is None:
        raise InvalidArgumentError("auth is on but no keys were given (one 32-byte key per rank)")
    if isinstance(keys, Mapping):
        missing = [r for r in ranks if r not in keys]
        if missing:
            raise InvalidArgumentError(f"no key for rank(s) {missing}")
        seq = [keys[r] for r in ranks]
    else:
        seq = list(keys)
        if len(seq) != len(ranks):
            raise InvalidArgumentError(f"{len(ranks)} ranks but {len(seq)} keys")
    for r, k in zip(ranks, seq):
        if len(bytes(k)) != 32:
            raise InvalidArgumentError(f"the key of rank {r} must be 32 bytes, got {len(bytes(k))}")
    return b"".join(bytes(k) for k in seq)


class GradientReceiver:
    """Receives the gradients of `ranks` over UDP, one step at a time.

    Parameters
    ----------
    ranks : sequence of int
        Expected senders; row i of every returned G is ranks[i].
    d : int
        Elements per gradient.
    dtype : float32 or float64
    deadline : float
        Seconds receive() waits at most (from the call).
    fill : {'nan', 'random', 'zero', 'last'}
        What replaces missing chunks ('last': that chunk of the worker's previous gradient; zeros before any).
    keys : mapping rank -> 32 bytes, or a sequence aligned with ranks
        Per-worker MAC keys. Required unless ``auth=False``.
    auth : bool
        False switches authentication off (explicitly; the default is on).
    mac : 'auto' | 'aes256gcm' | 'chacha20poly1305'
    host, port : where to bind (port 0: ephemeral; see :attr:`address`).
    grace : float
        Seconds after the last expected END marker before the step ends anyway: with
        ``adaptive_grace`` (default) the upper bound, the actual grace being chosen from the measured
        arrival spread (how long after a sender's END its data still arrived, late chunks included):
        2 x the largest spread of the last 16 steps + ``grace_min``; :attr:`last_info` ['grace_s']
        says which grace a step used. ``adaptive_grace=False``: always ``grace``.
    drop_rate, seed : receiver-side loss injection (probability per datagram, reproducible).
    max_datagram : int
        Largest datagram (header + payload + MAC); 1472 fits one Ethernet frame.
    rcvbuf : int or None
        Socket receive buffer requested (bytes); None: room for two whole steps of every sender,
        64 MB to 1 GB. :attr:`socket_info` says what the kernel granted (without root, the kernel
        caps it at net.core.rmem_max; :attr:`last_info` ['kernel_dropped'] counts overflows).
        With ``isolate`` each worker's socket gets its own buffer sized from its bytes per step.
    isolate : bool
        Per-worker isolation: a sender must first register its UDP source address with a
        REGISTER datagram MAC'd under its key (:meth:`GradientSender.register`); its datagrams then
        arrive through a socket connected to that address, with a buffer of its own, and datagrams
        from any other source are dropped before any MAC work (counted ``unknown_source``).
    verify_threads : int
        Threads that verify the MACs of a received batch (the receive thread + helpers), 1..16;
        0 (default) = auto: 2 when the machine has >= 4 cores and there are >= 2 senders, else 1.
        The environment variable LOSSYMPI_VERIFY_THREADS, when set, replaces the default 0.
    """

    def __init__(self, ranks: Iterable[int], d: int, dtype: Any = np.float32, deadline: float = 2.0,
                 fill: str = "nan", keys: Mapping[int, bytes] | Sequence[bytes] | None = None, *,
                 auth: bool = True, mac: str = "auto", host: str = "127.0.0.1", port: int = 0, job_id: int = 0,
                 tensor_id: int = 0, grace: float = 0.005, grace_min: float = 0.0005,
                 adaptive_grace: bool = True, drop_rate: float = 0.0, seed: int = 0,
                 max_datagram: int = DEFAULT_MAX_DATAGRAM, rcvbuf: int | None = None, gro: bool = True,
                 isolate: bool = False, verify_threads: int | None = None) -> None:
        self.ranks = [int(r) for r in ranks]
        if verify_threads is None:
            env = os.environ.get("LOSSYMPI_VERIFY_THREADS", "").strip()
            try:
                verify_threads = int(env) if env else 0
            except ValueError:
                raise InvalidArgumentError(f"LOSSYMPI_VERIFY_THREADS must be an integer, got {env!r}") from None
        if fill not in FILL_POLICIES:
            raise InvalidArgumentError(f"unknown fill policy {fill!r}; known: {', '.join(FILL_POLICIES)}")
        if not (deadline >= 0):
            raise InvalidArgumentError(f"deadline must be >= 0 seconds, got {deadline}")
        self.d = int(d)
        self.dtype = np.dtype(dtype)
        self.deadline = float(deadline)
        self.fill = fill
        self.mac = resolve_mac(mac, auth)
        blob = _keys_blob(self.ranks, keys) if self.mac != "none" else b""
        if rcvbuf is None:
            step_bytes = len(self.ranks) * self.d * self.dtype.itemsize
            rcvbuf = int(min(max(2 * step_bytes, 64 << 20), 1 << 30))
        self._rx = _wire.UdpReceiver(self.ranks, blob, self.d, dtype_code(self.dtype), self.mac, fill,
                                    job_id=job_id, tensor_id=tensor_id, max_datagram=max_datagram, grace=grace,
                                    grace_min=grace_min, adaptive_grace=adaptive_grace,
                                    drop_rate=drop_rate, seed=seed, host=host, port=port, rcvbuf=rcvbuf, gro=gro,
                                    isolate=isolate, verify_threads=int(verify_threads))
        self.isolate = bool(isolate)
        self._view = np.frombuffer(self._rx, dtype=self.dtype).reshape(len(self.ranks), self.d)
        self._open: int | None = None
        self.last_info: dict | None = None
        self.geometry: dict = dict(self._rx.geometry)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the socket is bound to."""
        return self._rx.address

    @property
    def socket_info(self) -> dict:
        """Bound address, SO_RCVBUF requested and granted, whether UDP GRO is on."""
        return self._rx.socket_info

    def registrations(self) -> list[dict]:
        """Ranks whose UDP source is registered (isolate): [{'rank': r, 'address': 'host:port'}, ...]."""
        return self._rx.registrations()

    @property
    def view(self) -> np.ndarray:
        """Read-only (n, d) view of the receive rows (changes while a step is open)."""
        return self._view

    def expect(self, step: int) -> None:
        """Opens `step` (must exceed every step opened before): its chunks are accepted from now on.

        Call it before the senders may send that step (receive() opens the step
        itself if needed, but datagrams that arrived before are then rejected).
        """
        self._rx.expect(int(step))
        self._open = int(step)

    def receive(self, step: int, deadline: float | None = None, wait_for: Iterable[int] | None = None,
                copy: bool = True, out: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
        """Ends `step` and returns (G, stats).

        The step ends when every chunk of the waited ranks arrived, or all their
        END markers arrived plus the grace, or after `deadline` seconds. Missing
        chunks are filled by the fill policy.

        Parameters
        ----------
        wait_for : ranks to wait for (default: all); the others are still received and filled.
        copy : False returns the read-only receive rows themselves (valid until the next expect()).
        out : (n, d) array to copy G into.

        Returns
        -------
        G : (n, d) array, rows in ``self.ranks`` order.
        stats : list of per-rank dicts (expected, received, filled, duplicates, late, dropped,
            rejected and rejected_<reason>, bytes, sent, first_s/last_s/end_s, complete, waited).
        """
        step = int(step)
        if self._open != step:
            self.expect(step)
        wait = None
        if wait_for is not None:
            ws = {int(r) for r in wait_for}
            wait = [r in ws for r in self.ranks]
        info, stats = self._rx.collect(step, self.deadline if deadline is None else float(deadline), wait)
        self._open = None
        self.last_info = info
        if out is not None:
            np.copyto(out, self._view)
            return out, stats
        return (self._view.copy() if copy else self._view), stats

    def describe(self) -> str:
        return self._rx.describe()

    def close(self) -> None:
        """Stops the receive thread and closes the socket (views stay readable)."""
        self._rx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GradientReceiver(ranks={self.ranks}, d={self.d}, dtype={self.dtype}, address={self.address})"


class GradientSender:
    """Sends one worker's gradients to a GradientReceiver over UDP.

    Parameters
    ----------
    server_addr : (host, port)
    key : 32 bytes
        This worker's key (None only with ``auth=False``).
    rate : float or None
        Pacing in bytes per second of UDP payload (token bucket); None = unpaced.
    rank : int
        This sender's rank (keyword, required).
    burst : int or None
        Token-bucket depth in bytes (default: rate * 200 us, 2 to 44 datagrams).
    gso : bool
        Batch with UDP generic segmentation offload (one send per 44 datagrams); falls back to
        sendmmsg when the kernel refuses. Turn it off for nftables-based loss emulation, which
        would otherwise see one packet per 44 datagrams.
    end_copies, end_spacing : END markers sent after the data (identical copies) and the seconds
        between them, so that one tail drop (a full queue for about a millisecond) cannot take
        every copy and leave the server waiting for its deadline.
    credit : int or None
        Catch-up credit in bytes (>= burst): time lost to oversleeping within a send is made up
        by sending at most this many bytes behind schedule back to back (default: rate * 0.5 ms,
        at least burst, at most 32 datagrams); ``credit=burst`` is a plain token bucket.

    Sends are cancellable: :meth:`abandon` (from any thread) or a per-send ``deadline`` stops a
    send between two batches; the send then returns with ``stats['abandoned']`` set
    ('newer_step' or 'deadline') and sends no END marker.
    """

    def __init__(self, server_addr: tuple[str, int], key: bytes | None, rate: float | None = None, *,
                 rank: int, auth: bool = True, mac: str = "auto", job_id: int = 0, tensor_id: int = 0,
                 max_datagram: int = DEFAULT_MAX_DATAGRAM, burst: int | None = None, gso: bool = True,
                 sndbuf: int = 4 << 20, end_copies: int = 3, end_spacing: float = 0.001,
                 credit: int | None = None) -> None:
        host, port = server_addr
        self.mac = resolve_mac(mac, auth)
        if self.mac != "none" and (key is None or len(bytes(key)) != 32):
            raise InvalidArgumentError("a 32-byte key is required (or auth=False)")
        if rate is not None and not (rate > 0):
            raise InvalidArgumentError(f"rate must be > 0 bytes/s or None (unpaced), got {rate}")
        self.rank = int(rank)
        self.rate = rate
        self._tx = _wire.UdpSender(str(host), int(port), self.rank, key, self.mac, job_id=job_id,
                                  tensor_id=tensor_id, max_datagram=max_datagram,
                                  rate=0.0 if rate is None else float(rate), burst=0 if burst is None else int(burst),
                                  gso=gso, sndbuf=sndbuf, end_copies=int(end_copies),
                                  end_spacing=float(end_spacing), credit=0 if credit is None else int(credit))
        self.last_stats: dict | None = None

    def send(self, step: int, grad: np.ndarray, deadline: float | None = None) -> dict:
        """Sends `grad` (1-D float32/float64) as step `step` (steps must increase); returns send stats.

        deadline : seconds from now after which the send is abandoned (None: never). The
        stats' 'abandoned' is None, 'newer_step' (see :meth:`abandon`) or 'deadline';
        'achieved_rate' / 'target_rate' measure the pacing (bytes/s of DATA after the first batch).
        """
        g = np.ascontiguousarray(grad).reshape(-1)
        code = dtype_code(g.dtype)
        if g.size == 0:
            raise InvalidArgumentError("cannot send an empty gradient")
        dl = 0.0 if deadline is None else float(deadline)
        if not (dl >= 0.0) or dl == float("inf"):
            raise InvalidArgumentError(f"deadline must be a finite number of seconds >= 0 or None, got {deadline}")
        if deadline is not None and dl == 0.0:
            dl = 1e-9  # already due: abandoned before the first batch
        st = self._tx.send(int(step), g.ctypes.data, g.size, code, dl)
        self.last_stats = st
        return st

    def abandon(self, step: int) -> None:
        """Abandons the sends of every step <= `step`: the one in progress on another thread stops
        at its next batch, later ones at once. Thread-safe; never waits for the send."""
        self._tx.abandon(int(step))

    def register(self) -> None:
        """Sends one REGISTER datagram (proves this sender's source address to an isolating receiver)."""
        self._tx.register()

    def describe(self) -> str:
        return self._tx.describe()

    def close(self) -> None:
        self._tx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
