"""pyagg.torch: per-worker gradients -> aggregated .grad for any torch.optim, and
robust data-parallel training over torch.distributed (gloo, local processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pyagg  # noqa: E402
import pyagg.torch as pt  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _worker_grads(model, n, seed=0):
    """n real per-worker gradients (lists over parameters), from different batches."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        model.zero_grad()
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        out.append([p.grad.detach().clone() if p.grad is not None else None for p in model.parameters()])
    model.zero_grad()
    return out


def test_flat_grad_write_roundtrip():
    m = _model()
    grads = _worker_grads(m, 1)[0]
    for p, g in zip(m.parameters(), grads):
        p.grad = g.clone()
    flat = pt.flat_grad(m)
    assert flat.shape == (sum(p.numel() for p in m.parameters()),)
    np.testing.assert_array_equal(flat.numpy(), np.concatenate([g.numpy().ravel() for g in grads]))
    m.zero_grad(set_to_none=True)
    pt.write_flat_grad(m, flat * 2)
    for p, g in zip(m.parameters(), grads):
        np.testing.assert_array_equal(p.grad.numpy(), 2 * g.numpy())


@pytest.mark.parametrize("form", ["lists", "flat", "stacked"])
@pytest.mark.parametrize("rule,f,pre", [("krum", 1, ()), ("median", 2, ["nnm"]), ("multi-krum", 1, ())])
def test_step_writes_the_engine_aggregate_into_grad(form, rule, f, pre):
    m = _model()
    per_worker = _worker_grads(m, 7)
    per_worker[3] = [100.0 * g for g in per_worker[3]]  # a Byzantine worker
    G = np.stack([np.concatenate([g.numpy().ravel() for g in w]) for w in per_worker])
    expected = pyagg.Aggregator(rule, f, pre=pre)(G)
    inp = {"lists": per_worker, "flat": [torch.from_numpy(r) for r in G], "stacked": torch.from_numpy(G)}[form]
    agg = pt.GradientAggregator(m, rule, f, pre=pre)
    out = agg.step(inp)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_array_equal(pt.flat_grad(m).numpy(), expected)
    # any torch.optim optimizer now steps with it: SGD -> p - lr * g
    before = [p.detach().clone() for p in m.parameters()]
    torch.optim.SGD(m.parameters(), lr=0.5).step()
    off = 0
    for p, b in zip(m.parameters(), before):
        k = p.numel()
        want = b - 0.5 * torch.from_numpy(expected[off:off + k]).view(b.shape)
        np.testing.assert_allclose(p.detach().numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
        off += k


def test_frozen_parameters_and_missing_grads():
    m = _model()
    m[0].weight.requires_grad_(False)
    params = pt.trainable(m)
    assert len(params) == 3
    w = _worker_grads(m, 5)
    # frozen layer's grad absent from the lists; a None gradient counts as zeros
    w = [[g for g, p in zip(ws, m.parameters()) if p.requires_grad] for ws in w]
    w[0][1] = None
    out = pt.aggregate_into(m, w, "average")
    d = sum(p.numel() for p in params)
    assert out.shape == (d,) and m[0].weight.grad is None


def test_bad_inputs_are_named():
    m = _model()
    w = _worker_grads(m, 5)
    with pytest.raises(pyagg.InvalidArgumentError, match="worker 2 gave 3 gradients"):
        pt.aggregate_into(m, w[:2] + [w[2][:3]] + w[3:], "median")
    bad = [list(x) for x in w]
    bad[1][0] = torch.zeros(3, 3)
    with pytest.raises(pyagg.InvalidArgumentError, match="worker 1, parameter 0"):
        pt.aggregate_into(m, bad, "median")
    with pytest.raises(pyagg.InvalidArgumentError, match=r"expected \(n, 38\)"):
        pt.aggregate_into(m, torch.zeros(5, 7), "median")
    with pytest.raises(pyagg.InvalidArgumentError, match="krum"):
        pt.aggregate_into(m, w[:3], "krum", f=1)  # n below 2f+3: the engine's message
    with pytest.raises(pyagg.InvalidArgumentError, match="flat gradient has shape"):
        pt.write_flat_grad(m, torch.zeros(3))


# ----------------------------------------------------- torch.distributed ---
@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import torch_distributed
    finally:
        sys.path.remove(str(EXAMPLES))
    return torch_distributed


def _gloo_ok() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.skipif(not _gloo_ok(), reason="torch built without gloo")
def test_distributed_byzantine_rank_cannot_stop_learning(example, monkeypatch):
    # spawn children import the example by name: keep examples/ on their path
    monkeypatch.syspath_prepend(str(EXAMPLES))
    robust = example.train(world=5, rule="krum", f=1, steps=40)
    assert robust["in_sync"]
    assert robust["after"] < 0.05 * robust["before"], robust
    attacked = example.train(world=5, rule="average", f=1, steps=40)
    assert attacked["after"] > robust["before"], attacked  # the attack is real: averaging diverges
