"""Synchronous parameter-server steps over one data transport, for the network lab.

One server and N workers (each in its own network namespace, started by
matrix.py). The control signal is the same for every transport: a TCP
connection per worker on which the server writes the step number (u64 BE;
0 = stop). At step s the server opens the step, signals every worker, and
waits until it holds every worker's S-byte gradient (or, for LossyMPI, the
step ended by the protocol's rules); step time = that interval on the
server's clock. Data transports:

  udp  LossyMPI (lossympi.GradientReceiver / GradientSender), authenticated
       (per-rank keys), no GSO (the lab's qdisc and nftables see wire
       packets), each worker paced at its share of the bottleneck. A worker
       that gets the next step's signal while still sending abandons the old
       send (the step closed at the server).
  tcp  one persistent TCP connection per worker (TCP_NODELAY); the server reads
       exactly S bytes per worker per step.
  mpi  the project's `mpi` transport (lossympi ServerTransport/WorkerTransport
       with transport="mpi": parameters broadcast and gradients sent over MPI
       point-to-point), one rank per namespace under mpiexec (role `mpirank`;
       matrix.py starts it with MPICH forced onto the network: no shared
       memory, libfabric's tcp provider on eth0). Its control signal is the
       transport's own parameter broadcast (a 1-element array), and the server
       waits for every gradient (deadline 60 s), like TCP.

    python step_driver.py server --mode udp --n 4 --size 1048576 --steps 30 --out s.json ...
    python step_driver.py worker --mode udp --rank 0 --server 10.77.0.1 ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

WIRE_PER_DATAGRAM = 14 + 20 + 8  # Ethernet + IPv4 + UDP header bytes on the wire per datagram


def lab_key(secret: str, rank: int) -> bytes:
    """Per-rank datagram key of this lab run (both sides derive it from the run's secret)."""
    return hashlib.blake2b(f"netlab:{rank}".encode(), key=bytes.fromhex(secret), digest_size=32).digest()


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("peer closed")
        got += k
    return bytes(buf)


def connect_retry(addr: tuple[str, int], timeout: float = 30.0) -> socket.socket:
    t_end = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection(addr, timeout=5.0)
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > t_end:
                raise
            time.sleep(0.05)


def gradient(rank: int, size: int) -> np.ndarray:
    d = size // 4
    g = np.arange(d, dtype=np.float32)
    g %= 1000
    g += rank
    return g


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# ------------------------------------------------------------------ server --
def run_server(a) -> dict:
    n, d = a.n, a.size // 4
    ranks = list(range(1, n + 1))
    rx = None
    data_lsn = None
    if a.mode == "udp":
        from lossympi import GradientReceiver

        keys = {r: lab_key(a.secret, r) for r in ranks}
        kw = {} if a.fixed_grace else {"adaptive_grace": True}
        try:
            rx = GradientReceiver(ranks, d, deadline=a.deadline, keys=keys, host="0.0.0.0", port=a.udp_port,
                                  grace=a.grace, **kw)
        except TypeError:  # an engine before issue 10 (the "before" matrix): constant grace only
            rx = GradientReceiver(ranks, d, deadline=a.deadline, keys=keys, host="0.0.0.0", port=a.udp_port,
                                  grace=a.grace)
    else:
        data_lsn = socket.create_server(("0.0.0.0", a.data_port), backlog=n + 8, reuse_port=False)
    ctl_lsn = socket.create_server(("0.0.0.0", a.ctl_port), backlog=n + 8)
    ctl: dict[int, socket.socket] = {}
    while len(ctl) < n:
        c, _ = ctl_lsn.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = struct.unpack(">I", recv_exact(c, 4))[0]
        ctl[r] = c
    data: dict[int, socket.socket] = {}
    if data_lsn is not None:
        while len(data) < n:
            c, _ = data_lsn.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            r = struct.unpack(">I", recv_exact(c, 4))[0]
            data[r] = c
    bufs = {r: bytearray(a.size) for r in ranks} if data else {}
    expect = {r: gradient(r, a.size).tobytes() for r in ranks} if data else {}
    steps = []
    c0 = cpu_seconds()
    for step in range(1, a.warmup + a.steps + 1):
        if rx is not None:
            rx.expect(step)
        msg = struct.pack(">Q", step)
        t0 = time.monotonic()
        for r in ranks:
            ctl[r].sendall(msg)
        rec: dict = {"step": step}
        if rx is not None:
            _G, stats = rx.receive(step, copy=False)
            t1 = time.monotonic()
            info = rx.last_info
            rec.update(reason=info["reason"], grace_s=info.get("grace_s"), spread_s=info.get("spread_s"),
                       missing=sum(s["filled"] for s in stats), chunks=sum(s["expected"] for s in stats),
                       late=sum(s["late"] for s in stats), kernel_dropped=info.get("kernel_dropped", 0),
                       last_end_s=max((s["end_s"] for s in stats if s["end_s"] is not None and s["end_s"] >= 0),
                                      default=None))
        else:
            sel = selectors.DefaultSelector()
            got = {r: 0 for r in ranks}
            views = {r: memoryview(bufs[r]) for r in ranks}
            for r in ranks:
                sel.register(data[r], selectors.EVENT_READ, r)
            left = n
            while left:
                for key, _ in sel.select():
                    r = key.data
                    k = data[r].recv_into(views[r][got[r]:])
                    if k == 0:
                        raise ConnectionError(f"worker {r} closed its data connection")
                    got[r] += k
                    if got[r] == a.size:
                        sel.unregister(data[r])
                        left -= 1
            sel.close()
            t1 = time.monotonic()
            bad = sum(bufs[r] != expect[r] for r in ranks)
            rec.update(reason="complete", missing=0, corrupt=int(bad))
        rec["seconds"] = t1 - t0
        if step > a.warmup:
            steps.append(rec)
    cpu = cpu_seconds() - c0
    for r in ranks:
        try:
            ctl[r].sendall(struct.pack(">Q", 0))
        except OSError:
            pass
    # wait for every worker's report line (its send statistics) on the control connection
    workers = {}
    for r in ranks:
        try:
            n_len = struct.unpack(">I", recv_exact(ctl[r], 4))[0]
            workers[r] = json.loads(recv_exact(ctl[r], n_len).decode())
        except (OSError, ConnectionError, ValueError):
            workers[r] = None
    if rx is not None:
        rx.close()
    return {"mode": a.mode, "n": n, "size": a.size, "steps": steps, "server_cpu_s": cpu, "workers": workers}


# ------------------------------------------------------------- mpi ranks --
def run_mpirank(a) -> None:
    from mpi4py import MPI

    from lossympi import ServerTransport, WorkerTransport

    comm = MPI.COMM_WORLD
    r = comm.Get_rank()
    d = a.size // 4
    if r == 0:
        srv = ServerTransport(comm, d, transport="mpi", deadline=a.deadline, dead_after=None)
        exp = {w: gradient(w, a.size) for w in srv.workers}
        steps = []
        c0 = cpu_seconds()
        for step in range(1, a.warmup + a.steps + 1):
            t0 = time.monotonic()
            srv.broadcast(step, np.zeros(1, np.float32))
            G, stats = srv.receive(step, copy=False)
            t1 = time.monotonic()
            bad = sum(not np.array_equal(G[i], exp[w]) for i, w in enumerate(srv.workers))
            if step > a.warmup:
                steps.append({"step": step, "seconds": t1 - t0, "reason": srv.last_info["reason"],
                              "missing": 0, "corrupt": int(bad),
                              "incomplete": sum(not s["complete"] for s in stats)})
        cpu = cpu_seconds() - c0
        srv.shutdown()
        rep = {"mode": "mpi", "n": a.n, "size": a.size, "steps": steps, "server_cpu_s": cpu, "workers": {}}
        with open(a.out, "w") as f:
            f.write(json.dumps(rep))
    else:
        w = WorkerTransport(comm)
        g = gradient(r, a.size)
        while True:
            step, _ = w.recv_params(timeout=600)
            if step is None:
                break
            w.send(step, g)
        w.close()


# ------------------------------------------------------------------ worker --
def run_worker(a) -> None:
    rank = a.rank + 1
    g = gradient(rank, a.size)
    ctl = connect_retry((a.server, a.ctl_port))
    ctl.sendall(struct.pack(">I", rank))
    data = None
    tx = None
    if a.mode == "udp":
        from lossympi import GradientSender

        # pace at this worker's share of the bottleneck, in UDP payload bytes/s
        wire = a.link_mbit * 1e6 / 8
        rate = wire / a.n * a.pace * (1472 / (1472 + WIRE_PER_DATAGRAM))
        tx = GradientSender((a.server, a.udp_port), lab_key(a.secret, rank), rate, rank=rank, gso=False)
    else:
        data = connect_retry((a.server, a.data_port))
        data.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        data.sendall(struct.pack(">I", rank))
    payload = memoryview(g.view(np.uint8))
    sends: list = []
    cur: threading.Thread | None = None
    cur_step = 0
    c0 = cpu_seconds()
    while True:
        step = struct.unpack(">Q", recv_exact(ctl, 8))[0]
        if cur is not None:
            if cur.is_alive() and hasattr(tx, "abandon"):  # (engines before issue 10 cannot cancel)
                tx.abandon(cur_step)  # the server moved on: that step is closed
            cur.join()
            cur = None
        if step == 0:
            break
        if tx is not None:
            cur_step = step

            def run(s=step) -> None:
                st = tx.send(s, g)
                sends.append({k: st.get(k) for k in ("step", "chunks", "chunks_sent", "abandoned", "seconds",
                                                      "paced_s", "target_rate", "achieved_rate", "forgiven_s")})

            cur = threading.Thread(target=run, daemon=True)
            cur.start()
        else:
            data.sendall(payload)
    rep = {"rank": rank, "cpu_s": cpu_seconds() - c0, "sends": sends}
    b = json.dumps(rep).encode()
    ctl.sendall(struct.pack(">I", len(b)) + b)
    ctl.close()
    if tx is not None:
        tx.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=["server", "worker", "mpirank"])
    ap.add_argument("--mode", choices=["udp", "tcp", "mpi"], required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--size", type=int, required=True, help="gradient bytes per worker (multiple of 4)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=1.0)
    ap.add_argument("--grace", type=float, default=0.005)
    ap.add_argument("--fixed-grace", action="store_true", help="constant grace (no adaptive grace)")
    ap.add_argument("--pace", type=float, default=0.97, help="share of the bottleneck the senders pace at")
    ap.add_argument("--link-mbit", type=float, default=1000.0)
    ap.add_argument("--server", default="10.77.0.1")
    ap.add_argument("--ctl-port", type=int, default=47000)
    ap.add_argument("--data-port", type=int, default=47001)
    ap.add_argument("--udp-port", type=int, default=47002)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--secret", default="00" * 32)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.role == "mpirank":
        run_mpirank(a)
        return 0
    if a.role == "server":
        rep = run_server(a)
        text = json.dumps(rep)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
        else:
            print(text)
    else:
        run_worker(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
