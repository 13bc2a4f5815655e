"""Run safety (issue 12, item 1): no run is lost, stops are clean on both launchers, checkpoints are kept.

- an existing run directory is refused without --resume / --overwrite and left byte-for-byte intact;
- the last K checkpoints are kept (checkpoint.npz is the newest), a corrupted newest one falls back;
- SIGTERM / SIGINT to the launcher (local, and mpi: mpiexec + every rank) stops every process, writes
  summary.json, the plots and a checkpoint, prints one line (no traceback); --resume then reaches the
  same final step with every step recorded once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pyagg.cluster.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from pyagg.cluster.metrics import read_metrics
from pyagg.cluster.rundir import RunDirError, prepare_run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
                OMP_NUM_THREADS="1")


def _train(*args, timeout=240, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pyagg.train", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _digests(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------ run directory ---
def test_prepare_run_dir_rules(tmp_path):
    out = tmp_path / "run"
    assert prepare_run_dir(str(out)) == "new" and out.is_dir()
    assert prepare_run_dir(str(out)) == "new"  # an empty directory holds no run
    (out / "metrics.csv").write_text("step\n0\n")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already holds a run.*--resume.*--overwrite"):
        prepare_run_dir(str(out))
    with pytest.raises(RunDirError, match="no checkpoint.npz"):
        prepare_run_dir(str(out), resume=True)
    with pytest.raises(RunDirError, match="contradict"):
        prepare_run_dir(str(out), resume=True, overwrite=True)
    assert (out / "metrics.csv").read_text() == "step\n0\n"
    assert prepare_run_dir(str(out), overwrite=True) == "overwrite"
    assert not (out / "metrics.csv").exists() and (out / "notes.txt").read_text() == "mine"  # only run files go
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        prepare_run_dir(str(f))
    with pytest.raises(RunDirError, match="is a file"):
        prepare_run_dir(str(f / "sub"))


@pytest.mark.timeout(300)
def test_rerun_into_existing_dir_is_refused_and_files_intact(tmp_path):
    out = tmp_path / "run"
    args = ["--workers", "3", "--steps", "30", "--checkpoint-every", "10", "--out", str(out), "--no-progress"]
    r = _train(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    before = _digests(out)
    assert "checkpoint.npz" in before and "metrics.csv" in before and "summary.json" in before
    r = _train(*args)
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr
    assert _digests(out) == before  # not a byte, not a timestamp changed
    r = _train(*args[:-3], "--steps", "40", "--out", str(out), "--no-progress", "--resume")  # continue: 30 -> 40
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.load(open(out / "summary.json"))
    assert s["resumed_from_step"] == 29 and s["steps_done"] == 40
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(40))
    r = _train(*args, "--overwrite")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.load(open(out / "summary.json"))
    assert s["resumed_from_step"] is None and s["steps_done"] == 30


def test_out_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    r = _train("--steps", "1", "--out", str(f), timeout=60)
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr
    assert f.read_text() == "keep me"


# -------------------------------------------------------------- checkpoints ---
def test_keep_last_k_checkpoints_atomic_and_fallback(tmp_path, capsys):
    out = str(tmp_path)
    for step in range(9, 60, 10):  # 6 checkpoints, keep 3
        save_checkpoint(out, step, {"params": np.full(4, step, np.float32)}, {"x": 1}, keep=3)
    assert [s for s, _ in list_checkpoints(out)] == [59, 49, 39]
    meta, arrays = load_checkpoint(out)
    assert meta["step"] == 59 and np.all(arrays["params"] == 59)
    assert os.path.samefile(os.path.join(out, "checkpoint.npz"), list_checkpoints(out)[0][1])
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or f.endswith(".link")]
    # keep=1: a single checkpoint.npz, as before
    os.makedirs(tmp_path / "one")
    save_checkpoint(str(tmp_path / "one"), 3, {"params": np.zeros(2, np.float32)}, {}, keep=1)
    assert os.listdir(tmp_path / "one") == ["checkpoint.npz"]


@pytest.mark.timeout(300)
def test_resume_falls_back_on_an_older_checkpoint_when_the_newest_is_corrupt(tmp_path):
    out = tmp_path / "run"
    args = ["--workers", "3", "--steps", "30", "--checkpoint-every", "10", "--out", str(out), "--no-progress"]
    assert _train(*args).returncode == 0
    # checkpoint.npz and checkpoint-00000029.npz are one file (hard link): corrupt it
    path = out / "checkpoint.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.unlink(out / "checkpoint-00000029.npz")
    os.unlink(path)
    path.write_bytes(bytes(data))
    r = _train(*args[:-3], "--steps", "40", "--out", str(out), "--no-progress", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from the kept checkpoint of step 19" in r.stderr
    s = json.load(open(out / "summary.json"))
    assert s["resumed_from_step"] == 19 and s["steps_done"] == 40
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(40))


# --------------------------------------------------------------- clean stop ---
def _wait_rows(out, n, proc, limit=200):
    t_end = time.time() + limit
    while time.time() < t_end and proc.poll() is None:
        if (out / "metrics.csv").exists():
            _, rows = read_metrics(str(out / "metrics.csv"))
            if len(rows) >= n:
                return int(rows[-1]["step"])
        time.sleep(0.05)
    return None


@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_local_stop_writes_everything_and_resume_reaches_the_final_step(tmp_path, sig):
    out = tmp_path / "run"
    args = ["--workers", "5", "--steps", "3000", "--checkpoint-every", "500", "--eval-every", "25",
            "--experiment-args", "hidden=64", "--out", str(out), "--no-progress", "--optimizer", "momentum"]
    proc = subprocess.Popen([sys.executable, "-m", "pyagg.train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    at = _wait_rows(out, 60, proc)
    assert at is not None, proc.communicate()[1][-3000:]
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 10
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("[pyagg] stopped by")]
    assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "--resume" in lines[0]
    s = json.load(open(out / "summary.json"))
    done = s["steps_done"]
    assert not s["completed"] and s["stopped_by"] == signal.Signals(sig).name and at < done < 3000
    assert (out / "accuracy.png").exists() and (out / "loss.png").exists()
    meta, _ = load_checkpoint(str(out))  # written at the stop although no periodic one was due yet
    assert meta["step"] == done - 1
    r = _train(*[a if a != "3000" else str(done + 40) for a in args], "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.load(open(out / "summary.json"))
    assert s["completed"] and s["resumed_from_step"] == done - 1 and s["steps_done"] == done + 40
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(done + 40))
    _, wrows = read_metrics(str(out / "workers.csv"))
    assert [int(x["step"]) for x in wrows] == [t for t in range(done + 40) for _ in range(5)]


@pytest.mark.mpi
@pytest.mark.timeout(500)
@pytest.mark.skipif(not (os.path.exists(MPIEXEC) or shutil.which("mpiexec")), reason="no mpiexec")
def test_mpi_sigterm_leaves_no_rank_and_resume_reaches_the_final_step(tmp_path):
    from pyagg.cluster.transport import lossympi_available

    transport = "udp" if lossympi_available("udp") else "mpi"
    out = tmp_path / "run"
    args = ["--launcher", "mpi", "--transport", transport, "--workers", "3", "--byzantine", "1", "--attack",
            "gaussian", "--rule", "median", "--steps", "5000", "--checkpoint-every", "1000",
            "--experiment-args", "hidden=64", "--out", str(out), "--no-progress", "--worker-timeout", "30"]
    proc = subprocess.Popen([sys.executable, "-m", "pyagg.train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        at = _wait_rows(out, 30, proc, limit=300)
        assert at is not None, proc.communicate(timeout=30)[1][-3000:]
        pids = {int(p.name[4:-4]): int(p.read_text()) for p in (out / "pids").glob("rank*.pid")}
        assert sorted(pids) == [0, 1, 2, 3] and all(_alive(p) for p in pids.values())
        # the processes of the job: mpiexec and everything under it (hydra proxy, guards, ranks)
        mpiexec = [int(x) for x in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert mpiexec
        group = [int(x) for x in subprocess.run(["pgrep", "-g", str(mpiexec[0])], capture_output=True,
                                                text=True).stdout.split()]
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert took < 20, took
    time.sleep(0.5)
    left = [p for p in list(pids.values()) + mpiexec + group if _alive(p)]
    assert not left, f"processes left running: {left}"
    assert "Traceback" not in err
    assert len([x for x in err.splitlines() if x.startswith("[pyagg] stopped by SIGTERM")]) == 1, err[-2000:]
    s = json.load(open(out / "summary.json"))
    done = s["steps_done"]
    assert s["stopped_by"] == "SIGTERM" and not s["completed"] and at < done < 5000
    assert (out / "accuracy.png").exists()
    meta, _ = load_checkpoint(str(out))
    assert meta["step"] == done - 1
    final = done + 20
    r = subprocess.run([sys.executable, "-m", "pyagg.train", *[a if a != "5000" else str(final) for a in args],
                        "--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.load(open(out / "summary.json"))
    assert s["completed"] and s["resumed_from_step"] == done - 1 and s["steps_done"] == final
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(final))


# ------------------------------------------------------------------ outputs ---
@pytest.mark.timeout(300)
def test_outputs_tensorboard_long_format_plots_and_plain_progress(tmp_path):
    out = tmp_path / "run"
    r = _train("--workers", "4", "--byzantine", "1", "--attack", "bad_length", "--rule", "median", "--steps", "30",
               "--eval-every", "10", "--out", str(out))  # progress on, stderr is a pipe: plain lines
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if "step " in x and "/30" in x]
    assert lines and all("\r" not in x and "\x1b" not in x for x in lines)
    assert any("steps/s" in x and "eta" in x for x in lines)
    from pyagg.cluster.metrics import read_tensorboard

    tb = read_tensorboard(str(out / "tensorboard"))
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [s for s, _ in tb["train/step_time"]] == list(range(30))
    evals = [(int(x["step"]), float(x["accuracy"])) for x in rows if x["accuracy"]]
    assert [s for s, _ in tb["train/accuracy"]] == [s for s, _ in evals]
    assert [v for _, v in tb["train/accuracy"]] == pytest.approx([v for _, v in evals], abs=1e-5)
    assert {v for _, v in tb["workers/n_rejected"]} == {1.0} and {v for _, v in tb["workers/n_ok"]} == {3.0}
    _, wrows = read_metrics(str(out / "workers.csv"))
    s = json.load(open(out / "summary.json"))
    bad = s["byzantine_workers"][0]
    assert [x["status"] for x in wrows if int(x["worker"]) == bad] == ["rejected"] * 30
    assert all(x["status"] == "ok" for x in wrows if int(x["worker"]) != bad)
    assert (out / "loss.png").stat().st_size > 1000 and (out / "accuracy.png").stat().st_size > 1000
