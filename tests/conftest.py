"""Shared fixtures of the Python test suite.

- ``tests/`` is put on ``sys.path`` so that test modules can ``import
  reference`` (the numpy oracle) whatever pytest's import mode is.
- ``rng``: a numpy Generator seeded from the test's node id, so every test
  draws its own reproducible data.
- ``dtype``: float32 and float64.
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# Keep BLAS single-threaded in the tests' own numpy code (the oracle and the
# data generation): the engine's OpenMP threads are what is under test.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The suite makes thousands of tiny engine calls; with OpenMP's default
# spin-waiting, idle worker threads burn the cores the next call needs when the
# machine is shared (2-core CI). Passive waiting changes no result. Set before
# pyagg (and libgomp) is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("pyagg", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
    # CI runs the same examples every time (a red CI run is reproducible from its log); local
    # runs keep drawing new ones, so property tests keep searching.
    settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    if os.environ.get("CI") == "true":
        settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A Generator seeded from the test id (stable across runs and machines)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    """Both engine dtypes."""
    return np.dtype(request.param)
