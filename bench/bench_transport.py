"""LossyMPI transport benchmark: goodput of one worker -> server on loopback for
a 100 MB gradient, UDP (LossyMPI, C++ path, authenticated) vs MPI point-to-point
vs a plain TCP socket, in the same run; and the time for the server to collect
one step from 8 workers (UDP and MPI transports, through the full
ServerTransport/WorkerTransport stack under mpiexec).

Every measurement verifies what arrived (bit-exact rows / buffers) and warms up
first. Sender and receiver are separate processes. Goodput = gradient bytes
delivered intact / (last byte received - first byte sent), both clocks
CLOCK_MONOTONIC on the same host. CPU seconds of sender + receiver are reported
too (the machine may be shared: GB/s per CPU-second is the load-independent figure).

    python bench/bench_transport.py                 # everything, 100 MB, 8 workers
    python bench/bench_transport.py --mb 10 --reps 3 --skip-collect --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
           OMP_WAIT_POLICY="PASSIVE")


def grad(rank: int, d: int) -> np.ndarray:
    g = np.arange(d, dtype=np.float32)
    g %= 1000
    g += rank
    return g


def cpu_of(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def mpiexec() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return cand if os.path.exists(cand) else None


# --------------------------------------------------------------- children --
def role_udp_sender(a) -> None:
    from lossympi import GradientSender

    g = grad(a.rank, a.d)
    tx = GradientSender((a.host, a.port), bytes.fromhex(a.key) if a.key else None,
                        None if a.rate <= 0 else a.rate, rank=a.rank, auth=bool(a.key), gso=not a.no_gso)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        step = int(cmd[1])
        c0 = time.process_time()
        t0 = time.monotonic()
        st = tx.send(step, g)
        print(json.dumps({"t0": t0, "t1": time.monotonic(), "cpu": time.process_time() - c0, "stats": st}),
              flush=True)


def role_tcp_sender(a) -> None:
    g = grad(1, a.d)
    s = socket.create_connection((a.host, a.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print("ready", flush=True)
    mv = memoryview(g).cast("B")
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        c0 = time.process_time()
        t0 = time.monotonic()
        s.sendall(mv)
        print(json.dumps({"t0": t0, "t1": time.monotonic(), "cpu": time.process_time() - c0}), flush=True)
    s.close()


def role_mpi_p2p(a) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    r = comm.Get_rank()
    buf = grad(1, a.d) if r == 1 else np.empty(a.d, np.float32)
    exp = grad(1, a.d) if r == 0 else None
    res = []
    for rep in range(a.reps + 1):
        comm.Barrier()
        c0 = time.process_time()
        t0 = time.monotonic()
        if r == 1:
            comm.Send([buf, MPI.FLOAT], dest=0, tag=9)
        else:
            comm.Recv([buf, MPI.FLOAT], source=1, tag=9)
        t1 = time.monotonic()
        # Typed gather of each rank's CPU seconds (no pickle): one float64 per rank.
        mine = np.array([time.process_time() - c0], np.float64)
        cpu = np.empty(comm.Get_size(), np.float64) if r == 0 else None
        comm.Gather([mine, MPI.DOUBLE], [cpu, MPI.DOUBLE] if r == 0 else None, root=0)
        if r == 0:
            ok = bool(np.array_equal(buf, exp))
            buf[:] = 0
            if rep > 0:  # rep 0 is the warm-up
                res.append({"seconds": t1 - t0, "cpu": float(cpu.sum()), "cpu_rx": float(cpu[0]),
                            "cpu_tx": float(cpu[1]), "ok": ok})
    if r == 0:
        print("RESULT " + json.dumps(res), flush=True)


def role_collect(a) -> None:
    """Under mpiexec: rank 0 ServerTransport, ranks >= 1 WorkerTransports; time of one step's collection."""
    from mpi4py import MPI

    from lossympi import ServerTransport, WorkerTransport

    comm = MPI.COMM_WORLD
    r = comm.Get_rank()
    if r == 0:
        rate = None if a.rate <= 0 else a.rate
        srv = ServerTransport(comm, a.d, transport=a.transport, deadline=a.deadline, rate=rate, dead_after=None)
        exp = {w: grad(w, a.d) for w in srv.workers}
        res = []
        for step in range(1, a.reps + 2):
            t0 = time.monotonic()
            srv.broadcast(step, np.zeros(1, np.float32))
            G, stats = srv.receive(step, copy=False)
            t1 = time.monotonic()
            ok = all(np.array_equal(G[i], exp[w]) for i, w in enumerate(srv.workers) if stats[i]["complete"])
            complete = sum(s["received"] for s in stats) / sum(s["expected"] for s in stats)
            if step > 1:
                res.append({"seconds": t1 - t0, "reason": srv.last_info["reason"], "ok": ok,
                            "complete_fraction": complete})
        srv.shutdown()
        print("RESULT " + json.dumps(res), flush=True)
    else:
        w = WorkerTransport(comm)
        g = grad(r, w.d)
        while True:
            step, _ = w.recv_params(timeout=300)
            if step is None:
                break
            w.send(step, g)
        w.close()


