"""pyagg.flower: a Flower strategy with any pyagg rule, against Flower's own robust
strategies (same inputs, same results) and in an in-process federated run
with a Byzantine client (Flower's NumPyClient + the strategy's fit/aggregate
cycle, without Ray)."""

from __future__ import annotations

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.strategy import Bulyan, FedAvg, FedMedian, Krum  # noqa: E402

import pyagg  # noqa: E402
from pyagg.flower import PyaggStrategy, flatten, unflatten  # noqa: E402

N, F = 11, 2


def _clients(rng, dtype=np.float32, n=N):
    cs = [[rng.standard_normal((20, 5)).astype(dtype), rng.standard_normal(5).astype(dtype)] for _ in range(n)]
    cs[3] = [60.0 * a for a in cs[3]]  # a Byzantine client
    return cs


def _results(clients):
    return [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(c), 10, {})) for c in clients]


def _flat(arrays):
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ours,theirs,tol", [
    (dict(rule="krum", f=F), lambda: Krum(num_malicious_clients=F), 0),
    (dict(rule="multi-krum", f=F, rule_params={"m": 5}),
     lambda: Krum(num_malicious_clients=F, num_clients_to_keep=5), 1),
    (dict(rule="median", f=F), lambda: FedMedian(), 0),
    (dict(rule="bulyan", f=F), lambda: Bulyan(num_malicious_clients=F, to_keep=0), 1),
])
def test_same_results_as_flowers_own_strategies(rng, dtype, ours, theirs, tol):
    clients = _clients(rng, dtype)
    mine, _ = PyaggStrategy(**ours).aggregate_fit(1, _results(clients), [])
    ref, _ = theirs().aggregate_fit(1, _results(clients), [])
    a, b = parameters_to_ndarrays(mine), parameters_to_ndarrays(ref)
    assert [x.shape for x in a] == [x.shape for x in b] and [x.dtype for x in a] == [x.dtype for x in b]
    if tol == 0:
        np.testing.assert_array_equal(_flat(a), _flat(b))
    else:  # a mean: the same rows, summed in another order (a few ulps)
        np.testing.assert_allclose(_flat(a), _flat(b), rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    # and it is the engine's result on the stacked rows
    G = np.stack([_flat(c) for c in clients])
    np.testing.assert_array_equal(_flat(a), pyagg.aggregate(G, ours["rule"], ours["f"], **ours.get("rule_params", {})))


def test_flatten_roundtrip_and_errors(rng):
    arrays = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4).astype(np.float64)]
    flat = flatten(arrays, np.float64)
    back = unflatten(flat, arrays)
    assert [b.dtype for b in back] == [np.float32, np.float64]
    np.testing.assert_array_equal(back[1], arrays[1])
    with pytest.raises(pyagg.InvalidArgumentError, match="layer 1 has dtype int64"):
        flatten([np.ones(2), np.arange(3)], np.float64)
    s = PyaggStrategy(rule="median")
    with pytest.raises(pyagg.InvalidArgumentError, match="client 1 sent arrays of other shapes"):
        s.aggregate_arrays([[np.ones(3)], [np.ones(4)], [np.ones(3)]])
    with pytest.raises(pyagg.InvalidArgumentError, match="mode must be"):
        PyaggStrategy(rule="median", mode="weights")
    with pytest.raises(pyagg.InvalidArgumentError):
        PyaggStrategy(rule="no-such-rule")
    with pytest.raises(pyagg.InvalidArgumentError, match="krum"):  # n below the rule's bound: the engine's message
        PyaggStrategy(rule="krum", f=2).aggregate_arrays([[np.ones(3)]] * 5)


# ------------------------------------------------- a federated run, in process ---
DIM = 8
W_TRUE = np.random.default_rng(42).standard_normal(DIM)


class LinRegClient(flwr.client.NumPyClient):
    """Local gradient steps on its own linear-regression shard; a Byzantine one lies."""

    def __init__(self, cid: int, byzantine: bool):
        r = np.random.default_rng(cid)
        self.x = r.standard_normal((64, DIM))
        self.y = self.x @ W_TRUE + 0.01 * r.standard_normal(64)
        self.byzantine = byzantine

    def fit(self, parameters, config):
        w = parameters[0].copy()
        for _ in range(5):
            w -= 0.05 * 2 * self.x.T @ (self.x @ w - self.y) / len(self.y)
        if self.byzantine:
            w = parameters[0] - 30.0 * (w - parameters[0])  # pushes far the other way
        return [w], len(self.y), {}


def _run(strategy, rounds=15, n=7, byzantine=(6,)):
    clients = [LinRegClient(i, i in byzantine) for i in range(n)]
    params = ndarrays_to_parameters([np.zeros(DIM)])
    for rnd in range(1, rounds + 1):
        ins = FitIns(params, {})
        results = []
        for c in clients:
            arrays, num, metrics = c.fit(parameters_to_ndarrays(ins.parameters), ins.config)
            results.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num, metrics)))
        new, _ = strategy.aggregate_fit(rnd, results, [])
        params = new
    return float(np.linalg.norm(parameters_to_ndarrays(params)[0] - W_TRUE))


@pytest.mark.parametrize("kwargs", [
    dict(rule="krum", f=1),
    dict(rule="median", f=1),
    dict(rule="trimmed-mean", f=1, pre=["nnm"]),
    dict(rule="centered-clipping", f=1, mode="updates", rule_params={"tau": 0.2, "L": 3},
         initial_parameters=ndarrays_to_parameters([np.zeros(DIM)])),
])
def test_federated_run_with_a_byzantine_client_learns(kwargs):
    start = float(np.linalg.norm(W_TRUE))
    robust = _run(PyaggStrategy(**kwargs))
    assert robust < 0.05 * start, robust
    attacked = _run(FedAvg())
    assert attacked > start  # the attack defeats plain FedAvg
