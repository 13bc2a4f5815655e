"""The lab's network: namespaces for a server, a bridge and N workers, a 1 Gbit/s
bottleneck with a shallow queue at the server's port, random loss, offloads off.

    server ns  (eth0 10.77.0.1) --veth-- [bridge ns: br0, port "s"  <- tc tbf 1 Gbit/s, 128 KB queue]
    worker k   (eth0 10.77.0.(10+k)) --veth-- [bridge ns: port "wk"]

Every worker's traffic to the server crosses the bridge port toward the server,
whose egress qdisc is the bottleneck (tbf: rate, burst, byte limit = the
queue). Random loss: an nftables rule in the server namespace drops that share
of the packets arriving from the workers (UDP and TCP alike, `numgen random`),
and counts them. Offloads (TSO/GSO/GRO, checksum) are switched off with ethtool
on every veth end, so the qdisc and nftables see wire-sized packets.

Names carry a prefix with this process's pid ("nl<pid>-"): teardown() removes
exactly what this lab made; stale() finds the namespaces of labs whose process
is gone. Needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN), iproute2, nftables, ethtool.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.77.0"
SERVER_IP = f"{SUBNET}.1"


def worker_ip(k: int) -> str:
    return f"{SUBNET}.{10 + k}"


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def missing_tools() -> list[str]:
    return [t for t in ("ip", "tc", "nft", "ethtool") if shutil.which(t) is None]


def can_run() -> str | None:
    """None when the lab can be built here, else why not."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, tc, nftables)"
    miss = missing_tools()
    if miss:
        return f"missing tools: {', '.join(miss)} (apt-get install iproute2 nftables ethtool)"
    return None


@dataclass
class Lab:
    n: int
    rate_mbit: float = 1000.0
    queue_bytes: int = 128 * 1024
    burst_bytes: int = 32 * 1024
    loss: float = 0.0  # share of packets dropped at the server's ingress, [0, 1)
    prefix: str = field(default_factory=lambda: f"nl{os.getpid()}-")
    made: list = field(default_factory=list)  # namespaces created, for teardown

    @property
    def server_ns(self) -> str:
        return self.prefix + "srv"

    @property
    def bridge_ns(self) -> str:
        return self.prefix + "br"

    def worker_ns(self, k: int) -> str:
        return self.prefix + f"w{k}"

    def namespaces(self) -> list[str]:
        return [self.server_ns, self.bridge_ns] + [self.worker_ns(k) for k in range(self.n)]

    # -- build -----------------------------------------------------------------
    def build(self) -> None:
        why = can_run()
        if why:
            raise RuntimeError(why)
        for ns in self.namespaces():
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        br = self.bridge_ns
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        self._attach(self.server_ns, "s", SERVER_IP)
        for k in range(self.n):
            self._attach(self.worker_ns(k), f"w{k}", worker_ip(k))
        # the bottleneck: egress of the bridge port toward the server
        sh("ip", "netns", "exec", br, "tc", "qdisc", "add", "dev", "s", "root", "tbf", "rate",
           f"{self.rate_mbit:g}mbit", "burst", str(self.burst_bytes), "limit", str(self.queue_bytes))
        self.set_loss(self.loss)

    def _attach(self, ns: str, port: str, ip: str) -> None:
        br = self.bridge_ns
        sh("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", br, "link", "set", port, "master", "br0")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        for where, dev in ((ns, "eth0"), (br, port)):
            # offloads off: wire-sized packets through the qdisc and nftables
            sh("ip", "netns", "exec", where, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
               "tx", "off", "rx", "off", check=False)
            sh("ip", "-n", where, "link", "set", dev, "up")
        # static neighbours: no ARP round trips inside a measurement
        sh("ip", "-n", ns, "link", "set", "eth0", "txqueuelen", "1000")

    def set_loss(self, loss: float) -> None:
        """(Re)installs the random-drop rule in the server namespace: `loss` of the packets arriving."""
        if not (0.0 <= loss < 1.0):
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        self.loss = loss
        sh("ip", "netns", "exec", self.server_ns, "nft", "delete", "table", "inet", "netlab", check=False)
        per_mille = int(round(loss * 1000))
        rule = (f"iifname \"eth0\" meta l4proto {{ tcp, udp }} numgen random mod 1000 < {per_mille} counter drop"
                if per_mille > 0 else "counter")
        sh("ip", "netns", "exec", self.server_ns, "nft", "-f", "-", input=f"""
            table inet netlab {{
              chain in {{
                type filter hook input priority 0; policy accept;
                {rule}
              }}
            }}""")

    def dropped(self) -> int:
        """Packets the loss rule dropped so far."""
        import json

        r = sh("ip", "netns", "exec", self.server_ns, "nft", "-j", "list", "table", "inet", "netlab", check=False)
        if r.returncode != 0:
            return 0
        n = 0
        for item in json.loads(r.stdout)["nftables"]:
            rule = item.get("rule")
            if rule and any("drop" in e for e in rule.get("expr", [])):
                for e in rule["expr"]:
                    if "counter" in e:
                        n += e["counter"]["packets"]
        return n

    def qdisc_stats(self) -> dict:
        """The bottleneck's counters: sent packets/bytes, drops (queue overflow), overlimits."""
        r = sh("ip", "netns", "exec", self.bridge_ns, "tc", "-s", "qdisc", "show", "dev", "s", check=False)
        m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", r.stdout)
        if not m:
            return {}
        return {"bytes": int(m.group(1)), "packets": int(m.group(2)), "dropped": int(m.group(3)),
                "overlimits": int(m.group(4))}

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    # -- teardown --------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Deletes every namespace this lab made (veths, bridge, qdisc and nft table go with them).
        Returns those that could not be deleted (empty when clean)."""
        left = []
        for ns in reversed(self.made):
            sh("ip", "netns", "exec", ns, "nft", "flush", "ruleset", check=False)
            sh("ip", "netns", "del", ns, check=False)
        names = set(list_namespaces())
        for ns in self.made:
            if ns in names:
                left.append(ns)
        self.made = [ns for ns in self.made if ns in left]
        return left


def list_namespaces() -> list[str]:
    r = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Deletes lab namespaces whose creating process is gone (a lab killed with SIGKILL)."""
    removed = []
    for ns in list_namespaces():
        m = re.fullmatch(r"nl(\d+)-\w+", ns)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            sh("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    return removed
