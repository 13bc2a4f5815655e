"""Every rule and pre-aggregator against the machine's roofline (issue 13).

Usage::

    python bench/roofline.py [--n 20 100] [--d 1e4 1e6 1e7] [--budget 3] [--big] [--small]

Measured in the same run, before the rules:

- read bandwidth: bytes / time of a multi-threaded read of a 512 MiB float32
  array (one thread per core, disjoint slices; the best of ``numpy.max`` and
  ``numpy.sum``, median of 5 each);
- sgemm rate: flops / time of a float32 ``numpy.matmul`` (BLAS), 2048 x 4096
  by 4096 x 2048, median of 3 (the machine's GEMM speed, what a Gram
  distance pass could reach).

For each cell (n, f = n/5, d; float32, N(0,1) rows, the first f scaled by -3)
and each rule the median wall time of pyagg (1 to 9 timed calls after a warm
up, sized to ``--budget`` seconds), and:

- ``pass`` = n*d*4 bytes / read bandwidth: one read of G;
- ``gemm`` = n^2 * d flops / sgemm rate: the GEMM bound of a Gram distance
  pass (for the rules that need pairwise distances: krum, multi-krum, bulyan,
  bulyan-multikrum, mda, geometric-median, centered-clipping, nnm);
- ``roofline`` = max(pass, gemm) for those, ``pass`` for the others; for a
  pre-aggregator, pass + the write of its (n', d) output at the same rate
  (", out=" rows: the same pre-aggregator writing into one buffer reused
  across calls, ``preaggregate(..., out=buf)``, so without the page faults
  of a fresh n' x d result);
- ratio = pyagg time / roofline (the issue's table), and / pass.

The rules of rules_next.md (dnc, clipped-clustering, smea, caf, zeroing) run
at their defaults; dnc samples b = 1e4 coordinates per iteration, so its
roofline is one pass, not the GEMM bound.

Skipped: mda and smea at n = 100 (C(100, 20) subsets: refused by design); n = 100 with
d = 1e7 unless ``--big`` (4 GB of input, 8+ GB with an nnm output, and ~15
minutes of timing on 2 cores).

``--chains``: only the pre-aggregator > rule chains, each fused (one
``pyagg.aggregate(..., pre=[...])`` call) and unfused (``preaggregate`` then
``aggregate``) in the same run; the roofline of a chain is its rule's on G.

``--small``: per-call latency, p50 and p99 of 1000 calls, of the
coordinate-wise rules (and krum) at n = 20, d in {1e2, 1e3, 1e4}, with the
same numbers for a numpy ``G.mean(axis=0)`` as the baseline.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The repository root goes LAST: a PYTHONPATH naming another build (e.g. a
# copy of main's package for a "before" run) must win.
if ROOT not in sys.path:
    sys.path.append(ROOT)

import pyagg

RULES = [
    "average", "average-nan", "median", "trimmed-mean", "averaged-median",
    "krum", "multi-krum", "bulyan", "bulyan-multikrum", "mda",
    "geometric-median", "centered-clipping",
    # rules_next.md, at their defaults (zeroing: tau between the honest and the
    # scaled rows' L-inf norms, so that it zeroes the f scaled rows)
    "dnc", "clipped-clustering", "smea", "caf", "zeroing",
]
DISTANCE_RULES = {"krum", "multi-krum", "bulyan", "bulyan-multikrum", "mda", "geometric-median",
                  "centered-clipping", "nnm", "clipped-clustering", "smea", "caf"}
PRES = ["nnm", "clipping (ARC)", "clipping (static)", "bucketing"]
# The same pre-aggregators writing into a caller's buffer reused across calls
# (preaggregate(..., out=)): no page faults on a fresh n' x d result.
PRES += [f"{p}, out=" for p in PRES]
# Pre-aggregator > rule chains: "fused" = pyagg.aggregate(G, rule, f, pre=[...]) (one engine call,
# pyagg::aggregate_chain), "(unfused)" = pyagg.preaggregate then pyagg.aggregate (the n' x d
# intermediate written and read back: what an Aggregator did before the chain call).
# Roofline of a chain: that of its rule on G (one pass; max(pass, gemm) after nnm).
CHAIN_PAIRS = [("nnm", "average"), ("nnm", "median"), ("nnm", "krum"), ("nnm", "multi-krum"), ("nnm", "bulyan"),
               ("bucketing", "median"), ("bucketing", "trimmed-mean"), ("clipping (ARC)", "median"),
               ("clipping (static)", "average")]
CHAINS = [f"{p} > {r}{u}" for p, r in CHAIN_PAIRS for u in ("", " (unfused)")]


# ---------------------------------------------------------------- machine ---
def read_bandwidth(mbytes: int = 512, reps: int = 5) -> float:
    """GB/s of a multi-threaded read of a float32 array (disjoint slices, one
    thread per core): the best of ``numpy.max`` and ``numpy.sum`` (``sum`` is
    compute-bound on some machines: pairwise summation), median of `reps`."""
    a = np.ones(mbytes * (1 << 20) // 4, dtype=np.float32)
    threads = os.cpu_count() or 1
    parts = np.array_split(a, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for fn in (np.max, np.sum):
            list(pool.map(fn, parts))
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                list(pool.map(fn, parts))
                times.append(time.perf_counter() - t)
            best = max(best, a.nbytes / statistics.median(times) / 1e9)
    return best


def sgemm_rate(m: int = 2048, k: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of a float32 matmul (m x k) @ (k x m)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, m), dtype=np.float32)
    np.matmul(A, B)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(A, B)
        times.append(time.perf_counter() - t)
    return 2.0 * m * m * k / statistics.median(times) / 1e9


# ------------------------------------------------------------------ cases ---
def make_data(n: int, f: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d), dtype=np.float32)
    G[:f] *= -3.0
    return G


def case_fn(name: str, G: np.ndarray, f: int):
    """(callable, output rows) for a rule or pre-aggregator name."""
    n = G.shape[0]
    if name.endswith(", out="):
        inner, rows = case_fn(name[: -len(", out=")], G, f)
        buf = np.zeros((rows, G.shape[1]), dtype=G.dtype)  # faulted in once, here
        return (lambda: inner(out=buf)), rows
    if name == "zeroing":
        linf = np.abs(G).max(axis=1)
        tau = float(np.sqrt(linf[f:].max() * linf[:f].min())) if f else float(2 * linf.max())
        return (lambda: pyagg.aggregate(G, "zeroing", f, tau=tau)), 1
    if name in RULES:
        return (lambda: pyagg.aggregate(G, name, f)), 1
    if name == "nnm":
        return (lambda **o: pyagg.preaggregate(G, "nnm", f, **o)), n
    if name == "clipping (ARC)":
        return (lambda **o: pyagg.preaggregate(G, "clipping", f, **o)), n
    if name == "clipping (static)":
        # a threshold that clips about half of the rows
        tau = float(np.median(np.linalg.norm(G[:, : min(G.shape[1], 100000)], axis=1)))
        tau *= math.sqrt(G.shape[1] / min(G.shape[1], 100000))
        return (lambda **o: pyagg.preaggregate(G, "clipping", f, tau=tau, **o)), n
    if name == "bucketing":
        return (lambda **o: pyagg.preaggregate(G, "bucketing", f, s=2, **o)), (n + 1) // 2
    if name in CHAINS:
        pre, rule = name.replace(" (unfused)", "").split(" > ")
        params = {"s": 2} if pre == "bucketing" else {}
        if pre == "clipping (static)":
            tau = float(np.median(np.linalg.norm(G[:, : min(G.shape[1], 100000)], axis=1)))
            params = {"tau": tau * math.sqrt(G.shape[1] / min(G.shape[1], 100000))}
        pre = pre.split(" ")[0]
        if name.endswith("(unfused)"):
            return (lambda: pyagg.aggregate(pyagg.preaggregate(G, pre, f, **params), rule, f)), 1
        return (lambda: pyagg.aggregate(G, rule, f, pre=[(pre, params)])), 1
    raise KeyError(name)


def timed(fn, budget: float) -> float:
    t = time.perf_counter()
    fn()  # warm-up (pages, thread pool)
    first = time.perf_counter() - t
    reps = max(1, min(9, int(budget / max(first, 1e-9))))
    if first < 0.01:
        reps = max(reps, 50)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_cell(n: int, d: int, bw: float, gemm: float, budget: float, only: list[str] | None) -> list[dict]:
    f = n // 5
    G = make_data(n, f, d)
    rows = []
    for name in RULES + PRES + CHAINS:
        if only and name not in only and name.replace(" (unfused)", "") not in only:
            continue
        if name in CHAINS and not only:
            continue  # chains: only when asked (--only or --chains)
        if (name == "mda" and math.comb(n, f) > 1e7) or (name == "smea" and math.comb(n, f) > 1e6):
            rows.append({"name": name, "skip": f"C({n},{f}) subsets: refused"})
            continue
        fn, out_rows = case_fn(name, G, f)
        t = timed(fn, budget)
        t_pass = n * d * 4 / (bw * 1e9)
        t_gemm = n * n * d / (gemm * 1e9)
        roof = t_pass
        if name.replace(", out=", "") in DISTANCE_RULES or (name in CHAINS and name.startswith("nnm")):
            roof = max(roof, t_gemm)
        if name in PRES:
            roof += out_rows * d * 4 / (bw * 1e9)
        rows.append({"name": name, "t": t, "pass": t_pass, "gemm": t_gemm, "roof": roof})
        print(f"  n={n} d={d:.0e} {name}: {t * 1e3:.2f} ms = {t / roof:.2f} x roofline", file=sys.stderr)
    del G
    return rows


def table(results: dict, bw: float, gemm: float) -> str:
    cells = list(results)
    head = "| rule | " + " | ".join(f"n={n} d={d:.0e}: ms, /roof (/pass)" for n, d in cells) + " |"
    lines = [
        f"read bandwidth {bw:.2f} GB/s, sgemm {gemm:.1f} GFLOP/s (measured in this run); "
        f"float32, f = n/5, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "",
        head,
        "|---|" + "---:|" * len(cells),
    ]
    names = [r["name"] for r in results[cells[0]]]
    for name in names:
        row = [name]
        for c in cells:
            r = next((x for x in results[c] if x["name"] == name), None)
            if r is None:
                row.append("")
            elif "skip" in r:
                row.append("- (" + r["skip"] + ")")
            else:
                row.append(f"{r['t'] * 1e3:.3g}, **{r['t'] / r['roof']:.2f}** ({r['t'] / r['pass']:.2f})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------ small input ---
def small_latency(calls: int = 1000) -> str:
    lines = [
        f"per-call latency, n = 20, f = 4, float32, {calls} calls each: p50 / p99 in us",
        "",
        "| rule | d=1e2 | d=1e3 | d=1e4 |",
        "|---|---:|---:|---:|",
    ]
    names = ["average", "average-nan", "median", "trimmed-mean", "averaged-median", "krum", "numpy mean"]
    res = {nm: [] for nm in names}
    for d in (100, 1000, 10000):
        G = make_data(20, 4, d)
        for nm in names:
            fn = (lambda: G.mean(axis=0)) if nm == "numpy mean" else (lambda r=nm: pyagg.aggregate(G, r, 4))
            for _ in range(50):
                fn()
            ts = np.empty(calls)
            for i in range(calls):
                t = time.perf_counter()
                fn()
                ts[i] = time.perf_counter() - t
            res[nm].append((np.percentile(ts, 50) * 1e6, np.percentile(ts, 99) * 1e6))
    for nm in names:
        lines.append(f"| {nm} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in res[nm]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=[20, 100])
    ap.add_argument("--d", type=float, nargs="*", default=[1e4, 1e6, 1e7])
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed calls per rule and cell")
    ap.add_argument("--big", action="store_true", help="include n=100, d=1e7 (4 GB)")
    ap.add_argument("--small", action="store_true", help="also the per-call latency table")
    ap.add_argument("--only-small", action="store_true", help="only the per-call latency table")
    ap.add_argument("--only", nargs="*", help="rule / pre-aggregator names (default: all)")
    ap.add_argument("--chains", action="store_true",
                    help="only the pre-aggregator > rule chains, fused and unfused (same run)")
    args = ap.parse_args(argv)
    if args.chains:
        args.only = (args.only or []) + CHAINS
    print(f"# pyagg from {os.path.dirname(pyagg.__file__)}", file=sys.stderr)
    if not args.only_small:
        bw = read_bandwidth()
        gemm = sgemm_rate()
        print(f"# read bandwidth {bw:.2f} GB/s, sgemm {gemm:.1f} GFLOP/s", file=sys.stderr)
        results = {}
        for n in args.n:
            for d in args.d:
                d = int(d)
                if n * d * 4 > 1e9 and not args.big:
                    print(f"# skipped n={n} d={d:.0e} ({n * d * 4 / 1e9:.1f} GB; --big)", file=sys.stderr)
                    continue
                results[(n, d)] = run_cell(n, d, bw, gemm, args.budget, args.only)
        print(table(results, bw, gemm))
    if args.small or args.only_small:
        print()
        print(small_latency())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
