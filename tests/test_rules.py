"""Every rule and pre-aggregator of the engine against the numpy reference.

The reference (tests/reference.py) is written from shared/spec/rules.md and
the semantics documented in engine/src/cpu/cpu_backend.h. Comparisons:

- selections must agree exactly: ``krum`` returns a bitwise copy of the
  selected row, ``median`` is a selection (or (a+b)/2 of two selected values,
  computed in float64 and rounded once), so both are compared bitwise;
- means are compared with ``rtol`` = 1e-6 (float32) / 1e-12 (float64) and
  ``atol = rtol * max|G|``: both sides sum in float64 and round once, so they
  differ only by the order of float64 additions (relative to the magnitude of
  the summed values, hence the atol) and by one final rounding. A different
  selection (another row, another subset) changes a mean by far more.
"""

from __future__ import annotations

import array
import itertools
import math
import tracemalloc

import numpy as np
import pytest
import reference as ref

import pyagg

RULES = list(ref.RULES)
SHAPES = [(3, 0, 1), (7, 1, 7), (11, 2, 33), (15, 3, 1013), (19, 4, 4099)]
KINDS = ["random", "ties", "nonfinite"]
RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
BITWISE = {"krum", "median"}
DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of a float array (to compare NaN payloads and signed zeros too)."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bitwise(out: np.ndarray, expected: np.ndarray) -> None:
    assert out.dtype == expected.dtype and out.shape == expected.shape
    if not np.array_equal(bits(out), bits(expected)):
        bad = np.flatnonzero(bits(out) != bits(expected))
        raise AssertionError(
            f"{bad.size} of {out.size} values differ bitwise, first at {bad[:5]}: "
            f"got {out.ravel()[bad[:5]]}, expected {expected.ravel()[bad[:5]]}"
        )


def scale_of(G: np.ndarray) -> float:
    fin = G[np.isfinite(G)]
    return float(np.max(np.abs(fin))) if fin.size else 1.0


def assert_close(out: np.ndarray, expected: np.ndarray, G: np.ndarray, rtol: float | None = None) -> None:
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    assert out.shape == expected.shape, (out.shape, expected.shape)
    rtol = RTOL[G.dtype] if rtol is None else rtol
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol * scale_of(G), equal_nan=True)


def check_rule(rule: str, out: np.ndarray, expected: np.ndarray, G: np.ndarray) -> None:
    assert isinstance(out, np.ndarray)
    if rule in BITWISE:
        assert_bitwise(out, expected)
    else:
        assert_close(out, expected, G)


def cases():
    """(rule, n, f, d, kind, dtype) for the main grid and the bound edges."""
    out = []
    for rule in RULES:
        shapes = list(SHAPES)
        for f in (1, 2):  # n exactly at the rule's bound
            shapes.append((max(ref.MIN_N[rule](f), f), f, 33))
        for (n, f, d), kind, dt in itertools.product(shapes, KINDS, DTYPES):
            if n >= ref.MIN_N[rule](f):
                out.append(pytest.param(rule, n, f, d, kind, dt, id=f"{rule}-n{n}f{f}d{d}-{kind}-{dt.name}"))
    return out


# ------------------------------------------------------- rule vs reference ---
@pytest.mark.parametrize("rule, n, f, d, kind, dt", cases())
def test_rule_matches_reference(rule, n, f, d, kind, dt):
    bad = f if rule != "average" else max(f, 1)
    G = ref.make_data(kind, n, d, dt, seed=n * 1000 + d, bad=bad)
    expected = ref.aggregate(G, rule, f)
    out = pyagg.aggregate(G, rule, f, **ref.req(rule))
    assert out.shape == (d,) and out.dtype == dt
    check_rule(rule, out, expected, G)
    if rule != "average":
        # The invariant of the spec: at most f non-finite rows -> finite output.
        assert np.all(np.isfinite(out)), f"{rule} returned non-finite values with <= f bad rows"


