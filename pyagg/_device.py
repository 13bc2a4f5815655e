"""CUDA front end of :func:`pyagg.aggregate` (internal; used by :mod:`pyagg.api`).

Two kinds of input reach the engine's CUDA backend from here:

* host arrays (numpy, or anything :func:`numpy.asarray` reads) with
  ``device="cuda"``: copied to the GPU, aggregated there, and the result is
  copied back and returned as a numpy array;
* GPU arrays, exposing ``__cuda_array_interface__`` (versions 2 and 3: shape,
  ``typestr`` ``'<f4'``/``'<f8'``, strides ``None`` or C-contiguous, no mask) or
  DLPack with device type kDLCUDA (2) or kDLCUDAManaged (13): aggregated in
  place (no copy), the result allocated in the same framework when it is
  PyTorch or CuPy, else as a :class:`DeviceArray` (which exposes
  ``__cuda_array_interface__`` and DLPack's device, so any framework can wrap
  it).

Streams: the engine runs on the CUDA legacy default stream and synchronises
before returning, so results are ready when a call returns. Input produced on
another stream is made safe first: a ``__cuda_array_interface__`` v3 ``stream``
other than the legacy/per-thread default streams, or a DLPack producer that
cannot hand its data over to the legacy stream, triggers a device
synchronisation.

Every error is a :class:`pyagg.AggregationError`: bad arrays raise
:class:`~pyagg.errors.InvalidArgumentError` (also a ``ValueError``); no CUDA in
this build or no usable GPU raise :class:`~pyagg.errors.DeviceError`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from . import _ext, _frameworks, _meta
from .errors import DeviceError, InvalidArgumentError

__all__ = ["DeviceArray", "aggregate_cuda", "preaggregate_cuda", "device_count"]

_CUDA = _meta.DEVICE_CUDA  # engine device code
_CODES = _meta.DTYPE_CODES
_DL_CUDA, _DL_CUDA_MANAGED = _meta.DLPACK_CUDA, _meta.DLPACK_CUDA_MANAGED
# __cuda_array_interface__ v3 stream values that are ordered with the legacy
# default stream the engine uses: 1 (legacy default), 2 (per-thread default).
_ORDERED_STREAMS = (1, 2)


def device_count() -> int:
    """Number of usable CUDA devices (raises DeviceError saying why there is none)."""
    return int(_ext.cuda_devices())


# ------------------------------------------------------------- DeviceArray ---
class DeviceArray:
    """A C-contiguous float32/float64 array in GPU memory allocated by pyagg.

    Exposes ``__cuda_array_interface__`` (v3, no stream: its content is ready)
    and ``__dlpack_device__``; wrap it with ``cupy.asarray(a)``,
    ``torch.as_tensor(a, device="cuda")`` or ``numba.cuda.as_cuda_array(a)``,
    or copy it to the host with :meth:`get`. The memory is freed when the
    object is garbage-collected (or by :meth:`free`).
    """

    def __init__(self, shape: tuple[int, ...] | int, dtype: Any = np.float32, device_id: int = 0):
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        self.shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in self.shape):
            raise InvalidArgumentError(f"DeviceArray: negative dimension in shape {self.shape}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODES:
            raise InvalidArgumentError(f"DeviceArray: dtype must be float32 or float64, got {self.dtype}")
        self.device_id = int(device_id)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = 0
        if self.nbytes:
            self.ptr = int(_ext.device_alloc(self.device_id, self.nbytes))

    @classmethod
    def from_host(cls, a: np.ndarray, device_id: int = 0) -> DeviceArray:
        """A GPU copy of the C-contiguous host array `a`."""
        a = np.ascontiguousarray(a)
        out = cls(a.shape, a.dtype, device_id)
        if out.nbytes:
            _ext.copy_h2d(out.device_id, out.ptr, a.ctypes.data, out.nbytes)
        return out

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        if self.nbytes and not self.ptr:
            raise InvalidArgumentError("DeviceArray: memory already freed")
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
            "stream": None,
        }

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CUDA, self.device_id)

    def get(self) -> np.ndarray:
        """Copy to a new numpy array."""
        out = np.empty(self.shape, self.dtype)
        if self.nbytes:
            if not self.ptr:
                raise InvalidArgumentError("DeviceArray: memory already freed")
            _ext.copy_d2h(self.device_id, out.ctypes.data, self.ptr, self.nbytes)
        return out

    copy_to_host = get

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("implicit conversion of a pyagg DeviceArray to numpy is not allowed; use .get()")

    def free(self) -> None:
        """Release the GPU memory now (the object becomes unusable)."""
        ptr, self.ptr = self.ptr, 0
        if ptr:
            _ext.device_release(self.device_id, ptr)

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # noqa: BLE001 - never raise from a finalizer (e.g. at interpreter exit)
            pass

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device_id})"


# ------------------------------------------------------------ array views ---
class _View:
    """Address, shape and dtype of a GPU array (and what keeps it alive)."""

    __slots__ = ("ptr", "shape", "dtype", "code", "device", "keep")

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, device: int | None, keep: Any):
        self.ptr = int(ptr)
        self.shape = shape
        self.dtype = dtype
        self.code = _CODES[dtype]
        self.device = device
        self.keep = keep


def _framework(x: Any) -> str:
    return _frameworks.framework(x)


def _device_of(x: Any) -> int | None:
    """The CUDA ordinal `x` lives on, when the object says it."""
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            kind, ordinal = dev()
            if int(kind) in (_DL_CUDA, _DL_CUDA_MANAGED):
                return int(ordinal)
        except Exception:  # noqa: BLE001 - fall through to framework attributes
            pass
    d = getattr(x, "device", None)
    for attr in ("index", "id"):  # torch.device.index, cupy.cuda.Device.id
        v = getattr(d, attr, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    return None


def _check_dtype(dt: np.dtype, what: str) -> np.dtype:
    if dt not in _CODES:
        raise InvalidArgumentError(f"{what}: dtype must be float32 or float64, got {dt}")
    if not dt.isnative:
        raise InvalidArgumentError(f"{what}: non-native byte order ({dt.str}) is not supported")
    return np.dtype(dt.newbyteorder("="))


def _check_c_contiguous(shape: tuple[int, ...], strides: Any, itemsize: int, what: str, in_bytes: bool) -> None:
    if strides is None:
        return
    strides = tuple(int(s) for s in strides)
    expect = itemsize if in_bytes else 1
    for dim, st in zip(reversed(shape), reversed(strides)):
        if dim > 1 and st != expect:
            raise InvalidArgumentError(
                f"{what}: GPU array is not C-contiguous (shape {shape}, strides {strides}); "
                "make it contiguous first (e.g. .contiguous() / cupy.ascontiguousarray)"
            )
        expect *= dim


def _from_cai(x: Any, what: str) -> _View:
    cai = x.__cuda_array_interface__
    try:
        shape = tuple(int(s) for s in cai["shape"])
        typestr = cai["typestr"]
        ptr = cai["data"][0] or 0
    except (KeyError, TypeError, IndexError) as exc:
        raise InvalidArgumentError(f"{what}: malformed __cuda_array_interface__ ({exc})") from exc
    if cai.get("mask") is not None:
        raise InvalidArgumentError(f"{what}: masked GPU arrays are not supported")
    dtype = _check_dtype(np.dtype(typestr), what)
    _check_c_contiguous(shape, cai.get("strides"), dtype.itemsize, what, in_bytes=True)
    device = _device_of(x)
    stream = cai.get("stream") if int(cai.get("version", 0)) >= 3 else None
    if stream is not None and int(stream) not in _ORDERED_STREAMS:
        _ext.device_sync(device if device is not None else 0)  # producer's stream -> all work done
    return _View(ptr, shape, dtype, device, x)


# DLPack (dlpack.h, v0.x ABI: the un-versioned DLManagedTensor).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _from_dlpack(x: Any, what: str) -> _View:
    kind, ordinal = x.__dlpack_device__()
    if int(kind) not in (_DL_CUDA, _DL_CUDA_MANAGED):
        raise InvalidArgumentError(f"{what}: DLPack device type {int(kind)} is not CUDA (2) or CUDA managed (13)")
    synced = True
    try:
        capsule = x.__dlpack__(stream=1)  # the producer orders its work before the legacy stream
    except TypeError:
        capsule = x.__dlpack__()
        synced = False
    # The capsule is not consumed (not renamed): it stays alive with the view and
    # its destructor releases the tensor, as the DLPack protocol specifies.
    addr = _capsule_get(capsule, b"dltensor")
    if not addr:
        raise InvalidArgumentError(f"{what}: __dlpack__ did not return a 'dltensor' capsule")
    t = _DLManagedTensor.from_address(addr).dl_tensor
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.dtype.code != 2 or t.dtype.lanes != 1 or t.dtype.bits not in (32, 64):
        raise InvalidArgumentError(
            f"{what}: DLPack dtype (code {t.dtype.code}, bits {t.dtype.bits}, lanes {t.dtype.lanes}) "
            "is not float32 or float64"
        )
    dtype = np.dtype(np.float32 if t.dtype.bits == 32 else np.float64)
    strides = None if not t.strides else tuple(int(t.strides[i]) for i in range(t.ndim))
    _check_c_contiguous(shape, strides, dtype.itemsize, what, in_bytes=False)
    if not synced:
        _ext.device_sync(int(ordinal))
    ptr = (t.data or 0) + int(t.byte_offset)
    return _View(ptr, shape, dtype, int(ordinal), (x, capsule))


def _view(x: Any, what: str) -> _View:
    if _framework(x) == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()
    if hasattr(x, "__cuda_array_interface__"):
        return _from_cai(x, what)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return _from_dlpack(x, what)
    raise InvalidArgumentError(f"{what}: {type(x).__name__} is not a CUDA array")


_is_gpu = _meta.on_gpu


def _empty_like_input(x: Any, shape: tuple[int, ...], dtype: np.dtype, device: int) -> Any:
    """An uninitialised GPU array for the output, in x's framework when known."""
    fw = _framework(x)
    if fw == "torch":
        import torch

        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        return torch.empty(shape, dtype=tdtype, device=torch.device("cuda", device))
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            return cupy.empty(shape, dtype=dtype)
    return DeviceArray(shape, dtype, device)


