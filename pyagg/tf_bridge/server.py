"""Server-side Byzantine-resilient aggregation for synchronous training in TF 2.

A parameter server (or the chief of a custom training loop) receives one
gradient list per worker, aggregates them with a robust rule (the
``PyaggAggregate`` op) and applies the result with any Keras optimizer::

    server = ServerAggregator(model, "multi-krum", f=2, optimizer=tf.keras.optimizers.SGD(0.1))

    @tf.function
    def step(worker_grads):            # [[g_w,v for v in variables] for w in workers]
        return server.apply(worker_grads)

Everything here is TF ops, so :meth:`ServerAggregator.apply` works eagerly and
inside ``tf.function``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from .. import _ext, _meta
from ..errors import InvalidArgumentError
from . import _check_f, _encode_params, _raw_aggregate, load

__all__ = ["ServerAggregator"]


class ServerAggregator:
    """Aggregates per-worker gradients of a model and applies them.

    Parameters
    ----------
    model_or_variables : keras.Model or sequence of variables
        The model whose ``trainable_variables`` are trained, or the variables.
    rule : str
        A rule name (see :func:`pyagg.rules`).
    f : int
        Declared number of Byzantine workers.
    optimizer : keras optimizer, optional
        Any ``tf.keras.optimizers.Optimizer``; needed by :meth:`apply` only
        (:meth:`aggregate` returns the aggregated gradients).
    dtype : tf.DType, optional
        Dtype the gradients are aggregated in (float32 or float64); default:
        the variables' dtype (float64 if they mix dtypes).
    **params
        Rule parameters (e.g. ``m`` for multi-krum).

    Notes
    -----
    The rule, f and parameters are validated by the engine here (the same
    messages as :func:`pyagg.aggregate`); the bound on n is checked by the op
    at the first step.

    centered-clipping keeps state: each step starts from the previous
    aggregated gradient (momentum, as :class:`pyagg.Aggregator`). The state is
    a non-trainable ``tf.Variable`` of d elements held here and passed to the
    (stateless) op; :meth:`reset` zeroes it.

    A worker's gradient for a variable may be None (unconnected variable):
    it counts as zeros. ``tf.IndexedSlices`` are densified.
    """

    def __init__(
        self, model_or_variables: Any, rule: str, f: int = 0, optimizer: Any = None, *, dtype: Any = None, **params: Any
    ):
        load()  # fail now, with the rebuild hint, if the op library is unusable
        variables = getattr(model_or_variables, "trainable_variables", model_or_variables)
        self.variables = list(variables)
        if not self.variables:
            raise InvalidArgumentError("ServerAggregator: no trainable variables")
        self.rule = str(rule)
        self.f = _check_f(f)
        self.params = dict(params)
        self._names, self._values = _encode_params(self.params)
        # The engine parses and validates the rule once, now (same messages).
        _ext.Rule(self.rule, self.f, [(str(k), v) for k, v in self.params.items()])
        self.optimizer = optimizer
        self.shapes = [tf.TensorShape(v.shape) for v in self.variables]
        for v, s in zip(self.variables, self.shapes):
            if not s.is_fully_defined():
                raise InvalidArgumentError(f"ServerAggregator: variable {v.name} has no static shape ({s})")
        self.sizes = [int(s.num_elements()) for s in self.shapes]
        self.d = int(sum(self.sizes))
        self.var_dtypes = [tf.as_dtype(v.dtype) for v in self.variables]
        if dtype is None:
            dtype = self.var_dtypes[0] if len(set(self.var_dtypes)) == 1 else tf.float64
        self.dtype = tf.as_dtype(dtype)
        if self.dtype not in (tf.float32, tf.float64):
            raise InvalidArgumentError(f"ServerAggregator: dtype must be float32 or float64, got {self.dtype.name}")
        self.stateful = _meta.is_stateful(self.rule)
        self.state = (
            tf.Variable(tf.zeros([self.d], self.dtype), trainable=False, name="pyagg_cc_state")
            if self.stateful
            else None
        )
        if optimizer is not None and hasattr(optimizer, "build") and not getattr(optimizer, "built", True):
            # Build the optimizer's slots now, eagerly, so that apply() can be
            # traced by tf.function without creating variables there.
            optimizer.build(self.variables)

    # ------------------------------------------------------------------ I/O --
    def flatten(self, worker_grads: Sequence[Sequence[Any]]) -> tf.Tensor:
        """Per-worker gradient lists -> one ``[n, d]`` tensor (row w = worker w).

        ``worker_grads[w][i]`` is worker w's gradient for ``variables[i]``.
        """
        if isinstance(worker_grads, (tf.Tensor, np.ndarray)):
            return tf.cast(tf.convert_to_tensor(worker_grads), self.dtype)
        if len(worker_grads) == 0:
            raise InvalidArgumentError("ServerAggregator: need at least one worker, got n=0")
        rows = [self._flatten_worker(w, grads) for w, grads in enumerate(worker_grads)]
        return tf.stack(rows)

    def _flatten_worker(self, w: int, grads: Sequence[Any]) -> tf.Tensor:
        if len(grads) != len(self.variables):
            raise InvalidArgumentError(
                f"ServerAggregator: worker {w} sent {len(grads)} gradients for {len(self.variables)} variables"
            )
        parts = []
        for i, (g, shape) in enumerate(zip(grads, self.shapes)):
            if g is None:
                parts.append(tf.zeros([self.sizes[i]], self.dtype))
                continue
            if isinstance(g, tf.IndexedSlices):
                g = tf.convert_to_tensor(g)
            g = tf.convert_to_tensor(g)
            if not g.shape.is_compatible_with(shape):
                raise InvalidArgumentError(
                    f"ServerAggregator: worker {w}, variable {i} ({self.variables[i].name}): gradient shape "
                    f"{g.shape} does not match the variable's {shape}"
                )
            parts.append(tf.reshape(tf.cast(g, self.dtype), [-1]))
        return tf.concat(parts, axis=0)

    def unflatten(self, flat: tf.Tensor) -> list[tf.Tensor]:
        """A ``[d]`` vector -> one tensor per variable (its shape and dtype)."""
        pieces = tf.split(flat, self.sizes)
        return [tf.cast(tf.reshape(p, s), dt) for p, s, dt in zip(pieces, self.shapes, self.var_dtypes)]

    # ---------------------------------------------------------- aggregation --
    def aggregate_flat(self, G: Any) -> tf.Tensor:
        """Aggregate an ``[n, d]`` tensor; returns the ``[d]`` result.

        For centered-clipping, starts from and updates the stored state.
        """
        G = tf.cast(tf.convert_to_tensor(G), self.dtype)
        out = _raw_aggregate(
            G, self.rule, self.f, self._names, self._values, self.state if self.stateful else None, None
        )
        if self.stateful:
            self.state.assign(out)
        return out

    def aggregate(self, worker_grads: Any) -> list[tf.Tensor]:
        """Aggregate the workers' gradients; returns one tensor per variable.

        ``worker_grads``: a list over workers of lists over variables, or an
        ``[n, d]`` tensor already flattened (see :meth:`flatten`).
        """
        return self.unflatten(self.aggregate_flat(self.flatten(worker_grads)))

    def apply(self, worker_grads: Any) -> list[tf.Tensor]:
        """Aggregate and apply with the optimizer; returns the aggregated gradients."""
        if self.optimizer is None:
            raise InvalidArgumentError("ServerAggregator.apply needs an optimizer (or use aggregate())")
        grads = self.aggregate(worker_grads)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return grads

    __call__ = apply

    def reset(self) -> None:
        """Zero the centered-clipping state (no effect for other rules)."""
        if self.state is not None:
            self.state.assign(tf.zeros_like(self.state))

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"ServerAggregator({self.rule!r}, f={self.f}{params}, d={self.d}, variables={len(self.variables)})"
