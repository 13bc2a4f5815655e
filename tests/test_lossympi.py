"""LossyMPI data plane over UDP on 127.0.0.1 (no MPI): round trips, fill
policies with exact statistics, hostile datagrams, deadlines, pacing, API errors."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

import lossympi
from lossympi import GradientReceiver, GradientSender, seal_datagram
from lossympi.errors import InvalidArgumentError, TransportError

pytestmark = pytest.mark.timeout(120)

HDR, TAG = lossympi.HEADER_SIZE, lossympi.TAG_SIZE


def keys_for(ranks):
    return {r: bytes((r * 37 + i) % 256 for i in range(32)) for r in ranks}


def grad_of(rank: int, step: int, d: int, dtype) -> np.ndarray:
    return ((np.arange(d) % 977) * 0.25 - rank * 3.0 + step).astype(dtype)


def safe_rate(rx: GradientReceiver, nbytes: int) -> float | None:
    """Unpaced if the kernel buffer holds the whole gradient, else paced (no kernel drops on a busy CI box)."""
    return None if rx.socket_info["rcvbuf_granted"] >= 2 * nbytes else 200e6


@pytest.fixture
def raw():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield s
    s.close()


def capture(rank: int, step: int, grad: np.ndarray, key: bytes, **kw) -> list[bytes]:
    """The genuine datagrams a sender emits for (step, grad), received one by one on a plain socket."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    kw.setdefault("end_copies", 2)  # the tests below slice off the two END copies
    tx = GradientSender(sink.getsockname(), key, rank=rank, **kw)
    st = tx.send(step, grad)
    out = []
    try:
        while len(out) < st["datagrams"]:
            out.append(sink.recv(65536))
    finally:
        tx.close()
        sink.close()
    return out


# ------------------------------------------------------------ round trips --
@pytest.mark.parametrize("d", [1, 352, 353, 1000, 100_003])
def test_round_trip_sizes(d, dtype):
    ranks = [1, 2, 3]
    keys = keys_for(ranks)
    with GradientReceiver(ranks, d, dtype, deadline=10.0, keys=keys) as rx:
        txs = [GradientSender(rx.address, keys[r], rank=r) for r in ranks]
        geo = lossympi.geometry(d, dtype)
        for step in (1, 2):
            rx.expect(step)
            for r, tx in zip(ranks, txs):
                st = tx.send(step, grad_of(r, step, d, dtype))
                assert st["chunks"] == geo["chunk_count"] and st["datagrams"] == geo["chunk_count"] + 3
            G, stats = rx.receive(step)
            assert G.shape == (3, d) and G.dtype == dtype
            assert rx.last_info["reason"] == "complete"
            for i, r in enumerate(ranks):
                np.testing.assert_array_equal(G[i], grad_of(r, step, d, dtype))
                s = stats[i]
                assert s["rank"] == r and s["complete"] and s["received"] == s["expected"] == geo["chunk_count"]
                assert s["filled"] == 0 and s["rejected"] == 0 and s["duplicates"] == 0
                assert s["bytes"] == d * np.dtype(dtype).itemsize
        for tx in txs:
            tx.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_round_trip_10m_elements(dtype):
    d = 10_000_000
    key = keys_for([1])
    with GradientReceiver([1], d, dtype, deadline=60.0, keys=key) as rx:
        g = grad_of(1, 1, d, dtype)
        tx = GradientSender(rx.address, key[1], safe_rate(rx, g.nbytes), rank=1)
        rx.expect(1)
        st = tx.send(1, g)
        G, stats = rx.receive(1, copy=False)
        assert stats[0]["complete"], (stats[0], st, rx.socket_info)
        assert np.array_equal(G[0], g)
        assert not G.flags.writeable
        tx.close()


def test_mac_choices_round_trip():
    for mac in ("aes256gcm", "chacha20poly1305"):
        if not lossympi.mac_available(mac):
            continue
        k = keys_for([5])
        with GradientReceiver([5], 3000, keys=k, mac=mac, deadline=5) as rx:
            tx = GradientSender(rx.address, k[5], rank=5, mac=mac)
            rx.expect(7)
            tx.send(7, grad_of(5, 7, 3000, np.float32))
            G, st = rx.receive(7)
            assert st[0]["complete"] and np.array_equal(G[0], grad_of(5, 7, 3000, np.float32))


