"""Regression tests of issue 9's defects.

1. a host array the engine cannot read as is (strided, reversed, misaligned)
   reaches it by address: the centered-clipping state, like the gradients,
   must be refused (never copied silently, never read out of bounds);
2. ``--resume`` must refuse a checkpoint written for a model of another size,
   naming both shapes;
3. the Byzantine collusion channel must be built by the colluders alone;
4. one rank supervisor, ``lossympi.guard`` (``pyagg.cluster.rank`` is gone);
5. no pickled (lowercase) mpi4py calls in the benchmark / cluster code.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import reference as ref

import pyagg
from pyagg.errors import InvalidArgumentError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------- 1. arrays at the door ---
def _grads(n: int = 7, d: int = 5, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(9).normal(size=(n, d)).astype(dtype)


def _misaligned(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `values` whose data is not aligned to its elements."""
    raw = np.zeros(values.nbytes + 1, np.uint8)
    a = np.frombuffer(raw, dtype=values.dtype, offset=1, count=values.size).reshape(values.shape)
    a[...] = values
    assert not a.flags.aligned and a.flags.c_contiguous
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "make_state",
    [lambda x: x[::-1], lambda x: np.repeat(x, 2)[::2], lambda x: np.stack([x, x], 1)[:, 0]],
    ids=["reversed", "stride-2", "column"],
)
def test_strided_state_is_refused_not_read_out_of_bounds(dtype, make_state):
    G = _grads(dtype=dtype)
    v0 = (np.arange(5) * 3.0).astype(dtype)
    state = make_state(v0)
    assert state.shape == (5,) and not state.flags.c_contiguous
    agg = pyagg.Aggregator("centered-clipping", 1, tau=0.1)
    agg.state = state
    with pytest.raises(InvalidArgumentError, match=r"state: array is not C-contiguous") as e:
        agg.aggregate(G)
    assert "(5,)" in str(e.value) and "strides" in str(e.value)
    # the aggregator is still usable, and a contiguous state gives the reference result
    agg.state = np.ascontiguousarray(state)
    out = agg.aggregate(G)
    expected = ref.centered_clipping(G, 1, tau=0.1, state=np.ascontiguousarray(state)).astype(dtype)
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_misaligned_state_and_gradients_are_refused():
    G = _grads()
    v = np.arange(5.0)
    agg = pyagg.Aggregator("centered-clipping", 1, tau=0.1)
    agg.state = _misaligned(v)
    with pytest.raises(InvalidArgumentError, match="state: array data is not aligned"):
        agg.aggregate(G)
    agg.state = v.copy()
    np.testing.assert_allclose(agg.aggregate(G), ref.centered_clipping(G, 1, tau=0.1, state=v), rtol=1e-12)
    with pytest.raises(InvalidArgumentError, match="gradients: array data is not aligned"):
        pyagg.aggregate(_misaligned(G), "median")
    with pytest.raises(InvalidArgumentError, match=re.escape("gradients[1]: array data is not aligned")):
        pyagg.aggregate([G[0], _misaligned(G[1]), G[2]], "median")
    with pytest.raises(InvalidArgumentError, match="gradients: array data is not aligned"):
        pyagg.preaggregate(_misaligned(G), "nnm", 1)


def test_state_of_wrong_kind_is_refused():
    G = _grads()
    agg = pyagg.Aggregator("centered-clipping", 1)
    agg.state = np.arange(5.0).astype(">f8")
    with pytest.raises(InvalidArgumentError, match="state must have shape"):
        agg.aggregate(G)
    agg.state = np.zeros((5, 1))
    with pytest.raises(InvalidArgumentError, match=re.escape("state must have shape (5,)")):
        agg.aggregate(G)
    agg.state = "not an array"
    with pytest.raises(InvalidArgumentError, match="state"):
        agg.aggregate(G)
    agg.reset()
    assert agg.aggregate(G).shape == (5,)


def test_non_contiguous_input_to_pre_aggregators_is_refused():
    G = np.zeros((14, 5))[::2]
    with pytest.raises(InvalidArgumentError, match="not C-contiguous"):
        pyagg.preaggregate(G, "bucketing", 1)
    agg = pyagg.Aggregator("median", 1, pre=["nnm"])
    with pytest.raises(InvalidArgumentError, match="not C-contiguous"):
        agg.aggregate(G)


def test_non_contiguous_dlpack_input_is_refused():
    """A CPU DLPack producer (here numpy itself, via a wrapper) goes through the same check."""

    class Producer:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    with pytest.raises(InvalidArgumentError, match="not C-contiguous"):
        pyagg.aggregate(Producer(np.zeros((6, 8))[:, ::2]), "median")
    G = _grads()
    np.testing.assert_array_equal(pyagg.aggregate(Producer(G), "median"), pyagg.aggregate(G, "median"))


