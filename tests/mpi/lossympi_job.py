"""End-to-end LossyMPI job, run under mpiexec by tests/test_lossympi_mpi.py.

Rank 0 runs a ServerTransport, ranks >= 1 WorkerTransports. Every step the
server broadcasts parameters (length p != d), every worker answers with a
gradient it derives deterministically from (rank, step, params), and the
server checks every row it received bit for bit. Optionally one worker kills
itself with SIGKILL at a given step; the job must go on without it and end
cleanly. Rank 0 writes a JSON report to --out.

    mpiexec -disable-auto-cleanup -n 5 python -m lossympi.guard tests/mpi/lossympi_job.py \
        --transport udp --steps 6 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

import lossympi.server
import lossympi.worker
from lossympi import ServerTransport, WorkerTransport, messages


def instrument(rank: int, record: str, present_pk_of: int) -> dict:
    """Test instrumentation: records every control message this rank sends and every datagram key
    and secret key it derives or makes (so the test can check that none of them is ever sent), and
    optionally makes this worker present another rank's public key in its HELLO."""
    seen: dict = {"sent": [], "keys": []}
    if not record and present_pk_of < 1:
        return seen
    messages.set_recorder(lambda dest, tag, raw: seen["sent"].append((dest, tag, raw.hex())))
    srv_key, wrk_key, gen = (lossympi.server.server_datagram_key, lossympi.worker.worker_datagram_key,
                             lossympi.worker.generate_keys)

    def s_key(*a):
        k = srv_key(*a)
        seen["keys"].append(k.hex())
        return k

    def w_key(*a):
        k = wrk_key(*a)
        seen["keys"].append(k.hex())
        return k

    def keys_of_worker():
        kp = gen()
        seen["keys"].append(kp.secret.hex())
        pk_file = os.path.join(record, f"pk-{rank}.hex")
        with open(pk_file + ".tmp", "w") as f:
            f.write(kp.public.hex())
        os.replace(pk_file + ".tmp", pk_file)
        if present_pk_of >= 1:  # wait for the victim's public key and present it as ours
            victim = os.path.join(record, f"pk-{present_pk_of}.hex")
            while not os.path.exists(victim):
                time.sleep(0.01)
            with open(victim) as f:
                kp = lossympi.KeyPair(bytes.fromhex(f.read()), kp.secret)
        return kp

    lossympi.server.server_datagram_key = s_key
    lossympi.worker.worker_datagram_key = w_key
    lossympi.worker.generate_keys = keys_of_worker
    return seen


