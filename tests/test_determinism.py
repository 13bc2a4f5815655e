"""Same bits whatever the thread count (the engine's deterministic reductions).

One subprocess per OMP_NUM_THREADS value aggregates a fixed seeded input with
every rule, both dtypes, the contiguous and the list-of-rows paths, every
pre-aggregator and a stateful Aggregator chain, and prints the SHA-256 of
every output; the hashes must be identical across thread counts. d = 200_003
spans ~49 reduction blocks of 4096 coordinates (cpu_backend.h: kReduceBlock)
and is not a multiple of any vector width, so the blocks are split between
threads differently for each count, with a ragged tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import pyagg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    import pyagg

    n, f, d = 11, 2, 200_003
    out = {"threads": pyagg.build_info().get("threads")}

    def h(a):
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

    for dt in (np.float32, np.float64):
        rng = np.random.default_rng(1234)
        G = (rng.standard_normal((n, d)) * rng.choice([0.5, 1.0, 3.0], size=(n, 1))).astype(dt)
        G[3, ::7] = np.nan          # two bad rows (f = 2)
        G[8, :] = np.inf
        rows = [r.copy() for r in G]
        for rule in pyagg.rules():
            params = {"geometric-median": {"max_iter": 30}, "zeroing": {"tau": 4.5},
                      "dnc": {"b": 1000}}.get(rule, {})
            out[f"{rule}/{dt.__name__}"] = h(pyagg.aggregate(G, rule, f, **params))
            out[f"{rule}/{dt.__name__}/rows"] = h(pyagg.aggregate(rows, rule, f, **params))
        for pre in pyagg.pre_aggregators():
            pp = {"tau": 4.5} if pre == "zeroing" else {}
            out[f"pre:{pre}/{dt.__name__}"] = h(pyagg.preaggregate(G, pre, f, **pp))
        agg = pyagg.Aggregator("centered-clipping", f, ["nnm", "bucketing"], tau=5.0)
        out[f"chain/{dt.__name__}"] = h(np.concatenate([agg.aggregate(G) for _ in range(3)]))
        agg = pyagg.Aggregator("clipped-clustering", f, [("zeroing", {"tau": 4.5})])
        out[f"chain-cc/{dt.__name__}"] = h(np.concatenate([agg.aggregate(G * (1 + k)) for k in range(3)]))
    json.dump(out, sys.stdout)
    """
)


def run_with_threads(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # oversubscription on small machines
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def hashes() -> dict[int, dict]:
    return {t: run_with_threads(t) for t in (1, 2, 3)}


def test_thread_count_took_effect(hashes):
    if not pyagg.build_info().get("openmp"):
        pytest.skip("built without OpenMP: a single thread only")
    for t, h in hashes.items():
        assert h["threads"] == t, f"OMP_NUM_THREADS={t} but the engine reports {h['threads']} threads"


@pytest.mark.parametrize("other", [2, 3])
def test_same_bits_across_thread_counts(hashes, other):
    one = {k: v for k, v in hashes[1].items() if k != "threads"}
    many = {k: v for k, v in hashes[other].items() if k != "threads"}
    assert one.keys() == many.keys()
    differ = sorted(k for k in one if one[k] != many[k])
    assert not differ, f"outputs differ between 1 and {other} threads: {differ}"


def test_every_rule_covered(hashes):
    keys = hashes[1].keys()
    for rule in pyagg.rules():
        assert f"{rule}/float32" in keys and f"{rule}/float64/rows" in keys
