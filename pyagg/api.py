"""The Python API of the aggregation engine: aggregate, Aggregator, rules.

Arrays are inspected here (dtype, byte order, shape, C-contiguity, alignment,
device; every host array, gradients and centered-clipping state alike, goes
through :func:`_check_array`) and handed to the engine by address, without
copies: an array the engine cannot read as is is refused, never copied; everything about the rules themselves
(names, parameters, bounds) is validated by the engine, so every front end
gets the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _ext
from . import _frameworks as _fw
from . import _meta
from .errors import DeviceError, InvalidArgumentError

__all__ = [
    "aggregate",
    "preaggregate",
    "Aggregator",
    "rules",
    "pre_aggregators",
    "build_info",
]

_DTYPES = _meta.DTYPE_CODES
_CPU, _CUDA = _meta.DEVICE_CPU, _meta.DEVICE_CUDA


# ----------------------------------------------------------------- inputs ---
_on_gpu = _meta.on_gpu


def _host_array(x: Any, what: str, fw: str = _fw.NUMPY) -> np.ndarray:
    """A numpy view of a CPU array-like, without copying or converting."""
    if isinstance(x, np.ndarray):
        return x
    x = _fw.host_view(x, fw, what)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError):
            pass  # e.g. a read-only or exotic tensor: fall back to the array protocols
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001
        raise InvalidArgumentError(f"{what}: cannot read {type(x).__name__} as an array ({exc})") from exc


def _check_array(a: np.ndarray, ndim: int, what: str, fw: str = _fw.NUMPY) -> int:
    """Validate dtype / byte order / ndim / C-contiguity / alignment; return the engine dtype code."""
    if a.dtype not in _DTYPES:
        raise InvalidArgumentError(f"{what}: dtype must be float32 or float64, got {a.dtype}")
    if not a.dtype.isnative:
        raise InvalidArgumentError(f"{what}: non-native byte order ({a.dtype.str}) is not supported")
    if a.ndim != ndim:
        shape = "(n, d)" if ndim == 2 else "(d,)"
        raise InvalidArgumentError(f"{what}: expected a {ndim}-D array {shape}, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(
            f"{what}: array is not C-contiguous (shape {a.shape}, strides {a.strides}); "
            + _fw.contiguity_hint(fw)
        )
    if not a.flags.aligned:
        raise InvalidArgumentError(
            f"{what}: array data is not aligned to its {a.dtype.itemsize}-byte {a.dtype} elements "
            f"(address {a.ctypes.data:#x}); pass a copy (numpy.array(...)) explicitly"
        )
    return _DTYPES[a.dtype]


def _state_address(state: Any, d: int, dtype: np.dtype) -> tuple[int, Any]:
    """Validate a host centered-clipping state for n x `d` gradients of `dtype`.

    The engine reads exactly d contiguous, aligned elements of `dtype` at the
    returned address (it never writes the state), so the state must be a 1-D
    C-contiguous, aligned, native-order array of that shape and dtype: a strided
    or reversed view is refused, never copied silently. Returns ``(address, keep)``
    (address 0 for no state; `keep` keeps the array alive during the call).
    """
    if state is None:
        return 0, None
    a = _host_array(state, "state")
    if a.dtype != dtype or a.shape != (d,):
        raise InvalidArgumentError(
            f"state must have shape ({d},) and dtype {dtype}, got {a.shape} {a.dtype}"
        )
    _check_array(a, 1, "state")
    return (_ext.address(a) if d else 1), a


class _Batch:
    """n gradients ready for the engine: a contiguous block or n row addresses."""

    __slots__ = ("n", "d", "dtype", "code", "data", "rows", "keep")

    def __init__(self, gradients: Any, fw: str = _fw.NUMPY):
        if isinstance(gradients, (list, tuple)):
            self._from_rows(gradients, fw)
        else:
            a = _host_array(gradients, "gradients", fw)
            self.code = _check_array(a, 2, "gradients", fw)
            self.n, self.d = a.shape
            self.dtype = a.dtype
            self.data = _ext.address(a) if a.size else 0
            self.rows = 0
            self.keep = (a,)
            if a.size == 0:
                # Let the engine name the empty dimension (d=0 or n=0).
                self.data = 1

    def _from_rows(self, seq: Sequence[Any], fw: str) -> None:
        if len(seq) == 0:
            raise InvalidArgumentError("gradients: need at least one gradient, got n=0")
        arrays = [_host_array(r, f"gradients[{i}]", _fw.framework(r)) for i, r in enumerate(seq)]
        codes = [_check_array(a, 1, f"gradients[{i}]", _fw.framework(r)) for i, (a, r) in enumerate(zip(arrays, seq))]
        d = arrays[0].shape[0]
        for i, a in enumerate(arrays):
            if a.dtype != arrays[0].dtype:
                raise InvalidArgumentError(
                    f"gradients: mixed dtypes, gradients[0] is {arrays[0].dtype}, gradients[{i}] is {a.dtype}"
                )
            if a.shape[0] != d:
                raise InvalidArgumentError(
                    f"gradients: rows of different lengths, gradients[0] has d={d}, gradients[{i}] has d={a.shape[0]}"
                )
        self.n, self.d = len(arrays), d
        self.dtype = arrays[0].dtype
        self.code = codes[0]
        addrs = np.array([_ext.address(a) if d else 1 for a in arrays], dtype=np.uintp)
        self.data = 0
        self.rows = _ext.address(addrs)
        self.keep = (arrays, addrs)


def _split_params(params: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [(str(k), v) for k, v in params.items()]


def _parse_device(device: str | None) -> tuple[int | None, int]:
    if device is None:
        return None, 0
    if not isinstance(device, str):
        raise InvalidArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:<id>', got {device!r}")
    if device == "cpu":
        return _CPU, 0
    if device == "cuda":
        return _CUDA, 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return _CUDA, int(device[5:])
    raise InvalidArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:<id>', got {device!r}")


def _cuda_module():
    try:
        from . import _device
    except ImportError as exc:  # pragma: no cover - only without the CUDA front end
        raise DeviceError(f"CUDA front end unavailable: {exc}") from exc
    return _device


# ------------------------------------------------------------------ rules ---
def _run_rule(rule: _ext.Rule, gradients: Any, state: np.ndarray | None, device: str | None,
              fw: str = _fw.NUMPY) -> Any:
    dev, dev_id = _parse_device(device)
    if dev == _CUDA or (dev is None and not isinstance(gradients, (list, tuple)) and _on_gpu(gradients)):
        return _cuda_module().aggregate_cuda(rule, gradients, state, dev_id)
    if dev is None and isinstance(gradients, (list, tuple)) and any(_on_gpu(g) for g in gradients):
        raise InvalidArgumentError(
            "gradients: a list of GPU tensors is not supported; stack them into one (n, d) GPU array"
        )
    b = _Batch(gradients, fw)
    out = np.empty(b.d, dtype=b.dtype)
    st, keep = _state_address(state, b.d, b.dtype)
    rule.run(b.data, b.rows, b.n, b.d, b.code, _CPU, 0, _ext.address(out) if b.d else 1, st)
    del keep
    return out


def _run_pre(pre: _ext.Pre, gradients: Any, seed: int | None = None, fw: str = _fw.NUMPY,
             out: np.ndarray | None = None) -> np.ndarray:
    if not isinstance(gradients, (list, tuple)) and _on_gpu(gradients):
        return _cuda_module().preaggregate_cuda(pre, gradients, seed)
    b = _Batch(gradients, fw)
    shape = (pre.output_rows(b.n) if b.n else 0, b.d)
    if out is None:
        out = np.empty(shape, dtype=b.dtype)
    else:
        _check_out(out, shape, b)
    pre.run(b.data, b.rows, b.n, b.d, b.code, _CPU, 0, _ext.address(out) if out.size else 1, seed)
    return out


def _check_out(out: Any, shape: tuple[int, int], b: _Batch) -> None:
    """A caller's output buffer for preaggregate(out=): a writeable, C-contiguous numpy array of
    exactly the result's shape and dtype that shares no memory with the gradients (the engine
    reads every row while it writes: nnm's row i needs rows written before it)."""
    if type(out) is not np.ndarray:
        raise InvalidArgumentError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != b.dtype:
        raise InvalidArgumentError(f"out has dtype {out.dtype}, the result is {b.dtype}")
    if out.shape != shape:
        raise InvalidArgumentError(f"out has shape {out.shape}, the result is {shape}")
    if not out.flags.c_contiguous:
        raise InvalidArgumentError("out must be C-contiguous")
    if not out.flags.writeable:
        raise InvalidArgumentError("out is read-only")
    inputs = b.keep[0] if isinstance(b.keep[0], list) else [b.keep[0]]
    for a in inputs:
        if np.may_share_memory(out, a):
            raise InvalidArgumentError("out overlaps the gradients; pass a separate buffer")