def test_auth_off_only_explicitly(raw):
    with pytest.raises(InvalidArgumentError, match="auth=False"):
        GradientReceiver([1], 10, mac="none", keys=keys_for([1]))
    with pytest.raises(InvalidArgumentError, match="keys"):
        GradientReceiver([1], 10)
    with GradientReceiver([1], 1000, auth=False, deadline=5) as rx:
        tx = GradientSender(rx.address, None, rank=1, auth=False)
        rx.expect(1)
        tx.send(1, grad_of(1, 1, 1000, np.float32))
        G, st = rx.receive(1)
        assert st[0]["complete"]
    # an authenticated receiver refuses unauthenticated datagrams (no downgrade)
    k = keys_for([1])
    with GradientReceiver([1], 1000, keys=k, deadline=0.3) as rx:
        tx = GradientSender(rx.address, None, rank=1, auth=False)
        rx.expect(1)
        tx.send(1, grad_of(1, 1, 1000, np.float32))
        G, st = rx.receive(1)
        # the zero tag does not verify under rank 1's key: rejected before any MAC verified, so
        # charged to nobody (a forger must not be able to run up another rank's counters)
        assert st[0]["received"] == 0 and st[0]["rejected"] == 0 and np.isnan(G).all()
        assert rx.last_info["unattributed"]["bad_mac"] == 3 + 3  # 3 chunks + 3 END copies


# ------------------------------------------------------- fill + statistics --
@pytest.mark.parametrize("fill", ["nan", "zero", "random", "last"])
def test_fill_policies_with_injected_loss(fill):
    d, ranks = 30_000, [2, 5]
    keys = keys_for(ranks)
    geo = lossympi.geometry(d)
    ce = geo["chunk_elems"]
    with GradientReceiver(ranks, d, deadline=5.0, fill=fill, keys=keys, drop_rate=0.2, seed=11, grace=0.05,
                           adaptive_grace=False) as rx:
        txs = {r: GradientSender(rx.address, keys[r], rank=r) for r in ranks}
        prev = np.zeros((2, d), np.float32)
        for step in (1, 2, 3):
            rx.expect(step)
            truth = [grad_of(r, step, d, np.float32) for r in ranks]
            for r, g in zip(ranks, truth):
                txs[r].send(step, g)
            G, stats = rx.receive(step)
            for i, s in enumerate(stats):
                # exact accounting: every datagram sent (chunks + 3 END copies) was dropped or counted
                assert s["dropped"] + s["received"] + s["end_markers"] == geo["chunk_count"] + 3
                assert s["received"] + s["filled"] == geo["chunk_count"] and s["filled"] > 0
                assert s["rejected"] == 0 and s["sent"] in (None, geo["chunk_count"])
                bad = 0
                for c in range(geo["chunk_count"]):
                    sl = slice(c * ce, min(d, (c + 1) * ce))
                    if np.array_equal(G[i, sl], truth[i][sl]):
                        continue
                    bad += 1
                    part = G[i, sl]
                    if fill == "nan":
                        assert np.isnan(part).all()
                    elif fill == "zero":
                        assert (part == 0).all()
                    elif fill == "random":
                        assert np.isfinite(part).all() and np.abs(part).max() < 10
                    else:
                        np.testing.assert_array_equal(part, prev[i, sl])
                if fill == "last":
                    assert bad <= s["filled"]
                else:
                    assert bad == s["filled"]
            prev = G.copy()
            assert rx.last_info["reason"] in ("markers", "deadline")


def test_random_fill_is_reproducible():
    out = []
    for _ in range(2):
        k = keys_for([1])
        with GradientReceiver([1], 5000, keys=k, fill="random", drop_rate=0.3, seed=4, deadline=3) as rx:
            tx = GradientSender(rx.address, k[1], rank=1)
            rx.expect(9)
            tx.send(9, grad_of(1, 9, 5000, np.float32))
            out.append(rx.receive(9)[0])
    np.testing.assert_array_equal(out[0], out[1])