# ---------------------------------------------------------------- drivers --
class Child:
    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        line = self.p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"child {args} failed to start: {line!r}")

    def ask(self, cmd: str) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()


def bench_udp(d: int, reps: int, auth: bool = True, gso: bool = True, rate: float = 0.0) -> dict:
    from lossympi import GradientReceiver

    key = os.urandom(32)
    rx = GradientReceiver([1], d, deadline=30.0, keys={1: key} if auth else None, auth=auth)
    exp = grad(1, d)
    args = ["--role", "udp-sender", "--d", str(d), "--port", str(rx.address[1]), "--rank", "1",
            "--key", key.hex() if auth else "", "--rate", str(rate)] + ([] if gso else ["--no-gso"])
    child = Child(args)
    out = []
    try:
        for step in range(1, reps + 2):
            rx.expect(step)
            t_open = time.monotonic()
            c_rx0, c_tx0 = time.process_time(), cpu_of(child.p.pid)
            sent = child.ask(f"send {step}")
            G, stats = rx.receive(step, copy=False)
            c_rx, c_tx = time.process_time() - c_rx0, cpu_of(child.p.pid) - c_tx0
            s = stats[0]
            ok = bool(np.array_equal(G[0], exp)) if s["complete"] else None
            t_last = t_open + s["last_s"]
            if step > 1:
                out.append({"seconds": t_last - sent["t0"], "bytes": s["bytes"], "send_s": sent["t1"] - sent["t0"],
                            "complete": s["complete"], "received": s["received"], "expected": s["expected"],
                            "ok": ok, "cpu": c_rx + c_tx, "cpu_rx": c_rx, "cpu_tx": c_tx, "gso": sent["stats"]["gso"],
                            "syscalls": sent["stats"]["syscalls"]})
    finally:
        child.close()
        rx.close()
    return summarize(out, d * 4) | {"mac": rx.mac, "rcvbuf_granted": rx.socket_info["rcvbuf_granted"],
                                   "gro": rx.socket_info["gro"]}