def _parse_pre(pre: Any, f: int) -> list[_ext.Pre]:
    """A pre-aggregator list: names or (name, params) pairs (a single one is accepted bare)."""
    if isinstance(pre, str) or (isinstance(pre, tuple) and len(pre) == 2 and isinstance(pre[1], Mapping)):
        pre = [pre]
    out: list[_ext.Pre] = []
    for p in pre:
        if isinstance(p, str):
            out.append(_ext.Pre(p, f, []))
        elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], Mapping):
            out.append(_ext.Pre(p[0], f, _split_params(p[1])))
        else:
            raise InvalidArgumentError(f"pre-aggregator must be a name or (name, params), got {p!r}")
    return out


def _runs_on_cpu(gradients: Any, device: str | None) -> bool:
    """Whether _run_rule would aggregate these gradients with the CPU backend."""
    dev, _ = _parse_device(device)
    if dev == _CUDA:
        return False
    if dev is None and not isinstance(gradients, (list, tuple)) and _on_gpu(gradients):
        return False
    return True


def _run_chain(rule: _ext.Rule, pres: list[_ext.Pre], seeds: list[int | None], gradients: Any,
               state: np.ndarray | None, fw: str) -> np.ndarray:
    """Pre-aggregators then the rule in one engine call on the CPU (pyagg::aggregate_chain: the
    last pre-aggregator is fused with the rule where the engine can)."""
    b = _Batch(gradients, fw)
    if isinstance(gradients, (list, tuple)) and any(_on_gpu(g) for g in gradients):
        raise InvalidArgumentError(
            "gradients: a list of GPU tensors is not supported; stack them into one (n, d) GPU array"
        )
    out = np.empty(b.d, dtype=b.dtype)
    st, keep = _state_address(state, b.d, b.dtype)
    _ext.run_chain(rule, pres, seeds, b.data, b.rows, b.n, b.d, b.code, _CPU, 0, _ext.address(out) if b.d else 1, st)
    del keep
    return out