# ------------------------------------------------------------ deadlines ----
def test_worker_that_never_sends_costs_one_deadline():
    k = keys_for([1, 2])
    with GradientReceiver([1, 2], 10_000, keys=k, deadline=0.5) as rx:
        tx = GradientSender(rx.address, k[1], rank=1)
        rx.expect(1)
        tx.send(1, grad_of(1, 1, 10_000, np.float32))
        t0 = time.monotonic()
        G, st = rx.receive(1)
        el = time.monotonic() - t0
        assert 0.45 <= el < 2.0
        assert rx.last_info["reason"] == "deadline"
        assert st[0]["complete"] and not st[1]["complete"] and st[1]["received"] == 0
        assert np.isnan(G[1]).all() and np.array_equal(G[0], grad_of(1, 1, 10_000, np.float32))
        # not waited for (declared dead by the caller): no deadline at all
        rx.expect(2)
        tx.send(2, grad_of(1, 2, 10_000, np.float32))
        t0 = time.monotonic()
        G, st = rx.receive(2, wait_for=[1])
        assert time.monotonic() - t0 < 0.4 and rx.last_info["reason"] == "complete"
        assert st[1]["waited"] is False


def test_loss_ends_step_at_markers_not_deadline():
    ranks = [1, 2, 3]
    k = keys_for(ranks)
    with GradientReceiver(ranks, 50_000, keys=k, deadline=20.0, drop_rate=0.05, seed=3, grace=0.01) as rx:
        txs = [GradientSender(rx.address, k[r], rank=r) for r in ranks]
        rx.expect(1)
        t0 = time.monotonic()
        for r, tx in zip(ranks, txs):
            tx.send(1, grad_of(r, 1, 50_000, np.float32))
        _G, st = rx.receive(1)
        assert time.monotonic() - t0 < 5.0
        assert rx.last_info["reason"] == "markers"
        assert all(s["filled"] > 0 and s["end_markers"] >= 1 for s in st)


