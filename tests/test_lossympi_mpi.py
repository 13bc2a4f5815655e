"""LossyMPI end to end under mpiexec: 1 server + 4 workers, several steps,
over UDP and over MPI point-to-point, with loss, and with a worker SIGKILLed
mid-run (the job must go on without it and end, not hang).

Each run is bounded: on timeout the whole process tree (mpiexec, hydra's
proxy, the guards, the ranks) is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(240)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "mpi", "lossympi_job.py")


def _mpiexec() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return cand if os.path.exists(cand) else shutil.which("mpiexec")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL mpiexec and every process under it (hydra puts ranks in their own process groups)."""
    victims = _descendants(proc.pid)
    for p in [proc.pid, *victims]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_job(tmp_path, n: int = 5, timeout: float = 150, **opts) -> tuple[dict, int, str]:
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich mpi4py)")
    pytest.importorskip("mpi4py")
    out = tmp_path / "report.json"
    args = [mpiexec, "-disable-auto-cleanup", "-n", str(n), sys.executable, "-m", "lossympi.guard", JOB,
            "--out", str(out)]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        pytest.fail(f"mpiexec did not finish within {timeout} s (killed): {' '.join(args)}")
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert out.exists(), f"no report (rc={proc.returncode}, {time.monotonic() - t0:.1f}s):\n{log}"
    return json.loads(out.read_text()), proc.returncode, log


def check_rows(rep: dict, dead: set[int] = frozenset()) -> None:
    for st in rep["steps"]:
        for row in st["rows"]:
            assert row["ok"], (st["step"], row)  # received values bit-exact, the rest filled
            if row["rank"] not in dead:
                assert row["complete"] or row["filled"] > 0


def test_udp_four_workers_several_steps(tmp_path):
    rep, rc, log = run_job(tmp_path, transport="udp", steps=6)
    assert rc == 0, log
    assert rep["workers"] == [1, 2, 3, 4] and rep["dead"] == []
    assert rep["mac"] in ("aes256gcm", "chacha20poly1305")
    assert len(rep["steps"]) == 6
    for st in rep["steps"]:
        assert st["reason"] == "complete", st
        assert all(r["complete"] and r["received"] == r["expected"] for r in st["rows"])
    check_rows(rep)
    assert log.count("stopped after 6 steps (shutdown)") == 4, log


def test_mpi_transport_same_interface(tmp_path):
    rep, rc, log = run_job(tmp_path, transport="mpi", steps=4, dtype="float64")
    assert rc == 0, log
    assert rep["transport"] == "mpi" and rep["dead"] == []
    for st in rep["steps"]:
        assert st["reason"] == "complete"
        assert all(r["complete"] for r in st["rows"])
    check_rows(rep)
    assert "pending" not in log  # no leaked MPI requests at finalize


def test_udp_with_loss_fills_and_ends_early(tmp_path):
    rep, rc, log = run_job(tmp_path, transport="udp", steps=4, drop_rate=0.1, deadline=20.0)
    assert rc == 0, log
    for st in rep["steps"]:
        assert st["seconds"] < 10.0  # ended at the END markers + grace, not at the 20 s deadline
        for r in st["rows"]:
            assert r["dropped"] > 0 and r["filled"] > 0 and r["received"] + r["filled"] == r["expected"]
    check_rows(rep)


@pytest.mark.parametrize("transport", ["udp", "mpi"])
def test_worker_sigkilled_mid_run(tmp_path, transport):
    deadline = 1.0
    rep, rc, log = run_job(tmp_path, transport=transport, steps=7, deadline=deadline, kill_rank=2, kill_step=3,
                           dead_after=2)
    assert rep["dead"] == [2], rep
    assert rc == 128 + signal.SIGKILL, log  # the guard reports the killed rank; nobody else was killed
    steps = {s["step"]: s for s in rep["steps"]}
    # steps before the kill: complete; the kill costs one deadline per step until declared dead
    assert steps[1]["reason"] == steps[2]["reason"] == "complete"
    assert steps[3]["reason"] == "deadline" and steps[3]["seconds"] < deadline + 2.0
    dead_from = min(s for s, st in steps.items() if 2 in st["dead"])
    assert dead_from <= 4
    for s in range(dead_from + 1, 8):  # afterwards nobody waits for it
        assert steps[s]["reason"] == "complete" and steps[s]["seconds"] < deadline, steps[s]
    for s in range(3, 8):
        row2 = next(r for r in steps[s]["rows"] if r["rank"] == 2)
        assert not row2["complete"] and row2["all_nan"]
    check_rows(rep, dead={2})
    for r in (1, 3, 4):
        assert f"[rank {r}] stopped after 7 steps" in log, log