# ------------------------------------------------------ 2. resume shapes ---
class _Model:
    def __init__(self, d: int):
        self.d = d
        self.initial = np.zeros(d, np.float32)


def _server(tmp_path, d: int, resume: bool, optimizer: str = "momentum"):
    from pyagg.cluster.config import TrainConfig
    from pyagg.cluster.server import ParameterServer

    cfg = TrainConfig(workers=3, rule="average", optimizer=optimizer, resume=resume, out=str(tmp_path))
    collector = SimpleNamespace(n_workers=3)
    return ParameterServer(cfg, None, collector, str(tmp_path), model=_Model(d))


def _write_checkpoint(tmp_path, d_written: int, params_shape: tuple[int, ...] | None = None):
    """A checkpoint as the server writes it, for a model of d_written parameters."""
    srv = _server(tmp_path, d_written, resume=False)
    srv.metrics = None
    if params_shape is not None:
        srv.params = np.zeros(params_shape, np.float32)
    srv.checkpoint(4, 1.0)


def test_resume_with_checkpoint_of_another_model_size_is_refused(tmp_path):
    _write_checkpoint(tmp_path, 10)
    with pytest.raises(ValueError) as e:
        _server(tmp_path, 12, resume=True)
    msg = str(e.value)
    assert "(10,)" in msg and "(12,)" in msg and "--resume" in msg, msg
    # the same size resumes
    srv = _server(tmp_path, 10, resume=True)
    assert srv.resumed_from == 4 and srv.params.shape == (10,)


def test_resume_with_inconsistent_checkpoint_is_refused(tmp_path):
    """Header says d=10 (the model's d) but the parameter array has another shape."""
    _write_checkpoint(tmp_path, 10, params_shape=(2, 5))
    with pytest.raises(ValueError) as e:
        _server(tmp_path, 10, resume=True)
    msg = str(e.value)
    assert "(2, 5)" in msg and "(10,)" in msg, msg


# ---------------------------------------------- 3. the collusion channel ---
def _mpiexec() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(cand):
        return cand
    import shutil

    return shutil.which("mpiexec")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
                TF_CPP_MIN_LOG_LEVEL="2")