@_fw.graph_safe
def aggregate(gradients: Any, rule: str, f: int = 0, *, device: str | None = None, pre: Sequence[Any] = (),
              **params: Any) -> Any:
    """Aggregate n gradients into one with a robust rule.

    Parameters
    ----------
    gradients : array_like or sequence of array_like
        An (n, d) C-contiguous float32/float64 array (numpy, or any CPU object
        exposing DLPack, ``__array__`` or the buffer protocol: read without a
        copy), or a sequence of n 1-D arrays of equal length and dtype
        (aggregated in place, without stacking). A CUDA array (CUDA array
        interface or DLPack) is aggregated on its GPU.
    rule : str
        A rule name, see :func:`rules`.
    f : int
        Declared number of Byzantine gradients.
    device : {None, "cpu", "cuda", "cuda:<id>"}
        None: where the data lives. "cuda": copy host data to the GPU,
        aggregate there and return a numpy array.
    pre : sequence
        Pre-aggregators applied in order before the rule, each a name
        (``"nnm"``) or a ``(name, {param: value})`` pair (see
        :func:`pre_aggregators`). On the CPU the whole chain is one engine
        call and the last pre-aggregator is fused with the rule where the
        engine can (its output is never written): nnm, bucketing, clipping or zeroing
        before average, average-nan, median, trimmed-mean or averaged-median
        (same bits as applying them in turn), nnm before krum, multi-krum,
        mda or bulyan (distances from nnm's own; see ``aggregate_chain`` in
        ``engine/include/pyagg/rules.h``).
    **params
        Rule parameters (e.g. ``m`` for multi-krum); see :func:`rules`.

    Returns
    -------
    array
        (d,) array of the input dtype, in the caller's framework and place:
        numpy for numpy/lists/other array-likes, a ``torch.Tensor`` on the
        input's device for torch, a ``jax.Array`` for JAX, a ``tf.Tensor``
        for TensorFlow/Keras, a ``cupy.ndarray`` for cupy (a sequence of
        tensors: the framework of its first element). Inside ``jax.jit`` the
        call goes through :func:`pyagg.jax.aggregate` (a host callback);
        inside ``tf.function`` through the TF op :func:`pyagg.tf_bridge.aggregate`.

    Raises
    ------
    InvalidArgumentError
        Bad shapes, dtypes, bounds or parameters (also a ``ValueError``).
    DeviceError
        CUDA requested but not available.
    """
    if type(gradients) is np.ndarray and device is None and not pre and not params:
        # The common call (a plain numpy array, rule and f only): one Cython call; None when the
        # array is not a valid (n, d) float32/float64 C-contiguous aligned matrix (the general
        # path below then says what is wrong).
        r = _ext.Rule(rule, f, [])
        out = _ext.run_plain(r, gradients, np.empty)
        if out is not None:
            return out
    else:
        r = None
    fw = _fw.framework(gradients)
    pres = _parse_pre(pre, f)
    if fw in (_fw.JAX, _fw.TF) and _fw.traced(gradients, fw):
        if pres and fw == _fw.JAX:
            from .jax import aggregate as jax_aggregate

            if device is not None:
                raise InvalidArgumentError(
                    f"device={device!r} cannot be used inside a traced function; place the inputs instead"
                )
            return jax_aggregate(gradients, rule, f, pre=pre, **params)
        if pres:
            raise InvalidArgumentError(
                "pyagg.aggregate(..., pre=[...]) cannot run inside tf.function; use pyagg.tf_bridge.ServerAggregator"
            )
        return _traced_aggregate(gradients, rule, f, device, fw, params)
    if r is None:  # (the fast path above made it already: same rule, f, no parameters)
        r = _ext.Rule(rule, f, _split_params(params))
    if pres and _runs_on_cpu(gradients, device):
        out = _run_chain(r, pres, [None] * len(pres), gradients, None, fw)
    else:
        g, gfw = gradients, fw
        for p in pres:
            g = _run_pre(p, g, fw=gfw)
            gfw = _fw.framework(g)
        out = _run_rule(r, g, None, device, gfw)
    return _fw.wrap(out, gradients, fw)


