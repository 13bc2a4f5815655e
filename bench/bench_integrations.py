"""Overheads of the framework front ends, and pyagg's Flower strategy vs Flower's own.

    python bench/bench_integrations.py [--d 1000000] [--reps 7]

Every figure is the median of `reps` timed calls after a warm-up, relative to
a baseline measured in the same run:

* frameworks: ``pyagg.aggregate`` on a numpy array (the baseline) vs the
  same data as a torch CPU tensor, a JAX array (eager), inside ``jax.jit``
  (``pyagg.jax.aggregate``: a host callback), a TF tensor (eager
  ``pyagg.aggregate``), the TF op eagerly and inside ``tf.function``;
* Flower: Flower's Krum, Multi-Krum, FedMedian and Bulyan strategies vs
  :class:`pyagg.flower.PyaggStrategy` with the same rule, ``aggregate_fit``
  on the same client results (the same Flower (de)serialisation on both
  sides), results checked equal.

Frameworks that are not installed are reported as such.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pyagg  # noqa: E402


def timed(fn, reps: int) -> float:
    fn()  # warm-up (first-call costs: tracing, op loading, allocation)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def frameworks(n: int, f: int, d: int, reps: int, rule: str) -> None:
    G = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    ref = pyagg.aggregate(G, rule, f)
    base = timed(lambda: pyagg.aggregate(G, rule, f), reps)
    rows = [("numpy (baseline)", base, True)]

    def add(name, fn, check):
        try:
            out = fn()
            ok = bool(np.array_equal(np.asarray(check(out)), ref))
            rows.append((name, timed(fn, reps), ok))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            rows.append((f"{name}: {type(exc).__name__}: {exc}"[:90], float("nan"), False))

    try:
        import torch

        T = torch.from_numpy(G)
        add("torch CPU tensor", lambda: pyagg.aggregate(T, rule, f), lambda o: o.numpy())
    except ImportError:
        rows.append(("torch: not installed", float("nan"), False))
    try:
        import jax

        import pyagg.jax as pj

        X = jax.device_put(G)
        add("JAX array, eager", lambda: pyagg.aggregate(X, rule, f).block_until_ready(), lambda o: o)
        jitted = jax.jit(lambda x: pj.aggregate(x, rule, f))
        add("JAX, inside jax.jit (pure_callback)", lambda: jitted(X).block_until_ready(), lambda o: o)
    except ImportError:
        rows.append(("jax: not installed", float("nan"), False))
    try:
        import tensorflow as tf

        from pyagg import tf_bridge

        Tt = tf.constant(G)
        add("TF tensor, pyagg.aggregate eager", lambda: pyagg.aggregate(Tt, rule, f), lambda o: o.numpy())
        add("TF op, eager", lambda: tf_bridge.aggregate(Tt, rule, f), lambda o: o.numpy())
        fn = tf.function(lambda x: tf_bridge.aggregate(x, rule, f))
        add("TF op, inside tf.function", lambda: fn(Tt), lambda o: o.numpy())
    except ImportError:
        rows.append(("tensorflow: not installed", float("nan"), False))

    print(f"\n## Front ends: {rule}, n={n}, f={f}, d={d} float32, median of {reps}")
    print("| front end | time (ms) | vs numpy | same bits |")
    print("|---|---:|---:|---|")
    for name, t, ok in rows:
        print(f"| {name} | {t * 1e3:.3f} | {t / base:.2f} | {ok} |")


def flower(n: int, f: int, d: int, reps: int) -> None:
    try:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.strategy import Bulyan, FedMedian, Krum

        from pyagg.flower import PyaggStrategy
    except ImportError as exc:
        print(f"\n## Flower: not installed ({exc})")
        return
    rng = np.random.default_rng(1)
    shapes = [(d // 2 // 100, 100), (d // 4,), (d - d // 2 // 100 * 100 - d // 4,)]
    clients = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n)]
    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(c), 10, {})) for c in clients]
    cases = [
        ("krum", Krum(num_malicious_clients=f), dict(rule="krum", f=f)),
        ("multi-krum (m=n-f)", Krum(num_malicious_clients=f, num_clients_to_keep=n - f),
         dict(rule="multi-krum", f=f, rule_params={"m": n - f})),
        ("median", FedMedian(), dict(rule="median", f=f)),
        ("bulyan", Bulyan(num_malicious_clients=f, to_keep=0), dict(rule="bulyan", f=f)),
    ]
    print(f"\n## Flower strategies: aggregate_fit, n={n} clients, f={f}, d={d} float32 in 3 layers, median of {reps}")
    print("| rule | Flower (ms) | pyagg (ms) | Flower / pyagg | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for name, theirs, ours_kw in cases:
        ours = PyaggStrategy(**ours_kw)
        a = np.concatenate([x.ravel() for x in parameters_to_ndarrays(ours.aggregate_fit(1, results, [])[0])])
        b = np.concatenate([x.ravel() for x in parameters_to_ndarrays(theirs.aggregate_fit(1, list(results), [])[0])])
        diff = float(np.max(np.abs(a - b)))
        t_theirs = timed(lambda: theirs.aggregate_fit(1, list(results), []), reps)
        t_ours = timed(lambda: ours.aggregate_fit(1, results, []), reps)
        print(f"| {name} | {t_theirs * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_theirs / t_ours:.1f} | {diff:.2e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--f", type=int, default=4)
    ap.add_argument("--d", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--flower-d", type=int, default=1_000_000)
    a = ap.parse_args()
    info = pyagg.build_info()
    print(f"pyagg {pyagg.__version__}, CPU ISA {info['cpu_isa']}, threads {info['threads']}")
    for d in a.d:
        for rule in ("median", "krum"):
            frameworks(a.n, a.f, d, a.reps, rule)
    flower(a.n, a.f, a.flower_d, a.reps)


if __name__ == "__main__":
    main()
