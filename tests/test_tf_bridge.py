"""The TensorFlow bridge: the PyaggAggregate op, pyagg.tf_bridge, ServerAggregator.

TensorFlow is a test dependency (installed by the README's test command): these
tests run, they are not skipped. A build without the op library fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np
import pytest
import tensorflow as tf

import pyagg
from pyagg import tf_bridge

ROOT = Path(__file__).resolve().parents[1]
REBUILD = "python -m pyagg.tf_bridge build"

# n = 11, f = 2 admits every rule (bulyan: n >= 4f+3 = 11).
N, F, D = 11, 2, 257
ALL_RULES = sorted(pyagg.rules())
# A non-default parameter set per rule that has parameters (nu and tol are not
# representable in float32: they check that doubles cross the op exactly).
PARAMS = {
    "multi-krum": {"m": 4},
    "bulyan-multikrum": {"m": 6},
    "averaged-median": {"beta": 5},
    "geometric-median": {"nu": 1e-5, "max_iter": 7, "tol": 1e-9},
    "centered-clipping": {"tau": 0.3, "L": 3},
    "mda": {"max_subsets": 100.0},
    # choices travel by name, a 64-bit seed exactly, inf as "inf"
    "dnc": {"b": 3, "niters": 3, "c": 0.5, "seed": 2**64 - 1, "power_iters": 9},
    "clipped-clustering": {"linkage": "single", "max_tau": 1.5, "norm_history": "call"},
    "smea": {"max_subsets": 1e5},
    "caf": {"power_iters": 7, "seed": 12345678901234567},
    "zeroing": {"tau": 1.5, "norm_order": 2, "mode": "drop"},
}
REQUIRED = {"zeroing": {"tau": float("inf")}}  # parameters without a default
CASES = [(r, REQUIRED.get(r, {})) for r in ALL_RULES] + sorted(PARAMS.items())


def _ids(case):
    rule, params = case
    return rule + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else "")


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _data(rng: np.random.Generator, dtype, n: int = N, d: int = D, byzantine: bool = True) -> np.ndarray:
    G = rng.standard_normal((n, d)).astype(dtype)
    if byzantine:
        G[3] *= 1e3  # a far row
        G[7, ::5] = np.nan  # a partly non-finite row
    return G


def _engine_error(fn) -> str:
    """The message pyagg's Python API gives for the same mistake."""
    with pytest.raises(pyagg.InvalidArgumentError) as e:
        fn()
    return str(e.value)


# ------------------------------------------------------------------ build ---
def test_op_library_is_built():
    info = tf_bridge.build_info()
    assert info["built"], f"TF op not built: {info.get('reason')} (build with TensorFlow installed)"
    assert tf_bridge.is_built()
    assert info["tensorflow_version"] == tf.__version__
    assert pyagg.build_info()["tf_bridge"] is True
    ops = tf_bridge.load()
    assert hasattr(ops, "pyagg_aggregate")


def test_one_engine_library_in_the_process():
    """The op library and the Cython module share one libpyagg_engine.so."""
    tf_bridge.load()
    pyagg.aggregate(np.ones((3, 4), np.float32), "median")
    maps = Path("/proc/self/maps").read_text()
    engines = {line.split()[-1] for line in maps.splitlines() if line.endswith("libpyagg_engine.so")}
    assert len(engines) == 1, engines
    ops_lib = Path(tf_bridge.build_info()["path"])
    assert os.path.realpath(ops_lib.parent.parent / "libpyagg_engine.so") in {os.path.realpath(p) for p in engines}