def bench_tcp(d: int, reps: int) -> dict:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    out = []
    buf = np.empty(d, np.float32)
    mv = memoryview(buf).cast("B")
    exp = grad(1, d)
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "tcp-sender", "--d", str(d), "--port",
                          str(srv.getsockname()[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=ENV, cwd=ROOT)
    try:
        conn, _ = srv.accept()
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("tcp sender failed to start")
        for rep in range(reps + 1):
            c_rx0, c_tx0 = time.process_time(), cpu_of(p.pid)
            p.stdin.write("send\n")
            p.stdin.flush()
            got = 0
            while got < len(mv):
                n = conn.recv_into(mv[got:], min(len(mv) - got, 16 << 20))
                if n == 0:
                    raise RuntimeError("tcp sender closed early")
                got += n
            t_last = time.monotonic()
            sent = json.loads(p.stdout.readline())
            c_rx, c_tx = time.process_time() - c_rx0, cpu_of(p.pid) - c_tx0
            ok = bool(np.array_equal(buf, exp))
            buf[:] = 0
            if rep > 0:
                out.append({"seconds": t_last - sent["t0"], "bytes": got, "ok": ok, "complete": True,
                            "cpu": c_rx + c_tx, "cpu_rx": c_rx, "cpu_tx": c_tx})
        conn.close()
    finally:
        try:
            p.stdin.write("quit\n")
            p.stdin.flush()
            p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            p.kill()
            p.wait()
        srv.close()
    return summarize(out, d * 4)


def run_mpi(n: int, args: list[str], timeout: float = 900) -> list[dict]:
    exe = mpiexec()
    if exe is None:
        raise RuntimeError("mpiexec not found next to this Python")
    from lossympi.keys import launch_args

    genv, server_env, _ = launch_args()  # this job's key pair: public to all, secret to rank 0 only
    me = [sys.executable, os.path.abspath(__file__), *args]
    cmd = [exe, "-disable-auto-cleanup", *genv, "-n", "1", *server_env, *me, ":", "-n", str(n - 1), *me]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT, check=False)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"mpiexec run failed (rc={r.returncode}):\n{r.stdout}\n{r.stderr}")


def bench_mpi(d: int, reps: int) -> dict:
    res = run_mpi(2, ["--role", "mpi-p2p", "--d", str(d), "--reps", str(reps)])
    for x in res:
        x.update(bytes=d * 4, complete=True)
    return summarize(res, d * 4)


