"""pyagg vs plain numpy, every rule and pre-aggregator, without pytest.

Usage::

    python bench/run_bench.py [--n 20] [--f 4] [--d 1000000] [--budget 4]

For each rule (and each pre-aggregator in front of ``average``) both sides
are run once on the same input (n=20, f=4, d=1e6 float32 by default: 80 MB)
and their results compared (krum: the same row bitwise; the rest: allclose,
rtol 1e-4, atol 1e-5 * max|G|): that first call is also the warm-up. Then each
side is timed for about ``--budget`` seconds (1 to 5 repetitions); the median
is reported, as a markdown table:

- pyagg ms, numpy ms, speed-up (numpy / pyagg);
- GB/s: bytes of input read (n * d * 4) / pyagg time;
- % BW: that rate as a fraction of the machine's memory bandwidth, measured
  in the same run as the best of a single-threaded and a multi-threaded
  (one thread per core, on disjoint slices) ``numpy.copyto`` of a 400 MB
  float32 array, counting the bytes read + written (2 * 400 MB) / time,
  median of 5 after a warm-up copy (which also faults the pages in).

The shared pieces (data, bandwidth, cases, verification, timing, table) are
imported by bench/bench_rules.py and bench/conftest.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy_rules

import pyagg

# Defaults; the environment can shrink them for a quick smoke run of the
# harness (e.g. PYAGG_BENCH_D=100000 PYAGG_BENCH_BUDGET=0.5).
N, F = 20, 4
D = int(os.environ.get("PYAGG_BENCH_D", "1000000"))
BUDGET_S = float(os.environ.get("PYAGG_BENCH_BUDGET", "4.0"))


# ------------------------------------------------------------------- data ---
def make_data(n: int = N, f: int = F, d: int = D, seed: int = 0) -> np.ndarray:
    """n float32 rows: n-f honest N(0, 1) rows and f rows of a crude attack (-3x)."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d), dtype=np.float32)
    G[:f] *= -3.0
    return G


# -------------------------------------------------------------- bandwidth ---
def measure_bandwidth(mbytes: int = 400, reps: int = 5) -> dict[str, float]:
    """Copy bandwidth in GB/s (bytes read + written per second), 1 and all threads."""
    src = np.ones(mbytes * (1 << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    threads = os.cpu_count() or 1
    chunks = np.array_split(np.arange(src.size), threads)
    bounds = [(c[0], c[-1] + 1) for c in chunks if c.size]

    def copy_one():
        np.copyto(dst, src)

    def copy_all(pool):
        list(pool.map(lambda b: np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]]), bounds))

    out = {}
    copy_one()  # fault the pages in
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        copy_one()
        times.append(time.perf_counter() - t)
    out["copy_1thread"] = 2 * src.nbytes / statistics.median(times) / 1e9
    with ThreadPoolExecutor(threads) as pool:
        copy_all(pool)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            copy_all(pool)
            times.append(time.perf_counter() - t)
    out[f"copy_{threads}threads"] = 2 * src.nbytes / statistics.median(times) / 1e9
    out["best"] = max(out.values())
    out["threads"] = threads
    return out


# ------------------------------------------------------------------ cases ---
def cases(G: np.ndarray, f: int) -> dict[str, dict[str, Callable[[], np.ndarray]]]:
    """name -> {"pyagg": fn, "numpy": fn[, "numpy-gram": fn]}, all taking no argument."""
    out: dict[str, dict[str, Callable[[], np.ndarray]]] = {}
    for rule, np_fn in numpy_rules.RULES.items():
        req = numpy_rules.REQUIRED.get(rule, {})
        out[rule] = {
            "pyagg": (lambda r=rule, p=req: pyagg.aggregate(G, r, f, **p)),
            "numpy": (lambda fn=np_fn, p=req: fn(G, f, **p)),
        }
    out["dnc(b=d)"] = {
        "pyagg": lambda: pyagg.aggregate(G, "dnc", f, b=G.shape[1]),
        "numpy": lambda: numpy_rules.dnc(G, f, b=G.shape[1]),
    }
    out["krum"]["numpy-gram"] = lambda: numpy_rules.krum_gram(G, f)
    for pre, np_fn in numpy_rules.PRE.items():
        req = numpy_rules.REQUIRED.get(pre, {})
        out[f"{pre} + average"] = {
            "pyagg": (lambda p=pre, q=req: pyagg.aggregate(pyagg.preaggregate(G, p, f, **q), "average")),
            "numpy": (lambda fn=np_fn, q=req: fn(G, f, **q).mean(axis=0)),
        }
    return out


def verify(name: str, got: np.ndarray, expected: np.ndarray, G: np.ndarray) -> None:
    """Raise AssertionError when the two results disagree."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"{name}: shape {got.shape} != {expected.shape}")
    if name == "krum":
        if not np.array_equal(got, expected):
            raise AssertionError(f"{name}: a different row was selected")
        return
    scale = float(np.abs(G).max())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def reps_for(first_call_s: float, budget_s: float | None = None) -> int:
    """Repetitions that fit the time budget (1 to 5)."""
    budget_s = BUDGET_S if budget_s is None else budget_s
    return max(1, min(5, int(budget_s / max(first_call_s, 1e-9))))


def time_fn(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` calls, seconds."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_first_call(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# ------------------------------------------------------------------ table ---
def markdown_table(results: dict[str, dict[str, float]], n: int, d: int, itemsize: int, bw: dict[str, float]) -> str:
    """results: name -> {"pyagg": s, "numpy": s, ...}."""
    nbytes = n * d * itemsize
    lines = [
        f"n={n}, d={d}, float32 ({nbytes / 1e6:.0f} MB of input); memory bandwidth "
        f"{bw['best']:.1f} GB/s (numpy copy of 400 MB, read+write bytes / time, best of 1 and "
        f"{bw['threads']} threads: "
        + ", ".join(f"{k} {v:.1f}" for k, v in bw.items() if k.startswith("copy"))
        + " GB/s)",
        "",
        "| rule | pyagg ms | numpy ms | speed-up | pyagg GB/s | % BW |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        p, q = r.get("pyagg"), r.get("numpy")
        if p is None or q is None:
            continue
        gbs = nbytes / p / 1e9
        lines.append(
            f"| {name} | {p * 1e3:.1f} | {q * 1e3:.1f} | {q / p:.1f}x | {gbs:.2f} | {100 * gbs / bw['best']:.0f}% |"
        )
        for extra, t in r.items():
            if extra not in ("pyagg", "numpy"):
                lines.append(f"| {name} ({extra}) | | {t * 1e3:.1f} | {t / p:.1f}x | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--f", type=int, default=F)
    ap.add_argument("--d", type=int, default=D)
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds of timing per side and case")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    bw = measure_bandwidth()
    G = make_data(args.n, args.f, args.d)
    print(f"# pyagg {pyagg.build_info()['version']} ({pyagg.build_info()})", file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    for name, impls in cases(G, args.f).items():
        if args.only and name not in args.only:
            continue
        expected, t_np = timed_first_call(impls["numpy"])
        row = {}
        for impl, fn in impls.items():
            out, t_first = (expected, t_np) if impl == "numpy" else timed_first_call(fn)
            if impl != "numpy":
                verify(name, out, expected, G)
            row[impl] = time_fn(fn, reps_for(t_first, args.budget))
        results[name] = row
        print(f"  {name}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row.items()), file=sys.stderr)
    print(markdown_table(results, args.n, args.d, G.itemsize, bw))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
