"""Exceptions raised by LossyMPI.

pyagg re-exports :class:`TransportError` and :class:`DeadlineError` (the
dependency runs one way: pyagg uses lossympi). Errors caused by the caller's
input also subclass the matching built-in exception.
"""

from __future__ import annotations

__all__ = [
    "DeadlineError",
    "InvalidArgumentError",
    "LossyMPIError",
    "ProtocolError",
    "STATUS_EXCEPTIONS",
    "TransportError",
    "TransportMemoryError",
]


class LossyMPIError(RuntimeError):
    """Base class of every LossyMPI error."""


class InvalidArgumentError(LossyMPIError, ValueError):
    """A bad argument: configuration value, array shape or dtype, key length..."""


class TransportError(LossyMPIError, OSError):
    """A socket, MPI or start-up failure of the transport."""


class DeadlineError(TransportError, TimeoutError):
    """A transport deadline passed."""


class TransportMemoryError(LossyMPIError, MemoryError):
    """The engine could not allocate the transport's buffers."""


class ProtocolError(TransportError):
    """A peer sent a control message that does not parse (a faulty or hostile worker)."""


# Engine status codes (engine/include/pyagg/status.h) -> exception classes.
STATUS_EXCEPTIONS: dict[int, type[LossyMPIError]] = {
    1: InvalidArgumentError,
    2: TransportError,  # unsupported: e.g. a MAC this build or CPU lacks
    3: TransportError,
    4: TransportMemoryError,
    5: TransportError,
    6: DeadlineError,
    7: LossyMPIError,
}