def _traced_aggregate(gradients: Any, rule: str, f: int, device: str | None, fw: str, params: dict) -> Any:
    """pyagg.aggregate on a jax.jit tracer or a tf.function symbolic tensor."""
    if device is not None:
        raise InvalidArgumentError(
            f"device={device!r} cannot be used inside a traced function; place the inputs instead"
        )
    if fw == _fw.JAX:
        from .jax import aggregate as jax_aggregate

        return jax_aggregate(gradients, rule, f, **params)
    from .tf_bridge import TFBridgeError
    from .tf_bridge import aggregate as tf_aggregate

    try:
        return tf_aggregate(gradients, rule, f, **params)
    except TFBridgeError as exc:
        raise TFBridgeError(
            "pyagg.aggregate inside tf.function runs through the TF op pyagg.tf_bridge.aggregate, which is "
            f"unavailable: {exc}"
        ) from exc


@_fw.graph_safe
def preaggregate(gradients: Any, name: str, f: int = 0, *, out: np.ndarray | None = None, **params: Any) -> Any:
    """Apply one pre-aggregator (nnm, bucketing, clipping, zeroing); returns (n', d) rows in the caller's framework.

    ``out``: for numpy gradients on the CPU, a preallocated (n', d) C-contiguous array of the
    gradients' dtype, disjoint from them, that receives the result and is returned. Reusing one
    across steps saves the page faults of a fresh n' x d result, which at n = 100, d = 1e6 cost
    more than the pre-aggregation itself.
    """
    fw = _fw.framework(gradients)
    if out is not None:
        # numpy arrays live on the host: every row must be one (a list may mix frameworks)
        rows = gradients if isinstance(gradients, (list, tuple)) else (gradients,)
        if any(_fw.framework(g) != _fw.NUMPY for g in rows):
            raise InvalidArgumentError("out= is only for numpy gradients on the CPU")
        return _run_pre(_ext.Pre(name, f, _split_params(params)), gradients, fw=fw, out=out)
    if fw in (_fw.JAX, _fw.TF) and _fw.traced(gradients, fw):
        raise InvalidArgumentError(
            "pyagg.preaggregate cannot run inside jax.jit/tf.function; pass pre-aggregators to "
            "pyagg.jax.aggregate(..., pre=[...]) under jax.jit, or call it eagerly"
        )
    return _fw.wrap(_run_pre(_ext.Pre(name, f, _split_params(params)), gradients, fw=fw), gradients, fw)


