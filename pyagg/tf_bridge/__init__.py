"""pyagg for TensorFlow 2: the ``PyaggAggregate`` custom op and a server-side aggregator.

AggregaThor's promise — any TensorFlow application using synchronous SGD
becomes Byzantine-resilient by changing its aggregation — for TF 2::

    import tensorflow as tf
    from pyagg import tf_bridge

    g = tf_bridge.aggregate(G, "krum", f=2)          # G: tf.Tensor [n, d] -> [d]
    g = tf_bridge.aggregate([g0, g1, g2, g3, g4, g5, g6], "median")   # same-shape tensors

    server = tf_bridge.ServerAggregator(model, "multi-krum", f=2, optimizer=tf.keras.optimizers.SGD(0.1))
    server.apply(worker_grads)                        # list over workers of lists over variables

The op is a C++ TensorFlow kernel linked against the same engine library as
:func:`pyagg.aggregate`, so both give bit-identical results and the same error
messages (as ``tf.errors.InvalidArgumentError`` here). It runs eagerly and
inside ``tf.function`` (a graph op, no ``tf.py_function``); it has no gradient.

The op library must match the TensorFlow that runs. A developer build (in
place, TensorFlow importable: CMake option ``PYAGG_BUILD_TF``) compiles it next
to this file; otherwise (a wheel, ``pip install ".[tf]"``, or another
TensorFlow than at build time) it is compiled against the running TensorFlow
by ``python -m pyagg.tf_bridge build`` or, unless ``PYAGG_TF_AUTOBUILD=0``, at
first use, and cached per TensorFlow version and ABI (see
:mod:`pyagg.tf_bridge._build`). Importing this module does not import
TensorFlow; the library is loaded at first use (or by :func:`load`), after
checking that the running TensorFlow is the one it was built against.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._ext import _numeric_text  # one rule for "a string that is a number" (the Cython layer's)
from .._frameworks import graph_safe
from ..errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

    from .server import ServerAggregator

__all__ = [
    "REBUILD_COMMAND",
    "ServerAggregator",
    "TFBridgeError",
    "aggregate",
    "build_info",
    "is_built",
    "load",
    "loaded_library",
]

_DIR = Path(__file__).resolve().parent
_INFO_FILE = _DIR / "_build_info.json"
#: How to (re)build the op library for the TensorFlow of the current environment.
REBUILD_COMMAND = "python -m pyagg.tf_bridge build"


class TFBridgeError(ImportError):
    """The TF op library is not built, or was built for another TensorFlow."""


# --------------------------------------------------------------- loading ---
def build_info() -> dict[str, Any]:
    """What the build recorded about the op library (``_build_info.json``).

    Keys: ``built`` (bool), ``reason`` (why not built), ``tensorflow_version``
    and ``tensorflow_flags_hash`` (the TensorFlow it was compiled against),
    ``tensorflow_cuda``, ``gpu_kernel``, ``library`` (file name), ``path``.
    Does not import TensorFlow.
    """
    try:
        info = json.loads(_INFO_FILE.read_text())
    except FileNotFoundError:
        info = {"built": False, "reason": "no _build_info.json next to pyagg/tf_bridge (pyagg was not built)"}
    except (OSError, ValueError) as exc:
        info = {"built": False, "reason": f"unreadable {_INFO_FILE.name}: {exc}"}
    lib = _DIR / str(info.get("library", "_pyagg_tf_ops.so"))
    info["path"] = str(lib)
    if info.get("built") and not lib.is_file():
        info["built"] = False
        info["reason"] = f"{lib.name} is missing from {_DIR}"
    return info


def is_built() -> bool:
    """True when an op library is ready for the installed TensorFlow (does not import TensorFlow).

    Either the one a developer build put next to this file, or one compiled at
    run time into the cache (:mod:`pyagg.tf_bridge._build`).
    """
    info = build_info()
    from . import _build

    version = _build.installed_tf_version()
    if info.get("built") and (version is None or version == info.get("tensorflow_version")):
        return True
    return version is not None and bool(_build.cached_for_version(version))


_lock = threading.Lock()
_ops: Any = None
_loaded_path: str | None = None


def _not_built(reason: str, running: str) -> TFBridgeError:
    return TFBridgeError(
        f"pyagg TF bridge not built ({reason}) and PYAGG_TF_AUTOBUILD=0; build it for TensorFlow {running} "
        f"with: {REBUILD_COMMAND}"
    )


def _library_path(tf: Any) -> str:
    """The op library for the running TensorFlow: next to this file, cached, or built now."""
    from . import _build

    info = build_info()
    running = str(tf.__version__)
    built = str(info.get("tensorflow_version"))
    if info.get("built") and built == running:
        return info["path"]
    cached = _build.library_for(tf)
    if cached is not None:
        return str(cached)
    if not _build.autobuild_enabled():
        if info.get("built"):
            raise TFBridgeError(
                f"pyagg TF op was built against TensorFlow {built}, running {running}; rebuild with: "
                f"{REBUILD_COMMAND}"
            )
        raise _not_built(str(info.get("reason") or "unknown reason"), running)
    try:
        return str(_build.build(tf))
    except _build.BuildError as exc:
        raise TFBridgeError(str(exc)) from exc


def loaded_library() -> str | None:
    """Path of the op library loaded into this process (None before :func:`load`)."""
    return _loaded_path


@graph_safe
def load() -> Any:
    """Load the op library (once) and return its generated op module.

    Raises
    ------
    TFBridgeError
        TensorFlow is not importable; or no library matches the running
        TensorFlow and it cannot be built here (no compiler, compile error,
        or ``PYAGG_TF_AUTOBUILD=0``); or the library's compiled-in TensorFlow
        version is not the running one. The message ends with the command
        that fixes it.
    """
    global _ops, _loaded_path
    if _ops is not None:
        return _ops
    with _lock:
        if _ops is not None:
            return _ops
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise TFBridgeError(
                f"pyagg TF bridge: cannot import tensorflow ({exc}); install it: pip install tensorflow-cpu"
            ) from exc
        running = str(tf.__version__)
        path = _library_path(tf)
        try:
            ops = tf.load_op_library(path)
        except Exception as exc:
            raise TFBridgeError(
                f"pyagg TF op library {path} failed to load into TensorFlow {running} ({exc}); "
                f"rebuild with: {REBUILD_COMMAND}"
            ) from exc
        # Cross-check the version compiled into the library (a stale JSON next
        # to a newer library, or the reverse, must not go unnoticed).
        lib = ctypes.CDLL(path)
        lib.pyagg_tf_built_version.restype = ctypes.c_char_p
        compiled = lib.pyagg_tf_built_version().decode()
        if compiled != running:
            raise TFBridgeError(
                f"pyagg TF op was built against TensorFlow {compiled}, running {running}; "
                f"rebuild with: {REBUILD_COMMAND}"
            )
        _ops = ops
        _loaded_path = path
        return ops


# -------------------------------------------------------------- the op ---
def _check_f(f: Any) -> int:
    if isinstance(f, bool) or not hasattr(f, "__index__"):
        raise InvalidArgumentError(f"f must be an integer, got {f!r}")
    return int(f)


def _encode_params(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Rule parameters -> the op's (param_names, param_values) attrs.

    Values travel as ``repr(float(v))`` strings: TF float attrs are 32-bit and
    the engine must see the same double as with :func:`pyagg.aggregate`.
    """
    import numpy as np

    names, values = [], []
    for name, value in params.items():
        if isinstance(value, str) and not _numeric_text(value):  # a named choice: the engine checks it
            names.append(str(name))
            values.append(value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidArgumentError(
                f"parameter {name} must be a real number or a name, got {value!r} ({type(value).__name__})"
            )
        names.append(str(name))
        # ints beyond 2^53 (a 64-bit seed) travel exactly, as decimal integers
        big = isinstance(value, (int, np.integer)) and abs(int(value)) > 2**53
        values.append(str(int(value)) if big else repr(float(value)))
    return names, values


_EMPTY: dict[Any, Any] = {}


def _empty_state(dtype: Any) -> tf.Tensor:
    """The op's "no state" input (a [0] tensor), cached per dtype for eager calls."""
    t = _EMPTY.get(dtype)
    if t is None:
        import tensorflow as tf

        with tf.device("/CPU:0"):
            t = _EMPTY[dtype] = tf.zeros([0], dtype=dtype)
    return t


def _raw_aggregate(
    G: tf.Tensor, rule: str, f: int, names: list[str], values: list[str], state: tf.Tensor | None, name: str | None
) -> tf.Tensor:
    import tensorflow as tf

    ops = load()
    if state is None:
        state = _empty_state(G.dtype) if tf.executing_eagerly() else tf.zeros([0], dtype=G.dtype)
    return ops.pyagg_aggregate(G, state, rule=rule, f=f, param_names=names, param_values=values, name=name)


_FLOAT_DTYPES = ("float32", "float64")


def _as_float_tensor(x: Any, what: str) -> tf.Tensor:
    import tensorflow as tf

    t = x if isinstance(x, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(x)
    if t.dtype.name not in _FLOAT_DTYPES:
        raise InvalidArgumentError(f"{what}: dtype must be float32 or float64, got {t.dtype.name}")
    return tf.convert_to_tensor(t)


@graph_safe
def aggregate(
    gradients: Any, rule: str, f: int = 0, *, state: Any = None, name: str | None = None, **params: Any
) -> tf.Tensor:
    """Aggregate n gradients with a robust rule, as a TensorFlow op.

    Parameters
    ----------
    gradients : tf.Tensor or array_like or sequence of tf.Tensor
        Either an ``[n, d]`` tensor (one row per worker), or a list of n
        tensors of one (equal) shape and dtype: each is flattened, and the
        result is reshaped to that shape. float32 or float64.
    rule : str
        A rule name (see :func:`pyagg.rules`).
    f : int
        Declared number of Byzantine gradients.
    state : tf.Tensor, optional
        centered-clipping only: the starting point ``v`` (the previous
        output), of d elements (of the gradients' shape for a list). None:
        ``v = 0``, as :func:`pyagg.aggregate`. The op itself is stateless;
        :class:`ServerAggregator` keeps ``v`` across steps.
    name : str, optional
        Name of the op in the graph.
    **params
        Rule parameters (e.g. ``m`` for multi-krum), as for :func:`pyagg.aggregate`.

    Returns
    -------
    tf.Tensor
        ``[d]`` (or the shape of one gradient), dtype of the input;
        bit-identical to ``pyagg.aggregate`` on the same data.

    Raises
    ------
    tf.errors.InvalidArgumentError
        From the op: unknown rule, bad f or parameter, n below the rule's
        bound, d = 0, rank not 2 (the engine's messages). In a ``tf.function``
        a statically known wrong rank is reported by TF's shape inference
        (``ValueError``) when tracing.
    pyagg.InvalidArgumentError
        Checked here before building the op: f or a parameter value not a
        number, a dtype other than float32/float64, gradients of different
        shapes or dtypes in a list (also a ``ValueError``).
    TFBridgeError
        The op library is not built or was built for another TensorFlow.
    """
    import tensorflow as tf

    f = _check_f(f)
    names, values = _encode_params(params)
    if isinstance(gradients, (list, tuple)):
        if len(gradients) == 0:
            raise InvalidArgumentError("gradients: need at least one gradient, got n=0")
        ts = [_as_float_tensor(g, f"gradients[{i}]") for i, g in enumerate(gradients)]
        shape0 = ts[0].shape
        for i, t in enumerate(ts):
            if t.dtype != ts[0].dtype:
                raise InvalidArgumentError(
                    f"gradients: mixed dtypes, gradients[0] is {ts[0].dtype.name}, gradients[{i}] is {t.dtype.name}"
                )
            if not t.shape.is_compatible_with(shape0):
                raise InvalidArgumentError(
                    f"gradients: tensors of different shapes, gradients[0] has shape {shape0}, "
                    f"gradients[{i}] has shape {t.shape}"
                )
        G = tf.stack([tf.reshape(t, [-1]) for t in ts])
        out_shape = shape0.as_list() if shape0.is_fully_defined() else tf.shape(ts[0])
        if state is not None:
            state = tf.reshape(_as_float_tensor(state, "state"), [-1])
        out = _raw_aggregate(G, rule, f, names, values, state, name)
        return tf.reshape(out, out_shape)
    G = _as_float_tensor(gradients, "gradients")
    if state is not None:
        state = _as_float_tensor(state, "state")
    return _raw_aggregate(G, rule, f, names, values, state, name)


def __getattr__(attr: str) -> Any:
    # ServerAggregator needs TensorFlow at import: imported on first access.
    if attr == "ServerAggregator":
        from .server import ServerAggregator

        return ServerAggregator
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__() -> Sequence[str]:
    return sorted(set(globals()) | {"ServerAggregator"})
