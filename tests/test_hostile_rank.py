"""Issue 9: a hostile rank can touch only its own gradient.

An MPMD job of the real training cluster (``pyagg.train`` ranks under the
supervisor): rank 0 the server, ranks 1-3 honest workers, rank 4 a hostile
process (tests/mpi/hostile_rank.py) that sends pickled objects whose
unpickling would create a marker file, on every tag the project uses, to the
server and to every worker. The marker must never appear, rank 4 must be
treated as a faulty worker, and training must finish with the others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from lossympi.keys import launch_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
HOSTILE = os.path.join(ROOT, "tests", "mpi", "hostile_rank.py")

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.timeout(360),
    pytest.mark.skipif(not (os.path.exists(MPIEXEC) or shutil.which("mpiexec")), reason="no mpiexec"),
]


@pytest.mark.parametrize("transport", ["udp", "mpi"])
def test_pickles_on_every_tag_never_unpickled_training_finishes(tmp_path, transport):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "PWNED"
    mpiexec = MPIEXEC if os.path.exists(MPIEXEC) else shutil.which("mpiexec")
    argv = ["-m", "pyagg.train", "--launcher", "mpi", "--transport", transport, "--workers", "4",
            "--byzantine", "0", "--declared-f", "1", "--rule", "median", "--steps", "60", "--optimizer",
            "momentum", "--out", str(out), "--no-progress", "--worker-timeout", "30", "--deadline", "2",
            "--startup-timeout", "60"]
    rank = [sys.executable, "-m", "lossympi.guard", *argv]
    genv, server_env, _ = launch_args(str(out))
    cmd = [mpiexec, "-disable-auto-cleanup", *genv, "-n", "1", *server_env, *rank, ":", "-n", "3", *rank, ":",
           "-n", "1", sys.executable, "-m", "lossympi.guard", HOSTILE, "--marker", str(marker)]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
               OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=330,
                       start_new_session=True)
    log = r.stdout[-3000:] + r.stderr[-5000:]
    assert not marker.exists(), "a receiver unpickled bytes sent by a worker"
    with open(out / "summary.json") as fh:
        s = json.load(fh)
    assert s["completed"] and s["steps_done"] == 60, log
    workers = s["workers"]
    assert workers[3]["dead"], workers[3]                       # rank 4: faulty, left out
    assert "malformed" in workers[3]["dead_reason"], workers[3]
    assert all(not w["dead"] for w in workers[:3]), workers     # the honest ranks are untouched
    assert all(w["ok"] >= 55 for w in workers[:3]), workers
    assert s["final_accuracy"] > 0.8, s["final_accuracy"]
    assert not marker.exists()
