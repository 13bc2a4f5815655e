"""Training with the local launcher (the server code of the MPI cluster, workers simulated in-process).

Thresholds (pyagg.experiment.LEARNS / FAILS), from runs of this exact setup
(digits MLP 64-32-10, 19 workers, batch 32 each, SGD lr 0.1, 200 steps):
without attack the test accuracy ends at 0.914-0.922 over seeds 0-3, and so do
Multi-Krum / Bulyan / median with 1 Byzantine worker out of 19 (0.903-0.922);
plain averaging under the "corrupted inputs" (x * -1e12, AggregaThor's) or
"sign flip x100" attack ends at 0.06-0.14 (chance is 0.10). "Learns" = above
0.85, "poisoned" = below 0.30: a margin of > 0.05 and > 0.15 on either side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pyagg.cluster.checkpoint import load_checkpoint
from pyagg.cluster.config import TrainConfig
from pyagg.cluster.metrics import read_metrics
from pyagg.experiment import FAILS, LEARNS
from pyagg.train import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(workers=19, steps=200, eval_every=50, checkpoint_every=0, progress=False, quiet=True,
                out=str(tmp_path / name), launcher="local")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.timeout(300)
def test_no_attack_learns(tmp_path):
    s = run(cfg(tmp_path, rule="average"))
    assert s["completed"] and s["steps_done"] == 200
    assert s["final_accuracy"] > LEARNS
    assert os.path.exists(s["files"]["plot"])
    _, rows = read_metrics(s["files"]["metrics"])
    assert [int(r["step"]) for r in rows] == list(range(200))
    for col in ("time", "loss", "accuracy", "agg_time", "comm_time", "n_ok"):
        assert col in rows[0]
    assert not any(c.startswith("w0_") for c in rows[0])  # per-worker figures live in workers.csv
    _, wrows = read_metrics(s["files"]["workers"])  # long format: one row per (step, worker)
    assert [(int(r["step"]), int(r["worker"])) for r in wrows] == [(t, i) for t in range(200) for i in range(19)]
    assert {r["status"] for r in wrows} == {"ok"} and all(float(r["norm"]) > 0 for r in wrows)
    assert os.path.exists(s["files"]["loss_plot"])


@pytest.mark.timeout(400)
@pytest.mark.parametrize("attack,args", [("corrupt_inputs", {}), ("sign_flip", {"scale": 100.0})])
def test_one_byzantine_of_19_poisons_average_not_krum_bulyan(tmp_path, attack, args):
    acc = {}
    for rule in ("average", "multi-krum", "bulyan"):
        s = run(cfg(tmp_path, f"{attack}-{rule}", rule=rule, byzantine=1, attack=attack, attack_args=args))
        assert s["completed"]
        acc[rule] = s["final_accuracy"]
        with open(os.path.join(tmp_path, f"{attack}-{rule}", "summary.json")) as fh:
            assert json.load(fh)["byzantine_workers"] == s["byzantine_workers"]
    assert acc["average"] < FAILS, acc
    assert acc["multi-krum"] > LEARNS, acc
    assert acc["bulyan"] > LEARNS, acc


@pytest.mark.timeout(300)
@pytest.mark.parametrize("attack", ["bad_length", "bad_dtype"])
def test_malformed_gradient_rejected_counted_step_proceeds(tmp_path, attack):
    s = run(cfg(tmp_path, workers=5, byzantine=1, rule="multi-krum", attack=attack, optimizer="momentum",
                steps=100))
    assert s["completed"] and s["steps_done"] == 100 and s["skipped_steps"] == 0
    bad = s["byzantine_workers"][0]
    w = s["workers"][bad]
    assert w["rejected"] == 100 and w["ok"] == 0
    assert all(x["rejected"] == 0 for i, x in enumerate(s["workers"]) if i != bad)
    _, rows = read_metrics(s["files"]["metrics"])
    assert all(int(r["n_rejected"]) == 1 for r in rows)
    assert s["final_accuracy"] > LEARNS


@pytest.mark.timeout(300)
def test_network_faults_lossy_and_crash(tmp_path):
    s = run(cfg(tmp_path, "lossy", workers=7, byzantine=2, rule="multi-krum", attack="lossy",
                attack_args={"rate": 0.5}, optimizer="momentum", steps=100, experiment_args={"hidden": 64}))
    assert s["completed"]
    for b in s["byzantine_workers"]:
        assert s["workers"][b]["partial"] > 50
    assert s["final_accuracy"] > LEARNS
    s = run(cfg(tmp_path, "crash", workers=5, byzantine=1, rule="median", attack="crash",
                attack_args={"at_step": 10}, optimizer="momentum", steps=100))
    b = s["byzantine_workers"][0]
    assert s["workers"][b]["dead"] and s["workers"][b]["ok"] == 10 and s["workers"][b]["missing"] == 90
    assert s["final_accuracy"] > LEARNS


@pytest.mark.timeout(300)
def test_other_experiments_and_options(tmp_path):
    s = run(cfg(tmp_path, "syn", experiment="synthetic", experiment_args={"dim": 20, "task": "linear"},
                workers=5, byzantine=1, attack="gaussian", rule="median", steps=60, optimizer="adam", lr=0.05))
    assert s["experiment"]["metric"] == "r2" and s["experiment"]["d"] == 21 and s["final_accuracy"] > 0.5
    s = run(cfg(tmp_path, "noniid", workers=5, shards="dirichlet", alpha=0.5, rule="average", steps=20,
                pre=["nnm"], declared_f=1, rule_args={}))
    assert s["completed"]
    s = run(cfg(tmp_path, "cnn", experiment="digits-cnn", workers=3, rule="average", steps=5))
    assert s["completed"] and s["experiment"]["d"] > 1000


@pytest.mark.timeout(200)
def test_user_experiment_module(tmp_path, monkeypatch):
    (tmp_path / "myexp.py").write_text(
        "import numpy as np, keras\n"
        "from pyagg.cluster.experiments import Experiment\n"
        "def factory(seed=0, n=200):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    x = rng.standard_normal((n, 4)).astype('float32'); y = (x[:, 0] > 0).astype('int32')\n"
        "    build = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])\n"
        "    return Experiment('mine', build, x[:150], y[:150], x[150:], y[150:], num_classes=2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = run(cfg(tmp_path, experiment="myexp:factory", experiment_args={"n": 300}, workers=3, rule="average",
                steps=40))
    assert s["experiment"]["name"] == "mine" and s["final_accuracy"] > 0.8


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
                OMP_NUM_THREADS="1")


@pytest.mark.timeout(420)
def test_server_sigkill_then_resume_continues_exactly(tmp_path):
    """SIGKILL the server mid-run; --resume continues from the checkpoint to the very same parameters."""
    out = tmp_path / "run"
    args = ["--workers", "5", "--byzantine", "1", "--attack", "gaussian", "--rule", "multi-krum",
            "--experiment-args", "hidden=256", "--steps", "300", "--checkpoint-every", "20", "--eval-every", "50",
            "--out", str(out), "--no-progress", "--optimizer", "momentum"]
    proc = subprocess.Popen([sys.executable, "-m", "pyagg.train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    t_end = time.time() + 240
    killed_at = None
    try:
        while time.time() < t_end and proc.poll() is None:
            if (out / "checkpoint.npz").exists() and (out / "metrics.csv").exists():
                _, rows = read_metrics(str(out / "metrics.csv"))
                if rows and int(rows[-1]["step"]) >= 90:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = int(rows[-1]["step"])
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    if killed_at is None:
        pytest.fail(f"the run ended or stalled before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    assert killed_at < 299, "killed too late to test a resume"
    # everything on disk is readable: the checkpoint verifies, metrics parse
    meta, arrays = load_checkpoint(str(out))
    ck = meta["step"]
    assert ck % 20 == 19 and ck <= killed_at + 1
    assert arrays["params"].dtype == np.float32 and np.all(np.isfinite(arrays["params"]))
    read_metrics(str(out / "metrics.csv"))
    r = subprocess.run([sys.executable, "-m", "pyagg.train", *args, "--resume"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "summary.json") as fh:
        s = json.load(fh)
    assert s["resumed_from_step"] == ck and s["steps_done"] == 300 and s["completed"]
    _, rows = read_metrics(str(out / "metrics.csv"))
    assert [int(x["step"]) for x in rows] == list(range(300))  # every step once, none lost or repeated
    times = [float(x["time"]) for x in rows]
    assert all(b >= a for a, b in zip(times, times[1:]))
    # the same run without interruption ends with the same parameters
    ref = run(TrainConfig(workers=5, byzantine=1, attack="gaussian", rule="multi-krum",
                          experiment_args={"hidden": 256}, steps=300, checkpoint_every=20, eval_every=50,
                          out=str(tmp_path / "ref"), progress=False, quiet=True, optimizer="momentum"))
    _, a_res = load_checkpoint(str(out))
    _, a_ref = load_checkpoint(str(tmp_path / "ref"))
    np.testing.assert_allclose(a_res["params"], a_ref["params"], rtol=1e-5, atol=1e-6)
    assert abs(s["final_accuracy"] - ref["final_accuracy"]) < 0.01
