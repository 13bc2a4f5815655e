"""The CUDA front end of the Python API against the CPU backend.

Skipped without a usable GPU; with PYAGG_TEST_GPU=1 a missing GPU is a failure
(bench/gpu_python_check.sh runs this file on a GPU machine). Tolerances: the
CUDA distance matrix sums in another order than the CPU's (last bits differ),
so selections are compared on well-separated data, where they must be
identical; means within 1e-5 (float32) / 1e-12 (float64) relative to the
largest value; iterative rules within 1e-4 / 1e-9.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import pyagg


def _gpu_available() -> tuple[bool, str]:
    try:
        from pyagg import _device

        return _device.device_count() > 0, "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        return False, str(exc)


_OK, _WHY = _gpu_available()
FORCE = os.environ.get("PYAGG_TEST_GPU") == "1"
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_gpu():
    if not _OK:
        if FORCE:
            pytest.fail(f"PYAGG_TEST_GPU=1 but no usable CUDA device: {_WHY}")
        pytest.skip(f"no usable CUDA device: {_WHY}")


def test_no_device_is_a_clear_error_not_a_crash():
    # Runs only with a GPU (fixture); the no-GPU case is test_cuda_unavailable below.
    assert pyagg.build_info()["cuda"] is True


ITERATIVE = {"geometric-median", "centered-clipping"}


def _data(n: int, d: int, dtype, seed: int, bad: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Well separated rows (distinct scales): Krum-family selections have no near-ties.
    G = rng.standard_normal((n, d)) * (1.0 + np.arange(n)[:, None] / n) + rng.standard_normal(d)
    G = G.astype(dtype)
    for i in range(bad):
        G[1 + 2 * i, :: 3] = np.nan if i % 2 == 0 else np.inf
    return G


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", sorted(pyagg.rules()))
@pytest.mark.parametrize("d", [1, 1013, 70_001])
def test_rule_cuda_equals_cpu(rule, dtype, d):
    n, f = 15, 3
    bad = 0 if rule == "average" else 2
    G = _data(n, d, dtype, seed=d, bad=bad)
    params = {"tau": 10.0} if rule == "zeroing" else {}  # its one parameter without a default
    cpu = pyagg.aggregate(G, rule, f=f, **params)
    gpu = pyagg.aggregate(G, rule, f=f, device="cuda", **params)
    assert isinstance(gpu, np.ndarray) and gpu.dtype == G.dtype and gpu.shape == (d,)
    if rule != "average":
        assert np.isfinite(gpu).all()
    scale = float(np.nanmax(np.abs(np.where(np.isfinite(G), G, 0)))) or 1.0
    if rule in ITERATIVE:
        tol = 1e-4 if dtype == np.float32 else 1e-9
    else:
        tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=tol * scale, equal_nan=True)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "averaged-median", "krum", "bulyan"])
def test_selections_are_bitwise(rule):
    G = _data(19, 4099, np.float32, seed=7, bad=2)
    assert pyagg.aggregate(G, rule, f=4, device="cuda").tobytes() == pyagg.aggregate(G, rule, f=4).tobytes()


@pytest.mark.parametrize("pre", ["nnm", "bucketing", "clipping"])
def test_preaggregators_on_gpu(pre):
    from pyagg import _device

    G = _data(12, 5003, np.float32, seed=3)
    cpu = pyagg.preaggregate(G, pre, f=2)
    dg = _device.DeviceArray.from_host(G)
    out = pyagg.preaggregate(dg, pre, f=2)
    host = np.asarray(out.get() if hasattr(out, "get") else out)
    np.testing.assert_allclose(host, cpu, rtol=0, atol=1e-5 * float(np.abs(G).max()))


def test_device_array_input_stays_on_gpu():
    from pyagg import _device

    G = _data(11, 2048, np.float64, seed=5)
    dg = _device.DeviceArray.from_host(G)
    out = pyagg.aggregate(dg, "multi-krum", f=2)
    assert hasattr(out, "__cuda_array_interface__")
    np.testing.assert_allclose(out.get(), pyagg.aggregate(G, "multi-krum", f=2), rtol=0, atol=1e-12 * np.abs(G).max())


def test_aggregator_with_state_on_gpu():
    G = _data(9, 3001, np.float32, seed=11)
    a_cpu = pyagg.Aggregator("centered-clipping", f=2, tau=1.0)
    a_gpu = pyagg.Aggregator("centered-clipping", f=2, tau=1.0, device="cuda")
    for _ in range(3):
        c, g = a_cpu.aggregate(G), a_gpu.aggregate(G)
        np.testing.assert_allclose(g, c, rtol=0, atol=1e-4 * float(np.abs(G).max()))


def test_gpu_errors_are_clear():
    with pytest.raises(pyagg.InvalidArgumentError, match="krum needs n >= 2f\\+3"):
        pyagg.aggregate(_data(6, 10, np.float32, 0), "krum", f=2, device="cuda")
    with pytest.raises(pyagg.InvalidArgumentError, match="CUDA device 99 does not exist"):
        pyagg.aggregate(_data(6, 10, np.float32, 0), "average", device="cuda:99")