# ------------------------------------------------------ bit-for-bit equality ---
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_op_equals_engine_eager(case, dtype, rng):
    rule, params = case
    G = _data(rng, dtype)
    expected = pyagg.aggregate(G, rule, F, **params)
    got = tf_bridge.aggregate(tf.constant(G), rule, F, **params)
    assert got.dtype.as_numpy_dtype == dtype
    assert got.shape == (D,)
    np.testing.assert_array_equal(_bits(got.numpy()), _bits(expected))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_op_equals_engine_in_tf_function(case, dtype, rng):
    rule, params = case
    G = _data(rng, dtype)
    expected = pyagg.aggregate(G, rule, F, **params)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.as_dtype(dtype))])
    def agg(x):
        return tf_bridge.aggregate(x, rule, F, **params)

    got = agg(tf.constant(G))
    np.testing.assert_array_equal(_bits(got.numpy()), _bits(expected))
    # A real graph op: no Python callback in the graph.
    types = {op.type for op in agg.get_concrete_function().graph.get_operations()}
    assert "PyaggAggregate" in types
    assert not types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_list_of_tensors_is_flattened_and_restored(dtype, rng):
    shape = (3, 5, 7)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(N)]
    expected = pyagg.aggregate(np.stack([g.ravel() for g in grads]), "bulyan", F).reshape(shape)
    got = tf_bridge.aggregate([tf.constant(g) for g in grads], "bulyan", F)
    assert got.shape == shape
    np.testing.assert_array_equal(_bits(got.numpy()), _bits(expected))

    @tf.function
    def agg(*gs):
        return tf_bridge.aggregate(list(gs), "bulyan", F)

    out = agg(*[tf.constant(g) for g in grads])
    assert out.shape == shape
    np.testing.assert_array_equal(_bits(out.numpy()), _bits(expected))


def test_shape_inference_preserves_d():
    @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32)])
    def agg(x):
        out = tf_bridge.aggregate(x, "median")
        assert out.shape.as_list() == [10]
        return out

    agg.get_concrete_function()

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float64)])
    def agg2(x):
        out = tf_bridge.aggregate(x, "median")
        assert out.shape.rank == 1
        return out

    agg2.get_concrete_function()


def test_centered_clipping_state_matches_aggregator(dtype, rng):
    """With the previous output as state, the op reproduces pyagg.Aggregator."""
    ref = pyagg.Aggregator("centered-clipping", F, tau=0.5, L=2)
    v = None
    for _ in range(4):
        G = _data(rng, dtype, byzantine=False)
        expected = ref.aggregate(G)
        v = tf_bridge.aggregate(tf.constant(G), "centered-clipping", F, state=v, tau=0.5, L=2)
        np.testing.assert_array_equal(_bits(v.numpy()), _bits(expected))


# ------------------------------------------------------------------ errors ---
BAD_ATTRS = [
    ("nope", 0, {}),
    ("krum", -1, {}),
    ("multi-krum", 1, {"q": 3}),
    ("multi-krum", 1, {"m": 2.5}),
    ("multi-krum", 1, {"m": 0}),
    ("geometric-median", 0, {"nu": 0.0}),
    ("geometric-median", 0, {"tol": float("nan")}),
    ("centered-clipping", 0, {"tau": -1.0}),
    ("median", 0, {"m": 1}),
]


@pytest.mark.parametrize("rule,f,params", BAD_ATTRS, ids=lambda x: str(x))
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_bad_attrs_give_engine_message(rule, f, params, mode, rng):
    G = rng.standard_normal((N, 8)).astype(np.float32)
    message = _engine_error(lambda: pyagg.aggregate(G, rule, f, **params))
    call = lambda x: tf_bridge.aggregate(x, rule, f, **params)
    if mode == "function":
        call = tf.function(call)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        call(tf.constant(G))
    assert message in e.value.message


def test_duplicate_parameter_rejected_by_engine():
    ops = tf_bridge.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="parameter m given twice"):
        ops.pyagg_aggregate(
            tf.ones([7, 3]), tf.zeros([0]), rule="multi-krum", f=1, param_names=["m", "m"], param_values=["2", "3"]
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="same length"):
        ops.pyagg_aggregate(tf.ones([7, 3]), tf.zeros([0]), rule="multi-krum", f=1, param_names=["m"], param_values=[])
    # text that is not a number reaches the engine (text also names choices): its own message
    with pytest.raises(tf.errors.InvalidArgumentError, match="parameter m must be a real number, got 'two'"):
        ops.pyagg_aggregate(
            tf.ones([7, 3]), tf.zeros([0]), rule="multi-krum", f=1, param_names=["m"], param_values=["two"]
        )


