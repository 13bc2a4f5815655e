"""LossyMPI under real packet loss and a rate limit, inside a network namespace
made by the test: an nftables rule drops a random share of the datagrams
(``numgen random mod 100 < N drop``) and counts them; the receiver's
statistics must match that count exactly. A tc tbf shaper shows why senders
pace. Skipped (with the reason) where namespaces cannot be created; the
namespace (and the nftables table and qdisc inside it) is deleted even when a
test fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 45123
PREFIX = "lmpi-test-"


def _run(*cmd: str, check: bool = True, input: str | None = None, timeout: float = 30):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, input=input, timeout=timeout)


def _cleanup_stale() -> None:
    """Namespaces left by earlier runs whose test process is gone."""
    try:
        names = _run("ip", "netns", "list", check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return
    for name in names:
        m = re.fullmatch(PREFIX + r"(\d+)-\d+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _run("ip", "netns", "del", name, check=False)


@pytest.fixture
def netns(request):
    """A fresh network namespace with lo up; deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_SYS_ADMIN/CAP_NET_ADMIN)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' is not installed (iproute2 / nftables)")
    _cleanup_stale()
    name = f"{PREFIX}{os.getpid()}-{abs(hash(request.node.nodeid)) % 100000}"
    r = _run("ip", "netns", "add", name, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _run("ip", "netns", "del", name, check=False)
        assert name not in _run("ip", "netns", "list", check=False).stdout


def nft(ns: str, script: str) -> None:
    _run("ip", "netns", "exec", ns, "nft", "-f", "-", input=script)


def nft_counter(ns: str, table: str) -> int:
    out = _run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table).stdout
    total = 0
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += expr["counter"]["packets"]
    return total


# Runs inside the namespace: receiver and sender on the namespace's loopback.
PAIR = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lossympi import GradientReceiver, GradientSender
    d, steps, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rate = None if sys.argv[4] == "none" else float(sys.argv[4])
    gso = sys.argv[5] == "1"
    deadline = float(sys.argv[6])
    keys = {1: bytes(range(32))}
    rx = GradientReceiver([1], d, deadline=deadline, keys=keys, port=port, grace=0.05, adaptive_grace=False)
    tx = GradientSender(("127.0.0.1", port), keys[1], rate, rank=1, gso=gso)
    ce = rx.geometry["chunk_elems"]
    out = []
    for step in range(1, steps + 1):
        g = ((np.arange(d) % 1000) * 0.5 + step).astype(np.float32)
        rx.expect(step)
        st = tx.send(step, g)
        G, s = rx.receive(step)
        bad = sum(not np.array_equal(G[0, c:c + ce], g[c:c + ce]) for c in range(0, d, ce))
        nan_ok = all(np.isnan(G[0, c:c + ce]).all() or np.array_equal(G[0, c:c + ce], g[c:c + ce])
                     for c in range(0, d, ce))
        out.append(dict(s[0], sent_datagrams=st["datagrams"], send_dropped=st["dropped"], send_s=st["seconds"],
                        bad_chunks=int(bad),
                        nan_ok=bool(nan_ok), reason=rx.last_info["reason"], elapsed=rx.last_info["elapsed_s"]))
    print(json.dumps(out))
    """
)


def run_pair(ns: str, d: int, steps: int, rate, gso: bool, deadline: float = 3.0) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PAIR, str(d), str(steps), str(PORT),
                        "none" if rate is None else str(rate), "1" if gso else "0", str(deadline)],
                       check=False, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("hook", ["input", "output"])
def test_nftables_random_drop_exact_accounting(netns, hook):
    # input: silent loss, as on a network; output: the sender's sendmmsg() sees EPERM, which is loss too
    nft(netns, f"""
        table inet lmpi {{
          chain c {{
            type filter hook {hook} priority 0; policy accept;
            udp dport {PORT} numgen random mod 100 < 20 counter drop
          }}
        }}""")
    d, steps = 200_000, 4
    res = run_pair(netns, d, steps, rate=200e6, gso=False)
    dropped_by_kernel = nft_counter(netns, "lmpi")
    sent = sum(s["sent_datagrams"] + s["send_dropped"] for s in res)
    arrived = sum(s["received"] + s["end_markers"] + s["duplicates"] for s in res)
    assert dropped_by_kernel > 0.1 * sent  # ~20% of the datagrams were dropped by the rule
    assert arrived == sent - dropped_by_kernel, (sent, dropped_by_kernel, res)
    for s in res:
        assert s["filled"] == s["bad_chunks"] > 0  # every missing chunk filled, nothing else touched
        assert s["nan_ok"] and s["rejected"] == 0 and s["dropped"] == 0
        assert s["received"] + s["filled"] == s["expected"]
        # the step ended at the END markers + grace, not at the 3 s deadline (unless both copies were lost)
        assert s["reason"] == "markers" or s["end_markers"] == 0


def test_pacing_beats_a_shallow_rate_limited_queue(netns):
    if shutil.which("tc") is None:
        pytest.skip("'tc' is not installed (iproute2)")
    # 200 Mbit/s with a ~64 KB queue: an unpaced 4 MB burst overflows it
    r = _run("ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "200mbit",
             "burst", "32kb", "limit", "64kb", check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot add a tbf qdisc: {r.stderr.strip()}")
    d = 1_000_000  # 4 MB
    unpaced = run_pair(netns, d, 2, rate=None, gso=False, deadline=5.0)
    paced = run_pair(netns, d, 2, rate=15e6, gso=False, deadline=5.0)  # 120 Mbit/s < 200 Mbit/s
    lost_unpaced = sum(s["filled"] for s in unpaced)
    lost_paced = sum(s["filled"] for s in paced)
    assert lost_unpaced > 0.2 * sum(s["expected"] for s in unpaced), unpaced
    assert lost_paced < lost_unpaced / 5, (lost_paced, lost_unpaced)