def _host_matrix(x: Any, what: str) -> np.ndarray:
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise InvalidArgumentError(f"{what}: need at least one gradient, got n=0")
        try:
            x = np.stack([np.asarray(r) for r in x])
        except ValueError as exc:
            raise InvalidArgumentError(f"{what}: rows of different lengths ({exc})") from exc
    a = np.asarray(x)
    _check_dtype(a.dtype, what)
    if a.ndim != 2:
        raise InvalidArgumentError(f"{what}: expected a 2-D array (n, d), got shape {a.shape}")
    return np.ascontiguousarray(a)


def _addr(v: _View) -> int:
    # A zero-size array may have a null address: pass 1 so that the engine
    # reports the empty dimension rather than a null pointer.
    return v.ptr if v.ptr else 1


def _state_ptr(state: Any, d: int, dtype: np.dtype, device: int, temps: list) -> int:
    if state is None:
        return 0
    if _is_gpu(state):
        v = _view(state, "state")
        if v.shape != (d,) or v.dtype != dtype:
            raise InvalidArgumentError(f"state must have shape ({d},) and dtype {dtype}, got {v.shape} {v.dtype}")
        temps.append(v)
        return v.ptr
    a = np.asarray(state)
    if a.shape != (d,) or a.dtype != dtype:
        raise InvalidArgumentError(f"state must have shape ({d},) and dtype {dtype}, got {a.shape} {a.dtype}")
    s = DeviceArray.from_host(a, device)
    temps.append(s)
    return s.ptr


