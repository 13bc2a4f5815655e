"""LossyMPI control-plane messages: fixed layouts in typed buffers, parsed defensively.

Nothing on the control plane is ever unpickled. Every message travels with
mpi4py's buffer interface (uppercase ``Isend``/``Irecv``) as raw bytes:

- a worker -> server message has a FIXED size; the server receives it into a
  buffer of exactly that size that it allocated itself (a longer message is
  truncated by MPI and reported as an error, a shorter one is caught from the
  byte count MPI reports), then checks every field before using any;
- a server -> worker message (the trusted direction) is a fixed layout too, or,
  for CONFIG, UTF-8 JSON of at most :data:`CONFIG_MAX` bytes parsed into a
  fixed schema.

A message that does not parse raises :class:`~lossympi.errors.ProtocolError`;
the server then treats that worker as faulty (declared dead, told to stop).
MPI identifies the sender of every message (its rank), so a worker can only
speak for itself.

Tags (all messages go to or come from rank 0)::

    7101 HELLO       worker -> server  64 B   magic "LMH1", version, MACs the worker supports,
                                              pid, the worker's X25519 public key, fingerprint
                                              of the server public key it was handed
    7102 CONFIG      server -> worker  JSON   job parameters (no secret: keys are agreed, not sent)
    7103 READY       worker -> server  256 B  magic "LMR1", status, bounded UTF-8 error text
    7104 PARAMS_HDR  server -> worker  32 B   int64 [magic, step, element count, dtype code]
    7105 PARAMS      server -> worker  array  the parameters (dtype and count from PARAMS_HDR)
    7106 STOP        server -> worker  256 B  magic "LMS1", flags, bounded UTF-8 reason
    7107 GRAD_HDR    worker -> server  16 B   uint64 [step, byte count] (transport='mpi')
    7108 GRAD        worker -> server  bytes  the gradient, into a d * itemsize buffer (transport='mpi')
    7109 ACK         worker -> server  16 B   uint64 [magic, step]: parameters of `step` received
    7110 REGISTERED  server -> worker  16 B   int64 [magic, status]: UDP source registered
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ProtocolError
from .mpiutil import mpi

__all__ = [
    "ACK_SIZE",
    "CONFIG_MAX",
    "GRAD_HDR_SIZE",
    "HELLO_SIZE",
    "READY_SIZE",
    "STOP_SIZE",
    "TAGS",
    "FixedRecv",
    "Hello",
    "pack_ack",
    "pack_config",
    "pack_hello",
    "pack_params_hdr",
    "pack_ready",
    "pack_registered",
    "pack_stop",
    "parse_ack",
    "parse_config",
    "parse_hello",
    "parse_params_hdr",
    "parse_ready",
    "parse_registered",
    "parse_stop",
    "post",
    "set_recorder",
]

TAG_HELLO, TAG_CONFIG, TAG_READY = 7101, 7102, 7103
TAG_PARAMS_HDR, TAG_PARAMS, TAG_STOP = 7104, 7105, 7106
TAG_GRAD_HDR, TAG_GRAD = 7107, 7108
TAG_ACK, TAG_REGISTERED = 7109, 7110
TAGS = {"HELLO": TAG_HELLO, "CONFIG": TAG_CONFIG, "READY": TAG_READY, "PARAMS_HDR": TAG_PARAMS_HDR,
        "PARAMS": TAG_PARAMS, "STOP": TAG_STOP, "GRAD_HDR": TAG_GRAD_HDR, "GRAD": TAG_GRAD, "ACK": TAG_ACK,
        "REGISTERED": TAG_REGISTERED}

VERSION = 1
MACS = ("aes256gcm", "chacha20poly1305")  # bit i of HELLO's MAC mask = MACS[i]
_TEXT = 248                               # bytes of UTF-8 text in READY and STOP

# HELLO: magic, version, MAC mask, flags (0), pid, public key, server key fingerprint, 12 zero bytes.
_HELLO = struct.Struct(">4sBBHI32s8s12x")
HELLO_SIZE = _HELLO.size  # 64
_READY = struct.Struct(f">4sBBH{_TEXT}s")
READY_SIZE = _READY.size  # 256
_STOP = struct.Struct(f">4sBBH{_TEXT}s")
STOP_SIZE = _STOP.size    # 256
ACK_MAGIC = 0x4C4D41434B000001  # "LMACK" v1
ACK_SIZE = 16
GRAD_HDR_SIZE = 16
PARAMS_MAGIC = 0x4C4D504152414D31  # "LMPARAM1"
REGISTERED_MAGIC = 0x4C4D524547000001
CONFIG_MAX = 4096
_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float64)}

# ------------------------------------------------------------- recording ---
_RECORDER: list[Callable[[int, int, bytes], None]] = []


def set_recorder(fn: Callable[[int, int, bytes], None] | None) -> None:
    """Calls fn(dest, tag, bytes) for every control message this process sends (tests: what goes on the wire)."""
    _RECORDER.clear()
    if fn is not None:
        _RECORDER.append(fn)


def post(comm: Any, buf: Any, dest: int, tag: int) -> Any:
    """Non-blocking typed send of a bytes-like or numpy buffer (never pickled). Keep `buf` alive until done."""
    MPI = mpi()
    if _RECORDER:
        _RECORDER[0](dest, tag, bytes(memoryview(buf).cast("B")))
    if isinstance(buf, np.ndarray):
        return comm.Isend([buf.view(np.uint8).reshape(-1), MPI.BYTE], dest=dest, tag=tag)
    return comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag)


# ------------------------------------------------------------- receiving ---
class FixedRecv:
    """One posted receive of exactly `size` bytes from `source` on `tag`, into a buffer sized here.

    poll() -> None while pending; the message bytes once complete; ProtocolError
    when the message was longer (MPI truncation) or shorter than `size`.
    MPI errors of a dead peer raise TransportError (from mpiutil.test).
    """

    def __init__(self, comm: Any, source: int, tag: int, size: int) -> None:
        MPI = mpi()
        self.size = int(size)
        self.source = source
        self.tag = tag
        self.buf = bytearray(self.size)
        self.status = MPI.Status()
        self.req = comm.Irecv([self.buf, MPI.BYTE], source=source, tag=tag)

    def poll(self) -> bytes | None:
        MPI = mpi()
        try:
            done = self.req.Test(self.status)
        except MPI.Exception as e:
            if e.Get_error_class() == MPI.ERR_TRUNCATE or "TRUNCATE" in str(e).upper():
                self.req = None
                raise ProtocolError(f"message on tag {self.tag} longer than its {self.size} bytes") from e
            from .errors import TransportError

            raise TransportError(f"MPI error: {e}") from e
        if not done:
            return None
        self.req = None
        n = self.status.Get_count(MPI.BYTE)
        if n != self.size:
            raise ProtocolError(f"message on tag {self.tag} has {n} bytes, expected {self.size}")
        return bytes(self.buf)

    def cancel(self) -> None:
        from .mpiutil import cancel

        if self.req is not None:
            cancel([self.req])
            self.req = None


def _text(raw: bytes, n: int) -> str:
    if n > len(raw):
        raise ProtocolError(f"text length {n} exceeds {len(raw)} bytes")
    if any(raw[n:]):
        raise ProtocolError("non-zero padding after the text")
    s = raw[:n].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in s)


def _pack_text(text: str) -> tuple[int, bytes]:
    b = text.encode("utf-8")[:_TEXT]
    while b:  # do not cut a multi-byte character in half
        try:
            b.decode("utf-8")
            break
        except UnicodeDecodeError:
            b = b[:-1]
    return len(b), b


# --------------------------------------------------------------- HELLO ------
@dataclass(frozen=True)
class Hello:
    macs: tuple[str, ...]
    pid: int
    public_key: bytes
    server_fingerprint: bytes


def pack_hello(macs: dict[str, bool], pid: int, public_key: bytes, server_fingerprint: bytes) -> bytes:
    mask = sum(1 << i for i, m in enumerate(MACS) if macs.get(m))
    return _HELLO.pack(b"LMH1", VERSION, mask, 0, pid & 0xFFFFFFFF, bytes(public_key), bytes(server_fingerprint))


def parse_hello(raw: bytes) -> Hello:
    if len(raw) != HELLO_SIZE:
        raise ProtocolError(f"HELLO has {len(raw)} bytes, expected {HELLO_SIZE}")
    magic, version, mask, flags, pid, pk, fp = _HELLO.unpack(raw)
    if magic != b"LMH1" or version != VERSION:
        raise ProtocolError(f"HELLO: bad magic/version {magic!r}/{version}")
    if flags != 0 or mask >> len(MACS) or any(raw[_HELLO.size - 12:]):
        raise ProtocolError("HELLO: reserved bits set")
    if not any(pk):
        raise ProtocolError("HELLO: all-zero public key")
    return Hello(tuple(m for i, m in enumerate(MACS) if mask >> i & 1), pid, pk, fp)


# --------------------------------------------------------------- READY ------
def pack_ready(error: str | None) -> bytes:
    n, b = _pack_text(error or "")
    return _READY.pack(b"LMR1", 1 if error else 0, 0, n, b)


def parse_ready(raw: bytes) -> str | None:
    """None when the worker is ready; its (sanitised) error text otherwise."""
    if len(raw) != READY_SIZE:
        raise ProtocolError(f"READY has {len(raw)} bytes, expected {READY_SIZE}")
    magic, status, reserved, n, text = _READY.unpack(raw)
    if magic != b"LMR1" or status not in (0, 1) or reserved != 0:
        raise ProtocolError("READY: bad magic, status or reserved byte")
    msg = _text(text, n)
    if status == 0:
        if n:
            raise ProtocolError("READY: text with an ok status")
        return None
    return msg or "unspecified error"


# ---------------------------------------------------------------- STOP ------
def pack_stop(skip_finalize: bool, reason: str = "shutdown") -> bytes:
    n, b = _pack_text(reason)
    return _STOP.pack(b"LMS1", 1 if skip_finalize else 0, 0, n, b)


def parse_stop(raw: bytes) -> tuple[bool, str]:
    if len(raw) != STOP_SIZE:
        raise ProtocolError(f"STOP has {len(raw)} bytes, expected {STOP_SIZE}")
    magic, flags, reserved, n, text = _STOP.unpack(raw)
    if magic != b"LMS1" or flags > 1 or reserved != 0:
        raise ProtocolError("STOP: bad magic or flags")
    return bool(flags), _text(text, n)


# ----------------------------------------------------------------- ACK ------
def pack_ack(step: int) -> np.ndarray:
    return np.array([ACK_MAGIC, int(step)], dtype=np.uint64)


def parse_ack(raw: bytes) -> int:
    if len(raw) != ACK_SIZE:
        raise ProtocolError(f"ACK has {len(raw)} bytes, expected {ACK_SIZE}")
    magic, step = np.frombuffer(raw, dtype=np.uint64)
    if int(magic) != ACK_MAGIC:
        raise ProtocolError("ACK: bad magic")
    return int(step)


# --------------------------------------------------------- PARAMS_HDR -------
def pack_params_hdr(step: int, params: np.ndarray) -> np.ndarray:
    code = {v: k for k, v in _DTYPES.items()}.get(params.dtype)
    if code is None:
        raise ProtocolError(f"parameters must be float32 or float64, got {params.dtype}")
    return np.array([PARAMS_MAGIC, int(step), int(params.size), code], dtype=np.int64)


def parse_params_hdr(raw: bytes, max_elems: int) -> tuple[int, int, np.dtype]:
    if len(raw) != 32:
        raise ProtocolError(f"PARAMS_HDR has {len(raw)} bytes, expected 32")
    magic, step, n, code = (int(x) for x in np.frombuffer(raw, dtype=np.int64))
    if magic != PARAMS_MAGIC or step < 0 or not (0 <= n <= max_elems) or code not in _DTYPES:
        raise ProtocolError(f"PARAMS_HDR: bad fields (step={step}, n={n}, dtype code={code})")
    return step, n, _DTYPES[code]


# -------------------------------------------------------- REGISTERED --------
def pack_registered(status: int = 0) -> np.ndarray:
    return np.array([REGISTERED_MAGIC, int(status)], dtype=np.int64)


def parse_registered(raw: bytes) -> int:
    if len(raw) != 16:
        raise ProtocolError(f"REGISTERED has {len(raw)} bytes, expected 16")
    magic, status = (int(x) for x in np.frombuffer(raw, dtype=np.int64))
    if magic != REGISTERED_MAGIC:
        raise ProtocolError("REGISTERED: bad magic")
    return status


# -------------------------------------------------------------- CONFIG ------
_CONFIG_SCHEMA: dict[str, tuple[type, ...]] = {
    "version": (int,), "rank": (int,), "d": (int,), "dtype": (str,), "transport": (str,), "deadline": (int, float),
    "fill": (str,), "mac": (str,), "job_id": (int,), "rate": (int, float, type(None)),
    "burst": (int, type(None)), "gso": (bool,), "max_datagram": (int,), "tensor_id": (int,),
    "host": (str, type(None)), "port": (int, type(None)), "isolate": (bool,), "error": (str, type(None)),
}


def pack_config(cfg: dict) -> bytes:
    unknown = set(cfg) - set(_CONFIG_SCHEMA)
    if unknown:
        raise ProtocolError(f"CONFIG: unknown fields {sorted(unknown)}")
    raw = json.dumps(cfg, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > CONFIG_MAX:
        raise ProtocolError(f"CONFIG of {len(raw)} bytes exceeds {CONFIG_MAX}")
    return raw


def parse_config(raw: bytes) -> dict:
    if len(raw) > CONFIG_MAX:
        raise ProtocolError(f"CONFIG of {len(raw)} bytes exceeds {CONFIG_MAX}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"CONFIG is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ProtocolError("CONFIG is not a JSON object")
    out = {}
    for k, v in obj.items():
        types = _CONFIG_SCHEMA.get(k)
        if types is None:
            raise ProtocolError(f"CONFIG: unknown field {k!r}")
        if isinstance(v, bool) and bool not in types:
            raise ProtocolError(f"CONFIG: field {k!r} has type bool")
        if not isinstance(v, types):
            raise ProtocolError(f"CONFIG: field {k!r} has type {type(v).__name__}")
        out[k] = v
    return out