# ---------------------------------------------------------- hostile input --
def test_hostile_datagrams_rejected_and_counted(raw):
    d, ranks = 1000, [1, 2]  # 3 chunks: 1408, 1408, 1184 bytes
    keys = keys_for(ranks)
    mac = lossympi.resolve_mac("auto", True)
    good = {r: grad_of(r, 2, d, np.float32) for r in ranks}
    old = capture(1, 1, grad_of(1, 1, d, np.float32), keys[1], job_id=42)
    cur = capture(1, 2, good[1], keys[1], job_id=42)
    evil = np.full(352, 1e30, np.float32).tobytes()

    def sealed(**kw):
        base = {"rank": 1, "step": 2, "chunk_index": 0, "chunk_count": 3, "total_elems": d, "payload": evil,
                "key": keys[1], "mac": mac, "job_id": 42}
        base.update(kw)
        return seal_datagram(**base)

    with GradientReceiver(ranks, d, keys=keys, deadline=2.0, job_id=42) as rx:
        txs = {r: GradientSender(rx.address, keys[r], rank=r, job_id=42) for r in ranks}
        rx.expect(1)
        for r in ranks:
            txs[r].send(1, grad_of(r, 1, d, np.float32))
        G, st = rx.receive(1)
        assert all(s["complete"] for s in st)
        rx.expect(2)
        hostile = []
        flipped = bytearray(cur[0])
        flipped[HDR + 3] ^= 0x04
        tagbit = bytearray(cur[1])
        tagbit[-1] ^= 0x80
        # Rejected before a MAC verified: unattributed (who=None), never charged to the rank they name.
        hostile += [(bytes(flipped), None, "bad_mac"), (bytes(tagbit), None, "bad_mac")]
        hostile += [(sealed(rank=2), None, "bad_mac")]                 # rank 1's key, rank 2's name
        hostile += [(o, 1, "late") for o in old[:-2]]                  # replay of the previous step
        hostile += [(o, 1, "ignored") for o in old[-2:]]               # (its END copies: ignored)
        hostile += [(sealed(step=0), 1, "wrong_step"), (sealed(step=3), 1, "wrong_step")]
        hostile += [(sealed(chunk_index=3), 1, "out_of_range"), (sealed(chunk_index=2**32 - 16), 1, "out_of_range")]
        hostile += [(sealed(chunk_index=2), 1, "bad_length")]          # last chunk is 1184 bytes
        hostile += [(sealed(payload=evil[:1000]), 1, "bad_length")]
        hostile += [(sealed(payload=evil * 4), None, "bad_length")]    # oversized: > 1472 bytes
        hostile += [(cur[0][:-100], None, "bad_mac")]                   # truncated: the tag is not where it was
        hostile += [(sealed(total_elems=1 << 30, chunk_count=762601, chunk_index=500000), 1, "bad_header")]
        hostile += [(sealed(job_id=43), 1, "bad_header"), (sealed(dtype=np.float64), 1, "bad_header")]
        hostile += [(sealed(mac="none", key=None), None, "bad_mac")]   # downgrade attempt
        hostile += [(sealed(header_len=52), 1, "bad_header")]
        lying = bytearray(sealed())
        lying[36:40] = (99999).to_bytes(4, "big")                     # payload length field lies
        hostile += [(bytes(lying), None, "bad_mac")]
        unknown = bytearray(cur[0])
        unknown[12:16] = (4096).to_bytes(4, "big")
        hostile += [(bytes(unknown), None, "unknown_sender")]
        rng = np.random.default_rng(5)
        for n in rng.integers(1, 1472, 40):
            junk = rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
            hostile.append((junk, None, "bad_length" if n < HDR + TAG else "bad_header"))
        for dg, _, _ in hostile:
            raw.sendto(dg, rx.address)
        raw.sendto(cur[0], rx.address)  # replay of a datagram of the open step: first copy written ...
        for r in ranks:
            txs[r].send(2, good[r])     # ... and the genuine one is a harmless duplicate
        G, st = rx.receive(2)
        assert rx.last_info["reason"] == "complete"
        for i, r in enumerate(ranks):
            np.testing.assert_array_equal(G[i], good[r])
        exp = {1: {}, 2: {}, None: {}}
        for _, who, why in hostile:
            exp[who][why] = exp[who].get(why, 0) + 1
        s1, s2 = st
        assert s1["late"] == exp[1].pop("late") and s1["duplicates"] == 1
        exp[1].pop("ignored")
        for why, n in exp[1].items():
            assert s1["rejected_" + why] == n, (why, s1)
        assert s2["rejected"] == 0 and s2["received"] == 3
        un = rx.last_info["unattributed"]
        for why, n in exp[None].items():
            assert un[why] == n, (why, un)
        assert s1["received"] == 3 and s1["bytes"] == d * 4


def test_fuzzed_datagrams_never_land(raw):
    d = 700
    k = keys_for([1])
    genuine = capture(1, 1, grad_of(1, 1, d, np.float32), k[1])
    rng = np.random.default_rng(8)
    with GradientReceiver([1], d, keys=k, fill="zero", deadline=0.5) as rx:
        rx.expect(1)
        n = 1500
        for _ in range(n):
            m = bytearray(genuine[rng.integers(len(genuine))])
            for _ in range(int(rng.integers(1, 5))):
                m[int(rng.integers(len(m)))] ^= int(rng.integers(1, 256))
            if rng.random() < 0.25:
                m = m[: int(rng.integers(0, len(m) + 1))]
            raw.sendto(bytes(m), rx.address)
        G, st = rx.receive(1)
        assert st[0]["received"] == 0 and (G == 0).all()
        assert st[0]["rejected"] + sum(rx.last_info["unattributed"].values()) == rx.last_info["datagrams"]
        assert rx.last_info["datagrams"] >= n * 0.99  # loopback may drop nothing; allow a kernel hiccup


# ------------------------------------------------------------------ misc ---
def test_pacing_limits_rate():
    k = keys_for([1])
    d = 1_250_000  # 5 MB
    with GradientReceiver([1], d, keys=k, deadline=10) as rx:
        tx = GradientSender(rx.address, k[1], 50e6, rank=1)  # 50 MB/s -> >= ~0.1 s
        rx.expect(1)
        st = tx.send(1, grad_of(1, 1, d, np.float32))
        _G, s = rx.receive(1)
        assert s[0]["complete"]
        assert st["seconds"] >= 0.8 * st["bytes"] / 50e6, st
        assert st["paced_s"] > 0