# ------------------------------------------------------------- entry points ---
def aggregate_cuda(rule: Any, gradients: Any, state: Any, device_id: int) -> Any:
    """Run `rule` (a pyagg._ext.Rule) on the GPU.

    GPU input -> output on the same GPU, in the input's framework (torch/cupy)
    or a DeviceArray; host input -> copied to GPU `device_id`, result returned
    as a numpy array.
    """
    temps: list = []
    if _is_gpu(gradients):
        v = _view(gradients, "gradients")
        if len(v.shape) != 2:
            raise InvalidArgumentError(f"gradients: expected a 2-D array (n, d), got shape {v.shape}")
        n, d = v.shape
        rule.check(n, d)
        device = v.device if v.device is not None else int(device_id)
        out = _empty_like_input(gradients, (d,), v.dtype, device)
        ov = _view(out, "output")
        sp = _state_ptr(state, d, v.dtype, device, temps)
        rule.run(_addr(v), 0, n, d, v.code, _CUDA, device, _addr(ov), sp)
        return out
    a = _host_matrix(gradients, "gradients")
    n, d = a.shape
    rule.check(n, d)
    device = int(device_id)
    gx = DeviceArray.from_host(a, device)
    out = DeviceArray((d,), a.dtype, device)
    try:
        sp = _state_ptr(state, d, a.dtype, device, temps)
        rule.run(gx.ptr or 1, 0, n, d, _CODES[a.dtype], _CUDA, device, out.ptr or 1, sp)
        return out.get()
    finally:
        gx.free()
        out.free()
        for t in temps:
            if isinstance(t, DeviceArray):
                t.free()


def preaggregate_cuda(pre: Any, gradients: Any, seed: int | None = None) -> Any:
    """Run the pre-aggregator `pre` (a pyagg._ext.Pre) on GPU gradients (or host
    gradients, copied to GPU 0 and back); returns (pre.output_rows(n), d) rows."""
    if _is_gpu(gradients):
        v = _view(gradients, "gradients")
        if len(v.shape) != 2:
            raise InvalidArgumentError(f"gradients: expected a 2-D array (n, d), got shape {v.shape}")
        n, d = v.shape
        pre.check(n, d)
        device = v.device if v.device is not None else 0
        rows = int(pre.output_rows(n))
        out = _empty_like_input(gradients, (rows, d), v.dtype, device)
        ov = _view(out, "output")
        pre.run(_addr(v), 0, n, d, v.code, _CUDA, device, _addr(ov), seed)
        return out
    a = _host_matrix(gradients, "gradients")
    n, d = a.shape
    pre.check(n, d)
    rows = int(pre.output_rows(n))
    gx = DeviceArray.from_host(a, 0)
    out = DeviceArray((rows, d), a.dtype, 0)
    try:
        pre.run(gx.ptr or 1, 0, n, d, _CODES[a.dtype], _CUDA, 0, out.ptr or 1, seed)
        return out.get()
    finally:
        gx.free()
        out.free()