def summarize(runs: list[dict], nbytes: int) -> dict:
    secs = [r["seconds"] for r in runs]
    med = statistics.median(secs)
    good = [r["bytes"] / r["seconds"] / 1e9 for r in runs]
    cpu = statistics.median(r["cpu"] for r in runs)
    cpu_tx = statistics.median(r["cpu_tx"] for r in runs)
    cpu_rx = statistics.median(r["cpu_rx"] for r in runs)
    bottleneck = max(cpu_tx, cpu_rx)
    return {"runs": runs, "median_s": med, "goodput_gbps": statistics.median(good), "best_gbps": max(good),
            "gb_per_cpu_s": nbytes / 1e9 / cpu if cpu > 0 else None, "cpu_s": cpu, "cpu_tx_s": cpu_tx,
            "cpu_rx_s": cpu_rx, "cpu_bound_gbps": nbytes / 1e9 / bottleneck if bottleneck > 0 else None,
            "all_ok": all(r.get("ok") in (True, None) for r in runs),
            "complete": sum(bool(r["complete"]) for r in runs) / len(runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="main")
    ap.add_argument("--mb", type=float, default=100.0, help="gradient size, MB (10^6 bytes)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--collect-mb", default="1,25", help="per-worker sizes (MB) for the 8-worker collection")
    ap.add_argument("--collect-rate", type=float, default=0.0,
                    help="pacing of each worker in the collection (bytes/s; 0 = unpaced)")
    ap.add_argument("--collect-deadline", type=float, default=5.0, help="server deadline in the collection (s)")
    ap.add_argument("--skip-collect", action="store_true")
    ap.add_argument("--collect-transports", default="udp,mpi", help="transports of the collection, in this order")
    ap.add_argument("--only-collect", action="store_true", help="skip the one-to-one goodput benchmarks")
    ap.add_argument("--only-goodput", action="store_true", help="one-to-one: only udp (auth, GSO) and tcp")
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    # child arguments
    ap.add_argument("--d", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--key", default="")
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--no-gso", action="store_true")
    ap.add_argument("--transport", default="udp")
    a = ap.parse_args()
    roles = {"udp-sender": role_udp_sender, "tcp-sender": role_tcp_sender, "mpi-p2p": role_mpi_p2p,
             "collect": role_collect}
    if a.role in roles:
        roles[a.role](a)
        return 0

    d = int(a.mb * 1e6 / 4)
    report = {"gradient_bytes": d * 4, "reps": a.reps, "cpus": os.cpu_count(), "loadavg_start": loadavg()}
    print(f"# LossyMPI transport benchmark: {d * 4 / 1e6:.0f} MB gradient, {a.reps} reps (+1 warm-up), "
          f"{os.cpu_count()} CPUs, load average {loadavg():.1f}", flush=True)
    rows = {}
    if not a.only_collect:
        rows["udp (auth, GSO)"] = bench_udp(d, a.reps)
        if not a.only_goodput:
            rows["udp (auth, sendmmsg)"] = bench_udp(d, a.reps, gso=False)
            rows["udp (no auth, GSO)"] = bench_udp(d, a.reps, auth=False)
        rows["tcp socket"] = bench_tcp(d, a.reps)
        if not a.only_goodput:
            try:
                rows["mpi p2p"] = bench_mpi(d, a.reps)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"# mpi p2p skipped: {e}", flush=True)
    print(f"{'path':24s} {'goodput GB/s':>12s} {'best':>6s} {'median s':>9s} {'cpu tx s':>9s} {'cpu rx s':>9s} "
          f"{'cpu-bound GB/s':>14s} {'complete':>8s} ok")
    for name, r in rows.items():
        print(f"{name:24s} {r['goodput_gbps']:12.2f} {r['best_gbps']:6.2f} {r['median_s']:9.3f} "
              f"{r['cpu_tx_s']:9.3f} {r['cpu_rx_s']:9.3f} {(r['cpu_bound_gbps'] or 0):14.2f} "
              f"{r['complete']:8.0%} {r['all_ok']}")
    print("(cpu-bound GB/s = bytes / max(sender CPU s, receiver CPU s): the rate with one idle core per side. "
          "On one host MPI moves the data through shared memory, not the network stack)")
    u = rows["udp (auth, GSO)"]["goodput_gbps"] if rows else 0.0
    ratios = {k: u / r["goodput_gbps"] for k, r in rows.items() if r["goodput_gbps"] > 0}
    print("ratios (udp auth GSO / x): " + ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    report["one_to_one"] = rows
    report["ratios_udp_over"] = ratios
    if not a.skip_collect and mpiexec() is not None:
        coll = {}
        for mb in [float(x) for x in a.collect_mb.split(",") if x]:
            dd = int(mb * 1e6 / 4)
            for tr in [t for t in a.collect_transports.split(",") if t]:
                try:
                    res = run_mpi(a.workers + 1, ["--role", "collect", "--d", str(dd), "--reps", str(a.reps),
                                                  "--transport", tr, "--rate", str(a.collect_rate),
                                                  "--deadline", str(a.collect_deadline)])
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"# collect {tr} {mb} MB failed: {e}", flush=True)
                    continue
                secs = [x["seconds"] for x in res]
                c = {"per_worker_mb": mb, "median_s": statistics.median(secs), "best_s": min(secs),
                     "complete": statistics.median(x["complete_fraction"] for x in res),
                     "all_ok": all(x["ok"] for x in res), "reasons": sorted({x["reason"] for x in res}),
                     "aggregate_gbps": a.workers * dd * 4 / statistics.median(secs) / 1e9}
                coll[f"{tr} {mb:g} MB"] = c
                print(f"collect {a.workers} workers x {mb:g} MB over {tr}: median {c['median_s'] * 1e3:.1f} ms "
                      f"(best {c['best_s'] * 1e3:.1f}), {c['aggregate_gbps']:.2f} GB/s aggregate, "
                      f"complete {c['complete']:.1%}, ok {c['all_ok']}, end {c['reasons']}", flush=True)
        report["collect"] = coll
    report["loadavg_end"] = loadavg()
    print(f"# load average at the end: {report['loadavg_end']:.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
