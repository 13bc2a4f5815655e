"""The network lab's matrix: step time of a synchronous parameter server over
LossyMPI (authenticated UDP) vs plain TCP sockets, N workers x S bytes, random
loss, through a 1 Gbit/s bottleneck with a 128 KB queue at the server's port.

Run as root from the repository root (bench/netlab/netlab.sh wraps it and
always tears the lab down, even on Ctrl-C):

    sudo bench/netlab/netlab.sh                    # full matrix: N {4,19} x S {1,4} MB x loss {0,1,5}%
    sudo bench/netlab/netlab.sh --quick            # CI-sized: N=2, S=256 KB, loss {0,5}%, 6 steps
    sudo bench/netlab/netlab.sh --n 19 --out bench/results/netlab_n19   # one part of the matrix

Writes <out>.md (the table), <out>.json (every step), <out>_cdf.png (step-time
CDFs). Per cell: p50/p99 step time, ideal = N*S / rate, missing chunks
(LossyMPI: filled at the server), queue drops at the bottleneck, the senders'
achieved/target pacing rate, and the CPU load of the machine during the cell
(busy share of all cores from /proc/stat, and the 1-minute load average):
every process runs on this machine's cores, so with 19 senders the CPU can be
the limit, not the network.

The project's MPI transport (`--modes mpi`, not in the default modes: it adds
a third of the time): mpiexec starts rank 0 in the server's namespace and
rank k in worker k-1's (`ip netns exec` as each rank's command; hydra's PMI
connection is an inherited socket, so it crosses namespaces). MPICH would
move data between ranks of one host through shared memory (or UCX's), which
bypasses the lab; MPIR_CVAR_NOLOCAL=1 (every rank "remote"), the ofi netmod
without its shm provider, FI_PROVIDER=tcp and FI_TCP_IFACE=eth0 (each
namespace's lab interface) force it onto the emulated network, and every
cell checks that the bottleneck qdisc counted at least the gradients' bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import topo  # noqa: E402

DRIVER = os.path.join(HERE, "step_driver.py")
LOSSYMPI_ROOT = ""  # --lossympi-root: another checkout whose lossympi the driver imports (before/after runs)
MB = 1 << 20


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def run_cell(lab: topo.Lab, mode: str, size: int, steps: int, warmup: int, deadline: float, pace: float,
             tmp: str, extra: list[str]) -> dict:
    n = lab.n
    secret = secrets.token_hex(32)
    out = os.path.join(tmp, f"server_{mode}_{n}_{size}_{lab.loss}.json")
    if os.path.exists(out):
        os.remove(out)
    common = ["--mode", mode, "--n", str(n), "--size", str(size), "--steps", str(steps), "--warmup", str(warmup),
              "--deadline", str(deadline), "--pace", str(pace), "--link-mbit", str(lab.rate_mbit),
              "--secret", secret, "--server", topo.SERVER_IP, *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in (LOSSYMPI_ROOT, ROOT, os.environ.get("PYTHONPATH"))
                                                      if x), OMP_NUM_THREADS="1")
    procs = []
    if mode == "mpi":
        return run_mpi_cell(lab, size, steps, warmup, out, env)
    q0 = lab.qdisc_stats()
    d0 = lab.dropped()
    b0, t0_ = cpu_times()
    t_start = time.monotonic()
    srv = subprocess.Popen(lab.exec_prefix(lab.server_ns) + [sys.executable, DRIVER, "server", *common, "--out", out],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(srv)
    for k in range(n):
        procs.append(subprocess.Popen(
            lab.exec_prefix(lab.worker_ns(k)) + [sys.executable, DRIVER, "worker", *common, "--rank", str(k)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    limit = 60 + (steps + warmup) * (deadline + 3.0)
    try:
        log, _ = srv.communicate(timeout=limit)
        for p in procs[1:]:
            p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise RuntimeError(f"cell {mode} N={n} S={size} loss={lab.loss} did not finish in {limit:.0f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - t_start
    b1, t1_ = cpu_times()
    if srv.returncode != 0 or not os.path.exists(out):
        wl = "".join((p.stdout.read() if p.stdout else "") for p in procs[1:3])
        raise RuntimeError(f"server failed (rc={srv.returncode}):\n{log}\n{wl}")
    with open(out) as f:
        rep = json.load(f)
    q1 = lab.qdisc_stats()
    rep["wall_s"] = wall
    rep["cpu_busy"] = (b1 - b0) / max(1, t1_ - t0_)
    rep["loadavg"] = loadavg()
    rep["queue_drops"] = q1.get("dropped", 0) - q0.get("dropped", 0)
    rep["nft_drops"] = lab.dropped() - d0
    rep["loss"] = lab.loss
    return rep


def run_mpi_cell(lab: topo.Lab, size: int, steps: int, warmup: int, out: str, env: dict) -> dict:
    sys.path.insert(0, ROOT)
    from lossympi.keys import launch_args

    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    genv, server_env, _ = launch_args()
    common = ["--mode", "mpi", "--n", str(lab.n), "--size", str(size), "--steps", str(steps), "--warmup",
              str(warmup), "--deadline", "60", "--out", out]
    me = [sys.executable, DRIVER, "mpirank", *common]
    cmd = [exe, "-disable-auto-cleanup", *genv, "-n", "1", *server_env, *lab.exec_prefix(lab.server_ns), *me]
    for k in range(lab.n):
        cmd += [":", "-n", "1", *lab.exec_prefix(lab.worker_ns(k)), *me]
    env = dict(env, MPIR_CVAR_NOLOCAL="1", MPIR_CVAR_CH4_NETMOD="ofi", MPIR_CVAR_CH4_OFI_ENABLE_SHM="0",
               FI_SHM_DISABLE="1", FI_PROVIDER="tcp", FI_TCP_IFACE="eth0")
    q0 = lab.qdisc_stats()
    d0 = lab.dropped()
    b0, t0_ = cpu_times()
    t_start = time.monotonic()
    limit = 120 + (steps + warmup) * 30
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        log, _ = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise RuntimeError(f"mpi cell N={lab.n} S={size} loss={lab.loss} did not finish in {limit} s")
    wall = time.monotonic() - t_start
    b1, t1_ = cpu_times()
    if p.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"mpiexec failed (rc={p.returncode}):\n{log[-3000:]}")
    with open(out) as f:
        rep = json.load(f)
    q1 = lab.qdisc_stats()
    rep.update(wall_s=wall, cpu_busy=(b1 - b0) / max(1, t1_ - t0_), loadavg=loadavg(),
               queue_drops=q1.get("dropped", 0) - q0.get("dropped", 0), nft_drops=lab.dropped() - d0,
               loss=lab.loss, qdisc_bytes=q1.get("bytes", 0) - q0.get("bytes", 0))
    need = lab.n * size * (steps + warmup)
    if rep["qdisc_bytes"] < 0.95 * need:  # the gradients must have crossed the bottleneck
        raise RuntimeError(f"MPI bypassed the lab: the bottleneck saw {rep['qdisc_bytes']} bytes, the gradients "
                           f"were {need} (shared memory instead of the network?)")
    return rep


def summarize(rep: dict, rate_mbit: float) -> dict:
    n, size = rep["n"], rep["size"]
    ts = [s["seconds"] * 1e3 for s in rep["steps"]]
    ideal = n * size / (rate_mbit * 1e6 / 8) * 1e3
    missing = sum(s.get("missing", 0) for s in rep["steps"])
    chunks = sum(s.get("chunks", 0) for s in rep["steps"])
    ratios = []
    abandoned = 0
    for w in (rep.get("workers") or {}).values():
        if not w:
            continue
        for st in w.get("sends", []):
            if st.get("abandoned"):
                abandoned += 1
            elif st.get("target_rate") and st.get("achieved_rate"):
                ratios.append(st["achieved_rate"] / st["target_rate"])
    reasons: dict = {}
    for s in rep["steps"]:
        reasons[s.get("reason")] = reasons.get(s.get("reason"), 0) + 1
    return {"mode": rep["mode"], "n": n, "size_mb": size / MB, "loss": rep["loss"], "ideal_ms": ideal,
            "p50_ms": pct(ts, 50), "p99_ms": pct(ts, 99), "max_ms": max(ts) if ts else float("nan"),
            "missing": missing, "chunks": chunks, "deadline_steps": reasons.get("deadline", 0),
            "reasons": reasons, "queue_drops": rep["queue_drops"], "nft_drops": rep["nft_drops"],
            "pace_ratio": (sum(ratios) / len(ratios)) if ratios else None,
            "pace_ratio_min": min(ratios) if ratios else None, "abandoned": abandoned,
            "cpu_busy": rep["cpu_busy"], "loadavg": rep["loadavg"], "steps": len(ts),
            "corrupt": sum(s.get("corrupt", 0) for s in rep["steps"]), "times_ms": ts}


def table(rows: list[dict], header: str) -> str:
    out = [header, "",
           "| N x S | loss | mode | ideal ms | p50 ms | p99 ms | p99/ideal | missing chunks | deadline steps "
           "| queue drops | pace achieved/target | CPU busy | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        miss = (f"{r['missing']} / {r['chunks']} ({100 * r['missing'] / r['chunks']:.2f}%)"
                if r["chunks"] else ("0 (reliable)" if r["mode"] in ("tcp", "mpi") else "-"))
        pace = (f"{r['pace_ratio']:.3f} (min {r['pace_ratio_min']:.3f})" if r["pace_ratio"] is not None else "-")
        out.append(f"| {r['n']} x {r['size_mb']:g} MB | {100 * r['loss']:g}% | {r['mode']} | {r['ideal_ms']:.1f} "
                   f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_ms'] / r['ideal_ms']:.2f} | {miss} "
                   f"| {r['deadline_steps']} | {r['queue_drops']} | {pace} | {100 * r['cpu_busy']:.0f}% "
                   f"| {r['loadavg']:.1f} |")
    return "\n".join(out) + "\n"


def cdf_plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({(r["n"], r["size_mb"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (n, s) in zip(axes[0], groups):
        for r in rows:
            if (r["n"], r["size_mb"]) != (n, s):
                continue
            xs = sorted(t / r["ideal_ms"] for t in r["times_ms"])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=f"{r['mode']} {100 * r['loss']:g}%",
                    linestyle="-" if r["mode"] == "udp" else "--")
        ax.set_title(f"N={n} x {s:g} MB")
        ax.set_xlabel("step time / ideal")
        ax.set_xscale("log")
        ax.set_ylabel("CDF")
        ax.axvline(1.15, color="gray", linewidth=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized: N=2, S=256 KB, loss 0 and 5%%, 6 steps")
    ap.add_argument("--n", type=int, nargs="*", default=None)
    ap.add_argument("--size-mb", type=float, nargs="*", default=None)
    ap.add_argument("--loss", type=float, nargs="*", default=None, help="percent")
    ap.add_argument("--modes", nargs="*", default=["udp", "tcp"], help="udp, tcp, mpi")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pace", type=float, default=0.97)
    ap.add_argument("--rate-mbit", type=float, default=1000.0)
    ap.add_argument("--queue-kb", type=int, default=128)
    ap.add_argument("--fixed-grace", action="store_true")
    ap.add_argument("--lossympi-root", default="", help="import lossympi from this checkout (e.g. main's, built)")
    ap.add_argument("--label", default="", help="a line under the table's title (engine version, conditions)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "netlab"))
    a = ap.parse_args()
    global LOSSYMPI_ROOT
    LOSSYMPI_ROOT = os.path.abspath(a.lossympi_root) if a.lossympi_root else ""
    if "mpi" in a.modes and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")):
        print("netlab: --modes mpi needs mpiexec next to this Python (pip install mpich mpi4py)", file=sys.stderr)
        return 2
    why = topo.can_run()
    if why:
        print(f"netlab: cannot run: {why}", file=sys.stderr)
        return 2
    removed = topo.remove_stale()
    if removed:
        print(f"netlab: removed stale namespaces {removed}", file=sys.stderr)
    if a.quick:
        ns, sizes, losses, steps = a.n or [2], a.size_mb or [0.25], a.loss or [0, 5], a.steps or 6
    else:
        ns, sizes, losses, steps = a.n or [4, 19], a.size_mb or [1, 4], a.loss or [0, 1, 5], a.steps or 30
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = os.path.abspath(a.out) + "_tmp"
    os.makedirs(tmp, exist_ok=True)
    extra = ["--fixed-grace"] if a.fixed_grace else []
    rows: list[dict] = []
    t_all = time.monotonic()
    lab = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for n in ns:
            lab = topo.Lab(n=n, rate_mbit=a.rate_mbit, queue_bytes=a.queue_kb * 1024)
            lab.build()
            for s in sizes:
                size = int(s * MB) // 4 * 4
                ideal = n * size / (a.rate_mbit * 1e6 / 8)
                deadline = 2.0 * ideal + 0.05
                for loss in losses:
                    lab.set_loss(loss / 100.0)
                    for mode in a.modes:
                        rep = run_cell(lab, mode, size, steps, a.warmup, deadline, a.pace, tmp, extra)
                        row = summarize(rep, a.rate_mbit)
                        rows.append(row)
                        print(f"netlab: {mode} N={n} S={s:g}MB loss={loss:g}%: p50 {row['p50_ms']:.1f} "
                              f"p99 {row['p99_ms']:.1f} ms (ideal {row['ideal_ms']:.1f}), missing {row['missing']}, "
                              f"queue drops {row['queue_drops']}, cpu {100 * row['cpu_busy']:.0f}%", flush=True)
            left = lab.teardown()
            if left:
                raise RuntimeError(f"namespaces left behind: {left}")
            lab = None
    finally:
        if lab is not None:
            left = lab.teardown()
            if left:
                print(f"netlab: could not delete {left}", file=sys.stderr)
    elapsed = time.monotonic() - t_all
    head = (f"## netlab: {'quick' if a.quick else 'matrix'} ({a.rate_mbit:g} Mbit/s bottleneck, "
            f"{a.queue_kb} KB queue, {steps} steps per cell after {a.warmup} warm-up, senders paced at "
            f"{a.pace:g} of their share; {os.cpu_count()} CPUs; {elapsed:.0f} s)")
    if a.label:
        head += f"\n\n{a.label}"
    md = table(rows, head)
    with open(a.out + ".md", "w") as f:
        f.write(md)
    with open(a.out + ".json", "w") as f:
        json.dump({"args": vars(a), "elapsed_s": elapsed, "rows": rows}, f, indent=1)
    cdf_plot(rows, a.out + "_cdf.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
