"""Aggregation demo: every rule against every attack, one table.

n workers send gradients; f of them are Byzantine and replace theirs with an
attack of :mod:`pyagg.attacks`. For each rule the table shows the relative
distance of the aggregate to the honest workers' mean, ||agg - mean|| / ||mean||
(smaller is better; "nan" means the rule returned non-finite values).

Run: ``python -m pyagg.demo [--n 20] [--f 4] [--d 100000]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pyagg
from pyagg import attacks


def honest_gradients(h: int, d: int, seed: int, dtype=np.float32) -> np.ndarray:
    """h honest gradients: a common direction plus per-worker noise (SGD-like)."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal(d)
    return (true + 0.5 * rng.standard_normal((h, d))).astype(dtype)


def run(n: int, f: int, d: int, seed: int = 0) -> list[dict]:
    H = honest_gradients(n - f, d, seed)
    mean = H.astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    rows = []
    for rule, info in pyagg.rules().items():
        if n < info["min_n"](f) or info["required"]:  # below its bound, or no default for a parameter
            continue
        row = {"rule": rule, "bound": info["bound"]}
        t_total = 0.0
        for name, attack in attacks.ATTACKS.items():
            B = attack(H, f)
            G = np.ascontiguousarray(np.concatenate([H, B]))
            t0 = time.perf_counter()
            out = pyagg.aggregate(G, rule, f=f)
            t_total += time.perf_counter() - t0
            err = np.linalg.norm(out.astype(np.float64) - mean) / norm
            row[name] = err
        row["ms"] = 1e3 * t_total / len(attacks.ATTACKS)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    names = list(attacks.ATTACKS)
    head = f"{'rule':18s} {'bound':10s} " + " ".join(f"{a:>10s}" for a in names) + f" {'ms/call':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r[a]:10.3g}" if np.isfinite(r[a]) else f"{'nan':>10s}" for a in names)
        lines.append(f"{r['rule']:18s} {r['bound']:10s} {cells} {r['ms']:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="workers (default 20)")
    p.add_argument("--f", type=int, default=4, help="Byzantine workers (default 4)")
    p.add_argument("--d", type=int, default=100_000, help="gradient dimension (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"pyagg {pyagg.__version__}: n={a.n} workers, f={a.f} Byzantine, d={a.d}, float32")
    print("relative distance to the honest mean, ||agg - mean|| / ||mean|| (smaller is better)\n")
    print(format_table(run(a.n, a.f, a.d, a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
