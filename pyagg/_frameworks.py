"""Which framework an input comes from, and how to give a result back in it.

:func:`pyagg.aggregate` reads any array without copying it (see
:mod:`pyagg.api`); this module makes the result speak the caller's language:

=============  ==============================  ===============================
input          result                           how
=============  ==============================  ===============================
numpy / list   numpy.ndarray                    as computed
torch (CPU)    torch.Tensor, CPU                ``torch.from_numpy`` (no copy)
torch (CUDA)   torch.Tensor, same GPU           allocated by torch (pyagg._device)
JAX            jax.Array, same device           ``jax.device_put``
TensorFlow     tf.Tensor, same device           ``tf.convert_to_tensor`` under ``tf.device``
cupy           cupy.ndarray, same GPU           allocated by cupy (pyagg._device)
=============  ==============================  ===============================

A sequence of tensors gives the framework of its first element. Only the
module name of an object's type is looked at: no framework is imported unless
the input comes from it.

Traced values (``jax.jit``, ``tf.function``) cannot be read by a C++ library
at trace time: :func:`traced` recognises them so that :mod:`pyagg.api` can
route them to the framework's own entry point (:func:`pyagg.jax.aggregate`,
:func:`pyagg.tf_bridge.aggregate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUMPY, TORCH, JAX, TF, CUPY, OTHER = "numpy", "torch", "jax", "tensorflow", "cupy", "other"

_ROOTS = {"torch": TORCH, "jax": JAX, "jaxlib": JAX, "tensorflow": TF, "keras": TF, "cupy": CUPY, "numpy": NUMPY}


def framework(x: Any) -> str:
    """The framework an array (or the first array of a sequence) belongs to."""
    if isinstance(x, (list, tuple)):
        return framework(x[0]) if len(x) else NUMPY
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return NUMPY
    root = type(x).__module__.split(".", 1)[0]
    return _ROOTS.get(root, OTHER)


def traced(x: Any, fw: str) -> bool:
    """True for an abstract value of a trace (jax.jit tracer, tf.function symbolic tensor)."""
    if isinstance(x, (list, tuple)):
        return any(traced(e, fw) for e in x)
    if fw == JAX:
        import jax

        return isinstance(x, jax.core.Tracer)
    if fw == TF:
        import tensorflow as tf

        if isinstance(x, tf.Variable):
            return not tf.executing_eagerly()
        return tf.is_tensor(x) and not hasattr(x, "numpy")
    return False


def graph_safe(fn: Any) -> Any:
    """Mark `fn` so that TF's AutoGraph calls it as is instead of rewriting its body.

    pyagg's entry points build TF ops themselves (or run eagerly) and keep
    module state (the loaded op library); AutoGraph's rewrite of their Python
    (``if``/``for`` into graph control flow, a copied module namespace) would
    change that. This sets the marker that
    ``tf.autograph.experimental.do_not_convert`` sets, without importing
    TensorFlow.
    """
    fn.autograph_info__ = frozenset()
    return fn


def contiguity_hint(fw: str) -> str:
    """What the caller should do about a strided (non C-contiguous) input, in its framework."""
    return {
        TORCH: "call .contiguous() on the tensor",
        CUPY: "pass cupy.ascontiguousarray(...) explicitly",
        JAX: "pass jax.numpy.asarray(...) of a C-ordered array",
    }.get(fw, "pass numpy.ascontiguousarray(...) explicitly")


def host_view(x: Any, fw: str, what: str) -> Any:
    """Framework-specific preparation of one CPU input before numpy reads it.

    Raises the framework's own advice when the object cannot be read as is
    (a torch tensor that requires grad, a strided torch tensor, ...); returns
    the object to read (unchanged, or a TF/Keras tensor's eager value).
    """
    from .errors import InvalidArgumentError

    if fw == TORCH:
        import torch

        if isinstance(x, torch.Tensor):
            if x.requires_grad:
                raise InvalidArgumentError(
                    f"{what}: the tensor requires grad; pass tensor.detach() (pyagg's output has no gradient)"
                )
            if not x.is_contiguous():
                raise InvalidArgumentError(
                    f"{what}: tensor is not contiguous (shape {tuple(x.shape)}, strides {x.stride()}); "
                    "call .contiguous() on it"
                )
    elif fw == TF:
        import tensorflow as tf

        if isinstance(x, tf.Variable):
            return x.read_value()
    return x


def wrap(out: Any, like: Any, fw: str) -> Any:
    """Give `out` (a numpy array, or a GPU result) back in the framework and place of `like`."""
    first = like[0] if isinstance(like, (list, tuple)) and len(like) else like
    if fw == TORCH:
        import torch

        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, np.ndarray):
            t = torch.from_numpy(out)
            dev = getattr(first, "device", None)
            return t if dev is None or dev.type == "cpu" else t.to(dev)
        return torch.from_dlpack(out)
    if fw == JAX:
        import jax

        host = out if isinstance(out, np.ndarray) else np.asarray(out.get() if hasattr(out, "get") else out)
        devs = getattr(first, "devices", None)
        dev = next(iter(devs())) if callable(devs) else None
        return jax.device_put(host, dev)
    if fw == TF:
        import tensorflow as tf

        host = out if isinstance(out, np.ndarray) else np.asarray(out.get() if hasattr(out, "get") else out)
        dev = getattr(first, "device", "") or ""
        if dev:
            with tf.device(dev):
                return tf.convert_to_tensor(host)
        return tf.convert_to_tensor(host)
    if fw == CUPY:
        import cupy

        return out if isinstance(out, cupy.ndarray) else cupy.asarray(out)
    return out
