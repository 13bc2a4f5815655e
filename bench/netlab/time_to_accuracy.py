"""Time to accuracy: the digits model trained by the real cluster (pyagg.train,
MPI launcher) with LossyMPI (transport udp) under each loss rate vs the `mpi`
transport, and a plot of test accuracy against wall-clock time.

Unreliable transport as a Byzantine fault: with transport udp, a datagram lost
with probability `loss` leaves its chunk filled by the server (nan by
default), and the robust rule (default: multi-krum over the nan-aware
pre-processing the cluster applies) absorbs the damaged rows. The loss is the
engine's receiver-side injection (--drop-rate: authentic datagrams discarded
at random after verification, exactly as a network drop looks to the server);
the cluster runs on this host's loopback, where MPI moves data through shared
memory and cannot see loss at all: the network cost that loss imposes on a
reliable transport is what the lab's step-time matrix (matrix.py) measures.

    python bench/netlab/time_to_accuracy.py --steps 150 --loss 0 1 5 --out bench/results/tta
    (writes <out>.md, <out>.json, <out>.png; no root needed)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(transport: str, loss: float, a, out_dir: str) -> dict:
    cmd = [sys.executable, "-m", "pyagg.train", "--launcher", "mpi", "--transport", transport,
           "--workers", str(a.workers), "--rule", a.rule, "--steps", str(a.steps), "--eval-every",
           str(a.eval_every), "--deadline", str(a.deadline), "--seed", str(a.seed), "--out", out_dir,
           "--no-progress", "--quiet"]
    if a.byzantine:
        cmd += ["--byzantine", str(a.byzantine)]
    if a.experiment:
        cmd += ["--experiment", a.experiment]
    if transport == "udp" and loss > 0:
        cmd += ["--drop-rate", str(loss)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=a.timeout)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    pts = []
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row.get("accuracy") not in (None, "", "nan"):
                pts.append((float(row["time"]), int(row["step"]), float(row["accuracy"])))
    steps_t = []
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row.get("step_time") not in (None, ""):
                steps_t.append(float(row["step_time"]))
    return {"transport": transport, "loss": loss, "wall_s": wall, "points": pts,
            "median_step_s": sorted(steps_t)[len(steps_t) // 2] if steps_t else None}


def time_to(points: list, target: float) -> float | None:
    for t, _s, acc in points:
        if acc >= target:
            return t
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", type=float, nargs="*", default=[0, 1, 5], help="percent (udp)")
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--byzantine", type=int, default=1, help="f the rule tolerates (no attack: loss is the fault)")
    ap.add_argument("--rule", default="multi-krum")
    ap.add_argument("--experiment", default="", help="pyagg.train --experiment (default: the CLI's digits model)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", type=float, default=0.9, help="accuracy for the time-to-accuracy column")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "time_to_accuracy"))
    a = ap.parse_args()
    base = os.path.abspath(a.out) + "_runs"
    os.makedirs(base, exist_ok=True)
    runs = []
    for transport, loss in [("mpi", 0.0)] + [("udp", x / 100) for x in a.loss]:
        d = os.path.join(base, f"{transport}_{loss:g}")
        res = run(transport, loss, a, d)
        runs.append(res)
        print(f"tta: {transport} loss {100 * loss:g}%: final acc {res['points'][-1][2] if res['points'] else None}, "
              f"time to {a.target:.0%}: {time_to(res['points'], a.target)} s, median step "
              f"{res['median_step_s']}", flush=True)
    lines = [f"## time to accuracy ({a.workers} workers, rule {a.rule}, f={a.byzantine}, {a.steps} steps, "
             f"loopback, {os.cpu_count()} CPUs)", "",
             f"| transport | loss | median step ms | time to {a.target:.0%} (s) | final accuracy | wall s |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        tt = time_to(r["points"], a.target)
        fin = r["points"][-1][2] if r["points"] else float("nan")
        lines.append(f"| {r['transport']} | {100 * r['loss']:g}% | {1e3 * (r['median_step_s'] or 0):.1f} | "
                     f"{'-' if tt is None else f'{tt:.1f}'} | {fin:.3f} | {r['wall_s']:.0f} |")
    md = "\n".join(lines) + "\n"
    with open(a.out + ".md", "w") as f:
        f.write(md)
    with open(a.out + ".json", "w") as f:
        json.dump({"args": vars(a), "runs": runs}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in runs:
            if r["points"]:
                ax.plot([p[0] for p in r["points"]], [p[2] for p in r["points"]], marker=".",
                        label=f"{r['transport']} loss {100 * r['loss']:g}%",
                        linestyle="--" if r["transport"] == "mpi" else "-")
        ax.set_xlabel("wall-clock time (s)")
        ax.set_ylabel("test accuracy")
        ax.axhline(a.target, color="gray", linewidth=0.5)
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.out + ".png", dpi=100)
        plt.close(fig)
    except ImportError:
        pass
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
