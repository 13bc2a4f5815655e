"""pyagg for Flower: a federated strategy that aggregates client results with any pyagg rule.

::

    import flwr as fl
    from pyagg.flower import PyaggStrategy

    strategy = PyaggStrategy(rule="bulyan", f=2, pre=["nnm"], min_fit_clients=11, min_available_clients=11)
    fl.server.start_server(..., strategy=strategy)       # or a ServerApp, or the simulation

:class:`PyaggStrategy` is Flower's ``FedAvg`` (client sampling, configuration,
evaluation, metrics: all unchanged) whose ``aggregate_fit`` hands the clients'
results to a :class:`pyagg.Aggregator` instead of a weighted mean: each
client's list of arrays is flattened into one row (in float64 when the
layers' float dtypes differ, else in their dtype), the n rows are aggregated
(with pre-aggregators and state kept across rounds), and the result is split
back into the layers' shapes and dtypes.

``mode="parameters"`` (default) aggregates what clients send, their new
model parameters, as Flower's own Krum, Bulyan and FedMedian do;
``mode="updates"`` aggregates ``client parameters - current global
parameters`` and adds the aggregate to the global model, which is what the
resilience bounds of most rules are stated for (gradients/updates). The
number of examples of a client does not weight robust rules (a Byzantine
client could claim any number).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from .api import Aggregator
from .errors import InvalidArgumentError

__all__ = ["PyaggStrategy", "flatten", "unflatten"]


def flatten(arrays: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """One client's arrays as one flat row of `dtype` (float arrays only)."""
    for i, a in enumerate(arrays):
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            raise InvalidArgumentError(
                f"layer {i} has dtype {np.asarray(a).dtype}: robust rules aggregate float parameters only"
            )
    if not arrays:
        raise InvalidArgumentError("a client sent no arrays")
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays])


def unflatten(flat: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Split a flat row back into arrays of `like`'s shapes and dtypes."""
    out, off = [], 0
    for a in like:
        k = int(np.prod(a.shape, dtype=np.int64))
        out.append(flat[off:off + k].reshape(a.shape).astype(a.dtype, copy=False))
        off += k
    return out


class PyaggStrategy(FedAvg):
    """Flower's FedAvg with a pyagg rule in place of the weighted mean.

    Parameters
    ----------
    rule : str
        Any rule of :func:`pyagg.rules` (``"krum"``, ``"bulyan"``, ``"median"``, ...).
    f : int
        Declared number of Byzantine clients per round.
    pre : sequence
        Pre-aggregators (``"nnm"``, ``("bucketing", {"s": 2})``, ...).
    mode : {"parameters", "updates"}
        What is aggregated (see the module docstring); ``"updates"`` needs
        ``initial_parameters`` (or the first round's result) as the reference.
    rule_params : dict, optional
        Rule parameters (e.g. ``{"m": 5}`` for multi-krum).
    **kwargs
        Passed to :class:`flwr.server.strategy.FedAvg`.
    """

    def __init__(self, *, rule: str, f: int = 0, pre: Sequence[Any] = (), mode: str = "parameters",
                 rule_params: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in ("parameters", "updates"):
            raise InvalidArgumentError(f"mode must be 'parameters' or 'updates', got {mode!r}")
        self.rule, self.f, self.mode = rule, int(f), mode
        self.aggregator = Aggregator(rule, f, pre, **(rule_params or {}))
        init = kwargs.get("initial_parameters")
        self.current: list[np.ndarray] | None = parameters_to_ndarrays(init) if init is not None else None

    def __repr__(self) -> str:
        return (f"PyaggStrategy(rule={self.rule!r}, f={self.f}, mode={self.mode!r}, "
                f"accept_failures={self.accept_failures})")

    def aggregate_arrays(self, clients: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
        """Aggregate n clients' lists of arrays (the core of :meth:`aggregate_fit`, usable on its own)."""
        like = [np.asarray(a) for a in clients[0]]
        dtypes = {a.dtype for a in like}
        only = next(iter(dtypes))
        dtype = only if len(dtypes) == 1 and only in (np.float32, np.float64) else np.float64
        for i, c in enumerate(clients):
            if len(c) != len(like) or any(np.shape(a) != b.shape for a, b in zip(c, like)):
                raise InvalidArgumentError(f"client {i} sent arrays of other shapes than client 0")
        G = np.stack([flatten(c, dtype) for c in clients])
        if self.mode == "updates":
            if self.current is None:
                raise InvalidArgumentError("mode='updates' needs initial_parameters (the reference model)")
            ref = flatten(self.current, dtype)
            out = ref + self.aggregator(G - ref)
        else:
            out = self.aggregator(G)
        arrays = unflatten(np.asarray(out), like)
        self.current = arrays
        return arrays

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate the clients' fit results with the pyagg rule."""
        if not results:
            return None, {}
        if not self.accept_failures and failures:
            return None, {}
        clients = [parameters_to_ndarrays(res.parameters) for _, res in results]
        aggregated = ndarrays_to_parameters(self.aggregate_arrays(clients))
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results])
        return aggregated, metrics
