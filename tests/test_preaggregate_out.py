"""``pyagg.preaggregate(..., out=buf)``: the result written into a caller's buffer.

The same bits as a fresh result, for every pre-aggregator, dtype, NaN/inf
rows and list-of-rows input; the buffer is returned and fully overwritten
(a stale value or NaN in it never leaks); and every bad buffer is refused
before the engine runs, leaving it untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyagg
from pyagg import InvalidArgumentError

import reference as ref

CASES = [
    ("nnm", {}, lambda n: n),
    ("clipping", {}, lambda n: n),  # ARC
    ("clipping", {"tau": 1.5}, lambda n: n),  # static
    ("bucketing", {"s": 3, "seed": 7}, lambda n: -(-n // 3)),
    ("zeroing", {"tau": 2.0}, lambda n: n),
]


def data(n, d, dtype, seed=0, bad=True):
    G = np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)
    G[1] *= 5.0
    if bad:
        G[2, d // 2] = np.nan
        G[n - 1, 0] = np.inf
    return G


@pytest.mark.parametrize("name,params,rows", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,d", [(7, 5), (24, 1000), (40, 4099)])
def test_out_equals_fresh_result(name, params, rows, dtype, n, d):
    G = data(n, d, dtype)
    fresh = pyagg.preaggregate(G, name, 2, **params)
    assert fresh.shape == (rows(n), d)
    buf = np.full((rows(n), d), 12345.0, dtype=dtype)  # stale values must all be overwritten
    got = pyagg.preaggregate(G, name, 2, out=buf, **params)
    assert got is buf
    np.testing.assert_array_equal(buf, fresh)
    # and against the numpy reference for the clipping variants (independent of the engine)
    if name == "clipping":
        want = ref.PRE["clipping"](G.astype(np.float64), 2, **params).astype(dtype)
        np.testing.assert_allclose(buf, want, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("name,params,rows", CASES[:3], ids=[f"{c[0]}{c[1]}" for c in CASES[:3]])
def test_out_with_rows_input_and_reuse(name, params, rows):
    G = data(12, 300, np.float64)
    buf = np.empty((rows(12), 300))
    for seed in range(3):  # one buffer reused across calls, as in a training loop
        G = data(12, 300, np.float64, seed=seed)
        fresh = pyagg.preaggregate(G, name, 2, **params)
        got = pyagg.preaggregate(list(G), name, 2, out=buf, **params)
        assert got is buf
        np.testing.assert_array_equal(buf, fresh)


def test_out_may_be_a_disjoint_view_of_the_inputs_buffer():
    store = np.zeros((20, 64))
    store[:10] = data(10, 64, np.float64, bad=False)
    fresh = pyagg.preaggregate(store[:10], "nnm", 2)
    pyagg.preaggregate(store[:10], "nnm", 2, out=store[10:])
    np.testing.assert_array_equal(store[10:], fresh)


def _refused(G, buf, match, **kw):
    before = None if not isinstance(buf, np.ndarray) else buf.copy()
    with pytest.raises(InvalidArgumentError, match=match):
        pyagg.preaggregate(G, "clipping", 2, out=buf, **kw)
    if before is not None:
        np.testing.assert_array_equal(buf, before)  # untouched


def test_bad_out_buffers_are_refused():
    G = data(8, 16, np.float32, bad=False)
    _refused(G, np.zeros((8, 16), np.float64), r"dtype float64.*float32")
    _refused(G, np.zeros((8, 15), np.float32), r"shape \(8, 15\).*\(8, 16\)")
    _refused(G, np.zeros((7, 16), np.float32), r"shape \(7, 16\)")
    _refused(G, np.zeros(8 * 16, np.float32), r"shape \(128,\)")
    _refused(G, np.zeros((16, 8), np.float32).T, r"C-contiguous")
    _refused(G, np.zeros((8, 32), np.float32)[:, ::2], r"C-contiguous")
    ro = np.zeros((8, 16), np.float32)
    ro.flags.writeable = False
    _refused(G, ro, r"read-only")
    _refused(G, [[0.0] * 16] * 8, r"numpy.ndarray.*list")
    _refused(G, G, r"overlaps")  # in place: nnm/clipping read every row while writing
    big = np.zeros((16, 16), np.float32)
    big[:8] = G
    _refused(big[:8], big[4:12], r"overlaps")
    _refused(list(big[:8]), big[7:15], r"overlaps")  # one row of a list input overlaps


def test_out_refused_for_other_frameworks():
    torch = pytest.importorskip("torch")
    G = torch.zeros((6, 4), dtype=torch.float32)
    with pytest.raises(InvalidArgumentError, match="numpy"):
        pyagg.preaggregate(G, "clipping", 1, out=np.zeros((6, 4), np.float32))
