"""dnc, clipped-clustering, smea, caf and zeroing (shared/spec/rules_next.md).

The numpy reference (tests/reference.py, "next batch") is written from the
spec and computes everything from the data (centered rows, X_c X_c^T, the
d-dimensional direction), where the engine works from the one distance
matrix; comparisons use the tolerances of tests/test_rules.py. The default
parameters of all five rules are also swept by tests/test_rules.py's grid
(every rule of reference.RULES), tests/test_properties.py, test_attacks.py and
test_determinism.py; this file adds the parameters, the spec's corner cases,
the errors and the stateful norm history.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import reference as ref
from test_rules import DTYPES, assert_bitwise, assert_close

import pyagg
from pyagg import InvalidArgumentError, attacks

NEXT = ["dnc", "clipped-clustering", "smea", "caf", "zeroing"]
SHAPES = [(3, 1, 1), (5, 2, 2), (7, 1, 7), (9, 4, 257), (11, 2, 33), (13, 3, 1013)]
KINDS = ["random", "ties", "nonfinite"]


def data(kind, n, d, dt, seed, bad):
    return ref.make_data(kind, n, d, dt, seed=seed, bad=bad)


# ------------------------------------------------------ rule vs reference ---
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, f, d", SHAPES, ids=[f"n{n}f{f}d{d}" for n, f, d in SHAPES])
@pytest.mark.parametrize("rule", NEXT)
def test_matches_reference(rule, n, f, d, kind, dt):
    G = data(kind, n, d, dt, seed=31 * n + d, bad=f)
    out = pyagg.aggregate(G, rule, f, **ref.req(rule))
    assert out.shape == (d,) and out.dtype == dt
    assert_close(out, ref.aggregate(G, rule, f), G)
    # the invariant: at most f unusable rows -> finite output
    assert np.all(np.isfinite(out))


PARAM_CASES = [
    ("dnc", {"b": 5}),  # sampled coordinates (b < d)
    ("dnc", {"b": 32, "niters": 7, "seed": 99}),
    ("dnc", {"b": 1, "niters": 3}),
    ("dnc", {"b": 5, "seed": 2**64 - 1}),  # the largest seed, exactly
    ("dnc", {"c": 0.5}),  # floor(0.5 f) rows removed
    ("dnc", {"c": 0.0}),  # nothing removed: the mean of the usable rows
    ("dnc", {"c": 2.0, "b": 9}),
    ("dnc", {"power_iters": 1}),
    ("dnc", {"power_iters": 3, "b": 11, "niters": 2}),
    ("clipped-clustering", {"linkage": "single"}),
    ("clipped-clustering", {"max_tau": 0.5}),
    ("clipped-clustering", {"max_tau": math.inf, "norm_history": "call"}),
    ("clipped-clustering", {"linkage": "single", "max_tau": 2.0}),
    ("smea", {"max_subsets": 55}),  # exactly C(11, 2)
    ("caf", {"seed": 5}),
    ("caf", {"power_iters": 1}),
    ("caf", {"power_iters": 4, "seed": 2**63 + 7}),
    ("zeroing", {"tau": 1.5}),
    ("zeroing", {"tau": 1.5, "mode": "drop"}),
    ("zeroing", {"tau": 8.0, "norm_order": 1}),
    ("zeroing", {"tau": 8.0, "norm_order": 1, "mode": "drop"}),
    ("zeroing", {"tau": 4.0, "norm_order": 2}),
    ("zeroing", {"tau": 4.0, "norm_order": 2, "mode": "drop"}),
    ("zeroing", {"tau": 0.0}),  # only zero rows kept
    ("zeroing", {"tau": 0.0, "mode": "drop"}),  # none kept: 0
    ("zeroing", {"tau": math.inf}),  # every usable row kept, over n
    ("zeroing", {"tau": math.inf, "mode": "drop"}),  # the mean of the usable rows
    ("zeroing", {"tau": 2.0, "norm_order": "inf"}),  # the choice by name
]


@pytest.mark.parametrize("rule, params", PARAM_CASES, ids=[f"{r}-{p}" for r, p in PARAM_CASES])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_params_match_reference(rule, params, kind, dt):
    n, f, d = 11, 2, 33
    G = data(kind, n, d, dt, seed=7, bad=f)
    out = pyagg.aggregate(G, rule, f, **params)
    assert_close(out, ref.aggregate(G, rule, f, **params), G)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("rule", NEXT)
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_large_odd_d(rule, dt):
    """d spanning several reduction blocks, with a ragged tail; dnc samples b < d."""
    n, f, d = 9, 2, 3 * 4096 + 77
    G = data("nonfinite", n, d, dt, seed=11, bad=f)
    params = {"dnc": {"b": 2001}}.get(rule, ref.req(rule))
    assert_close(pyagg.aggregate(G, rule, f, **params), ref.aggregate(G, rule, f, **params), G)


# ----------------------------------------------------- usable / unusable ---
@pytest.mark.parametrize("rule", NEXT)
def test_huge_finite_rows_are_unusable(rule):
    """|x| ~ 1e160: finite entries, but the float64 sum of squares overflows."""
    n, f, d = 9, 2, 13
    G = data("random", n, d, np.float64, seed=3, bad=0)
    G[2, :] = 1e160
    G[6, 3] = -3e155
    out = pyagg.aggregate(G, rule, f, **ref.req(rule))
    assert np.all(np.isfinite(out))
    assert_close(out, ref.aggregate(G, rule, f), G[[0, 1, 3, 4, 5, 7, 8]])


@pytest.mark.parametrize("rule", ["dnc", "clipped-clustering", "caf"])
def test_no_usable_row_gives_nan(rule):
    G = np.full((5, 4), np.nan)
    assert np.all(np.isnan(pyagg.aggregate(G, rule, 2)))


def test_smea_more_than_f_unusable_rows_takes_the_first_subset():
    G = data("random", 7, 5, np.float64, seed=1, bad=0)
    G[[1, 3, 5], 0] = np.nan  # 3 > f = 2: every subset holds one
    out = pyagg.aggregate(G, "smea", 2)
    assert np.all(np.isnan(out[:1]))
    assert ref.smea_subset(G, 2) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("mode", ["zero", "drop"])
def test_zeroing_unusable_rows_are_always_zeroed(mode):
    G = data("random", 6, 5, np.float64, seed=2, bad=0)
    G[1, 2] = np.inf
    G[4, :] = np.nan
    out = pyagg.aggregate(G, "zeroing", tau=math.inf, mode=mode)
    keep = [0, 2, 3, 5]
    expected = G[keep].sum(axis=0) / (6 if mode == "zero" else 4)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    pre = pyagg.preaggregate(G, "zeroing", tau=math.inf)
    assert np.all(pre[[1, 4]] == 0) and np.array_equal(pre[keep], G[keep])


def test_zeroing_comparison_is_strict():
    """A row whose norm equals tau is kept (TFF's test is norm > tau)."""
    G = np.array([[3.0, -1.0], [-2.0, 0.5], [0.25, 4.0]])
    out = pyagg.aggregate(G, "zeroing", tau=3.0)
    np.testing.assert_array_equal(out, (G[0] + G[1]) / 3)
    out = pyagg.aggregate(G, "zeroing", tau=4.0, norm_order=1, mode="drop")  # L1 norms 4, 2.5, 4.25
    np.testing.assert_array_equal(out, (G[0] + G[1]) / 2)


# ------------------------------------------------------ spec corner cases ---
def test_dnc_niters_has_no_effect_when_b_covers_d():
    G = data("random", 11, 20, np.float64, seed=4, bad=0)
    a = pyagg.aggregate(G, "dnc", 3, b=20, niters=1)
    for k in (2, 5, 9):
        assert_bitwise(pyagg.aggregate(G, "dnc", 3, b=20, niters=k), a)


def test_dnc_seed_matters_only_through_the_stream():
    G = data("random", 11, 200, np.float64, seed=4, bad=0)
    a = pyagg.aggregate(G, "dnc", 3, b=7, seed=1)
    assert_bitwise(pyagg.aggregate(G, "dnc", 3, b=7, seed=1), a)
    outs = {pyagg.aggregate(G, "dnc", 3, b=7, seed=s).tobytes() for s in range(8)}
    assert len(outs) > 1  # different subsets, different removals
    for s in range(8):
        assert_close(pyagg.aggregate(G, "dnc", 3, b=7, seed=s), ref.dnc(G, 3, b=7, seed=s), G)


def test_floyd_subset_is_uniform_and_of_size_b():
    rng = ref.SplitMix64(0)
    counts = np.zeros(10)
    for _ in range(4000):
        S = ref.floyd(rng, 10, 3)
        assert len(S) == 3 == len(set(S)) and S == sorted(S)
        counts[S] += 1
    np.testing.assert_allclose(counts / 4000, 0.3, atol=0.03)


def test_smea_tie_goes_to_the_first_subset_in_lexicographic_order():
    """Identical Byzantine rows: the subsets holding one of them tie exactly."""
    H = data("random", 6, 4, np.float64, seed=8, bad=0)
    G = np.vstack([H[:3], np.full((1, 4), 40.0), H[3:], np.full((1, 4), 40.0)])
    out = pyagg.aggregate(G, "smea", 1)
    sub = ref.smea_subset(G, 1)
    assert_close(out, G[list(sub)].mean(axis=0), G)


def test_smea_is_exact_on_duplicated_rows():
    """f = 2 copies of one vector: the honest subset wins."""
    H = data("random", 7, 6, np.float64, seed=9, bad=0)
    G = np.vstack([H, np.tile(H[0] + 5.0, (2, 1))])
    np.testing.assert_allclose(pyagg.aggregate(G, "smea", 2), H.mean(axis=0), rtol=1e-12)


def test_caf_with_f_zero_is_the_mean_of_the_usable_rows():
    G = data("nonfinite", 6, 9, np.float64, seed=5, bad=1)
    np.testing.assert_allclose(pyagg.aggregate(G, "caf", 0), G[1:].mean(axis=0), rtol=1e-12)


def test_caf_and_dnc_on_identical_rows():
    G = np.tile(np.arange(5.0), (7, 1))
    for rule in ("caf", "dnc", "smea", "clipped-clustering"):
        np.testing.assert_array_equal(pyagg.aggregate(G, rule, 3), G[0])


def test_clipped_clustering_equal_clusters_keep_the_lowest_row():
    G = np.array([[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(pyagg.aggregate(G, "clipped-clustering", 0), G[0])
    G = np.array([[-1.0, 0.0], [1.0, 0.001], [1.0, 0.0], [-1.0, 0.001]])
    assert_close(pyagg.aggregate(G, "clipped-clustering", 1), ref.clipped_clustering(G, 1), G)
    assert pyagg.aggregate(G, "clipped-clustering", 1)[0] < 0


@pytest.mark.parametrize("linkage", ["average", "single"])
def test_clipped_clustering_norm_history_across_calls(linkage):
    """norm_history = all: tau is the median of every usable norm this Aggregator saw."""
    rng = np.random.default_rng(3)
    steps = [rng.standard_normal((9, 17)) * s for s in (1.0, 10.0, 0.1, 3.0)]
    steps[2][4, 0] = np.nan  # never enters the history
    agg = pyagg.Aggregator("clipped-clustering", 2, linkage=linkage)
    oracle = ref.Aggregator("clipped-clustering", 2, linkage=linkage)
    outs = []
    for G in steps:
        outs.append(agg.aggregate(G))
        assert_close(outs[-1], oracle.aggregate(G), G)
    # one-shot aggregate and norm_history = call ignore the history
    for G in steps[1:]:
        a = pyagg.aggregate(G, "clipped-clustering", 2, linkage=linkage)
        assert_bitwise(a, pyagg.Aggregator("clipped-clustering", 2, linkage=linkage, norm_history="call")(G))
    assert not np.allclose(outs[2], pyagg.aggregate(steps[2], "clipped-clustering", 2, linkage=linkage))
    # the history can be saved and restored (checkpoints): a restored Aggregator continues alike
    saved = agg.norm_history
    assert saved.shape == (9 + 9 + 8 + 9,)
    twin = pyagg.Aggregator("clipped-clustering", 2, linkage=linkage)
    twin.norm_history = saved
    G = steps[1] * 2.0
    assert_bitwise(twin.aggregate(G), agg.aggregate(G))
    assert pyagg.Aggregator("caf", 2).norm_history is None
    with pytest.raises(InvalidArgumentError, match="keeps no norm history"):
        pyagg.Aggregator("clipped-clustering", 2, norm_history="call").norm_history = [1.0]
    agg.reset()  # forgets the history
    assert_bitwise(agg.aggregate(steps[1]), pyagg.aggregate(steps[1], "clipped-clustering", 2, linkage=linkage))


def test_zeroing_composes_like_a_pre_aggregator():
    """TFF's zeroing -> clipping -> mean is zeroing -> clipping -> average."""
    G = data("nonfinite", 11, 33, np.float64, seed=6, bad=2)
    G[5] *= 50
    chain = [("zeroing", {"tau": 6.0}), ("clipping", {"tau": 2.0})]
    out = pyagg.Aggregator("average", 2, chain)(G)
    expected = ref.Aggregator("average", 2, chain).aggregate(G)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(out))
    for order in ("inf", 1, 2):
        for dt in DTYPES:
            Gd = G.astype(dt)
            assert_bitwise(pyagg.preaggregate(Gd, "zeroing", tau=3.0, norm_order=order),
                           ref.zeroing_pre(Gd, tau=3.0, norm_order=math.inf if order == "inf" else order))


# ---------------------------------------------------------------- attacks ---
SIGMA, D, MU = 0.1, 64, 10.0


def scenario(attack, n, f, dt, seed=0):
    rng = np.random.default_rng(seed)
    mu = MU * rng.standard_normal(D)
    H = (mu + SIGMA * rng.standard_normal((n - f, D))).astype(dt)
    B = attacks.make_byzantine(attack, H, f)
    G = np.vstack([B[: f // 2], H, B[f // 2:]]).astype(dt)
    return G, H


@pytest.mark.parametrize("attack", list(attacks.ATTACKS))
@pytest.mark.parametrize("rule, params", [("dnc", {}), ("dnc", {"b": 16}), ("smea", {}), ("caf", {}),
                                          ("clipped-clustering", {"linkage": "single"})])
@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_attacks_stay_near_the_honest_mean(rule, params, attack, dt):
    n, f = 13, 3
    G, H = scenario(attack, n, f, dt)
    out = pyagg.aggregate(G, rule, f, **params)
    assert np.all(np.isfinite(out))
    e = float(np.linalg.norm(out.astype(np.float64) - H.astype(np.float64).mean(axis=0)))
    tol = 2 * SIGMA * math.sqrt(D)
    if rule == "clipped-clustering" and attack in ("gaussian", "zero"):
        tol = 2 * f * float(np.median(np.linalg.norm(G.astype(np.float64), axis=1))) / (n - f)  # see test_attacks
    assert e <= tol, f"{rule} {params} under {attack}: {e:.3f} > {tol:.3f}"


@pytest.mark.parametrize("attack", list(attacks.ATTACKS))
@pytest.mark.parametrize("order", ["inf", 1, 2])
def test_zeroing_bounds_the_influence_of_any_attack(attack, order):
    """Mode zero: every kept row has norm <= tau, so the f Byzantine rows move the
    output by at most f * tau / n from the honest rows' kept sum over n."""
    n, f = 13, 3
    G, H = scenario(attack, n, f, np.float64)
    norms = [ref.row_norm(h, math.inf if order == "inf" else order) for h in H]
    tau = float(np.max(norms)) * 1.01  # keeps every honest row
    out = pyagg.aggregate(G, "zeroing", f, tau=tau, norm_order=order)
    honest_part = H.sum(axis=0) / n
    p = np.inf if order == "inf" else order
    assert np.all(np.isfinite(out))
    assert np.linalg.norm(out - honest_part, ord=p) <= f * tau / n * (1 + 1e-12)


# ----------------------------------------------------------------- errors ---
@pytest.mark.parametrize("rule", ["dnc", "clipped-clustering", "smea", "caf"])
@pytest.mark.parametrize("f", [1, 2, 3])
def test_below_the_bound_is_refused(rule, f):
    G = data("random", 2 * f, 5, np.float64, seed=0, bad=0)
    with pytest.raises(InvalidArgumentError, match=rf"{rule} needs n >= 2f\+1.*got n={2 * f}, f={f}"):
        pyagg.aggregate(G, rule, f)
    pyagg.aggregate(data("random", 2 * f + 1, 5, np.float64, seed=0, bad=0), rule, f)


def test_dnc_removal_bound():
    G = data("random", 5, 4, np.float64, seed=0, bad=0)
    with pytest.raises(InvalidArgumentError, match=r"dnc needs .*floor\(c\*f\) <= n-1, got n=5, f=2, c=2.5"):
        pyagg.aggregate(G, "dnc", 2, c=2.5)
    pyagg.aggregate(G, "dnc", 2, c=2.0)  # floor(4) = n - 1: one row kept


def test_smea_refuses_above_max_subsets():
    G = data("random", 30, 3, np.float64, seed=0, bad=0)
    msg = r"smea enumerates C\(n, f\) subsets: C\(30, 7\) = .*max_subsets=1e\+06"
    with pytest.raises(InvalidArgumentError, match=msg):
        pyagg.aggregate(G, "smea", 7)
    with pytest.raises(InvalidArgumentError, match=r"C\(11, 2\) = 55 exceeds max_subsets=54"):
        pyagg.aggregate(G[:11], "smea", 2, max_subsets=54)


BAD_PARAMS = [
    ("dnc", {"niters": 0}, "niters must be an integer >= 1"),
    ("dnc", {"b": 0}, "b must be an integer >= 1"),
    ("dnc", {"b": 2.5}, "parameter b must be an integer"),
    ("dnc", {"power_iters": 0}, "power_iters must be an integer >= 1"),
    ("dnc", {"c": -0.5}, "c must be finite and >= 0, got c=-0.5"),
    ("dnc", {"c": math.inf}, "parameter c must be finite"),
    ("dnc", {"seed": -1}, r"seed must be an integer in \[0, 2\^64-1\], got -1"),
    ("dnc", {"seed": 2**64}, r"seed must be an integer in \[0, 2\^64-1\], got '18446744073709551616'"),
    ("caf", {"seed": 1.5}, r"seed must be an integer in \[0, 2\^64-1\], got 1.5"),
    ("caf", {"power_iters": -3}, "power_iters must be an integer >= 1"),
    ("clipped-clustering", {"max_tau": 0.0}, "max_tau must be > 0, got max_tau=0"),
    ("clipped-clustering", {"max_tau": math.nan}, "parameter max_tau must be finite"),
    ("clipped-clustering", {"linkage": "ward"}, "linkage must be one of average, single, got 'ward'"),
    ("clipped-clustering", {"norm_history": "some"}, "norm_history must be one of all, call, got 'some'"),
    ("smea", {"max_subsets": 0.5}, "max_subsets must be >= 1"),
    ("zeroing", {}, "zeroing: parameter tau is required"),
    ("zeroing", {"tau": -1.0}, "tau must be >= 0, got tau=-1"),
    ("zeroing", {"tau": 1.0, "norm_order": 3}, r"norm_order must be one of inf, 1, 2, got 3"),
    ("zeroing", {"tau": 1.0, "mode": "sum"}, "mode must be one of zero, drop, got 'sum'"),
    ("zeroing", {"tau": 1.0, "beta": 2}, "zeroing has no parameter 'beta'"),
]


@pytest.mark.parametrize("rule, params, msg", BAD_PARAMS, ids=[f"{r}-{p}" for r, p, _ in BAD_PARAMS])
def test_bad_parameters_are_refused(rule, params, msg):
    G = data("random", 7, 3, np.float64, seed=0, bad=0)
    with pytest.raises(InvalidArgumentError, match=msg):
        pyagg.aggregate(G, rule, 1, **params)


def test_zeroing_pre_errors():
    G = data("random", 4, 3, np.float64, seed=0, bad=0)
    with pytest.raises(InvalidArgumentError, match="zeroing: parameter tau is required"):
        pyagg.preaggregate(G, "zeroing")
    with pytest.raises(InvalidArgumentError, match="norm_order must be one of inf, 1, 2"):
        pyagg.preaggregate(G, "zeroing", tau=1.0, norm_order=0.5)


# --------------------------------------------------------------- metadata ---
def test_rule_table_entries():
    info = pyagg.rules()
    assert info["dnc"]["params"] == {"niters": 5, "b": 10000, "c": 1.0, "seed": 0, "power_iters": 100}
    assert info["clipped-clustering"]["params"] == {"norm_history": "all", "max_tau": math.inf, "linkage": "average"}
    assert info["smea"]["params"] == {"max_subsets": 1e6}
    assert info["caf"]["params"] == {"power_iters": 100, "seed": 0}
    assert info["zeroing"]["params"] == {"tau": None, "norm_order": "inf", "mode": "zero"}
    assert pyagg.pre_aggregators()["zeroing"]["params"] == {"tau": None, "norm_order": "inf"}
    assert info["zeroing"]["required"] == ["tau"] and info["dnc"]["required"] == []
    assert info["clipped-clustering"]["choices"] == {"norm_history": ["all", "call"], "linkage": ["average", "single"]}
    for rule in NEXT:
        assert info[rule]["paper"] and info[rule]["summary"]
        for f in range(5):
            assert info[rule]["min_n"](f) == ref.MIN_N[rule](f)


def test_rows_and_matrix_give_the_same_bits():
    G = data("nonfinite", 11, 301, np.float32, seed=12, bad=2)
    rows = [r.copy() for r in G]
    for rule, params in itertools.chain(((r, ref.req(r)) for r in NEXT), [("dnc", {"b": 50})]):
        assert_bitwise(pyagg.aggregate(rows, rule, 2, **params), pyagg.aggregate(G, rule, 2, **params))


# ------------------------------------------------------- training, resume ---
@pytest.mark.timeout(300)
def test_training_resume_keeps_the_norm_history(tmp_path):
    """A run resumed from a checkpoint ends with the parameters of the uninterrupted run:
    the checkpoint carries clipped-clustering's norm history (agg_norm_history)."""
    from pyagg.cluster.checkpoint import load_checkpoint
    from pyagg.cluster.config import TrainConfig
    from pyagg.train import run

    def cfg(out, steps):
        return TrainConfig(workers=5, byzantine=1, attack="gaussian", rule="clipped-clustering",
                           steps=steps, checkpoint_every=5, eval_every=0, out=str(out), progress=False, quiet=True)

    run(cfg(tmp_path / "ref", 12))
    run(cfg(tmp_path / "res", 7))  # the final checkpoint, after step 6
    _, first = load_checkpoint(str(tmp_path / "res"))
    assert first["agg_norm_history"].shape == (7 * 5,)  # 5 workers x 7 steps, all usable
    r = cfg(tmp_path / "res", 12)
    r.resume = True
    run(r)
    _, a_res = load_checkpoint(str(tmp_path / "res"))
    _, a_ref = load_checkpoint(str(tmp_path / "ref"))
    np.testing.assert_array_equal(a_res["agg_norm_history"], a_ref["agg_norm_history"])
    np.testing.assert_allclose(a_res["params"], a_ref["params"], rtol=1e-6, atol=1e-7)