@pytest.mark.timeout(150)
def test_collusion_channel_is_built_by_the_colluders_alone(tmp_path):
    """Ranks 2 and 4 collude; ranks 0, 1, 3 call nothing and leave at once: no hang, full pool."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich mpi4py)")
    pytest.importorskip("mpi4py")
    out = tmp_path / "rep"
    job = os.path.join(ROOT, "tests", "mpi", "issue9_collusion_job.py")
    cmd = [mpiexec, "-disable-auto-cleanup", "-n", "5", sys.executable, job, str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank (their own session)
        proc.communicate()
        pytest.fail("the collusion job hung (a collective over COMM_WORLD that the honest ranks skip?)")
    r = SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr)
    reps = {}
    for rank in range(5):
        p = tmp_path / f"rep.rank{rank}.json"
        assert p.exists(), f"rank {rank} wrote no report (rc={r.returncode}):\n{r.stdout}\n{r.stderr}"
        reps[rank] = json.loads(p.read_text())
    for rank in (0, 1, 3):
        assert reps[rank]["member"] is False
    # sign_flip of the pooled rows {2, 2.5, 4, 4.5}: -mean = -3.25, on both colluders
    for rank, channel_rank in ((2, 0), (4, 1)):
        rep = reps[rank]
        assert rep["member"] and rep["channel_size"] == 2 and rep["channel_rank"] == channel_rank, rep
        np.testing.assert_allclose(rep["row"], [-3.25] * 6)


def test_honest_ranks_create_no_collusion_channel():
    """An honest rank is refused before it calls anything on the communicator."""
    from pyagg.cluster.byzantine import Collusion

    calls = []

    class Comm:
        def Get_rank(self):
            return 1

        def __getattr__(self, name):
            calls.append(name)
            raise AssertionError(f"honest rank called comm.{name}")

    with pytest.raises(ValueError, match="rank 1 is not a colluder"):
        Collusion(Comm(), [2, 4])
    assert calls == []


# ------------------------------------------------- 4. one rank supervisor ---
def _guard(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    e = _env()
    for k in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "LOSSYMPI_GUARD_DEBUG"):
        e.pop(k, None)
    e.update(env)
    return subprocess.run([sys.executable, os.path.join(ROOT, "lossympi", "guard.py"), *argv], env=e,
                          capture_output=True, text=True, timeout=60, check=False, start_new_session=True)


def test_rank_supervisor_is_lossympi_guard_only(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("pyagg.cluster.rank") is None
    assert not os.path.exists(os.path.join(ROOT, "pyagg", "cluster", "rank.py"))
    from pyagg.cluster.config import TrainConfig
    from pyagg.train import mpi_command

    cfg = TrainConfig(workers=3, launcher="mpi", mpiexec="mpiexec", out=str(tmp_path))
    cmd = mpi_command(cfg, ["--workers", "3"])
    rank = [sys.executable, "-m", "lossympi.guard", "-m", "pyagg.train", "--workers", "3"]
    # every rank (server and workers, whatever the MPMD sections) runs under lossympi.guard
    starts = [i for i in range(len(cmd)) if cmd[i:i + len(rank)] == rank]
    assert starts, cmd
    assert cmd.count(sys.executable) == len(starts) and "pyagg.cluster.rank" not in cmd
    from lossympi.guard import FATAL

    assert FATAL == 86


def test_guard_imports_only_the_standard_library():
    tree = ast.parse(open(os.path.join(ROOT, "lossympi", "guard.py")).read())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative import (the package would be pulled in)"
            mods.add(node.module.split(".")[0])
    assert mods <= {"__future__", "os", "signal", "subprocess", "sys"}, mods


def test_python_m_lossympi_guard_pulls_in_no_numpy_pyagg_or_mpi():
    """``python -m lossympi.guard`` imports the package first: neither may pull in numpy, pyagg or MPI."""
    code = ("import runpy, sys; sys.argv = ['guard', '--', 'true']; import lossympi.guard; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pyagg', 'mpi4py'}))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_guard_forms_statuses_and_debug():
    # a script / -c / -m run under this Python; after "--" the command as given
    assert _guard(["-c", "raise SystemExit(3)"], PMI_RANK="1").returncode == 3
    assert _guard(["-m", "json.tool", "--help"]).returncode == 0
    assert _guard(["--", sys.executable, "-c", "raise SystemExit(4)"], PMI_RANK="2").returncode == 4
    assert _guard(["--", "false"], PMI_RANK="1").returncode == 1
    assert _guard([]).returncode == 2 and _guard(["--"]).returncode == 2
    # death by signal -> 128 + N (the other ranks keep running)
    r = _guard(["-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], PMI_RANK="3")
    assert r.returncode == 128 + 9
    # the guard's pid is in the child's environment
    r = _guard(["-c", "import os; print(os.environ['LOSSYMPI_GUARD_PID'])"])
    assert r.returncode == 0 and r.stdout.strip().isdigit()
    # debug print of the child's status, under the guard's own variable name
    r = _guard(["-c", "raise SystemExit(5)"], PMI_RANK="1", LOSSYMPI_GUARD_DEBUG="1")
    assert r.returncode == 5 and "exited 5" in r.stderr and "lossympi.guard" in r.stderr
    assert "exited" not in _guard(["-c", "raise SystemExit(5)"], PMI_RANK="1").stderr


@pytest.mark.parametrize("env,code", [({"PMI_RANK": "1"}, 86), ({"PMI_RANK": "0"}, 1), ({"PMIX_RANK": "0"}, 2),
                                      ({"OMPI_COMM_WORLD_RANK": "0"}, 86)])
def test_guard_ends_the_whole_job_on_fatal_or_rank0_failure(env, code):
    """FATAL (86) on any rank, or a non-zero status on rank 0: the guard SIGKILLs itself (hydra ends the job)."""
    r = _guard(["-c", f"raise SystemExit({code})"], **env)
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert _guard(["-c", "raise SystemExit(0)"], **env).returncode == 0


# --------------------------------------------- 5. no pickled MPI traffic ---
_PICKLING = {"send", "recv", "isend", "irecv", "bcast", "gather", "scatter", "allgather", "allreduce", "reduce",
             "alltoall", "sendrecv", "ssend", "issend", "mprobe", "improbe", "ibcast", "igather", "iscatter",
             "scan", "exscan", "barrier"}
# Every Python file of the project that can talk MPI (the hostile test rank excepted: it pickles on purpose).
_OWNED = sorted(
    os.path.relpath(os.path.join(dp, f), ROOT)
    for top in ("pyagg", "lossympi", "bench", "tests/mpi", "examples", "scripts")
    for dp, _, fs in os.walk(os.path.join(ROOT, top)) for f in fs
    if f.endswith(".py") and f != "hostile_rank.py")


def _receiver(node: ast.AST) -> str:
    return ast.unparse(node)


@pytest.mark.parametrize("path", _OWNED)
def test_no_lowercase_mpi4py_calls(path):
    """mpi4py's lowercase methods pickle; only typed buffer calls (Send, Gather, Igather...) are allowed."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _PICKLING:
            recv = _receiver(node.func.value)
            # the transports' own .send(step, g) / .recv are not mpi4py; anything on a communicator or an
            # mpi4py message (comm, self.comm, COMM_WORLD, msg from improbe) is
            if recv == "tf":  # tf.gather is TensorFlow's
                continue
            if "comm" in recv.lower() or "probe" in recv or node.func.attr not in ("send", "recv"):
                bad.append(f"{path}:{node.lineno}: {recv}.{node.func.attr}(...)")
    assert not bad, bad
