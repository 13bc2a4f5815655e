"""pyagg vs plain numpy, every rule and pre-aggregator, without pytest.

Usage::

    python bench/run_bench.py [--n 20] [--f 4] [--d 1000000 [...]] [--budget 4] [--no-byzfl]

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

ByzFL (``pip install byzfl``, a torch library; optional): where it has the
rule or pre-aggregator, its torch implementation is timed on the same data
(a torch view of G, no copy) and reported as an extra "(byzfl)" row with
pyagg's speed-up over it; the mapping and which definitions are identical
(those results are checked against numpy too) are in ``byzfl_cases``. The
package's ``__init__`` imports torchvision (training utilities); only its
``byzfl.aggregators`` modules are loaded here, so torchvision is not needed.
Without byzfl the rows are simply absent (a line on stderr says so).
Pre-aggregators are timed as ``pyagg.aggregate(G, "average", f, pre=[...])``
(one engine call, fused where the engine can).

Several ``--d`` values give one table each (the issue's comparison: d in
{1e3, 1e4, 1e6}).

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
            "pyagg": (lambda p=pre, q=req: pyagg.aggregate(G, "average", f, pre=[(p, q)])),
            "numpy": (lambda fn=np_fn, q=req: fn(G, f, **q).mean(axis=0)),
        }
    return out


def load_byzfl():
    """ByzFL's aggregator modules (byzfl.aggregators.aggregators, .preaggregators),
    or None when byzfl is not installed. The package's own __init__ (which
    imports torchvision for its training framework) is bypassed: a bare
    package module is registered and only the aggregator modules are imported."""
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "byzfl" not in sys.modules:
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    try:
        agg = importlib.import_module("byzfl.aggregators.aggregators")
        pre = importlib.import_module("byzfl.aggregators.preaggregators")
    except ImportError as exc:
        print(f"# byzfl installed but its aggregators do not import ({exc}): skipped", file=sys.stderr)
        return None
    return agg, pre


# Cases where ByzFL's definition is the same as pyagg's (result checked):
BYZFL_SAME = {"average", "trimmed-mean", "krum", "multi-krum", "mda", "centered-clipping", "nnm + average",
              "clipping + average"}


def byzfl_cases(G: np.ndarray, f: int, mods) -> dict[str, tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]]:
    """name -> (byzfl fn, the pyagg fn with the matching parameters): ByzFL's torch
    implementation on a torch view of G (no copy). Differences from pyagg's
    definitions, where not in BYZFL_SAME: median (torch.median: the lower of
    the two middle values for an even count), averaged-median ~ Meamed(f),
    geometric-median (ByzFL: T = 3 fixed iterations from its own start; pyagg
    timed with max_iter = 3, tol = 0), bucketing (ByzFL shuffles with its own
    generator), clipping ARC (ByzFL's ARC)."""
    import torch

    agg, pre = mods
    T = torch.from_numpy(G)
    n = G.shape[0]

    def seq(p, r):
        return lambda: r(p(T))

    out = {
        "average": (lambda: agg.Average()(T), lambda: pyagg.aggregate(G, "average", f)),
        "median": (lambda: agg.Median()(T), lambda: pyagg.aggregate(G, "median", f)),
        "trimmed-mean": (lambda: agg.TrMean(f)(T), lambda: pyagg.aggregate(G, "trimmed-mean", f)),
        "averaged-median": (lambda: agg.Meamed(f)(T), lambda: pyagg.aggregate(G, "averaged-median", f)),
        "krum": (lambda: agg.Krum(f)(T), lambda: pyagg.aggregate(G, "krum", f)),
        "multi-krum": (lambda: agg.MultiKrum(f)(T), lambda: pyagg.aggregate(G, "multi-krum", f, m=n - f)),
        "mda": (lambda: agg.MDA(f)(T), lambda: pyagg.aggregate(G, "mda", f)),
        "geometric-median": (lambda: agg.GeometricMedian(nu=1e-6, T=3)(T),
                             lambda: pyagg.aggregate(G, "geometric-median", f, max_iter=3, tol=0.0)),
        "centered-clipping": (lambda: agg.CenteredClipping(L=1, tau=10.0)(T),
                              lambda: pyagg.aggregate(G, "centered-clipping", f, tau=10.0, L=1)),
        "nnm + average": (seq(pre.NNM(f), agg.Average()), lambda: pyagg.aggregate(G, "average", f, pre=["nnm"])),
        "bucketing + average": (seq(pre.Bucketing(2), agg.Average()),
                                lambda: pyagg.aggregate(G, "average", f, pre=[("bucketing", {"s": 2})])),
        "clipping + average": (seq(pre.Clipping(c=100.0), agg.Average()),
                               lambda: pyagg.aggregate(G, "average", f, pre=[("clipping", {"tau": 100.0})])),
        "clipping(ARC) + average": (seq(pre.ARC(f), agg.Average()),
                                    lambda: pyagg.aggregate(G, "average", f, pre=["clipping"])),
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
            f"| {name} | {p * 1e3:.3g} | {q * 1e3:.3g} | {q / p:.1f}x | {gbs:.2f} | {100 * gbs / bw['best']:.0f}% |"
        )
        for extra, t in r.items():
            if extra == "byzfl":
                # speed-up over ByzFL: against pyagg run with ByzFL's parameters
                pb = r.get("pyagg, byzfl's parameters", p)
                lines.append(f"| {name} (byzfl; pyagg {pb * 1e3:.3g} ms) | | {t * 1e3:.3g} | {t / pb:.1f}x | | |")
            elif extra not in ("pyagg", "numpy", "pyagg, byzfl's parameters"):
                lines.append(f"| {name} ({extra}) | | {t * 1e3:.3g} | {t / p:.1f}x | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--f", type=int, default=F)
    ap.add_argument("--d", type=float, nargs="*", default=[D], help="one table per value")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds of timing per side and case")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--no-byzfl", action="store_true", help="do not time ByzFL even when installed")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    bw = measure_bandwidth()
    mods = None if args.no_byzfl else load_byzfl()
    if mods is None and not args.no_byzfl:
        print("# byzfl not available: no (byzfl) rows (pip install byzfl)", file=sys.stderr)
    print(f"# pyagg {pyagg.build_info()['version']} ({pyagg.build_info()})", file=sys.stderr)
    for d in args.d:
        d = int(d)
        G = make_data(args.n, args.f, d)
        results: dict[str, dict[str, float]] = {}
        bz = byzfl_cases(G, args.f, mods) if mods else {}
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
            if name in bz:
                b_fn, p_fn = bz[name]
                b_out, t_first = timed_first_call(b_fn)
                if name in BYZFL_SAME:
                    p_out = p_fn()
                    verify(name + " (byzfl)", np.asarray(b_out, dtype=np.float32), p_out, G)
                row["byzfl"] = time_fn(b_fn, reps_for(t_first, args.budget))
                row["pyagg, byzfl's parameters"] = time_fn(p_fn, reps_for(t_first, args.budget))
            results[name] = row
            print(f"  d={d} {name}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in row.items()), file=sys.stderr)
        print(markdown_table(results, args.n, d, G.itemsize, bw))
        print()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