BAD_SHAPES = [
    ("krum", 1, (4, 8)),  # n below 2f+3
    ("bulyan", 2, (10, 8)),  # n below 4f+3
    ("trimmed-mean", 3, (6, 8)),  # n below 2f+1
    ("median", 0, (5, 0)),  # d = 0
    ("average", 0, (0, 5)),  # n = 0
    ("mda", 10, (30, 4)),  # C(30, 10) above max_subsets
]


@pytest.mark.parametrize("rule,f,shape", BAD_SHAPES, ids=lambda x: str(x))
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_bad_shapes_give_engine_message(rule, f, shape, mode, rng):
    G = rng.standard_normal(shape).astype(np.float64)
    message = _engine_error(lambda: pyagg.aggregate(G, rule, f))
    call = lambda x: tf_bridge.aggregate(x, rule, f)
    if mode == "function":
        call = tf.function(call, input_signature=[tf.TensorSpec([None, None], tf.float64)])
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        call(tf.constant(G))
    assert message in e.value.message


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_bad_rank(shape):
    x = tf.ones(shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank-2 tensor"):
        tf_bridge.aggregate(x, "median")  # eager: the kernel checks
    unknown = tf.function(lambda t: tf_bridge.aggregate(t, "median"), input_signature=[tf.TensorSpec(None, tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank-2 tensor"):
        unknown(x)  # graph, rank unknown when tracing: the kernel checks
    with pytest.raises(ValueError, match="rank 2"):
        tf.function(lambda t: tf_bridge.aggregate(t, "median"))(x)  # static rank: shape inference


def test_bad_state():
    with pytest.raises(tf.errors.InvalidArgumentError, match="state must be a rank-1 tensor of d=4"):
        tf_bridge.aggregate(tf.ones([5, 4]), "centered-clipping", state=tf.ones([3]))


def test_python_side_checks():
    with pytest.raises(pyagg.InvalidArgumentError, match="float32 or float64"):
        tf_bridge.aggregate(tf.ones([5, 4], tf.float16), "median")
    with pytest.raises(pyagg.InvalidArgumentError, match="float32 or float64"):
        tf_bridge.aggregate(tf.ones([5, 4], tf.int32), "median")
    with pytest.raises(pyagg.InvalidArgumentError, match="different shapes"):
        tf_bridge.aggregate([tf.ones([2, 3]), tf.ones([3, 2])], "median")
    with pytest.raises(pyagg.InvalidArgumentError, match="mixed dtypes"):
        tf_bridge.aggregate([tf.ones([3], tf.float32), tf.ones([3], tf.float64)], "median")
    with pytest.raises(pyagg.InvalidArgumentError, match="n=0"):
        tf_bridge.aggregate([], "median")
    with pytest.raises(pyagg.InvalidArgumentError, match="f must be an integer"):
        tf_bridge.aggregate(tf.ones([5, 4]), "median", f=1.5)
    with pytest.raises(pyagg.InvalidArgumentError, match="must be a real number"):
        tf_bridge.aggregate(tf.ones([5, 4]), "multi-krum", m="2")
    # The same checks as the Python API's, with the same wording.
    assert "must be a real number" in _engine_error(lambda: pyagg.aggregate(np.ones((5, 4)), "multi-krum", m="2"))


# ----------------------------------------------------- build-info / loading ---
@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """Makes tf_bridge.load() run again (and restores the loaded module after).

    With an empty op cache and the run-time build off (PYAGG_TF_AUTOBUILD=0),
    so that what is reported is what the in-package build info says.
    """
    monkeypatch.setattr(tf_bridge, "_ops", None)
    monkeypatch.setenv("PYAGG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYAGG_TF_AUTOBUILD", "0")
    return tf_bridge


def test_version_mismatch_is_reported(fresh_loader, monkeypatch):
    monkeypatch.setattr(tf, "__version__", "9.99.0")
    with pytest.raises(tf_bridge.TFBridgeError) as e:
        fresh_loader.load()
    msg = str(e.value)
    assert f"built against TensorFlow {tf_bridge.build_info()['tensorflow_version']}, running 9.99.0" in msg
    assert REBUILD in msg
    assert isinstance(e.value, ImportError)


def test_stale_build_info_is_caught_by_the_compiled_version(fresh_loader, monkeypatch, tmp_path):
    info = tf_bridge.build_info()
    monkeypatch.setattr(tf, "__version__", "9.99.0")
    fake = dict(info, tensorflow_version="9.99.0")
    p = tmp_path / "_build_info.json"
    p.write_text(json.dumps(fake))
    monkeypatch.setattr(tf_bridge, "_INFO_FILE", p)
    monkeypatch.setattr(tf_bridge, "_DIR", Path(info["path"]).parent)
    with pytest.raises(tf_bridge.TFBridgeError, match=r"built against TensorFlow .*running 9\.99\.0; rebuild with"):
        fresh_loader.load()


@pytest.mark.parametrize(
    "content",
    [None, {"built": False, "reason": "TensorFlow was not importable when pyagg was built (cannot import tensorflow)"}],
)
def test_not_built_is_reported_at_use(fresh_loader, monkeypatch, tmp_path, content):
    p = tmp_path / "_build_info.json"
    if content is not None:
        p.write_text(json.dumps(content))
    monkeypatch.setattr(tf_bridge, "_INFO_FILE", p)
    assert not tf_bridge.is_built()
    with pytest.raises(tf_bridge.TFBridgeError, match="pyagg TF bridge not built") as e:
        tf_bridge.aggregate(tf.ones([3, 2]), "median")
    assert REBUILD in str(e.value)
    if content is not None:
        assert "not importable" in str(e.value)


def test_missing_library_is_reported(fresh_loader, monkeypatch, tmp_path):
    info = tf_bridge.build_info()
    p = tmp_path / "_build_info.json"
    p.write_text(json.dumps(dict(info, library="_gone.so")))
    monkeypatch.setattr(tf_bridge, "_INFO_FILE", p)
    with pytest.raises(tf_bridge.TFBridgeError, match="_gone.so is missing"):
        fresh_loader.load()


# ------------------------------------------------------- CMake detection ---
# The cmake of this environment (pip's, in the venv's bin) first, else PATH's.
CMAKE = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _cmake_configure(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CMAKE,
            "-S",
            str(ROOT),
            "-B",
            str(tmp_path / "build"),
            "-DPYAGG_WITH_CUDA=OFF",
            "-DPYAGG_BUILD_TESTS=OFF",
            "-DPYAGG_BUILD_BENCH=OFF",
            "-DPYAGG_WITH_SODIUM=OFF",
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def python_without_tf(tmp_path: Path) -> Path:
    """An interpreter on which `import tensorflow` fails."""
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named tensorflow (test shadow)')\n")
    exe = tmp_path / "python-no-tf"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH={shadow.parent} exec {sys.executable} "$@"\n')
    exe.chmod(0o755)
    return exe


@pytest.mark.skipif(CMAKE is None, reason="cmake not found")
def test_cmake_auto_without_tf_records_not_built(tmp_path, python_without_tf):
    r = _cmake_configure(tmp_path, "-DPYAGG_BUILD_TF=AUTO", f"-DPYAGG_PYTHON_EXECUTABLE={python_without_tf}")
    assert r.returncode == 0, r.stderr
    assert "TensorFlow op not built" in r.stdout
    info = json.loads((tmp_path / "build" / "pyagg" / "tf_bridge" / "_build_info.json").read_text())
    assert info["built"] is False
    assert "not importable" in info["reason"] and "test shadow" in info["reason"]


@pytest.mark.skipif(CMAKE is None, reason="cmake not found")
def test_cmake_on_without_tf_fails(tmp_path, python_without_tf):
    r = _cmake_configure(tmp_path, "-DPYAGG_BUILD_TF=ON", f"-DPYAGG_PYTHON_EXECUTABLE={python_without_tf}")
    assert r.returncode != 0
    assert "PYAGG_BUILD_TF=ON but TensorFlow is not importable" in r.stderr


# ------------------------------------------------------ ServerAggregator ---
def _small_model():
    tf.keras.utils.set_random_seed(1)
    return tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(4), tf.keras.layers.Dense(3)])


def test_server_aggregator_flatten_aggregate_split(rng):
    model = _small_model()
    server = tf_bridge.ServerAggregator(model, "multi-krum", f=1, m=3)
    assert server.d == 6 * 4 + 4 + 4 * 3 + 3
    worker_grads = [
        [rng.standard_normal(v.shape).astype(np.float32) for v in model.trainable_variables] for _ in range(6)
    ]
    worker_grads[2][1] = None  # an unconnected variable counts as zeros
    flat = np.stack(
        [np.concatenate([np.zeros(4, np.float32) if g is None else g.ravel() for g in w]) for w in worker_grads]
    )
    np.testing.assert_array_equal(server.flatten(worker_grads).numpy(), flat)
    expected = pyagg.aggregate(flat, "multi-krum", 1, m=3)
    out = server.aggregate(worker_grads)
    assert [tuple(o.shape) for o in out] == [tuple(v.shape) for v in model.trainable_variables]
    np.testing.assert_array_equal(np.concatenate([o.numpy().ravel() for o in out]), expected)


def test_server_aggregator_validates_with_engine():
    model = _small_model()
    msg = _engine_error(lambda: pyagg.aggregate(np.ones((5, 3)), "multi-krum", 1, q=1))
    with pytest.raises(pyagg.InvalidArgumentError) as e:
        tf_bridge.ServerAggregator(model, "multi-krum", f=1, q=1)
    assert str(e.value) == msg
    server = tf_bridge.ServerAggregator(model, "krum", f=2, optimizer=tf.keras.optimizers.SGD(0.1))
    grads = [[tf.zeros_like(v) for v in model.trainable_variables] for _ in range(5)]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"krum needs n >= 2f\+3, got n=5, f=2"):
        server.apply(grads)
    with pytest.raises(pyagg.InvalidArgumentError, match="sent 1 gradients for 4 variables"):
        server.apply([[tf.zeros([6, 4])]] * 7)


def test_server_aggregator_applies_in_tf_function(rng):
    model = _small_model()
    before = [v.numpy().copy() for v in model.trainable_variables]
    server = tf_bridge.ServerAggregator(model, "median", optimizer=tf.keras.optimizers.SGD(1.0))
    worker_grads = [
        [tf.constant(rng.standard_normal(v.shape).astype(np.float32)) for v in model.trainable_variables]
        for _ in range(5)
    ]

    @tf.function
    def step(wg):
        return server.apply(wg)

    out = step(worker_grads)
    expected = pyagg.aggregate(server.flatten(worker_grads).numpy(), "median")
    np.testing.assert_array_equal(np.concatenate([o.numpy().ravel() for o in out]), expected)
    for v, b, g in zip(model.trainable_variables, before, server.unflatten(tf.constant(expected))):
        np.testing.assert_allclose(v.numpy(), b - g.numpy(), rtol=1e-6, atol=1e-6)


def test_server_aggregator_keeps_centered_clipping_state(rng):
    model = _small_model()
    server = tf_bridge.ServerAggregator(model, "centered-clipping", f=1, tau=0.5)
    ref = pyagg.Aggregator("centered-clipping", 1, tau=0.5)
    step = tf.function(server.aggregate_flat)
    for _ in range(3):
        G = rng.standard_normal((5, server.d)).astype(np.float32)
        np.testing.assert_array_equal(step(tf.constant(G)).numpy(), ref.aggregate(G))
    np.testing.assert_array_equal(server.state.numpy(), ref.state)
    server.reset()
    assert not server.state.numpy().any()


# ----------------------------------------------- training under an attack ---
def _load_example():
    spec = importlib.util.spec_from_file_location("tf_digits", ROOT / "examples" / "tf_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def example():
    return _load_example()


def test_example_attack_breaks_averaging(example):
    r = example.train("average", "sign_flip", steps=150, attack_params={"scale": 10.0})
    assert r["accuracy"] < 0.3, r


@pytest.mark.parametrize("rule", ["krum", "median"])
def test_example_robust_rule_trains_under_attack(example, rule):
    r = example.train(rule, "sign_flip", steps=150, attack_params={"scale": 10.0})
    assert r["accuracy"] > 0.85, r


def test_example_main_prints_a_table(example, capsys):
    example.main(["--rules", "average", "trimmed-mean", "--steps", "5"])
    out = capsys.readouterr().out
    assert "trimmed-mean" in out and "test acc" in out
