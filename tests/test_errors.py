"""Every error path of the Python API: the right class, a message naming the values.

Bad input raises :class:`pyagg.InvalidArgumentError` (an ``AggregationError``
and a ``ValueError``); an unavailable device raises :class:`pyagg.DeviceError`.
Messages are matched on the values they must name (n, f, the bound, the
parameter and its value, the dtype, the shape), not on their exact wording
where the wording is incidental.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import pyagg
from pyagg import AggregationError, DeviceError, InvalidArgumentError

BOUNDS = {  # the spec's bounds, written out independently of pyagg.rules()
    "trimmed-mean": ("n >= 2f+1", lambda f: 2 * f + 1),
    "averaged-median": ("n >= 2f+1", lambda f: 2 * f + 1),
    "mda": ("n >= 2f+1", lambda f: 2 * f + 1),
    "krum": ("n >= 2f+3", lambda f: 2 * f + 3),
    "multi-krum": ("n >= 2f+3", lambda f: 2 * f + 3),
    "bulyan": ("n >= 4f+3", lambda f: 4 * f + 3),
    "bulyan-multikrum": ("n >= 4f+3", lambda f: 4 * f + 3),
    "clipped-clustering": ("n >= 2f+1", lambda f: 2 * f + 1),
    "smea": ("n >= 2f+1", lambda f: 2 * f + 1),
    "caf": ("n >= 2f+1", lambda f: 2 * f + 1),
}


def G(n=6, d=4, dtype=np.float64):
    return np.random.default_rng(n * 100 + d).standard_normal((n, d)).astype(dtype)


def test_exception_hierarchy():
    assert issubclass(InvalidArgumentError, AggregationError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(DeviceError, AggregationError)
    assert not issubclass(DeviceError, ValueError)


# ------------------------------------------------------------------ bounds ---
def test_krum_bound_message():
    with pytest.raises(InvalidArgumentError, match=re.escape("krum needs n >= 2f+3, got n=6, f=2")):
        pyagg.aggregate(G(6), "krum", 2)


@pytest.mark.parametrize("rule", sorted(BOUNDS))
@pytest.mark.parametrize("f", [1, 2, 3])
def test_rule_refuses_n_below_its_bound(rule, f):
    bound, min_n = BOUNDS[rule]
    n = min_n(f) - 1
    msg = re.escape(f"{rule} needs {bound}, got n={n}, f={f}")
    with pytest.raises(InvalidArgumentError, match=msg):
        pyagg.aggregate(G(n), rule, f)
    with pytest.raises(InvalidArgumentError, match=msg):  # the list path checks the same
        pyagg.aggregate(list(G(n)), rule, f)
    with pytest.raises(InvalidArgumentError, match=msg):  # and the Aggregator
        pyagg.Aggregator(rule, f).aggregate(G(n))
    pyagg.aggregate(G(n + 1), rule, f)  # at the bound: accepted


def test_bound_checked_after_pre_aggregation():
    # bucketing s=2 turns 7 rows into 4: krum with f=1 needs 5.
    agg = pyagg.Aggregator("krum", 1, pre=["bucketing"])
    with pytest.raises(InvalidArgumentError, match=re.escape("krum needs n >= 2f+3, got n=4, f=1")):
        agg.aggregate(G(7))


@pytest.mark.parametrize("rule", ["average", "median", "trimmed-mean", "krum"])
def test_negative_f(rule):
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{rule}: f must be >= 0, got f=-1")):
        pyagg.aggregate(G(), rule, -1)


def test_f_larger_than_n():
    with pytest.raises(InvalidArgumentError, match=re.escape("median needs f <= n, got n=6, f=7")):
        pyagg.aggregate(G(6), "median", 7)


@pytest.mark.parametrize("f", [1.5, "2", None, True])
def test_f_not_an_integer(f):
    with pytest.raises(InvalidArgumentError, match="f must be an integer"):
        pyagg.aggregate(G(), "median", f)


def test_mda_subset_limit():
    with pytest.raises(InvalidArgumentError, match=r"C\(30, 10\).*max_subsets=1e\+07"):
        pyagg.aggregate(G(30, 2), "mda", 10)
    with pytest.raises(InvalidArgumentError, match=r"C\(11, 2\) = 55 exceeds max_subsets=54"):
        pyagg.aggregate(G(11, 2), "mda", 2, max_subsets=54)
    pyagg.aggregate(G(11, 2), "mda", 2, max_subsets=55)


# ------------------------------------------------------------- rule names ---
def test_unknown_rule_lists_known_ones():
    with pytest.raises(InvalidArgumentError, match="unknown rule 'foo'") as e:
        pyagg.aggregate(G(), "foo")
    for name in ("average", "median", "krum", "multi-krum", "bulyan", "geometric-median", "mda"):
        assert name in str(e.value)


def test_unknown_rule_in_aggregator():
    with pytest.raises(InvalidArgumentError, match="unknown rule 'kurm'"):
        pyagg.Aggregator("kurm", 1)


# ------------------------------------------------------------------ arrays ---
@pytest.mark.parametrize("dt", [np.int32, np.int64, np.float16, np.complex64, np.complex128, np.bool_, object])
def test_wrong_dtype(dt):
    name = np.dtype(dt).name
    with pytest.raises(InvalidArgumentError, match=re.escape(name)):
        pyagg.aggregate(np.zeros((5, 3), dtype=dt), "median")
    with pytest.raises(InvalidArgumentError, match=re.escape(name)):
        pyagg.aggregate([np.zeros(3, dtype=dt)] * 5, "median")


def test_non_native_byte_order():
    with pytest.raises(InvalidArgumentError, match=">f8"):
        pyagg.aggregate(G().astype(">f8"), "median")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_matrix_ndim_not_2(shape):
    with pytest.raises(InvalidArgumentError, match=re.escape(f"got shape {shape}")):
        pyagg.aggregate(np.zeros(shape), "median")


@pytest.mark.parametrize("shape", [(3, 1), (), (1, 1, 3)])
def test_list_rows_ndim_not_1(shape):
    rows = [np.zeros(3), np.zeros(shape)]
    with pytest.raises(InvalidArgumentError, match=re.escape("gradients[1]: expected a 1-D array")) as e:
        pyagg.aggregate(rows, "median")
    assert str(shape) in str(e.value)


def test_d_zero():
    with pytest.raises(InvalidArgumentError, match=re.escape("median needs d >= 1 coordinates, got d=0")):
        pyagg.aggregate(np.zeros((4, 0)), "median")
    with pytest.raises(InvalidArgumentError, match="d=0"):
        pyagg.aggregate([np.zeros(0)] * 3, "median")
    with pytest.raises(InvalidArgumentError, match="d=0"):
        pyagg.preaggregate(np.zeros((4, 0)), "nnm")


def test_n_zero():
    with pytest.raises(InvalidArgumentError, match="n=0"):
        pyagg.aggregate(np.zeros((0, 4)), "median")
    with pytest.raises(InvalidArgumentError, match="n=0"):
        pyagg.aggregate([], "median")
    with pytest.raises(InvalidArgumentError, match="n=0"):
        pyagg.preaggregate(np.zeros((0, 4)), "clipping")


@pytest.mark.parametrize(
    "make",
    [lambda: np.zeros((4, 6))[:, ::2], lambda: np.zeros((6, 4)).T, lambda: np.zeros((8, 3))[::2]],
    ids=["column-stride", "transposed", "row-stride"],
)
def test_non_contiguous(make):
    a = make()
    with pytest.raises(InvalidArgumentError, match="not C-contiguous") as e:
        pyagg.aggregate(a, "median")
    assert str(a.shape) in str(e.value)


def test_non_contiguous_row_in_list():
    with pytest.raises(InvalidArgumentError, match=re.escape("gradients[1]: array is not C-contiguous")):
        pyagg.aggregate([np.zeros(3), np.zeros(6)[::2]], "median")


def test_rows_of_different_lengths():
    rows = [np.zeros(3), np.zeros(3), np.zeros(4)]
    with pytest.raises(InvalidArgumentError, match=r"different lengths.*d=3.*gradients\[2\].*d=4"):
        pyagg.aggregate(rows, "median")


def test_rows_of_different_dtypes():
    rows = [np.zeros(3), np.zeros(3, dtype=np.float32)]
    with pytest.raises(InvalidArgumentError, match=r"float64.*gradients\[1\].*float32"):
        pyagg.aggregate(rows, "median")


@pytest.mark.parametrize("obj", [None, object(), 3, "abc"], ids=["None", "object", "int", "str"])
def test_not_an_array(obj):
    with pytest.raises(InvalidArgumentError):
        pyagg.aggregate(obj, "median")


# -------------------------------------------------------------- parameters ---
def test_unknown_param_names_the_valid_ones():
    with pytest.raises(InvalidArgumentError, match=re.escape("krum has no parameter 'foo' (its parameters: none)")):
        pyagg.aggregate(G(7), "krum", 1, foo=1)
    with pytest.raises(InvalidArgumentError, match=r"geometric-median has no parameter 'eps'.*nu, max_iter, tol"):
        pyagg.aggregate(G(7), "geometric-median", 1, eps=1)
    with pytest.raises(InvalidArgumentError, match=r"no parameter 'm'"):
        pyagg.Aggregator("median", 1, m=3)


BAD_PARAMS = [
    ("multi-krum", 1, {"m": 0}, "m must be >= 1, got m=0"),
    ("multi-krum", 1, {"m": 6}, "needs 1 <= m <= n-f, got m=6 with n=6, f=1 (allowed 1..5)"),
    ("multi-krum", 1, {"m": 1.5}, "parameter m must be an integer, got 1.5"),
    ("multi-krum", 1, {"m": float("nan")}, "parameter m must be finite, got nan"),
    ("multi-krum", 1, {"m": float("inf")}, "parameter m must be finite, got inf"),
    ("averaged-median", 1, {"beta": 6}, "needs 1 <= beta <= n-f, got beta=6 with n=6, f=1 (allowed 1..5)"),
    ("averaged-median", 1, {"beta": 0}, "beta must be >= 1, got beta=0"),
    ("averaged-median", 1, {"beta": 2.5}, "parameter beta must be an integer, got 2.5"),
    ("geometric-median", 0, {"nu": 0}, "nu must be > 0, got nu=0"),
    ("geometric-median", 0, {"nu": -1e-3}, "nu must be > 0, got nu=-0.001"),
    ("geometric-median", 0, {"max_iter": 0}, "max_iter must be >= 1, got max_iter=0"),
    ("geometric-median", 0, {"max_iter": 2.5}, "parameter max_iter must be an integer, got 2.5"),
    ("geometric-median", 0, {"tol": -1}, "tol must be >= 0, got tol=-1"),
    ("centered-clipping", 0, {"tau": 0}, "tau must be > 0, got tau=0"),
    ("centered-clipping", 0, {"tau": -1}, "tau must be > 0, got tau=-1"),
    ("centered-clipping", 0, {"L": 0}, "L must be >= 1, got L=0"),
    ("centered-clipping", 0, {"L": 1.5}, "parameter L must be an integer, got 1.5"),
    ("mda", 1, {"max_subsets": 0.5}, "max_subsets must be >= 1, got max_subsets=0.5"),
    ("mda", 1, {"max_subsets": float("nan")}, "parameter max_subsets must be finite, got nan"),
]


@pytest.mark.parametrize("rule, f, params, msg", BAD_PARAMS, ids=[f"{r}-{p}" for r, _, p, _ in BAD_PARAMS])
def test_bad_param_value(rule, f, params, msg):
    with pytest.raises(InvalidArgumentError, match=re.escape(msg)):
        pyagg.aggregate(G(6), rule, f, **params)


def test_bulyan_multikrum_m_range():
    msg = "bulyan-multikrum needs n-2f-2 <= m <= n-f-2, got m={} with n=11, f=2 (allowed 5..7)"
    for m in (4, 8):
        with pytest.raises(InvalidArgumentError, match=re.escape(msg.format(m))):
            pyagg.aggregate(G(11), "bulyan-multikrum", 2, m=m)
    for m in (5, 7):
        pyagg.aggregate(G(11), "bulyan-multikrum", 2, m=m)


@pytest.mark.parametrize("value", ["3", True, None, [3], 3 + 0j])
def test_param_not_a_real_number(value):
    with pytest.raises(InvalidArgumentError, match=r"parameter m must be a real number"):
        pyagg.aggregate(G(7), "multi-krum", 1, m=value)


def test_numpy_scalar_params_accepted():
    out = pyagg.aggregate(G(7), "multi-krum", np.int64(1), m=np.int32(3))
    np.testing.assert_array_equal(out, pyagg.aggregate(G(7), "multi-krum", 1, m=3))


# -------------------------------------------------------- pre-aggregators ---
PRE_ERRORS = [
    ("foo", 0, {}, "unknown pre-aggregator 'foo' (known: nnm, bucketing, clipping, zeroing)"),
    ("bucketing", 0, {"s": 0}, "bucketing: s must be >= 1, got s=0"),
    ("bucketing", 0, {"seed": -1}, "bucketing: parameter seed must be an integer in [0, 2^64-1], got -1"),
    ("bucketing", 0, {"s": 1.5}, "bucketing: parameter s must be an integer, got 1.5"),
    ("clipping", 0, {"tau": -1}, "clipping: tau must be >= 0 (0 = adaptive), got tau=-1"),
    ("nnm", 6, {}, "nnm needs n > f, got n=6, f=6"),
    ("nnm", -1, {}, "nnm: f must be >= 0, got f=-1"),
    ("nnm", 1, {"k": 3}, "nnm has no parameter 'k' (its parameters: none)"),
    ("clipping", 6, {}, "clipping needs n > f, got n=6, f=6"),
]


@pytest.mark.parametrize("name, f, params, msg", PRE_ERRORS, ids=[f"{p[0]}-{i}" for i, p in enumerate(PRE_ERRORS)])
def test_preaggregate_errors(name, f, params, msg):
    with pytest.raises(InvalidArgumentError, match=re.escape(msg)):
        pyagg.preaggregate(G(6), name, f, **params)


def test_aggregator_pre_errors():
    with pytest.raises(InvalidArgumentError, match="unknown pre-aggregator 'foo'"):
        pyagg.Aggregator("krum", 1, pre=["foo"])
    with pytest.raises(
        InvalidArgumentError, match=re.escape("pre-aggregator must be a name or (name, params), got ('nnm', 3)")
    ):
        pyagg.Aggregator("krum", 1, pre=[("nnm", 3)])
    with pytest.raises(InvalidArgumentError, match=re.escape("bucketing: s must be >= 1, got s=0")):
        pyagg.Aggregator("krum", 1, pre=[("bucketing", {"s": 0})])
    with pytest.raises(InvalidArgumentError, match=re.escape("nnm needs n > f, got n=3, f=3")):
        pyagg.Aggregator("median", 3, pre=["nnm"]).aggregate(G(3))


def test_aggregator_state_shape_change():
    """centered-clipping keeps its momentum: a new d (or dtype) is refused, reset() clears it."""
    agg = pyagg.Aggregator("centered-clipping", 1)
    agg.aggregate(G(5, 4))
    with pytest.raises(InvalidArgumentError, match=r"\(4,\)"):
        agg.aggregate(G(5, 7))
    with pytest.raises(InvalidArgumentError, match="float64"):
        agg.aggregate(G(5, 4, np.float32))
    agg.reset()
    assert agg.aggregate(G(5, 7)).shape == (7,)


def test_errors_leave_aggregator_usable():
    agg = pyagg.Aggregator("krum", 1)
    with pytest.raises(InvalidArgumentError):
        agg.aggregate(G(4))
    assert agg.aggregate(G(5)).shape == (4,)


# ----------------------------------------------------------------- devices ---
def test_bad_device_string():
    for dev in ("tpu", "cuda:x", "gpu0", 3):
        with pytest.raises(InvalidArgumentError, match="device must be 'cpu', 'cuda' or 'cuda:<id>'"):
            pyagg.aggregate(G(), "median", device=dev)


def test_cpu_device_accepted():
    np.testing.assert_array_equal(pyagg.aggregate(G(), "median", device="cpu"), pyagg.aggregate(G(), "median"))


def test_cuda_unavailable_raises_device_error():
    info = pyagg.build_info()
    if info["cuda"] and info.get("cuda_devices", 0) > 0:
        pytest.skip("a CUDA device is available here")
    with pytest.raises(DeviceError, match="(?i)cuda"):
        pyagg.aggregate(G(), "median", device="cuda")
    with pytest.raises(DeviceError, match="(?i)cuda"):
        pyagg.Aggregator("median", device="cuda:0").aggregate(G())