def dump(record: str, rank: int, seen: dict) -> None:
    if record:
        with open(os.path.join(record, f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)


def expected_grad(rank: int, step: int, p0: float, d: int, dtype) -> np.ndarray:
    return ((np.arange(d) % 1000) * 0.5 + rank * 10 + step + p0).astype(dtype)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", default="udp")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--d", type=int, default=100_003)
    ap.add_argument("--p", type=int, default=1_000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--drop-rate", type=float, default=0.0)
    ap.add_argument("--fill", default="nan")
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--dead-after", type=int, default=2)
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-step", type=int, default=-1)
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--record", default="")
    ap.add_argument("--present-pk-rank", type=int, default=-1, help="this rank presents another's public key")
    ap.add_argument("--present-pk-of", type=int, default=-1)
    ap.add_argument("--address-file", default="", help="rank 0 writes its UDP address and job id here")
    ap.add_argument("--until-file", default="", help="run until this file exists, then 3 more steps (max --steps)")
    ap.add_argument("--slow-rank", type=int, default=-1, help="this worker paces at --slow-rate bytes/s")
    ap.add_argument("--slow-rate", type=float, default=0.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    dtype = np.dtype(a.dtype)
    seen = instrument(rank, a.record, a.present_pk_of if rank == a.present_pk_rank else -1)

    if rank == 0:
        t_start = time.monotonic()
        srv = ServerTransport(comm, a.d, dtype=dtype, transport=a.transport, deadline=a.deadline, fill=a.fill,
                              rate=a.rate, drop_rate=a.drop_rate, seed=7, dead_after=a.dead_after,
                              startup_timeout=a.startup_timeout)
        report = {"workers": srv.workers, "mac": srv.mac, "transport": srv.transport, "steps": [],
                  "socket_info": srv.socket_info, "startup_s": time.monotonic() - t_start}
        if a.address_file:
            with open(a.address_file + ".tmp", "w") as f:
                json.dump({"address": list(srv.address) if srv.address else None, "job_id": srv.job_id}, f)
            os.replace(a.address_file + ".tmp", a.address_file)
        extra = None
        for step in range(1, a.steps + 1):
            if a.until_file:
                if extra is None and os.path.exists(a.until_file):
                    extra = 3
                elif extra is not None:
                    extra -= 1
                    if extra == 0:
                        break
            params = np.full(a.p, float(step), dtype=np.float64)
            t0 = time.monotonic()
            srv.broadcast(step, params)
            G, stats = srv.receive(step)
            t1 = time.monotonic()
            rows = []
            for i, w in enumerate(srv.workers):
                exp = expected_grad(w, step, float(step), a.d, dtype)
                s = stats[i]
                row = G[i]
                if s["complete"]:
                    ok = bool(np.array_equal(row, exp))
                else:
                    # every element is either the true value or filled
                    filled = np.isnan(row) if a.fill == "nan" else np.zeros(a.d, bool)
                    ok = bool(np.all((row == exp) | filled))
                rows.append({"rank": w, "ok": ok, "complete": s["complete"], "received": s["received"],
                             "expected": s["expected"], "filled": s["filled"], "dropped": s["dropped"],
                             "rejected": s["rejected"], "late": s["late"], "dead": s["dead"],
                             "all_nan": bool(np.isnan(row).all())})
            report["steps"].append({"step": step, "seconds": t1 - t0, "reason": srv.last_info["reason"],
                                    "rows": rows, "dead": sorted(srv.dead),
                                    "unattributed": srv.last_info.get("unattributed", {}),
                                    "unattributed_kernel_dropped": srv.last_info.get("unattributed_kernel_dropped",
                                                                                     0)})
        srv.shutdown()
        dump(a.record, rank, seen)
        report["dead"] = sorted(srv.dead)
        report["dead_reason"] = {str(k): v for k, v in srv.dead_reason.items()}
        report["total_s"] = time.monotonic() - t_start
        with open(a.out + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(a.out + ".tmp", a.out)
        print(f"[rank 0] done: dead={report['dead']} total={report['total_s']:.2f}s", flush=True)
        return 0

    try:
        kw = {"rate": a.slow_rate} if rank == a.slow_rank else {}
        w = WorkerTransport(comm, startup_timeout=a.startup_timeout, **kw)
    except Exception as e:  # noqa: BLE001 - a worker the server refused (e.g. a stolen public key)
        dump(a.record, rank, seen)
        print(f"[rank {rank}] refused at start-up: {e}", flush=True)
        return 0
    sent = 0
    abandoned: dict = {}
    while True:
        step, params = w.recv_params(timeout=120.0)
        if step is None:
            break
        if rank == a.kill_rank and step == a.kill_step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        grad = expected_grad(rank, step, float(params[0]), w.d, w.dtype)
        st = w.send(step, grad)
        sent += 1
        if st.get("abandoned"):
            abandoned[st["abandoned"]] = abandoned.get(st["abandoned"], 0) + 1
    w.close()
    dump(a.record, rank, seen)
    print(f"[rank {rank}] stopped after {sent} steps ({w.stop_reason})", flush=True)
    if abandoned:
        print(f"[rank {rank}] abandoned sends: {json.dumps(abandoned, sort_keys=True)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
