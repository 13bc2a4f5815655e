"""Exceptions raised by pyagg.

Every error that leaves the engine is a :class:`AggregationError`. Errors caused
by the caller's input also subclass the matching built-in exception, so code
that catches ``ValueError`` keeps working.
"""

from __future__ import annotations

# The transport's errors live in lossympi (pyagg depends on lossympi, never the reverse);
# re-exported here so that ``pyagg.TransportError`` keeps working.
from lossympi.errors import DeadlineError, TransportError


class AggregationError(RuntimeError):
    """Base class of every pyagg error."""


class InvalidArgumentError(AggregationError, ValueError):
    """Bad input: shape, dtype, bound (n vs f), parameter name or value."""


class DeviceError(AggregationError):
    """A device was requested that this build or this machine cannot provide."""


class EngineMemoryError(AggregationError, MemoryError):
    """The engine could not allocate its scratch memory."""


# Engine status codes (engine/include/pyagg/status.h) -> exception classes.
STATUS_EXCEPTIONS: dict[int, type[AggregationError]] = {
    1: InvalidArgumentError,
    2: DeviceError,
    3: DeviceError,
    4: EngineMemoryError,
    5: TransportError,
    6: DeadlineError,
    7: AggregationError,
}
