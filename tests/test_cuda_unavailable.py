"""Without a usable GPU, asking for CUDA is a clear DeviceError and CPU use is unaffected."""

from __future__ import annotations

import numpy as np
import pytest

import pyagg
from pyagg.errors import DeviceError


def _gpu_count() -> int:
    try:
        from pyagg import _device

        return _device.device_count()
    except Exception:  # noqa: BLE001
        return 0


@pytest.mark.skipif(_gpu_count() > 0, reason="a GPU is present: covered by test_cuda_python.py")
def test_cuda_request_without_gpu_raises_device_error():
    G = np.ones((5, 4), dtype=np.float32)
    with pytest.raises(DeviceError) as e:
        pyagg.aggregate(G, "median", f=1, device="cuda")
    msg = str(e.value)
    assert "CUDA" in msg or "cuda" in msg
    # CPU path unaffected afterwards
    np.testing.assert_array_equal(pyagg.aggregate(G, "median", f=1), np.ones(4, dtype=np.float32))
    info = pyagg.build_info()
    assert info["cuda_devices"] == 0 and "cuda_status" in info
