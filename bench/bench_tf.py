"""Benchmark of the TensorFlow bridge: the PyaggAggregate op vs pyagg.aggregate
vs the same rule written in plain TensorFlow ops.

Same data, same run, same threads:

- ``engine``   : ``pyagg.aggregate(G_numpy, rule, f)`` (the bare engine call through Cython)
- ``op-raw``   : the generated op function, eagerly, without pyagg's Python
  wrapper (``tf.load_op_library(...).pyagg_aggregate``)
- ``op-eager`` : ``pyagg.tf_bridge.aggregate(G_tensor, rule, f)`` eagerly
- ``op-graph`` : the same inside a ``tf.function``
- ``plain-tf`` : the rule written with TF ops inside a ``tf.function`` — for
  krum, the way AggregaThor's ``krum-tf`` did it (pairwise
  ``reduce_sum(squared_difference)``, non-finite distances to +inf,
  ``top_k`` of the n-f-2 nearest, ``top_k`` of the scores, ``gather``);
  for average, ``tf.reduce_mean`` (a native TF kernel: the bridge's floor).

Every method's result is checked against the engine's (bit-for-bit for the
op; the same selected row for plain-TF krum; allclose for reduce_mean).
Methods are timed interleaved (one call each per round). Reports the median and
minimum times, the input read rate (n*d*itemsize / time) next to
a measured copy bandwidth, and the ratios to ``op-graph``.

Run::

    python bench/bench_tf.py                              # krum + average, d = 1e3..1e6
    python bench/bench_tf.py --rules krum --d 1000000 --n 20 --f 4 --repeat 30
    pytest bench/bench_tf.py --benchmark-only              # the same, as pytest-benchmark cases
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np
import tensorflow as tf

import pyagg
from pyagg import tf_bridge


# ----------------------------------------------------- plain-TF reference ---
def krum_tf(G: tf.Tensor, n: int, f: int, m: int = 1) -> tf.Tensor:
    """(Multi-)Krum in plain TF ops, after AggregaThor's ``aggregators/krum-tf``.

    ``G``: [n, d]. Pairwise squared distances one reduction per pair, a
    non-finite distance counts as +inf, each score sums the n-f-2 smallest
    distances, the m best-scored rows are averaged.
    """
    rows = tf.unstack(G, num=n)
    inf = tf.constant(np.inf, dtype=G.dtype)
    dist: dict[tuple[int, int], tf.Tensor] = {}
    for i in range(n - 1):
        for j in range(i + 1, n):
            sq = tf.reduce_sum(tf.math.squared_difference(rows[i], rows[j]))
            dist[i, j] = tf.negative(tf.where(tf.math.is_finite(sq), sq, inf))  # negated: top_k = smallest
    scores = []
    for i in range(n):
        di = tf.stack([dist[min(i, j), max(i, j)] for j in range(n) if j != i])
        nearest, _ = tf.nn.top_k(di, k=n - f - 2, sorted=False)
        scores.append(tf.negative(tf.reduce_sum(nearest)))
    _, best = tf.nn.top_k(tf.negative(tf.stack(scores)), k=m, sorted=False)
    return tf.reduce_mean(tf.gather(G, best), axis=0)


def average_tf(G: tf.Tensor, n: int, f: int) -> tf.Tensor:
    return tf.reduce_mean(G, axis=0)


PLAIN_TF: dict[str, Callable[..., tf.Tensor]] = {"krum": krum_tf, "average": average_tf}


# ------------------------------------------------------------------ cases ---
class Case:
    """One (rule, n, f, d, dtype) with its data and the four methods."""

    def __init__(self, rule: str, n: int, f: int, d: int, dtype: Any = np.float32, seed: int = 0):
        self.rule, self.n, self.f, self.d, self.dtype = rule, n, f, d, np.dtype(dtype)
        rng = np.random.default_rng(seed)
        # Honest rows around a common mean, f far ones (distinct, no ties).
        G = (rng.standard_normal(d) + 0.1 * rng.standard_normal((n, d))).astype(self.dtype)
        G[:f] += 10.0 * rng.standard_normal((f, d)).astype(self.dtype)
        self.G = G
        self.T = tf.constant(G)
        self.nbytes = G.nbytes
        raw_op = tf_bridge.load().pyagg_aggregate
        empty = tf.zeros([0], self.dtype)
        graph_op = tf.function(lambda x: tf_bridge.aggregate(x, rule, f))
        plain = PLAIN_TF.get(rule)
        self.methods: dict[str, Callable[[], Any]] = {
            "engine": lambda: pyagg.aggregate(self.G, rule, f),
            "op-raw": lambda: raw_op(self.T, empty, rule=rule, f=f),
            "op-eager": lambda: tf_bridge.aggregate(self.T, rule, f),
            "op-graph": lambda: graph_op(self.T),
        }
        if plain is not None:
            plain_fn = tf.function(lambda x: plain(x, n, f))
            self.methods["plain-tf"] = lambda: plain_fn(self.T)

    def verify(self) -> None:
        """Every method against the engine (also warms up / traces)."""
        ref = pyagg.aggregate(self.G, self.rule, self.f)
        for name, fn in self.methods.items():
            out = np.asarray(fn())
            if name.startswith("op") or name == "engine":
                if not np.array_equal(out, ref, equal_nan=True):
                    raise AssertionError(f"{self.rule} d={self.d}: {name} differs from pyagg.aggregate")
            elif self.rule == "krum":
                # Same selected row (plain TF sums distances in the input dtype;
                # the data has no near-ties, so the choice must agree).
                if not np.array_equal(out, ref):
                    raise AssertionError(f"krum d={self.d}: plain-TF krum selected another row than the engine")
            elif not np.allclose(out, ref, rtol=1e-5, atol=1e-6):
                raise AssertionError(f"{self.rule} d={self.d}: {name} differs from pyagg.aggregate")

    def time(self, repeat: int, warmup: int = 2) -> dict[str, list[float]]:
        """Times every method, interleaved (one call of each per round), so
        that a change of machine load hits all methods alike."""
        for fn in self.methods.values():
            for _ in range(warmup):
                fn()
        out: dict[str, list[float]] = {name: [] for name in self.methods}
        for _ in range(repeat):
            for name, fn in self.methods.items():
                t0 = time.perf_counter()
                r = fn()
                if isinstance(r, tf.Tensor):
                    r.numpy()  # (CPU: already computed; keeps the methods comparable)
                out[name].append(time.perf_counter() - t0)
        return out


def copy_bandwidth(nbytes: int = 256 << 20, repeat: int = 5) -> float:
    """Memory bandwidth of a large numpy copy (read + write), bytes/s."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeat))
    return 2 * src.nbytes / best


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _repeat_for(d: int, n: int, base: int) -> int:
    return max(5, min(base * 20, int(base * 1e6 / max(1, n * d) * 20))) if d < 100_000 else base


