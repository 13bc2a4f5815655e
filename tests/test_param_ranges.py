"""Parameter ranges live as data in the engine's parameter table (ParamSpec::lo / lo_open /
range): every numeric parameter of every rule and pre-aggregator is refused just outside its
range, with a message that states the range, and accepted at (closed) or just inside (open) its
lower end. The expected ranges below are written from the spec and the parameter docs, not read
from the engine, so a table entry that drifts fails here."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import reference as ref

import pyagg
from pyagg.errors import InvalidArgumentError

# (lower end, open?) per parameter, from shared/spec/rules.md and rules_next.md
RULE_RANGES = {
    "averaged-median": {"beta": (1, False)},
    "multi-krum": {"m": (1, False)},
    "bulyan-multikrum": {"m": (1, False)},
    "geometric-median": {"nu": (0, True), "max_iter": (1, False), "tol": (0, False)},
    "centered-clipping": {"tau": (0, True), "L": (1, False)},
    "mda": {"max_subsets": (1, False)},
    "dnc": {"niters": (1, False), "b": (1, False), "c": (0, False), "power_iters": (1, False)},
    "clipped-clustering": {"max_tau": (0, True)},
    "smea": {"max_subsets": (1, False)},
    "caf": {"power_iters": (1, False)},
    "zeroing": {"tau": (0, False)},
}
PRE_RANGES = {"bucketing": {"s": (1, False)}, "clipping": {"tau": (0, False)}, "zeroing": {"tau": (0, False)}}


def test_every_numeric_parameter_has_the_expected_range():
    rules, pres = pyagg.rules(), pyagg.pre_aggregators()
    for table, expected in ((rules, RULE_RANGES), (pres, PRE_RANGES)):
        for name, meta in table.items():
            numeric = {k for k in meta["params"] if k != "seed" and k not in meta.get("choices", {})}
            assert set(meta["ranges"]) == numeric, name
            assert set(expected.get(name, {})) == numeric, name


def _cases(table):
    for name, params in table.items():
        for p, (lo, open_) in params.items():
            yield name, p, lo, open_


def _args(name, p, value):
    params = dict(ref.req(name)) if name in ref.RULES else {}
    params[p] = value
    return params


@pytest.mark.parametrize("name, p, lo, open_", list(_cases(RULE_RANGES)))
def test_rule_parameter_range_is_enforced(name, p, lo, open_):
    rng_text = pyagg.rules()[name]["ranges"][p]
    G = np.random.default_rng(0).standard_normal((11, 5)).astype(np.float32)
    f = 1
    integer = isinstance(pyagg.rules()[name]["params"][p], int) or p in ("m", "beta")
    below = lo - 1 if integer else lo - 0.5
    msg = f"{name}: {p} must be {rng_text}, got {p}={below:g}"
    with pytest.raises(InvalidArgumentError, match=re.escape(msg)):
        pyagg.aggregate(G, name, f, **_args(name, p, below))
    edge = lo if not open_ else (lo + 1 if integer else math.nextafter(lo, math.inf))
    if open_:
        with pytest.raises(InvalidArgumentError, match=re.escape(f"{p} must be {rng_text}")):
            pyagg.aggregate(G, name, f, **_args(name, p, lo))
    # the lower end (closed) or just inside it (open) passes the range check; other rules of
    # the parameter (e.g. m <= n-f) may still apply, but never the range message
    try:
        pyagg.aggregate(G, name, f, **_args(name, p, edge))
    except InvalidArgumentError as e:
        assert f"{p} must be {rng_text}" not in str(e)


@pytest.mark.parametrize("name, p, lo, open_", list(_cases(PRE_RANGES)))
def test_pre_aggregator_parameter_range_is_enforced(name, p, lo, open_):
    rng_text = pyagg.pre_aggregators()[name]["ranges"][p]
    G = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    below = lo - 1
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{name}: {p} must be {rng_text}, got {p}={below:g}")):
        pyagg.preaggregate(G, name, 1, **{p: below})
    pyagg.preaggregate(G, name, 1, **{p: lo})  # the closed lower end is admissible
