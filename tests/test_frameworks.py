"""Results in the caller's type and place (pyagg/_frameworks.py, pyagg/jax.py).

numpy -> numpy, torch -> torch (same device, no copy on CPU), JAX -> jax.Array,
TensorFlow/Keras -> tf.Tensor, sequences likewise; values equal the numpy
call's bit for bit. jax.jit and tf.function run through pyagg.jax.aggregate /
the TF op. Error hints speak the caller's framework. GPU cases are marked gpu
(skipped without a GPU, failures with PYAGG_TEST_GPU=1).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import pyagg

N, F, D = 9, 2, 37
CASES = [("krum", F, {}), ("median", F, {}), ("multi-krum", F, {"m": 4}), ("bulyan", 1, {}), ("trimmed-mean", F, {})]


def _data(rng, dtype=np.float32):
    G = rng.standard_normal((N, D)).astype(dtype)
    G[1] += 40.0
    return G


# ------------------------------------------------------------------ numpy ---
def test_numpy_and_lists_give_numpy(rng):
    G = _data(rng)
    assert type(pyagg.aggregate(G, "krum", f=F)) is np.ndarray
    assert type(pyagg.aggregate(list(G), "median", f=F)) is np.ndarray
    assert type(pyagg.aggregate(G.tolist() and [np.asarray(r) for r in G], "median")) is np.ndarray


# ------------------------------------------------------------------ torch ---
@pytest.mark.parametrize("rule,f,params", CASES)
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_torch_cpu_gives_torch(rng, rule, f, params, dt):
    torch = pytest.importorskip("torch")
    G = _data(rng, np.dtype(dt))
    T = torch.from_numpy(G.copy())
    out = pyagg.aggregate(T, rule, f, **params)
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and out.dtype == T.dtype
    np.testing.assert_array_equal(out.numpy(), pyagg.aggregate(G, rule, f, **params))
    rows = pyagg.aggregate(list(T), rule, f, **params)  # a list of 1-D tensors
    assert isinstance(rows, torch.Tensor)
    np.testing.assert_array_equal(rows.numpy(), out.numpy())


def test_torch_preaggregate_and_aggregator(rng):
    torch = pytest.importorskip("torch")
    G = _data(rng)
    T = torch.from_numpy(G.copy())
    pre = pyagg.preaggregate(T, "nnm", f=F)
    assert isinstance(pre, torch.Tensor) and tuple(pre.shape) == (N, D)
    np.testing.assert_array_equal(pre.numpy(), pyagg.preaggregate(G, "nnm", f=F))
    a_t = pyagg.Aggregator("centered-clipping", F, pre=["nnm"])
    a_np = pyagg.Aggregator("centered-clipping", F, pre=["nnm"])
    for _ in range(3):
        o_t, o_np = a_t(T), a_np(G)
        assert isinstance(o_t, torch.Tensor)
        np.testing.assert_array_equal(o_t.numpy(), o_np)


def test_torch_error_hints_speak_torch(rng):
    torch = pytest.importorskip("torch")
    T = torch.from_numpy(_data(rng))
    with pytest.raises(pyagg.InvalidArgumentError, match=r"not contiguous.*\.contiguous\(\)"):
        pyagg.aggregate(T.t(), "median")
    with pytest.raises(pyagg.InvalidArgumentError, match=r"not contiguous.*\.contiguous\(\)"):
        pyagg.aggregate([T[:, 0], T[:, 1], T[:, 2]], "median")
    with pytest.raises(pyagg.InvalidArgumentError, match=r"requires grad.*\.detach\(\)"):
        pyagg.aggregate(T.clone().requires_grad_(), "median")
    out = pyagg.aggregate(T.t().contiguous(), "median")  # the advice works
    assert isinstance(out, torch.Tensor)
    # numpy callers keep numpy's advice
    with pytest.raises(pyagg.InvalidArgumentError, match="numpy.ascontiguousarray"):
        pyagg.aggregate(_data(rng).T, "median")


# -------------------------------------------------------------------- JAX ---
@pytest.mark.parametrize("rule,f,params", CASES)
def test_jax_gives_jax_on_the_same_device(rng, rule, f, params):
    jax = pytest.importorskip("jax")
    G = _data(rng)
    X = jax.numpy.asarray(G)
    out = pyagg.aggregate(X, rule, f, **params)
    assert isinstance(out, jax.Array) and out.dtype == X.dtype
    assert out.devices() == X.devices()
    np.testing.assert_array_equal(np.asarray(out), pyagg.aggregate(G, rule, f, **params))


def test_jax_jit_matches_eager(rng):
    jax = pytest.importorskip("jax")
    import pyagg.jax as pj

    G = _data(rng)
    X = jax.numpy.asarray(G)
    step = jax.jit(lambda x: pj.aggregate(x, "krum", f=F) * 2.0)
    np.testing.assert_array_equal(np.asarray(step(X)), 2.0 * pyagg.aggregate(G, "krum", f=F))
    # pyagg.aggregate itself works under jit (routed to pyagg.jax.aggregate)
    step2 = jax.jit(lambda x: pyagg.aggregate(x, "multi-krum", F, m=4))
    np.testing.assert_array_equal(np.asarray(step2(X)), pyagg.aggregate(G, "multi-krum", F, m=4))
    # a list of same-shape arrays keeps its shape
    Gs = [jax.numpy.asarray(r.reshape(37, 1)) for r in G]
    out = jax.jit(lambda gs: pj.aggregate(gs, "median"))(Gs)
    assert out.shape == (37, 1)
    np.testing.assert_array_equal(np.asarray(out).ravel(), pyagg.aggregate(G, "median"))
    # pre-aggregators
    out = jax.jit(lambda x: pj.aggregate(x, "average", F, pre=["nnm"]))(X)
    ref = pyagg.Aggregator("average", F, pre=["nnm"])(G)
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_jax_jit_errors_at_trace_time(rng):
    jax = pytest.importorskip("jax")
    import pyagg.jax as pj

    X = jax.numpy.asarray(_data(rng))
    with pytest.raises(pyagg.InvalidArgumentError, match="krum"):
        jax.jit(lambda x: pj.aggregate(x, "krum", f=4))(X)  # n=9 < 2f+3
    with pytest.raises(pyagg.InvalidArgumentError, match="unknown rule|no-such-rule"):
        jax.jit(lambda x: pj.aggregate(x, "no-such-rule"))(X)
    with pytest.raises(pyagg.InvalidArgumentError, match="2-D"):
        jax.jit(lambda x: pj.aggregate(x, "median"))(X[0])
    with pytest.raises(pyagg.InvalidArgumentError, match="cannot run inside jax.jit"):
        jax.jit(lambda x: pyagg.Aggregator("median")(x))(X)
    with pytest.raises(pyagg.InvalidArgumentError, match="dtype"):
        pj.aggregate(jax.numpy.ones((5, 3), dtype=jax.numpy.int32), "median")


# ------------------------------------------------------------- TensorFlow ---
def test_tf_and_keras_give_tf_tensors(rng):
    tf = pytest.importorskip("tensorflow")
    G = _data(rng)
    out = pyagg.aggregate(tf.constant(G), "krum", f=F)
    assert isinstance(out, tf.Tensor) and out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), pyagg.aggregate(G, "krum", f=F))
    out = pyagg.aggregate([tf.Variable(r) for r in G], "median")
    assert isinstance(out, tf.Tensor)
    np.testing.assert_array_equal(out.numpy(), pyagg.aggregate(G, "median"))
    keras = pytest.importorskip("keras")
    kv = [keras.Variable(r) for r in G]
    out = pyagg.aggregate(kv, "median")
    assert tf.is_tensor(out)
    np.testing.assert_array_equal(np.asarray(out), pyagg.aggregate(G, "median"))


def test_tf_function_runs_through_the_op(rng):
    tf = pytest.importorskip("tensorflow")
    from pyagg import tf_bridge

    G = _data(rng, np.float64)
    fn = tf.function(lambda x: pyagg.aggregate(x, "bulyan", 1))
    np.testing.assert_array_equal(fn(tf.constant(G)).numpy(), pyagg.aggregate(G, "bulyan", 1))
    assert tf_bridge.loaded_library() is not None


def test_tf_function_without_the_op_names_tf_bridge(rng, monkeypatch, tmp_path):
    tf = pytest.importorskip("tensorflow")
    import json

    from pyagg import tf_bridge

    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"built": False, "reason": "test: not built"}))
    monkeypatch.setattr(tf_bridge, "_INFO_FILE", info)
    monkeypatch.setattr(tf_bridge, "_ops", None)
    monkeypatch.setenv("PYAGG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYAGG_TF_AUTOBUILD", "0")
    fn = tf.function(lambda x: pyagg.aggregate(x, "median"))
    # TF re-raises errors of a trace as its StagingError, with our message inside.
    with pytest.raises((tf_bridge.TFBridgeError, tf.errors.OpError, Exception)) as e:
        fn(tf.constant(_data(rng)))
    msg = str(e.value)
    assert "pyagg.aggregate inside tf.function runs through the TF op pyagg.tf_bridge.aggregate" in msg
    assert "python -m pyagg.tf_bridge build" in msg


# ------------------------------------------------------------------- GPU ---
FORCE_GPU = os.environ.get("PYAGG_TEST_GPU") == "1"


@pytest.mark.gpu
def test_torch_cuda_stays_on_its_device(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not pyagg.build_info()["cuda"]:
        if FORCE_GPU:
            pytest.fail("PYAGG_TEST_GPU=1 but torch has no CUDA device or pyagg has no CUDA backend")
        pytest.skip("no CUDA device for torch, or pyagg built without CUDA")
    G = _data(rng)
    T = torch.from_numpy(G).cuda()
    out = pyagg.aggregate(T, "krum", f=F)
    assert isinstance(out, torch.Tensor) and out.device == T.device
    np.testing.assert_allclose(out.cpu().numpy(), pyagg.aggregate(G, "krum", f=F), rtol=1e-6)


@pytest.mark.gpu
def test_cupy_stays_cupy(rng):
    cupy = pytest.importorskip("cupy")
    if not pyagg.build_info()["cuda"]:
        if FORCE_GPU:
            pytest.fail("PYAGG_TEST_GPU=1 but pyagg has no CUDA backend")
        pytest.skip("pyagg built without CUDA")
    G = _data(rng)
    out = pyagg.aggregate(cupy.asarray(G), "median", f=F)
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out), pyagg.aggregate(G, "median", f=F), rtol=1e-6)


# ------------------------------------------------- one place for the facts ---
def test_tf_bridge_does_not_import_the_api_layer():
    """api -> tf_bridge is one-way (no import cycle): tf_bridge and its server import no pyagg.api."""
    import ast
    from pathlib import Path

    for path in (Path(pyagg.__file__).parent / "tf_bridge").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert mod not in ("..api", "pyagg.api"), f"{path.name} imports {mod}"
                assert not (mod == ".." and any(a.name == "api" for a in node.names)), path.name


def test_stateful_rules_and_codes_are_stated_once():
    from pyagg import _meta

    assert _meta.is_stateful("centered-clipping") and not _meta.is_stateful("krum")
    assert set(_meta.is_stateful(r) for r in pyagg.rules()) == {True, False}
    # the state actually matters for exactly those rules: call 2 differs from a fresh call 2
    G = np.random.default_rng(0).standard_normal((9, 6))
    for r in pyagg.rules():
        if pyagg.rules()[r]["min_n"](1) > 9:
            continue
        params = {k: 1 for k in pyagg.rules()[r]["required"]}
        a = pyagg.Aggregator(r, 1, **params)
        a(G)
        second = a(G + 1.0)
        fresh = pyagg.Aggregator(r, 1, **params)(G + 1.0)
        if _meta.is_stateful(r):
            assert not np.array_equal(second, fresh), r
    import pyagg._device as dev
    import pyagg.api as api

    assert api._DTYPES is _meta.DTYPE_CODES and dev._CODES is _meta.DTYPE_CODES
    assert api._on_gpu is _meta.on_gpu and dev._is_gpu is _meta.on_gpu
