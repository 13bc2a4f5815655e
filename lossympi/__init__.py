"""LossyMPI: lossy, authenticated UDP gradient transport with an MPI control plane.

After AggregaThor (SysML'19): in synchronous SGD the server does not wait for
the slowest or lossiest link. Gradients travel as MAC'd UDP datagrams that fit
one Ethernet frame, with no retransmission; when a step's deadline passes
(or every sender's end marker arrived) the missing chunks are filled (NaN by
default) and the robust aggregation rule treats a damaged gradient like a
Byzantine one. Parameters and coordination go over MPI (reliable), as typed
buffers: nothing a worker sends is ever deserialised.

- :class:`ServerTransport` / :class:`WorkerTransport`: the MPI job API (rank 0 / ranks >= 1),
  ``transport="udp"`` (lossy datagrams) or ``transport="mpi"`` (reliable point-to-point).
- :class:`GradientReceiver` / :class:`GradientSender`: the UDP data plane alone (tests, benchmarks).
- :mod:`lossympi.keys`: per-job key agreement (X25519); :mod:`lossympi.messages`: the control messages.
- ``python -m lossympi.guard``: launch wrapper so a rank killed by a signal does not take the job down.

Layers: ``errors`` <- ``_wire`` (engine bindings) <- ``datagram`` <- ``keys``, ``messages`` <-
``server``, ``worker``. This package imports nothing from pyagg (pyagg's cluster builds on it).
Names are imported lazily, so ``lossympi.errors`` and ``lossympi.guard`` load without the engine.

The wire format (exact byte layout) is documented in
engine/include/pyagg/transport.h and in :mod:`lossympi.datagram`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TRANSPORTS": "server",
    "ServerTransport": "server",
    "WorkerTransport": "worker",
    "exit_job": "mpiutil",
    "mpi_finalize_skipped": "mpiutil",
    "skip_mpi_finalize": "mpiutil",
    "DEFAULT_MAX_DATAGRAM": "datagram",
    "FILL_POLICIES": "datagram",
    "HEADER_SIZE": "datagram",
    "TAG_SIZE": "datagram",
    "GradientReceiver": "datagram",
    "GradientSender": "datagram",
    "fill_missing": "datagram",
    "geometry": "datagram",
    "mac_available": "datagram",
    "resolve_mac": "datagram",
    "seal_datagram": "datagram",
    "KeyPair": "keys",
    "generate_keys": "keys",
    "launch_args": "keys",
    "DeadlineError": "errors",
    "InvalidArgumentError": "errors",
    "LossyMPIError": "errors",
    "ProtocolError": "errors",
    "TransportError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'lossympi' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def available() -> bool:
    """Whether the engine's transport bindings (lossympi._wire) are built and importable."""
    try:
        importlib.import_module(f"{__name__}._wire")
    except ImportError:
        return False
    return True
