"""Errors before work (issue 12, item 2): names, bounds, attacks, modules, outputs, help.

Every refusal here happens before TensorFlow is imported (checked in a fresh interpreter), exits 2 with
one line naming the problem (a did-you-mean for names), and starts no run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyagg.cluster.checks import CheckError, check_memory, did_you_mean, estimate_memory
from pyagg.cluster.config import TrainConfig
from pyagg.cluster import faults
from pyagg.cluster.byzantine import parse_attack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    return dict(os.environ, PYTHONPATH=ROOT, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
                OMP_NUM_THREADS="1", **extra)


PROBE = ("import sys; from pyagg.cli import main; rc = main(sys.argv[1:]); "
         "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_NOT_LOADED'); sys.exit(rc)")


def _cli(*args, cwd=ROOT, timeout=120):
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,expect", [
    (["--rule", "krumm"], "unknown rule 'krumm'; did you mean 'krum'"),
    (["--rule", "multi-krum", "--rule-args", "mm=3"], "unknown parameter 'mm'; did you mean 'm'"),
    (["--byzantine", "1", "--attack", "gausian"], "unknown attack 'gausian'; did you mean 'gaussian'"),
    (["--byzantine", "1", "--attack", "gaussian", "--attack-args", "sigmaa=3"], "unknown parameter(s) ['sigmaa']"),
    (["--pre", "nmm"], "unknown pre-aggregator 'nmm'; did you mean 'nnm'"),
    (["--pre", "clipping:taux=2"], "unknown parameter 'taux'; did you mean 'tau'"),
    (["--experiment", "digits-mpl"], "unknown experiment 'digits-mpl'; did you mean 'digits-mlp'"),
    (["--experiment-args", "hiden=8"], "unknown argument 'hiden'; did you mean 'hidden'"),
    (["--experiment", "no_such_mod_xyz:factory"], "no module 'no_such_mod_xyz' in the current directory"),
    (["--attack", "gaussian"], "--attack gaussian needs Byzantine workers"),
    (["--workers", "3", "--byzantine", "1", "--attack", "gaussian", "--rule", "bulyan"],
     "rule 'bulyan' needs n >= 4f+3, i.e. at least 7 workers for f=1, got --workers=3"),
    (["--workers", "3", "--byzantine", "4"], "--byzantine must be in [0, --workers=3]"),
    (["--experiment", "synthetic", "--experiment-args", "dim=1000000000"], "of memory"),
])
def test_train_refuses_before_tensorflow(tmp_path, args, expect):
    out = tmp_path / "run"
    r = _cli("train", *args, "--steps", "1", "--out", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr, r.stderr
    assert "TF_NOT_LOADED" in r.stdout and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing was started or created


def test_bound_message_is_not_doubled(tmp_path):
    r = _cli("train", "--workers", "4", "--declared-f", "1", "--rule", "krum", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "n >= n >=" not in r.stderr and "needs n >= 2f+3, i.e. at least 5" in r.stderr


def test_mpi_launcher_refuses_before_starting_mpiexec(tmp_path):
    r = _cli("train", "--launcher", "mpi", "--rule", "bulyn", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "did you mean 'bulyan'" in r.stderr and "mpiexec" not in r.stderr
    assert "TF_NOT_LOADED" in r.stdout


def test_experiment_matrix_typos_are_errors_not_columns(tmp_path):
    r = _cli("experiment", "byzantine", "--rules", "krumm", "--attacks", "gausian", "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "did you mean 'krum'" in r.stderr and "TF_NOT_LOADED" in r.stdout
    r = _cli("experiment", "byzantine", "--rules", "krum", "--attacks", "none,gausian", "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "did you mean 'gaussian'" in r.stderr
    r = _cli("experiment", "overhead", "--experiments", "digits-mpl", "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "did you mean 'digits-mlp'" in r.stderr
    # the command (OOM-killed at 24 GB before): refused at once, with the figure
    r = _cli("experiment", "overhead", "--experiments", "synthetic:dim=1000000000", "--rules", "multi-krum,median",
             "--workers", "19", "--declared-f", "4", "--steps", "12", "--out", str(tmp_path / "oh"))
    assert r.returncode == 2 and "of memory" in r.stderr and "TF_NOT_LOADED" in r.stdout, r.stderr
    r = _cli("trian")
    assert r.returncode == 2 and "did you mean 'train'" in r.stderr


def test_did_you_mean():
    assert did_you_mean("medain", ["median", "krum"]) == "; did you mean 'median'?"
    assert did_you_mean("zzz", ["median", "krum"]) == ""


def test_memory_estimate_and_refusal(monkeypatch):
    cfg = TrainConfig(experiment="synthetic", experiment_args={"dim": 1_000_000}, workers=19, declared_f=4)
    need = estimate_memory(cfg)
    # the run: 5120 samples x 1e6 float32 features = 20.5 GB of data alone (it was OOM-killed at 24 GB)
    assert need["total"] > 5120 * 1_000_000 * 4
    from pyagg.cluster import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 8 << 30)
    with pytest.raises(CheckError, match=r"needs about 2\d\.\d GiB of memory .* 8\.0 GiB available"):
        check_memory(cfg)
    small = TrainConfig(workers=19)
    assert check_memory(small)["total"] < 1 << 30
    # each MPI worker holds its own copy of the data and model
    mpi = TrainConfig(experiment="synthetic", experiment_args={"dim": 10_000}, workers=8, launcher="mpi")
    loc = TrainConfig(experiment="synthetic", experiment_args={"dim": 10_000}, workers=8)
    assert estimate_memory(mpi)["total"] > estimate_memory(loc)["total"]


def test_out_file_and_help(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    r = _cli("experiment", "byzantine", "--out", str(f))
    assert r.returncode == 2 and "is a file" in r.stderr
    for cmd in ([], ["train"], ["experiment"], ["experiment", "byzantine"], ["experiment", "overhead"]):
        r = _cli(*cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: pyagg"), (cmd, r.stderr)
    r = _cli("experiment", "byzantine", "--help")
    # every option documented (argparse prints "(default: ...)" only for options that have a help text)
    opts = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip().startswith("--")]
    assert len(opts) >= 15
    assert r.stdout.count("(default:") >= 14


MODULE = (
    "import numpy as np, keras\n"
    "from pyagg.cluster.workloads import Experiment\n"
    "def factory(seed=0, act=None):\n"
    "    rng = np.random.default_rng(seed)\n"
    "    x = rng.standard_normal((200, 4)).astype('float32'); y = (x[:, 0] > 0).astype('int32')\n"
    "    build = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation=act)])\n"
    "    return Experiment('cwdmod', build, x[:150], y[:150], x[150:], y[150:], num_classes=2)\n")


@pytest.mark.timeout(300)
def test_experiment_module_from_current_directory_and_softmax_refused(tmp_path):
    (tmp_path / "cwdmod.py").write_text(MODULE)
    env = _env()
    env["PYTHONPATH"] = ROOT  # not the current directory: the launcher must add it
    base = [sys.executable, "-c", "import sys; from pyagg.cli import main; sys.exit(main(sys.argv[1:]))", "train",
            "--experiment", "cwdmod:factory", "--workers", "3", "--steps", "5", "--no-progress"]
    r = subprocess.run([*base, "--out", "a"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*base, "--out", "b", "--experiment-args", "act=softmax"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=200)
    assert r.returncode == 2 and "last layer applies softmax" in r.stderr and "Dense(2)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_experiment_module_from_current_directory_mpi(tmp_path):
    import shutil

    if not (os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")) or shutil.which("mpiexec")):
        pytest.skip("no mpiexec")
    (tmp_path / "cwdmod.py").write_text(MODULE)
    r = subprocess.run([sys.executable, "-c", "import sys; from pyagg.cli import main; sys.exit(main(sys.argv[1:]))",
                        "train", "--launcher", "mpi", "--transport", "mpi", "--experiment", "cwdmod:factory",
                        "--workers", "2", "--rule", "average", "--steps", "5", "--no-progress", "--out", "m"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=250, start_new_session=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"name": "cwdmod"' in (tmp_path / "m" / "summary.json").read_text()


# ------------------------------------------------------------------ faults ---
def test_faults_module():
    lossy = parse_attack("lossy", {"rate": 0.5})
    assert faults.link_loss_rate(lossy, True, 0.0) == 0.5
    assert faults.link_loss_rate(lossy, False, 0.2) == 0.2
    assert faults.link_loss_rate(lossy, True, 0.2) == pytest.approx(1 - 0.8 * 0.5)
    assert faults.emulated_loss_rate(lossy, True, 0.2, "udp") == 0.5  # the server injects the link's own loss
    assert faults.emulated_loss_rate(lossy, True, 0.2, "mpi") == pytest.approx(0.6)
    crash = parse_attack("crash", {"at_step": 3})
    assert [faults.crashed(crash, True, s) for s in range(5)] == [False, False, False, True, True]
    assert not faults.crashed(crash, False, 10)
    import numpy as np

    g = np.arange(5, dtype=np.float32)
    assert faults.malform(parse_attack("bad_length", {"extra": 2}), g).shape == (7,)
    assert faults.malform(parse_attack("bad_length", {"extra": -2}), g).shape == (3,)
    assert faults.malform(parse_attack("bad_dtype"), g).dtype == np.float64
    with pytest.raises(ValueError):
        faults.malform(parse_attack("gaussian"), g)
    out, lost = faults.emulate_loss(g.astype(np.float64), 1.0, "zero", np.random.default_rng(0), 0, 0, 1)
    assert lost == 0  # a malformed row is never chunked


def test_no_import_cycle_between_worker_local_mpi():
    import ast

    for mod in ("worker", "local"):
        src = open(os.path.join(ROOT, "pyagg", "cluster", f"{mod}.py")).read()
        imported = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"mpi", "worker", "local"} - {mod}, (mod, imported)
