"""pyagg vs straightforward numpy for every rule and pre-aggregator (pytest-benchmark).

Run: ``pytest bench/bench_rules.py --benchmark-only`` (about 3 minutes on 2
cores). Input: n=20 rows, f=4, d=1e6 float32 (bench/run_bench.make_data).
Each case first runs numpy once (cached per case) and the implementation
under test once, and checks that they agree (run_bench.verify); that first
call is the warm-up. The timed rounds are then sized to a ~4 s budget per
side (1 to 5 rounds: geometric-median, mda and nnm in numpy get one). The
summary printed at the end (bench/conftest.py) gives ms, speed-up, GB/s and
the fraction of the memory bandwidth measured in the same run.
"""

from __future__ import annotations

import pytest
import run_bench

CASES = {name: list(impls) for name, impls in run_bench.cases(None, run_bench.F).items()}
PARAMS = [pytest.param(name, impl, id=f"{name}-{impl}") for name, impls in CASES.items() for impl in impls]


@pytest.mark.parametrize("name, impl", PARAMS)
def test_rule(benchmark, bench_data, bandwidth, bench_results, expected_cache, name, impl):
    G, f = bench_data
    fn = run_bench.cases(G, f)[name][impl]
    if name not in expected_cache:
        expected_cache[name] = run_bench.timed_first_call(run_bench.cases(G, f)[name]["numpy"])
    expected, t_numpy = expected_cache[name]
    if impl == "numpy":
        t_first = t_numpy  # its first call was the verification reference (and warm-up)
    else:
        out, t_first = run_bench.timed_first_call(fn)
        run_bench.verify(name, out, expected, G)
    benchmark.group = name
    benchmark.extra_info.update({"n": G.shape[0], "d": G.shape[1], "f": f, "dtype": str(G.dtype)})
    benchmark.pedantic(fn, rounds=run_bench.reps_for(t_first), iterations=1, warmup_rounds=0)
    bench_results.setdefault(name, {})[impl] = benchmark.stats.stats.median