def test_steps_must_increase_and_errors():
    k = keys_for([1])
    with GradientReceiver([1], 100, keys=k, deadline=0.1) as rx:
        tx = GradientSender(rx.address, k[1], rank=1)
        tx.send(3, np.ones(100, np.float32))
        with pytest.raises(InvalidArgumentError, match="steps must increase"):
            tx.send(3, np.ones(100, np.float32))
        with pytest.raises(InvalidArgumentError, match="float32 or float64"):
            tx.send(4, np.ones(100, np.int32))
        rx.expect(5)
        with pytest.raises(InvalidArgumentError, match="steps must increase"):
            rx.expect(4)
        _G, _st = rx.receive(5)
        assert not rx.view.flags.writeable
    with pytest.raises(InvalidArgumentError, match="32 bytes"):
        GradientReceiver([1], 10, keys={1: b"short"})
    with pytest.raises(InvalidArgumentError, match="fill"):
        GradientReceiver([1], 10, keys=k, fill="mean")
    with pytest.raises(InvalidArgumentError, match="d must be"):
        GradientReceiver([1], 0, keys=k)
    with pytest.raises(TransportError):
        GradientReceiver([1], 10, keys=k, host="203.0.113.1")  # not a local address: bind fails
    with pytest.raises(InvalidArgumentError, match="key"):
        GradientSender(("127.0.0.1", 9), b"x", rank=1)


def test_socket_info_reports_granted_buffer():
    k = keys_for([1])
    with GradientReceiver([1], 10, keys=k, rcvbuf=16 << 20) as rx:
        info = rx.socket_info
        assert info["port"] == rx.address[1] > 0
        assert info["rcvbuf_requested"] == 16 << 20 and info["rcvbuf_granted"] > 0
        assert "udp://127.0.0.1" in rx.describe()


def test_receiver_close_keeps_views_readable():
    k = keys_for([1])
    rx = GradientReceiver([1], 1000, keys=k, deadline=2)
    tx = GradientSender(rx.address, k[1], rank=1)
    rx.expect(1)
    tx.send(1, grad_of(1, 1, 1000, np.float32))
    G, _ = rx.receive(1, copy=False)
    rx.close()
    np.testing.assert_array_equal(G[0], grad_of(1, 1, 1000, np.float32))
    with pytest.raises(TransportError):
        rx.expect(2)


def test_sender_to_nobody_does_not_fail():
    # nothing listens: ICMP port unreachable makes sends fail with ECONNREFUSED, which is loss, not an error
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    tx = GradientSender(("127.0.0.1", port), os.urandom(32), rank=1)
    for step in range(3):
        st = tx.send(step, np.ones(5000, np.float32))
        assert st["chunks"] == 15


def test_socket_overflow_is_counted_exactly():
    # a tiny socket buffer and an unpaced sender without GSO: the kernel drops datagrams when the
    # buffer is full; SO_RXQ_OVFL counts them, so every datagram is accounted for. The kernel's
    # counter arrives with the next datagram received, so drops after a step's last received
    # datagram are reported in the next step: cumulatively the books never count more than was
    # sent, and they balance exactly again at every step whose last datagram was received (a
    # carried shortfall must be made up later, not lost).
    d = 1_000_000
    k = keys_for([1])
    sent = counted = balanced = 0
    with GradientReceiver([1], d, keys=k, rcvbuf=1, deadline=3.0) as rx:
        tx = GradientSender(rx.address, k[1], rank=1, gso=False)
        for step in range(1, 11):
            rx.expect(step)
            st = tx.send(step, grad_of(1, step, d, np.float32))
            _G, s = rx.receive(step)
            info = rx.last_info
            sent += st["datagrams"]
            counted += s[0]["received"] + s[0]["end_markers"] + info["kernel_dropped"]
            assert counted <= sent, (step, s, info)
            assert s[0]["received"] + s[0]["filled"] == s[0]["expected"]
            balanced += counted == sent
    assert balanced >= 1, "the books never balanced in 10 steps"


