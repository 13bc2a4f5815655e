"""pytest-benchmark fixtures and the closing summary of bench/bench_rules.py.

Run as ``pytest bench/bench_rules.py --benchmark-only``. Session fixtures
build the input once (n=20, f=4, d=1e6 float32) and measure the machine's
memory bandwidth in the same run (see run_bench.measure_bandwidth: numpy copy
of 400 MB, read+write bytes / time, best of 1 thread and one per core). At the
end, a table per rule: pyagg ms, numpy ms, speed-up, GB/s of input read by
pyagg (n*d*4 / time) and its fraction of that bandwidth.
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
for p in (HERE, os.path.dirname(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

_RESULTS: dict[str, dict[str, float]] = {}
_STATE: dict[str, object] = {}


@pytest.fixture(scope="session")
def bench_data():
    """(G, f): the benchmark input, built once."""
    import run_bench

    G = run_bench.make_data()
    _STATE["shape"] = G.shape
    _STATE["itemsize"] = G.itemsize
    return G, run_bench.F


@pytest.fixture(scope="session")
def bandwidth():
    """Copy bandwidth of this machine (GB/s), measured once per run."""
    import run_bench

    bw = run_bench.measure_bandwidth()
    _STATE["bandwidth"] = bw
    return bw


@pytest.fixture(scope="session")
def bench_results():
    """name -> {impl: median seconds}, filled by the benchmarks, printed at the end."""
    return _RESULTS


@pytest.fixture(scope="session")
def expected_cache():
    """name -> (numpy result, seconds of that first numpy call): computed once per case."""
    return {}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS or "bandwidth" not in _STATE:
        return
    import run_bench

    n, d = _STATE["shape"]
    terminalreporter.write_sep("=", "pyagg vs numpy (median of the timed rounds)")
    terminalreporter.write_line(run_bench.markdown_table(_RESULTS, n, d, _STATE["itemsize"], _STATE["bandwidth"]))