class Aggregator:
    """A reusable, stateful aggregation rule with optional pre-aggregators.

    Parameters
    ----------
    rule : str
        Rule name (see :func:`rules`).
    f : int
        Declared number of Byzantine gradients.
    pre : sequence
        Pre-aggregators applied in order, each a name (``"nnm"``) or a
        ``(name, {param: value})`` pair.
    device : {None, "cpu", "cuda", "cuda:<id>"}
        As for :func:`aggregate`.
    **params
        Rule parameters.

    Notes
    -----
    State: centered-clipping starts each call from the previous output
    (momentum); clipped-clustering (norm_history="all") takes its clipping
    norm from the norms of every call so far; bucketing's shuffle seed
    advances by one per call, so call t uses ``seed + t``. :meth:`reset`
    forgets all three.
    """

    def __init__(self, rule: str, f: int = 0, pre: Sequence[Any] = (), *, device: str | None = None,
                 **params: Any):
        self.rule = _ext.Rule(rule, f, _split_params(params))
        self._rule_args = (rule, f, _split_params(params))
        self.f = int(f)
        self.device = device
        _parse_device(device)
        self.pre: list[_ext.Pre] = _parse_pre(pre, f)
        self._stateful = _meta.is_stateful(rule)
        self.reset()

    def reset(self) -> None:
        """Forget the momentum, clipped-clustering's norm history, and restart the bucketing seeds."""
        if getattr(self, "state", None) is not None or getattr(self, "calls", 0):
            # A fresh engine rule: clipped-clustering's norm history lives in it.
            self.rule = _ext.Rule(*self._rule_args)
        self.state: np.ndarray | None = None
        self.calls = 0

    @_fw.graph_safe
    def aggregate(self, gradients: Any) -> Any:
        """Aggregate one step's gradients (see :func:`aggregate`); the result is in the caller's framework."""
        fw = _fw.framework(gradients)
        if fw in (_fw.JAX, _fw.TF) and _fw.traced(gradients, fw):
            raise InvalidArgumentError(
                "Aggregator keeps state in Python and cannot run inside jax.jit/tf.function; use "
                "pyagg.jax.aggregate under jax.jit, or pyagg.tf_bridge.ServerAggregator with TensorFlow"
            )
        # _run_rule checks that the state still matches (d, dtype); reset() clears it.
        state = self.state if self._stateful else None
        seeds = [(p.seed + self.calls) if p.name == "bucketing" else None for p in self.pre]
        if self.pre and _runs_on_cpu(gradients, self.device):
            # One engine call for the whole chain (fused where the engine can).
            out = _run_chain(self.rule, self.pre, seeds, gradients, state, fw)
        else:
            g = gradients
            gfw = fw
            for p, seed in zip(self.pre, seeds):
                g = _run_pre(p, g, seed=seed, fw=gfw)
                gfw = _fw.framework(g)
            out = _run_rule(self.rule, g, state, self.device, gfw)
        if self._stateful:
            self.state = out.copy() if isinstance(out, np.ndarray) else out
        self.calls += 1
        return _fw.wrap(out, gradients, fw)

    __call__ = aggregate

    @property
    def norm_history(self) -> np.ndarray | None:
        """clipped-clustering's norm history (norm_history="all"), for checkpoints; None for other rules."""
        h = self.rule.history()
        return None if h is None else np.array(h, dtype=np.float64)

    @norm_history.setter
    def norm_history(self, norms: Any) -> None:
        self.rule.set_history(np.asarray(norms, dtype=np.float64).ravel().tolist())

    def __repr__(self) -> str:
        pre = ", ".join(repr(p) for p in self.pre)
        return f"Aggregator({self.rule!r}, pre=[{pre}])"


