"""How late does LossyMPI's receive() return after its deadline?

A receiver waits for two ranks; rank 1 sends its whole gradient, rank 2 sends
nothing (a dead or partitioned worker), so every step ends at the deadline.
Overshoot = time receive() returned - (the call + deadline: the deadline counts
from the call), on the caller's clock, through the Python API (the engine's collect plus the bindings and
the copy of the rows). The goal is <= 2 ms; a loaded machine shows its
scheduling latency here, so the load average is printed with the figures.

    python bench/bench_receive_deadline.py [--reps 100] [--deadline 0.02] [--d 262144]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--deadline", type=float, default=0.02)
    ap.add_argument("--d", type=int, default=262144)
    a = ap.parse_args()
    from lossympi import GradientReceiver, GradientSender

    keys = {1: bytes(range(32)), 2: bytes(range(1, 33))}
    over = []
    with GradientReceiver([1, 2], a.d, deadline=a.deadline, keys=keys) as rx:
        tx = GradientSender(rx.address, keys[1], rank=1)
        g = np.ones(a.d, np.float32)
        for step in range(1, a.reps + 1):
            rx.expect(step)
            tx.send(step, g)
            t0 = time.monotonic()
            _G, st = rx.receive(step)
            t1 = time.monotonic()
            assert st[0]["complete"] and st[1]["received"] == 0 and rx.last_info["reason"] == "deadline"
            over.append((t1 - t0 - a.deadline) * 1e3)
        tx.close()
    over.sort()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"receive() past its {a.deadline * 1e3:g} ms deadline, {a.reps} steps: p50 {over[len(over) // 2]:.3f} ms, "
          f"p99 {over[int(0.99 * (len(over) - 1))]:.3f} ms, max {over[-1]:.3f} ms, min {over[0]:.3f} ms "
          f"(load average {load}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
