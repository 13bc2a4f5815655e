"""The training cluster under a real mpiexec (MPICH hydra): 1 server + 5 workers.

Each test launches ``python -m pyagg.train --launcher mpi`` (which starts
``mpiexec -disable-auto-cleanup -n 6`` with each rank under the
``lossympi.guard`` supervisor) in a subprocess with a hard timeout.
Threshold: see tests/test_train_local.py (momentum SGD, 100 steps: 0.92-0.97
at n = 5 with or without one Byzantine worker in local runs).
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

from pyagg.cluster.metrics import read_metrics
from pyagg.cluster.transport import lossympi_available
from pyagg.experiment import LEARNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not (os.path.exists(MPIEXEC) or shutil.which("mpiexec")), reason="no mpiexec"),
]

UDP = pytest.param("udp", marks=pytest.mark.skipif(
    not lossympi_available("udp"), reason="LossyMPI UDP transport not built (pyagg._ext.UdpReceiver missing)"))
TRANSPORTS = [UDP, "mpi"]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
                OMP_NUM_THREADS="1")


def _args(out, transport, *extra):
    return ["-m", "pyagg.train", "--launcher", "mpi", "--transport", transport, "--workers", "5",
            "--optimizer", "momentum", "--out", str(out), "--no-progress", "--worker-timeout", "30", *extra]


def _train(out, transport, *extra, timeout=240):
    r = subprocess.run([sys.executable, *_args(out, transport, *extra)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=timeout, start_new_session=True)
    return r


def _summary(out):
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cluster_with_a_byzantine_worker_learns(tmp_path, transport):
    out = tmp_path / transport
    r = _train(out, transport, "--byzantine", "1", "--attack", "gaussian", "--rule", "multi-krum", "--steps", "100")
    assert r.returncode == 0, r.stderr[-4000:]
    s = _summary(out)
    assert s["completed"] and s["steps_done"] == 100 and s["launcher"] == "mpi"
    assert s["transport"].startswith(transport)
    assert s["final_accuracy"] > LEARNS, s["final_accuracy"]
    assert not any(w["dead"] for w in s["workers"])
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(100))
    assert os.path.exists(out / "accuracy.png")


@pytest.mark.timeout(300)
def test_worker_sigkilled_mid_run_training_continues(tmp_path):
    """A worker SIGKILLed from outside: its gradient is missing from then on, no hang."""
    transport = "udp" if lossympi_available("udp") else "mpi"
    out = tmp_path / "kill"
    argv = _args(out, transport, "--byzantine", "0", "--declared-f", "1", "--rule", "multi-krum", "--steps", "150",
                 "--deadline", "1", "--experiment-args", "hidden=128")
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    victim = 3
    killed_at = None
    t_end = time.time() + 200
    try:
        while time.time() < t_end and proc.poll() is None:
            pid_file = out / "pids" / f"rank{victim}.pid"
            if pid_file.exists() and (out / "metrics.csv").exists():
                _, rows = read_metrics(str(out / "metrics.csv"))
                if rows and int(rows[-1]["step"]) >= 20:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    killed_at = int(rows[-1]["step"])
                    break
            time.sleep(0.05)
        log, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed_at is not None, "the run ended before the worker could be killed"
    assert proc.returncode == 0, log.decode()[-4000:]
    s = _summary(out)
    assert s["completed"] and s["steps_done"] == 150
    w = s["workers"][victim - 1]
    assert w["dead"] and w["missing"] >= 150 - killed_at - 5 and w["ok"] >= killed_at - 1
    assert all(not x["dead"] for i, x in enumerate(s["workers"]) if i != victim - 1)
    assert s["final_accuracy"] > LEARNS
    # a dead worker costs a few deadlines, not one per remaining step
    assert s["wall_time"] < 60


@pytest.mark.timeout(300)
def test_malformed_gradients_over_mpi_are_rejected(tmp_path):
    out = tmp_path / "bad"
    r = _train(out, "mpi", "--byzantine", "1", "--attack", "bad_length", "--rule", "multi-krum", "--steps", "40",
               "--deadline", "1")
    assert r.returncode == 0, r.stderr[-4000:]
    s = _summary(out)
    assert s["completed"] and s["steps_done"] == 40
    bad = s["byzantine_workers"][0]
    assert s["workers"][bad]["rejected"] >= 1 and s["workers"][bad]["ok"] == 0
    assert all(x["ok"] == 40 for i, x in enumerate(s["workers"]) if i != bad)


@pytest.mark.timeout(400)
def test_server_sigkilled_then_resumed(tmp_path):
    """SIGKILL rank 0: the workers give up (no hang); a --resume run continues from the checkpoint."""
    transport = "udp" if lossympi_available("udp") else "mpi"
    out = tmp_path / "resume"
    argv = _args(out, transport, "--workers", "3", "--byzantine", "1", "--attack", "sign_flip", "--rule", "median",
                 "--steps", "200", "--checkpoint-every", "20", "--experiment-args", "hidden=128",
                 "--worker-timeout", "5")
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    killed_at = None
    t_end = time.time() + 200
    try:
        while time.time() < t_end and proc.poll() is None:
            pid_file = out / "pids" / "rank0.pid"
            if pid_file.exists() and (out / "checkpoint.npz").exists():
                _, rows = read_metrics(str(out / "metrics.csv"))
                if rows and int(rows[-1]["step"]) >= 40:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    killed_at = int(rows[-1]["step"])
                    break
            time.sleep(0.05)
        t_kill = time.time()
        log, _ = proc.communicate(timeout=120)  # the workers leave after --worker-timeout
        assert time.time() - t_kill < 60
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed_at is not None and killed_at < 199
    assert proc.returncode != 0 and not (out / "server.done").exists()
    from pyagg.cluster.checkpoint import load_checkpoint

    meta, arrays = load_checkpoint(str(out))  # verifies its SHA-256: nothing torn
    ck = meta["step"]
    r = _train(out, transport, "--workers", "3", "--byzantine", "1", "--attack", "sign_flip", "--rule", "median",
               "--steps", "200", "--checkpoint-every", "20", "--experiment-args", "hidden=128",
               "--worker-timeout", "5", "--resume")
    assert r.returncode == 0, r.stderr[-4000:]
    s = _summary(out)
    assert s["resumed_from_step"] == ck and s["steps_done"] == 200 and s["completed"]
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(200))
    assert s["final_accuracy"] > LEARNS
