"""Pre-aggregator + rule chains in one engine call (pyagg::aggregate_chain, issue 13 item 3).

The fused chain must give what applying the pre-aggregator and then the rule
gives: the unfused chain here is ``pyagg.preaggregate`` (which writes the
n' x d output) followed by ``pyagg.aggregate``, and independently
``tests/reference.py`` (numpy, written from the spec).

- nnm / bucketing / clipping / zeroing before a coordinate-wise rule: the same bits
  (the fused path forms the pre-aggregator's rows per span with the same
  arithmetic and runs the same kernels).
- nnm before krum / multi-krum / mda / bulyan: the rule's distances come from
  nnm's coefficients (D' = -1/2 e^T D e in double) instead of nnm's rounded
  output; on data without near-ties the selection is the same and so are the
  bits. Checked against the reference within a dtype tolerance too.
- Every other pair (and every pre-aggregator but the last of a chain, and a
  last one whose output has < 2^18 elements) runs unfused inside the same
  call: same bits. Data sizes here are chosen to reach the fused path.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyagg
from pyagg.errors import InvalidArgumentError

import reference as ref

COORD = ["average", "average-nan", "median", "trimmed-mean", "averaged-median"]
DIST = ["krum", "multi-krum", "mda", "bulyan"]
OTHER = ["geometric-median", "centered-clipping", "bulyan-multikrum"]
PRES = [("nnm", {}), ("bucketing", {"s": 2, "seed": 5}), ("clipping", {}), ("clipping", {"tau": 40.0}),
        ("zeroing", {"tau": 4.0}), ("zeroing", {"tau": 200.0, "norm_order": 2}), ("zeroing", {"tau": 3.2e4, "norm_order": 1})]
# The fused ones (every pre-aggregator above: zeroing's tau values keep some rows and zero others at d = 40009..70001)
FUSED = PRES
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def _f_for(pre: str, n: int, f: int) -> int:
    # bucketing (s=2) halves n: keep the rule's bound satisfiable
    return max(0, ((n + 1) // 2 - 3) // 4) if pre == "bucketing" else f


def _data(n: int, d: int, dtype, seed: int, bad: int) -> np.ndarray:
    return ref.make_data("nonfinite" if bad else "random", n, d, dtype, seed=seed, bad=bad)


def _unfused(G, rule, f, pre, params):
    return pyagg.aggregate(pyagg.preaggregate(G, pre, f, **params), rule, f, **ref.req(rule))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bad", [0, 1, 3])
@pytest.mark.parametrize("pre, params", PRES, ids=[f"{p}{q}" for p, q in PRES])
@pytest.mark.parametrize("rule", COORD + DIST + OTHER)
def test_chain_equals_unfused(rule, pre, params, bad, dtype):
    n, f = 13, 2
    f = _f_for(pre, n, f)
    # d: the pre-aggregator's output (7 to 13 rows) has >= 2^18 elements, so the
    # engine takes the fused path (below that it writes the small intermediate)
    G = _data(n, 40009, dtype, seed=zlib.crc32(f"{rule} {pre} {bad}".encode()) % 1000, bad=bad)
    want = _unfused(G, rule, f, pre, params)
    got = pyagg.aggregate(G, rule, f, pre=[(pre, params)], **ref.req(rule))
    np.testing.assert_array_equal(got, want)
    # a list of rows (row pointers) takes the same path
    np.testing.assert_array_equal(pyagg.aggregate(list(G), rule, f, pre=[(pre, params)], **ref.req(rule)), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("pre, params", FUSED, ids=[f"{p}{q}" for p, q in FUSED])
@pytest.mark.parametrize("rule", COORD + DIST)
def test_chain_matches_reference_over_several_spans(rule, pre, params, dtype):
    """d = 70001: several spans of the fused path (span = 2 MiB / (n' * itemsize),
    a multiple of 4096), plus a ragged last one; n = 15 so bulyan fits after bucketing."""
    n, f = 15, 2
    f = _f_for(pre, n, f)
    G = _data(n, 70001, dtype, seed=7, bad=1)
    got = pyagg.aggregate(G, rule, f, pre=[(pre, params)], **ref.req(rule))
    want = ref.aggregate(ref.preaggregate(G, pre, f, **params), rule, f)
    scale = np.nanmax(np.abs(want[np.isfinite(want)])) if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * 16 * scale)
    np.testing.assert_array_equal(got, _unfused(G, rule, f, pre, params))


@pytest.mark.parametrize("rule", DIST)
def test_nnm_then_distance_rule_on_the_gram_path(rule):
    """n = 40 > 32: nnm's distance matrix comes from the Gram kernel; the rule's
    distances from nnm's coefficients."""
    if rule == "mda":
        n, f = 12, 2
    else:
        n, f = 40, 6
    G = _data(n, 30000, np.float64, seed=3, bad=2)
    got = pyagg.aggregate(G, rule, f, pre=["nnm"])
    np.testing.assert_array_equal(got, _unfused(G, rule, f, "nnm", {}))
    if rule == "bulyan":
        # nnm's 40 output rows form clusters of rows whose Krum scores differ only by
        # rounding: bulyan's rounds then order them by rounding (engine vs numpy), so
        # only the unfused engine chain (above) is a bitwise reference here.
        return
    want = ref.aggregate(ref.preaggregate(G, "nnm", f), rule, f)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_nnm_then_krum_selects_the_mixed_row_that_krum_of_the_nnm_output_selects():
    """Hand case (d = 1): rows 0, 1, 2, 3, 10, f = 1. nnm row i = mean of its 4
    nearest (itself included): rows 0..3 -> mean(0,1,2,3) = 1.5, row 10 ->
    mean(1,2,3,10) = 4. Krum (f=1, k = n-f-2 = 2 neighbours) on
    [1.5, 1.5, 1.5, 1.5, 4]: each 1.5 scores 0, row 4 scores 2*6.25 -> 1.5."""
    G = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert pyagg.aggregate(G, "krum", 1, pre=["nnm"])[0] == 1.5
    # multi-krum with m = 4: the four rows scoring 0 -> 1.5; average: (4 * 1.5 + 4) / 5 = 2.0
    assert pyagg.aggregate(G, "multi-krum", 1, pre=["nnm"], m=4)[0] == 1.5
    assert pyagg.aggregate(G, "average", 1, pre=["nnm"])[0] == 2.0


def test_chain_of_several_preaggregators():
    G = _data(20, 30000, np.float32, seed=11, bad=2)
    chain = [("clipping", {}), ("nnm", {}), ("bucketing", {"s": 2, "seed": 9})]
    for rule in ["median", "average", "krum"]:
        f = 2
        H = G
        for p, q in chain:
            H = pyagg.preaggregate(H, p, f, **q)
        want = pyagg.aggregate(H, rule, f)
        np.testing.assert_array_equal(pyagg.aggregate(G, rule, f, pre=chain), want)
        np.testing.assert_array_equal(pyagg.Aggregator(rule, f, pre=chain)(G), want)


@pytest.mark.parametrize("rule", ["median", "krum", "centered-clipping"])
def test_aggregator_chain_matches_reference_aggregator_over_calls(rule):
    """Bucketing's seed advances per call and centered-clipping keeps its state
    across calls, through the one-call chain."""
    f = 1
    pre = [("bucketing", {"s": 2, "seed": 3})]
    agg, want = pyagg.Aggregator(rule, f, pre=pre), ref.Aggregator(rule, f, pre=pre)
    for call in range(3):
        G = _data(11, 500, np.float64, seed=call, bad=0)
        np.testing.assert_allclose(agg(G), want.aggregate(G), rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fused_coordinate_chains_are_bitwise_on_small_integer_matrices(data):
    """Small integers: many equal values and ties; the fused coordinate-wise
    chains must still give the same bits as the unfused ones."""
    n = data.draw(st.integers(3, 12))
    d = data.draw(st.integers(1, 40))
    f = data.draw(st.integers(0, (n - 1) // 2))
    vals = data.draw(st.lists(st.integers(-3, 3), min_size=n * d, max_size=n * d))
    G = np.array(vals, dtype=np.float32).reshape(n, d)
    if data.draw(st.booleans()):
        G[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))] = np.nan
    pre, params = data.draw(st.sampled_from(PRES[:4] + [("zeroing", {"tau": 2.5}), ("zeroing", {"tau": 6.0, "norm_order": 2})]))
    fr = f if pre != "bucketing" else 0
    rule = data.draw(st.sampled_from(COORD))
    # repeat the columns so that the fused path runs (>= 2^18 output elements)
    G = np.ascontiguousarray(np.tile(G, (1, -(-(1 << 18) // (((n + 1) // 2) * d)))))
    want = _unfused(G, rule, fr, pre, params)
    np.testing.assert_array_equal(pyagg.aggregate(G, rule, fr, pre=[(pre, params)]), want)


def test_chain_errors():
    G = _data(7, 10, np.float32, seed=0, bad=0)
    with pytest.raises(InvalidArgumentError, match="unknown pre-aggregator 'foo'"):
        pyagg.aggregate(G, "krum", 1, pre=["foo"])
    with pytest.raises(InvalidArgumentError, match=re.escape("krum needs n >= 2f+3, got n=4, f=1")):
        pyagg.aggregate(G, "krum", 1, pre=["bucketing"])
    with pytest.raises(InvalidArgumentError, match=re.escape("nnm needs n > f, got n=3, f=3")):
        pyagg.aggregate(G[:3], "median", 3, pre=["nnm"])
    with pytest.raises(InvalidArgumentError, match=re.escape("pre-aggregator must be a name or (name, params)")):
        pyagg.aggregate(G, "median", 1, pre=[("nnm", 3)])
    with pytest.raises(ValueError, match="seeds"):
        from pyagg import _ext

        _ext.run_chain(_ext.Rule("median", 1, []), [_ext.Pre("nnm", 1, [])], [], 0, 0, 7, 10, 0, 0, 0, 0, 0)