# ------------------------------------------------------------------- main ---
def run(
    rules: list[str], n: int, f: int, ds: list[int], repeat: int, dtype: str, stat: str = "median"
) -> list[dict[str, Any]]:
    bw = copy_bandwidth()
    reduce = statistics.median if stat == "median" else min
    print(
        f"TensorFlow {tf.__version__}, pyagg {pyagg.__version__}, engine threads "
        f"{pyagg.build_info().get('threads')}, CPUs {os.cpu_count()}; copy bandwidth {bw / 1e9:.1f} GB/s"
    )
    print(f"n={n}, f={f}, {dtype}; methods interleaved; ratio = {stat} time / op-graph {stat} time")
    print(f"{'rule':<9} {'d':>9} {'method':<9} {'median ms':>10} {'min ms':>9} {'GB/s':>7} {'ratio':>7}")
    rows = []
    for rule in rules:
        for d in ds:
            case = Case(rule, n, f, d, dtype)
            case.verify()
            reps = _repeat_for(d, n, repeat)
            samples = case.time(reps)
            times = {name: reduce(ts) for name, ts in samples.items()}
            base = times["op-graph"]
            for name, t in times.items():
                row = {
                    "rule": rule,
                    "n": n,
                    "f": f,
                    "d": d,
                    "dtype": dtype,
                    "method": name,
                    "median_s": statistics.median(samples[name]),
                    "min_s": min(samples[name]),
                    "read_GBps": case.nbytes / t / 1e9,
                    "ratio_to_op_graph": t / base,
                    "copy_bandwidth_GBps": bw / 1e9,
                    "repeat": reps,
                }
                rows.append(row)
                print(
                    f"{rule:<9} {d:>9} {name:<9} {row['median_s'] * 1e3:>10.3f} {row['min_s'] * 1e3:>9.3f} "
                    f"{row['read_GBps']:>7.2f} {t / base:>7.2f}",
                    flush=True,
                )
            extra = ""
            if "plain-tf" in times:
                extra = f", plain-tf / op-graph = {times['plain-tf'] / base:.2f}"
            print(
                f"  -> vs engine: op-raw x{times['op-raw'] / times['engine']:.2f}, "
                f"op-eager x{times['op-eager'] / times['engine']:.2f}, op-graph x{base / times['engine']:.2f} "
                f"(overhead {1e6 * (times['op-raw'] - times['engine']):+.0f} / "
                f"{1e6 * (times['op-eager'] - times['engine']):+.0f} / {1e6 * (base - times['engine']):+.0f} us)"
                f"{extra}"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=["krum", "average"])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--f", type=int, default=4)
    p.add_argument("--d", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--repeat", type=int, default=15, help="timed repeats at large d (more at small d)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--stat", default="median", choices=["median", "min"], help="statistic of the ratios")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = run(args.rules, args.n, args.f, args.d, args.repeat, args.dtype, args.stat)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


# ------------------------------------------------------ pytest-benchmark ---
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    _CASES: dict[tuple[str, int], Case] = {}

    def _case(rule: str, d: int) -> Case:
        key = (rule, d)
        if key not in _CASES:
            _CASES[key] = Case(rule, 20, 4, d)
            _CASES[key].verify()
        return _CASES[key]

    @pytest.mark.parametrize("method", ["engine", "op-raw", "op-eager", "op-graph", "plain-tf"])
    @pytest.mark.parametrize("d", [1_000, 1_000_000])
    @pytest.mark.parametrize("rule", ["krum", "average"])
    def test_bench_tf(benchmark, rule, d, method):
        case = _case(rule, d)
        benchmark.group = f"{rule} n=20 f=4 d={d}"
        benchmark.extra_info["read_bytes"] = case.nbytes
        fn = case.methods[method]
        benchmark(lambda: np.asarray(fn()))


if __name__ == "__main__":
    main()
