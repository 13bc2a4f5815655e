"""Facts about the engine's types and rules that the Python layers share, each stated once.

- ``DTYPE_CODES``: numpy dtype -> the engine's ``pyagg::DType`` code
  (engine/include/pyagg/types.h); ``DTYPES`` the reverse.
- ``DEVICE_CPU`` / ``DEVICE_CUDA``: the engine's ``pyagg::Device`` codes.
- :func:`on_gpu`: whether an array lives in CUDA device memory (the one GPU
  detection used by :mod:`pyagg.api` and :mod:`pyagg._device`).
- :func:`is_stateful`: whether a rule carries a state from one call to the
  next that the caller keeps (:class:`pyagg.Aggregator`,
  :class:`pyagg.tf_bridge.ServerAggregator`, :mod:`pyagg.flower`).

Status codes -> exceptions live in :mod:`pyagg.errors` (``STATUS_EXCEPTIONS``).
The lossympi package keeps its own copy of the dtype codes on purpose: it
imports nothing from pyagg.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPE_CODES: dict[np.dtype, int] = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
DTYPES: dict[int, np.dtype] = {v: k for k, v in DTYPE_CODES.items()}
DEVICE_CPU, DEVICE_CUDA = 0, 1

# DLPack device types of CUDA device memory: kDLCUDA, kDLCUDAManaged. (kDLCUDAHost,
# 3, is pinned *host* memory: the CPU reads it, it takes the host path.)
DLPACK_CUDA, DLPACK_CUDA_MANAGED = 2, 13
DLPACK_GPU_KINDS = (DLPACK_CUDA, DLPACK_CUDA_MANAGED)

# Rules whose call t starts from call t-1's output (engine input `state`).
_STATEFUL_RULES = frozenset({"centered-clipping"})


def is_stateful(rule: str) -> bool:
    """True when `rule` takes the previous output as its state (centered-clipping)."""
    return rule in _STATEFUL_RULES


def on_gpu(x: Any) -> bool:
    """True when `x` lives in CUDA device memory (CUDA array interface, or DLPack on a CUDA device)."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        kind, _ = dev()
    except Exception:  # noqa: BLE001 - a broken __dlpack_device__ means "not CUDA"
        return False
    return int(kind) in DLPACK_GPU_KINDS
