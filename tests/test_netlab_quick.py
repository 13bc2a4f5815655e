"""bench/netlab quick mode: the lab builds its namespaces, bottleneck and loss
rule, runs a few synchronous steps over LossyMPI and TCP, writes its table,
and always tears everything down. Runs where the machine allows it (root,
iproute2, nftables, ethtool); asserts only facts that do not depend on timing:
every step completed or was accounted for, the TCP bytes arrived intact, the
loss rule dropped packets when asked to, and no namespace is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "netlab"))

import topo  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture
def lab_ok():
    why = topo.can_run()
    if why:
        pytest.skip(why)
    r = topo.sh("ip", "netns", "add", f"nl{os.getpid()}-probe", check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    topo.sh("ip", "netns", "del", f"nl{os.getpid()}-probe", check=False)


def test_quick_matrix_runs_and_cleans_up(lab_ok, tmp_path):
    out = tmp_path / "quick"
    before = set(topo.list_namespaces())
    r = subprocess.run([os.path.join(ROOT, "bench", "netlab", "netlab.sh"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=280, env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stdout + r.stderr
    after = set(topo.list_namespaces())
    assert not {ns for ns in after - before if ns.startswith("nl")}, after - before
    rep = json.loads((out.parent / "quick.json").read_text())
    rows = rep["rows"]
    assert {(x["mode"], x["loss"]) for x in rows} == {("udp", 0.0), ("udp", 0.05), ("tcp", 0.0), ("tcp", 0.05)}
    for x in rows:
        assert x["steps"] == 6 and x["n"] == 2 and x["ideal_ms"] > 0 and x["p99_ms"] >= x["p50_ms"] > 0
        if x["mode"] == "tcp":
            assert x["corrupt"] == 0 and x["missing"] == 0 and x["reasons"] == {"complete": 6}
        else:
            assert x["chunks"] == 6 * 2 * 187  # 256 KB = 187 chunks of 1408 bytes per worker and step
            assert 0 <= x["missing"] <= x["chunks"]
            assert sum(x["reasons"].values()) == 6
        if x["loss"] > 0:
            assert x["nft_drops"] > 0  # the loss rule was live
    md = (out.parent / "quick.md").read_text()
    assert md.count("| 2 x 0.25 MB |") == 4