# n > 32: the distance pass of the selection rules takes the Gram kernel, in
# float for float32 input on FMA targets (engine/src/cpu/distance.cpp, "Float
# Gram kernel": relative error <= 6.2e-5 per distance, exact form where the
# Gram form would cancel). On these data the selections must still be those of
# exact distances ("ties": small integers, whose float Gram sums are exact, so
# every tie stays a tie).
GRAM_RULES = ["krum", "multi-krum", "bulyan", "bulyan-multikrum"]


@pytest.mark.parametrize("rule", GRAM_RULES)
@pytest.mark.parametrize("n, f, d", [(40, 8, 4099), (100, 20, 1013)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_rule_on_the_gram_path_matches_reference(rule, n, f, d, kind, dt):
    G = ref.make_data(kind, n, d, dt, seed=n * 7 + d, bad=f)
    out = pyagg.aggregate(G, rule, f, **ref.req(rule))
    check_rule(rule, out, ref.aggregate(G, rule, f), G)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("n, f, d", [(40, 8, 4099), (100, 20, 1013)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_nnm_on_the_gram_path_matches_reference(n, f, d, kind, dt):
    G = ref.make_data(kind, n, d, dt, seed=n * 11 + d, bad=f)
    assert_close(pyagg.preaggregate(G, "nnm", f), ref.nnm(G, f), G)


PARAM_CASES = [
    ("multi-krum", {"m": 1}),
    ("multi-krum", {"m": 9}),  # n - f
    ("multi-krum", {"m": 4}),
    ("averaged-median", {"beta": 1}),
    ("averaged-median", {"beta": 9}),  # n - f
    ("averaged-median", {"beta": 4}),
    ("bulyan-multikrum", {"m": 5}),  # n - 2f - 2
    ("bulyan-multikrum", {"m": 7}),  # n - f - 2
    ("geometric-median", {"nu": 1e-3, "max_iter": 3, "tol": 0.0}),
    ("geometric-median", {"max_iter": 1}),
    ("geometric-median", {"tol": 1e-12, "max_iter": 1000}),
    ("centered-clipping", {"tau": 0.5, "L": 3}),
    ("centered-clipping", {"tau": 1e9}),
    ("centered-clipping", {"L": 5}),
    ("mda", {"max_subsets": 55}),  # exactly C(11, 2)
]


@pytest.mark.parametrize("rule, params", PARAM_CASES, ids=[f"{r}-{p}" for r, p in PARAM_CASES])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_rule_params_match_reference(rule, params, kind, dt):
    n, f, d = 11, 2, 33
    G = ref.make_data(kind, n, d, dt, seed=7, bad=f)
    expected = ref.aggregate(G, rule, f, **params)
    out = pyagg.aggregate(G, rule, f, **params)
    check_rule(rule, out, expected, G)
    assert np.all(np.isfinite(out))


def test_centered_clipping_without_clipping_is_the_mean_of_finite_rows_over_n():
    """tau huge: v = (1/n) * sum of the finite rows (non-finite rows count in n)."""
    G = ref.make_data("nonfinite", 9, 17, np.float64, seed=3, bad=2)
    fin = ref.finite_rows(G)
    expected = G[fin].sum(axis=0) / G.shape[0]
    out = pyagg.aggregate(G, "centered-clipping", 2, tau=1e12)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------- pre-aggregators ---
PRE_CASES = [
    ("nnm", {}),
    ("bucketing", {}),
    ("bucketing", {"s": 1}),
    ("bucketing", {"s": 3, "seed": 7}),
    ("bucketing", {"s": 5, "seed": 2**40 + 3}),
    ("bucketing", {"s": 100}),
    ("clipping", {}),  # ARC
    ("clipping", {"tau": 0.5}),
    ("clipping", {"tau": 1e9}),
]


@pytest.mark.parametrize("name, params", PRE_CASES, ids=[f"{p}-{q}" for p, q in PRE_CASES])
@pytest.mark.parametrize("n, f, d", [(3, 0, 1), (7, 1, 7), (11, 2, 33), (19, 4, 1013)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_preaggregator_matches_reference(name, params, n, f, d, kind, dt):
    G = ref.make_data(kind, n, d, dt, seed=n + d, bad=f)
    expected = ref.preaggregate(G, name, f, **params)
    out = pyagg.preaggregate(G, name, f, **params)
    assert out.shape == expected.shape and out.dtype == dt
    if (name == "bucketing" and params.get("s") == 1) or (name == "clipping" and params.get("tau") == 1e9):
        assert_bitwise(out, expected)  # a permutation / no-op: exact
    else:
        assert_close(out, expected, G)
    if name == "nnm":
        assert np.all(np.isfinite(out)), "nnm must never mix a non-finite row in (<= f of them)"


def test_bucketing_permutation_is_splitmix64_fisher_yates():
    """With s=1 bucketing outputs the permuted rows: check the permutation itself."""
    n = 13
    G = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))
    for seed in (0, 1, 12345, 2**52 + 1):  # params travel as doubles: integers up to 9e15
        out = pyagg.preaggregate(G, "bucketing", s=1, seed=seed)
        assert [int(v) for v in out[:, 0]] == ref.bucket_permutation(n, seed), seed


AGG_CHAINS = [
    ("krum", 2, ["nnm"], {}),
    ("median", 1, [("bucketing", {"s": 2, "seed": 3})], {}),
    ("trimmed-mean", 1, ["nnm", ("bucketing", {"s": 2})], {}),
    ("centered-clipping", 2, [], {"tau": 1.0}),
    ("centered-clipping", 2, ["clipping"], {"tau": 2.0, "L": 2}),
    ("multi-krum", 2, [("clipping", {"tau": 3.0})], {"m": 3}),
    ("geometric-median", 2, ["bucketing", "clipping"], {}),
]


@pytest.mark.parametrize("rule, f, pre, params", AGG_CHAINS, ids=[f"{c[0]}-{c[2]}" for c in AGG_CHAINS])
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_aggregator_matches_reference(rule, f, pre, params, dt):
    """Several calls: centered-clipping momentum and bucketing's seed + t."""
    n, d = 19, 65
    agg = pyagg.Aggregator(rule, f, pre, **params)
    oracle = ref.Aggregator(rule, f, pre, **params)
    for t in range(4):
        G = ref.make_data("nonfinite" if t % 2 else "random", n, d, dt, seed=100 + t, bad=f if t % 2 else 0)
        out = agg.aggregate(G)
        expected = oracle.aggregate(G)
        # Pre-aggregated rows are means (ulp-level differences), so even
        # krum's copy of a row is compared with the tolerance of means.
        assert_close(out, expected, G)


# ------------------------------------------------------------ input kinds ---
def _aggregate_all(G, f=2):
    return {rule: pyagg.aggregate(G, rule, f, **ref.req(rule)) for rule in RULES}


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_list_of_rows_equals_matrix_bitwise(dt):
    G = ref.make_data("nonfinite", 11, 1013, dt, seed=5, bad=2)
    rows = [np.array(r, copy=True) for r in G]  # separately allocated rows
    for rule in RULES:
        assert_bitwise(pyagg.aggregate(rows, rule, 2, **ref.req(rule)), pyagg.aggregate(G, rule, 2, **ref.req(rule)))
        assert_bitwise(pyagg.aggregate(tuple(rows), rule, 2, **ref.req(rule)),
                       pyagg.aggregate(G, rule, 2, **ref.req(rule)))
    for name in ref.PRE:
        assert_bitwise(pyagg.preaggregate(rows, name, 2, **ref.pre_req(name)),
                       pyagg.preaggregate(G, name, 2, **ref.pre_req(name)))


class ArrayLike:
    """Exposes only ``__array__`` (like a framework tensor without DLPack)."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and np.dtype(dtype) != self._a.dtype:
            raise AssertionError("the API must not ask for a dtype conversion")
        return self._a


class DLPackOnly:
    """Exposes only DLPack (like a CPU torch tensor), delegating to numpy."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("wrap", ["memoryview", "array_interface", "dlpack"])
def test_array_protocols(dt, wrap):
    G = ref.make_data("random", 11, 257, dt, seed=9)
    obj = {"memoryview": memoryview, "array_interface": ArrayLike, "dlpack": DLPackOnly}[wrap](G)
    for rule in ("krum", "trimmed-mean", "geometric-median"):
        assert_bitwise(pyagg.aggregate(obj, rule, 2, **ref.req(rule)), pyagg.aggregate(G, rule, 2, **ref.req(rule)))


@pytest.mark.parametrize("code, dt", [("f", np.float32), ("d", np.float64)])
def test_list_of_array_array_rows(code, dt):
    G = ref.make_data("random", 7, 33, dt, seed=11)
    rows = [array.array(code, r.tolist()) for r in G]
    for rule in ("median", "multi-krum", "centered-clipping"):
        assert_bitwise(pyagg.aggregate(rows, rule, 1, **ref.req(rule)), pyagg.aggregate(G, rule, 1, **ref.req(rule)))


@pytest.mark.parametrize("wrap", ["ndarray", "memoryview", "array_interface", "dlpack", "list_of_rows", "readonly"])
def test_no_copy_of_the_input(wrap):
    """The input is read in place: numpy allocations during the call stay far
    below the input size (tracemalloc sees numpy's buffers, not the engine's
    C++ scratch)."""
    n, d = 16, 1 << 16
    G = np.random.default_rng(0).standard_normal((n, d))  # 8 MiB float64
    if wrap == "readonly":
        G.setflags(write=False)
    obj = {
        "ndarray": lambda: G,
        "readonly": lambda: G,
        "memoryview": lambda: memoryview(G),
        "array_interface": lambda: ArrayLike(G),
        "dlpack": lambda: DLPackOnly(G),
        "list_of_rows": lambda: list(G),
    }[wrap]()
    pyagg.aggregate(obj, "average")  # warm-up (imports, caches)
    tracemalloc.start()
    try:
        out = pyagg.aggregate(obj, "average")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < G.nbytes // 8, f"{peak} bytes allocated for an input of {G.nbytes}: was it copied?"
    np.testing.assert_allclose(out, G.mean(axis=0), rtol=1e-12, atol=1e-12)


def test_input_unchanged_and_output_not_aliased(dtype):
    G = ref.make_data("nonfinite", 11, 129, dtype, seed=13, bad=2)
    before = G.copy()
    for rule in RULES:
        out = pyagg.aggregate(G, rule, 2, **ref.req(rule))
        assert not np.shares_memory(out, G), f"{rule} output aliases the input"
        assert_bitwise(G, before)
    for name in ref.PRE:
        out = pyagg.preaggregate(G, name, 2, **ref.pre_req(name))
        assert not np.shares_memory(out, G)
        assert_bitwise(G, before)


def test_readonly_input(dtype):
    G = ref.make_data("random", 11, 64, dtype, seed=17)
    G.setflags(write=False)
    for rule in RULES:
        check_rule(rule, pyagg.aggregate(G, rule, 2, **ref.req(rule)), ref.aggregate(G, rule, 2), G)


# ------------------------------------------------------ Gram cancellation ---
@pytest.mark.parametrize(
    "dt, base, noise",
    [(np.float32, 1e3, 1e-2), (np.float64, 1e3, 1e-2), (np.float64, 1e8, 1e-3)],
    ids=["f32-1e3", "f64-1e3", "f64-1e8"],
)
def test_gram_cancellation(dt, base, noise):
    """Large, nearly equal rows: |x|^2 + |y|^2 - 2<x,y> cancels catastrophically
    (at 1e8 in float64 the Gram form has an error of ~1 per coordinate, the
    distances are ~1e-6): the rows chosen must be those of the exact distances."""
    n, f, d = 11, 2, 1013
    rng = np.random.default_rng(21)
    G = (base + noise * rng.standard_normal((n, d)) * rng.choice([0.5, 1, 2], size=(n, 1))).astype(dt)
    i = ref.krum_index(G, f)
    assert_bitwise(pyagg.aggregate(G, "krum", f), G[i])
    for rule in ("multi-krum", "bulyan", "bulyan-multikrum", "mda"):
        check_rule(rule, pyagg.aggregate(G, rule, f, **ref.req(rule)), ref.aggregate(G, rule, f), G)
    assert_close(pyagg.preaggregate(G, "nnm", f), ref.nnm(G, f), G)


# ---------------------------------------------------------- hand-computed ---
NAN, INF = math.nan, math.inf

HAND = [
    # (rule, f, params, rows, expected output)
    ("average", 0, {}, [[1, 2], [3, 4]], [2, 3]),
    ("average", 0, {}, [[1, INF], [3, -INF]], [2, NAN]),
    ("average-nan", 0, {}, [[1, NAN, INF], [3, NAN, 2]], [2, 0, 2]),
    ("median", 0, {}, [[1], [3], [2], [100]], [2.5]),
    ("median", 0, {}, [[1, NAN], [NAN, NAN], [5, -INF]], [3, 0]),
    ("median", 1, {}, [[1, 7], [2, 5], [3, 6]], [2, 6]),
    ("trimmed-mean", 1, {}, [[1], [2], [3], [100]], [2.5]),
    ("trimmed-mean", 1, {}, [[NAN], [2], [3], [-INF], [4]], [3]),
    ("trimmed-mean", 2, {}, [[1], [INF], [2], [NAN], [-INF], [-INF], [3]], [2]),
    ("averaged-median", 1, {}, [[1], [2], [3], [10], [11]], [4]),
    ("averaged-median", 1, {"beta": 2}, [[1], [2], [3], [10], [11]], [2.5]),
    ("averaged-median", 0, {"beta": 2}, [[0], [2], [4]], [1]),  # tie -> smaller value
    ("averaged-median", 1, {}, [[NAN], [2], [4], [9]], [5]),  # finite only: k = 3 <= beta
    ("averaged-median", 1, {"beta": 2}, [[NAN], [2], [4], [9]], [3]),  # median 4: {4, 2}
    ("krum", 1, {}, [[0], [1], [2], [3], [100]], [1]),  # rows 1, 2 tie at score 2 -> row 1
    ("krum", 1, {}, [[0, 0], [1, 0], [0, 1], [NAN, 0], [1, 1]], [0, 0]),  # all tie at 2 -> row 0
    ("krum", 1, {}, [[INF, 0], [5, 5], [0, 1], [0, 0], [1, 0]], [0, 0]),
    ("multi-krum", 1, {}, [[0], [1], [2], [3], [100]], [1.5]),  # m = 2: rows 1, 2
    ("multi-krum", 1, {"m": 3}, [[0], [1], [2], [3], [100]], [1]),  # rows 1, 2, then 0 (tie with 3)
    ("bulyan", 1, {}, [[0], [1], [2], [3], [4], [5], [100]], [2]),  # selects 2,3,1,4,0; beta 3
    ("bulyan-multikrum", 1, {}, [[0], [1], [2], [3], [4], [5], [100]], [2.5]),
    ("mda", 1, {}, [[0], [1], [2], [10]], [1]),
    ("mda", 1, {}, [[0], [1], [2], [3]], [1]),  # {0,1,2} and {1,2,3} tie -> (0,1,2)
    ("mda", 1, {}, [[0, 0], [NAN, 1], [3, 0], [0, 4]], [1, 4 / 3]),
    ("geometric-median", 0, {}, [[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], [0, 0]),
    ("centered-clipping", 0, {"tau": 1}, [[3, 4]], [0.6, 0.8]),
    ("centered-clipping", 0, {"tau": 1, "L": 2}, [[3, 4]], [1.2, 1.6]),
    ("centered-clipping", 1, {"tau": 1}, [[3, 4], [NAN, 0]], [0.3, 0.4]),  # bad row counts in n
]


@pytest.mark.parametrize("rule, f, params, rows, expected", HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_hand_computed(rule, f, params, rows, expected, dt):
    G = np.array(rows, dtype=dt)
    expected = np.array(expected, dtype=dt)
    r = ref.aggregate(G, rule, f, **params)
    np.testing.assert_allclose(r, expected, rtol=1e-6, atol=1e-7, equal_nan=True, err_msg="reference")
    out = pyagg.aggregate(G, rule, f, **params)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7, equal_nan=True, err_msg="engine")


def test_bulyan_never_selects_a_nonfinite_row_when_k_le_0():
    """f = 1: Bulyan's last round has 3 rows left and k = 3-1-2 = 0, so every
    Krum score is 0. The spec: a non-finite row "is never selected", so the
    lowest *finite* index wins, not the non-finite row 0.

    Rows (values) r0 = nan, r1..r6 = 0, 1, 2, 3, 4, 10. Rounds 0-3 (k = 4, 3,
    2, 1) select r3 (score 10), r2 (14, tie with r4), r4 (10), r1 (16, tie
    with r5); the last round sees {r0, r5, r6}, k = 0 -> r5 (r0 is non-finite).
    Selected values {2, 1, 3, 0, 4}, beta = 5 - 2 = 3 closest to median 2:
    {2, 1, 3} -> 2. Selecting the NaN row instead leaves {2, 1, 3, 0} finite,
    median 1.5, beta 3 -> {1, 2, 0} (tie 0 vs 3 -> smaller) -> 1.
    """
    G = np.array([[NAN], [0], [1], [2], [3], [4], [10]])
    assert ref.bulyan_selection(G, 1) == [3, 2, 4, 1, 5]
    assert ref.bulyan(G, 1)[0] == 2.0
    assert pyagg.aggregate(G, "bulyan", 1)[0] == 2.0


def test_geometric_median_of_equilateral_triangle_is_its_centroid(dtype):
    """The Fermat point of an equilateral triangle is its centroid."""
    G = np.array([[0, 0], [2, 0], [1, math.sqrt(3)]], dtype=dtype)
    out = pyagg.aggregate(G, "geometric-median", tol=0.0, max_iter=1000)
    np.testing.assert_allclose(out, [1, math.sqrt(3) / 3], atol=1e-5)


def test_geometric_median_one_dimension_is_the_median():
    out = pyagg.aggregate(np.array([[0.0], [1.0], [10.0]]), "geometric-median")
    np.testing.assert_allclose(out, [1.0], atol=1e-5)


def test_centered_clipping_aggregator_momentum(dtype):
    agg = pyagg.Aggregator("centered-clipping", tau=1)
    G = np.array([[3, 4]], dtype=dtype)
    np.testing.assert_allclose(agg.aggregate(G), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(agg.aggregate(G), [1.2, 1.6], rtol=1e-6)  # x - v = (2.4, 3.2), norm 4
    agg.reset()
    np.testing.assert_allclose(agg.aggregate(G), [0.6, 0.8], rtol=1e-6)


PRE_HAND = [
    ("nnm", 1, {}, [[0], [1], [10]], [[0.5], [0.5], [5.5]]),
    ("nnm", 1, {}, [[NAN], [1], [3]], [[2], [2], [2]]),  # bad row -> first n-f finite rows
    ("clipping", 0, {"tau": 1}, [[3, 4], [0, 0.5], [NAN, 1]], [[0.6, 0.8], [0, 0.5], [NAN, 1]]),
    ("clipping", 1, {}, [[1], [2], [3], [10]], [[1], [2], [3], [3]]),  # ARC k = 6//4 = 1, C = 3
    ("clipping", 1, {}, [[1], [INF], [3], [10]], [[1], [INF], [3], [10]]),  # k = 1 is the inf row: C = 10
    ("clipping", 1, {}, [[1], [-2], [3], [10], [4]], [[1], [-2], [3], [4], [4]]),  # k = 8//5 = 1, C = 4
    ("clipping", 2, {}, [[1], [INF], [NAN], [-INF], [2]], [[1], [INF], [NAN], [-INF], [2]]),  # C = inf
    ("clipping", 0, {}, [[1], [2], [30]], [[1], [2], [30]]),  # ARC with f = 0: k = 0
    ("bucketing", 0, {"s": 4}, [[1], [2], [3], [6]], [[3]]),
    # splitmix64(0) Fisher-Yates of 5 -> perm [2, 3, 1, 4, 0]: buckets {2,3}, {1,4}, {0}
    ("bucketing", 0, {"s": 2}, [[1], [1], [1], [1], [5]], [[1], [3], [1]]),
]


@pytest.mark.parametrize(
    "name, f, params, rows, expected", PRE_HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(PRE_HAND)]
)
def test_pre_hand_computed(name, f, params, rows, expected, dtype):
    G = np.array(rows, dtype=dtype)
    out = pyagg.preaggregate(G, name, f, **params)
    expected = np.array(expected, dtype=dtype)
    np.testing.assert_allclose(ref.preaggregate(G, name, f, **params), expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)


def test_splitmix64_reference_vector():
    """Published splitmix64 outputs for seed 0 (validates the oracle itself)."""
    g = ref.SplitMix64(0)
    assert [g.next() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


# -------------------------------------------------------------- metadata ---
def test_rule_metadata_matches_spec():
    info = pyagg.rules()
    assert set(info) == set(ref.RULES)
    for name, meta in info.items():
        for f in range(6):
            assert meta["min_n"](f) == ref.MIN_N[name](f), (name, f)
        assert meta["robust"] == (name != "average")
        assert meta["bound"].startswith("n >= ")
    assert info["geometric-median"]["params"] == {"nu": 1e-6, "max_iter": 100, "tol": 1e-7, "init": "mean"}
    assert info["centered-clipping"]["params"] == {"tau": 10.0, "L": 1}
    assert info["multi-krum"]["params"] == {"m": None}
    assert info["averaged-median"]["params"] == {"beta": None}
    assert set(pyagg.pre_aggregators()) == set(ref.PRE)
    assert pyagg.pre_aggregators()["bucketing"]["params"] == {"s": 2, "seed": 0}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_plain_numpy_fast_path_equals_general_path(dtype):
    """pyagg.aggregate(G, rule, f) on a plain numpy matrix takes a one-call fast path
    (_ext.run_plain); device="cpu" takes the general path. Same bits for every rule,
    and for a read-only array and an ndarray subclass (np.matrix, which the fast path
    leaves to the general path)."""
    G = np.random.default_rng(3).standard_normal((11, 301)).astype(dtype)
    G[2, 5] = np.nan
    for rule in sorted(pyagg.rules()):
        if rule in ("zeroing",):
            continue  # needs tau (a parameter: general path only)
        f = 1 if rule != "bulyan" and rule != "bulyan-multikrum" else 2
        want = pyagg.aggregate(G, rule, f, device="cpu")
        np.testing.assert_array_equal(pyagg.aggregate(G, rule, f), want, err_msg=rule)
    ro = G.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(pyagg.aggregate(ro, "median", 1), pyagg.aggregate(G, "median", 1, device="cpu"))
    m = pyagg.aggregate(np.asmatrix(G), "median", 1)
    assert type(m) is np.ndarray and m.shape == (301,)
    np.testing.assert_array_equal(m, pyagg.aggregate(G, "median", 1, device="cpu"))
