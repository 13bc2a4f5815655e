"""pyagg: Byzantine-resilient gradient aggregation (after AggregaThor, SysML'19).

Quick start::

    import numpy as np, pyagg
    G = np.random.default_rng(0).standard_normal((20, 1_000_000), dtype=np.float32)
    g = pyagg.aggregate(G, "bulyan", f=4)

See :func:`rules` for every rule, its resilience bound and parameters.
"""

from __future__ import annotations

from . import attacks  # noqa: F401  (pyagg.attacks)
from .api import Aggregator, aggregate, build_info, pre_aggregators, preaggregate, rules
from .errors import (
    AggregationError,
    DeadlineError,
    DeviceError,
    EngineMemoryError,
    InvalidArgumentError,
    TransportError,
)

__version__ = build_info()["version"]

__all__ = [
    "aggregate",
    "preaggregate",
    "Aggregator",
    "rules",
    "pre_aggregators",
    "build_info",
    "attacks",
    "AggregationError",
    "InvalidArgumentError",
    "DeviceError",
    "TransportError",
    "DeadlineError",
    "EngineMemoryError",
]