def test_guard_turns_death_by_signal_into_an_exit_status():
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    r = subprocess.run([sys.executable, "-m", "lossympi.guard", "-c", kill_self], env=env, timeout=60, check=False)
    assert r.returncode == 128 + 9
    # hydra's SIGUSR1 (sent to the whole process group when a rank dies) does not kill the guard
    code = "import os, signal, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); os.killpg(0, signal.SIGUSR1); " \
           "time.sleep(0.2); raise SystemExit(3)"
    r = subprocess.run([sys.executable, "-m", "lossympi.guard", "-c", code], env=env, timeout=60, check=False,
                       start_new_session=True)
    assert r.returncode == 3


def test_sender_close_during_send_waits_no_use_after_free():
    """UdpSender.send runs without the GIL; close() from another thread must wait for it, not free
    the sender under it (issue 9). A slow paced send is in flight while close() is called."""
    import threading

    d = 4_000_000  # 16 MB at 16 MB/s: ~1 s of pacing, so the send is surely in flight at close()
    with GradientReceiver([1], d, keys=keys_for([1]), deadline=5.0) as rx:
        tx = GradientSender(rx.address, keys_for([1])[1], 16e6, rank=1)
        rx.expect(1)
        box = {}

        def run():
            box["stats"] = tx.send(1, grad_of(1, 1, d, np.float32))

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.2)
        t_close = time.monotonic()
        tx.close()                      # waits for the send in progress
        waited = time.monotonic() - t_close
        t.join(10)
        assert not t.is_alive() and box["stats"]["chunks"] > 0
        assert waited > 0.01, waited    # it did wait for the send instead of freeing the sender
        with pytest.raises(TransportError, match="closed"):
            tx.send(2, grad_of(1, 2, d, np.float32))
        G, st = rx.receive(1)
        assert st[0]["complete"]


# ------------------------------------------------------------ cancellation --
def test_send_abandoned_from_another_thread_and_at_its_deadline():
    """A paced 4 MB send (40 s at 100 KB/s) stops at the next batch once abandon() is called from
    another thread, or once its deadline passes: no END marker goes out, and the statistics say why."""
    import threading

    k = keys_for([1])[1]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind(("127.0.0.1", 0))
    g = grad_of(1, 1, 1_000_000, np.float32)
    try:
        tx = GradientSender(sink.getsockname(), k, 100e3, rank=1, gso=False)
        box = {}
        th = threading.Thread(target=lambda: box.update(st=tx.send(1, g)))
        th.start()
        sink.settimeout(30)
        first = sink.recv(65536)          # the send is under way...
        tx.abandon(1)                     # ...when the worker learns of step 2
        th.join(60)
        assert not th.is_alive()
        st = box["st"]
        assert st["abandoned"] == "newer_step" and 0 < st["chunks_sent"] < st["chunks"] and st["end_sent"] == 0
        got = [first]
        sink.settimeout(0.5)
        try:
            while True:
                got.append(sink.recv(65536))
        except socket.timeout:
            pass
        assert len(got) == st["datagrams"] == st["chunks_sent"]
        assert all(dg[5] == 1 for dg in got)  # kind byte: DATA only, no END marker
        st = tx.send(2, g, deadline=0.05)
        assert st["abandoned"] == "deadline" and st["chunks_sent"] < st["chunks"] and st["end_sent"] == 0
        st = tx.send(3, g, deadline=0)    # already due: nothing sent
        assert st["abandoned"] == "deadline" and st["chunks_sent"] == 0
        with pytest.raises(InvalidArgumentError):
            tx.send(4, g, deadline=-1)
        tx.close()
        tx.abandon(10)                    # after close: harmless
    finally:
        sink.close()


def test_end_copies_and_pacing_stats():
    k = keys_for([1])
    with GradientReceiver([1], 100_000, keys=k, deadline=5.0) as rx:
        tx = GradientSender(rx.address, k[1], 50e6, rank=1, end_copies=4, end_spacing=0.0005)
        rx.expect(1)
        st = tx.send(1, grad_of(1, 1, 100_000, np.float32))
        assert st["end_sent"] == 4 and st["datagrams"] == st["chunks"] + 4 and st["abandoned"] is None
        assert st["target_rate"] == 50e6 and st["achieved_rate"] > 0
        _G, s = rx.receive(1)
        assert s[0]["complete"] and rx.last_info["grace_s"] > 0
        with pytest.raises(Exception, match="end_copies"):
            GradientSender(rx.address, k[1], rank=1, end_copies=0)