# ------------------------------------------------------------- metadata ---
def _min_n(name: str):
    def min_n(f: int) -> int:
        return int(_ext.rule_min_n(name, f))

    return min_n


def rules() -> dict[str, dict[str, Any]]:
    """Every rule: bound, ``min_n(f)``, parameters with defaults, paper, summary.

    A parameter default of None means "derived from n and f" (its ``doc`` says how), or, for
    the names listed in ``required``, that the parameter has no default and must be given.
    ``choices``: the parameters whose value is a name (e.g. ``linkage``: average or single).
    ``ranges``: the admissible values of each numeric parameter (e.g. ``nu``: "> 0"), from the
    engine's parameter table, which is also what the engine checks.
    """
    out = {}
    for info in _ext.rule_infos():
        name = info["name"]
        out[name] = {
            "bound": info["bound"],
            "min_n": _min_n(name),
            "robust": info["robust"],
            "params": {k: v["default"] for k, v in info["params"].items()},
            "param_docs": {k: v["doc"] for k, v in info["params"].items()},
            "required": [k for k, v in info["params"].items() if v["required"]],
            "choices": {k: v["choices"] for k, v in info["params"].items() if v["choices"]},
            "ranges": {k: v["range"] for k, v in info["params"].items() if v["range"]},
            "paper": info["paper"],
            "summary": info["summary"],
        }
    return out


def pre_aggregators() -> dict[str, dict[str, Any]]:
    """Every pre-aggregator: parameters with defaults, paper, summary."""
    return {
        info["name"]: {
            "params": {k: v["default"] for k, v in info["params"].items()},
            "param_docs": {k: v["doc"] for k, v in info["params"].items()},
            "choices": {k: v["choices"] for k, v in info["params"].items() if v["choices"]},
            "ranges": {k: v["range"] for k, v in info["params"].items() if v["range"]},
            "paper": info["paper"],
            "summary": info["summary"],
        }
        for info in _ext.pre_infos()
    }


def build_info() -> dict[str, Any]:
    """What this build compiled in: version, openmp, threads, cuda, compiler, tf_bridge, ..."""
    info = _ext.engine_build_info()
    try:
        info["cuda_devices"] = _ext.cuda_devices()
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        info["cuda_devices"] = 0
        info["cuda_status"] = str(exc)
    try:
        from .tf_bridge import is_built as _tf_built

        info["tf_bridge"] = bool(_tf_built())
    except Exception:  # noqa: BLE001
        info["tf_bridge"] = False
    return info
