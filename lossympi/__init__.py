"""LossyMPI: lossy, authenticated UDP gradient transport with an MPI control plane.

After AggregaThor (SysML'19): in synchronous SGD the server does not wait for
the slowest or lossiest link. Gradients travel as MAC'd UDP datagrams that fit
one Ethernet frame, with no retransmission; when a step's deadline passes
(or every sender's end marker arrived) the missing chunks are filled (NaN by
default) and the robust aggregation rule treats a damaged gradient like a
Byzantine one. Parameters and coordination go over MPI (reliable).

- :class:`ServerTransport` / :class:`WorkerTransport`: the MPI job API (rank 0 / ranks >= 1),
  ``transport="udp"`` (lossy datagrams) or ``transport="mpi"`` (reliable point-to-point).
- :class:`GradientReceiver` / :class:`GradientSender`: the UDP data plane alone (tests, benchmarks).
- ``python -m lossympi.guard``: launch wrapper so a rank killed by a signal does not take the job down.

The wire format (exact byte layout) is documented in
engine/include/pyagg/transport.h and in :mod:`lossympi.datagram`.
"""

from __future__ import annotations

from .control import (
    TRANSPORTS,
    ServerTransport,
    WorkerTransport,
    exit_job,
    mpi_finalize_skipped,
    skip_mpi_finalize,
)
from .datagram import (
    DEFAULT_MAX_DATAGRAM,
    FILL_POLICIES,
    HEADER_SIZE,
    TAG_SIZE,
    GradientReceiver,
    GradientSender,
    geometry,
    resolve_mac,
    seal_datagram,
)

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "FILL_POLICIES",
    "HEADER_SIZE",
    "TAG_SIZE",
    "TRANSPORTS",
    "GradientReceiver",
    "GradientSender",
    "ServerTransport",
    "WorkerTransport",
    "exit_job",
    "geometry",
    "mpi_finalize_skipped",
    "resolve_mac",
    "seal_datagram",
    "skip_mpi_finalize",
]
