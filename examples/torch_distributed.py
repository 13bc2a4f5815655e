"""Robust data-parallel training with torch.distributed (gloo) and pyagg.torch.

N local processes train one linear-regression model on their own data shards.
Every step each rank computes its gradient, all ranks all-gather the flat
gradients (a tensor collective: nothing is deserialised), and every rank
aggregates them with the same robust rule (the engine is deterministic, so
all ranks get the same bits and the replicas stay identical) and steps its
optimizer. Rank ``byzantine`` (default: the last) sends ``-scale`` times its
true gradient instead.

    python examples/torch_distributed.py --world 5 --rule krum --f 1
    python examples/torch_distributed.py --world 5 --rule average --f 1   # the attack wins

Prints the test loss before and after training (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyagg.torch as pt

DIM, SAMPLES = 16, 256


def _data(seed: int, w_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, DIM, generator=g)
    y = x @ w_true + 0.01 * torch.randn(SAMPLES, 1, generator=g)
    return x, y


def run(rank: int, world: int, init: str, rule: str, f: int, byzantine: int, scale: float, steps: int,
        out: str) -> None:
    # Our own TCP store (rank 0 hosts it), so that the teardown below can use it
    # after the process group is gone.
    host, port = init.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), world, is_master=(rank == 0), timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial model on every rank
    torch.set_num_threads(1)
    w_true = torch.randn(DIM, 1, generator=torch.Generator().manual_seed(1234))
    x, y = _data(100 + rank, w_true)
    x_test, y_test = _data(999, w_true)
    model = torch.nn.Linear(DIM, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agg = pt.GradientAggregator(model, rule, f)
    loss_fn = torch.nn.MSELoss()
    with torch.no_grad():
        before = loss_fn(model(x_test), y_test).item()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        mine = pt.flat_grad(model)
        if rank == byzantine:
            mine = -scale * mine
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        agg.step(gathered)
        opt.step()
    with torch.no_grad():
        after = loss_fn(model(x_test), y_test).item()
    # The replicas must still be identical (same aggregate on every rank).
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    all_flat = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(all_flat, flat)
    in_sync = all(torch.equal(all_flat[0], t) for t in all_flat)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"rule": rule, "before": before, "after": after, "in_sync": in_sync}, fh)
    _teardown(store, rank, world)


def _wait_count(store: dist.TCPStore, key: str, world: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while store.add(key, 0) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"teardown: only {store.add(key, 0)} of {world} ranks reached {key!r}")
        time.sleep(0.005)


def _teardown(store: dist.TCPStore, rank: int, world: int) -> None:
    """Leave in an order in which no rank loses a peer it still talks to.

    1. Every rank is past its last collective before any rank closes its gloo
       connections (a counter in the store, not a collective).
    2. Every rank destroys its process group.
    3. Rank 0 hosts the store: it leaves last, once every rank has said it is
       done with the store, so no rank's store client sees its server vanish.
    (A rank that left early while a peer was still in a collective or still
    talking to the store made that peer abort now and then.)
    """
    store.add("past_last_collective", 1)
    _wait_count(store, "past_last_collective", world)
    dist.destroy_process_group()
    store.add("left", 1)
    if rank == 0:
        _wait_count(store, "left", world)


def train(world: int = 5, rule: str = "krum", f: int = 1, byzantine: int | None = None, scale: float = 20.0,
          steps: int = 60) -> dict:
    """Spawn `world` local processes, train, return rank 0's report."""
    byzantine = world - 1 if byzantine is None else byzantine
    # A TCP store on the loopback interface (a file store can be removed by the
    # first rank to leave while others still read it).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        init = f"127.0.0.1:{port}"  # host:port of the TCP store rank 0 hosts
        mp.spawn(run, args=(world, init, rule, f, byzantine, scale, steps, out), nprocs=world, join=True)
        with open(out) as fh:
            return json.load(fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=5)
    ap.add_argument("--rule", default="krum")
    ap.add_argument("--f", type=int, default=1)
    ap.add_argument("--byzantine", type=int, default=None, help="Byzantine rank (default: the last; -1: none)")
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args(argv)
    r = train(a.world, a.rule, a.f, a.byzantine, a.scale, a.steps)
    print(f"{r['rule']}: test loss {r['before']:.4f} -> {r['after']:.4f} (replicas in sync: {r['in_sync']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
