"""A Keras model seen as one flat float32 parameter vector.

The parameter server keeps the parameters as a flat numpy vector (what the
aggregation rules and the transport handle); :class:`FlatModel` copies it
into a Keras model's variables, computes flat gradients (one worker, or many
workers' batches at once for the local launcher) and evaluates the model.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .workloads import Experiment

__all__ = ["setup_tf", "FlatModel", "check_logits"]

_TF_READY = False


def setup_tf(threads: int = 1) -> Any:
    """Import TensorFlow quietly with ``threads`` intra/inter-op threads (once per process)."""
    global _TF_READY
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not _TF_READY:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:  # TF already initialised by the host program: keep its settings
            pass
        try:
            tf.config.set_visible_devices([], "GPU")  # the cluster runs its models on the CPU
        except (RuntimeError, ValueError):
            pass
        _TF_READY = True
    return tf


def _output_activation(model: Any) -> str | None:
    """Name of the activation the model's last layer applies (softmax, sigmoid...), None when linear."""
    layers = [lay for lay in getattr(model, "layers", []) if not type(lay).__name__ in ("InputLayer", "Dropout")]
    if not layers:
        return None
    last = layers[-1]
    kind = type(last).__name__
    if kind == "Softmax":
        return "softmax"
    if hasattr(last, "layers") and last is not model:  # a nested model: look inside
        return _output_activation(last)
    act = getattr(last, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", str(act)).lower()
    return None if name in ("linear", "identity") else name


def check_logits(model: Any, exp: Experiment) -> None:
    """Refuse a model whose outputs are probabilities where the loss expects logits.

    The cluster's losses take logits (softmax / sigmoid cross-entropy from
    logits): a softmax or sigmoid output layer would be applied twice, which
    trains badly without any error. The fix is to drop the activation.
    """
    act = _output_activation(model)
    if act in ("softmax", "sigmoid", "log_softmax") and exp.loss != "mse":
        raise ValueError(
            f"experiment {exp.name!r}: the model's last layer applies {act}, but the loss "
            f"({exp.loss}) takes logits, so {act} would be applied twice: build the last layer without an "
            f"activation (e.g. keras.layers.Dense({exp.num_classes or 1}) instead of "
            f"keras.layers.Dense({exp.num_classes or 1}, activation='{act}')); predictions are argmax / "
            "sign of the logits")
    if act in ("softmax", "sigmoid") and exp.loss == "mse":
        import warnings

        warnings.warn(f"experiment {exp.name!r}: a regression (mse) model ends with {act}: its outputs are "
                      "bounded; drop the activation unless that is intended", stacklevel=2)


class FlatModel:
    """Keras model + flat-vector views of its trainable parameters.

    Parameters
    ----------
    exp : Experiment
        The experiment whose model is built (``exp.build_model()``).
    seed : int
        Keras/TF seed set before building (initial parameters).
    """

    def __init__(self, exp: Experiment, seed: int = 0):
        tf = setup_tf()
        import keras

        self.tf = tf
        self.exp = exp
        keras.utils.set_random_seed(int(seed))
        self.model = exp.build_model()
        if not self.model.built:
            self.model.build((None,) + tuple(exp.x_train.shape[1:]))
        check_logits(self.model, exp)
        self.vars = list(self.model.trainable_variables)
        if not self.vars:
            raise ValueError(f"experiment {exp.name!r}: the model has no trainable variables")
        self.shapes = [tuple(int(s) for s in v.shape) for v in self.vars]
        self.sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.d = int(sum(self.sizes))
        self.initial = self.get_flat()  # the parameters the model was built with (seeded)
        self._assign_fn = None
        self._grad_fn = None
        self._multi_fns: dict[int, Any] = {}
        self._eval_fn = None

    # ------------------------------------------------------------ params ---
    def get_flat(self) -> np.ndarray:
        """The parameters as one (d,) float32 vector (a copy)."""
        return np.concatenate([np.asarray(v.numpy(), dtype=np.float32).reshape(-1) for v in self.vars])

    def set_flat(self, flat: np.ndarray) -> None:
        """Copy a (d,) vector into the model's variables."""
        tf = self.tf
        flat = np.asarray(flat, dtype=np.float32)
        if flat.shape != (self.d,):
            raise ValueError(f"parameters: expected shape ({self.d},), got {flat.shape}")
        if self._assign_fn is None:
            shapes, sizes, vs = self.shapes, self.sizes, self.vars

            @tf.function(reduce_retracing=True)
            def assign(vec):
                parts = tf.split(vec, sizes)
                for v, p, s in zip(vs, parts, shapes):
                    v.assign(tf.cast(tf.reshape(p, s), v.dtype))
                return 0

            self._assign_fn = assign
        self._assign_fn(tf.constant(flat))

    # ------------------------------------------------------------- loss ---
    def _loss_vec(self, y, out):
        """Per-sample loss of the model output ``out`` for targets ``y``."""
        tf = self.tf
        loss = self.exp.loss
        out = tf.cast(out, tf.float32)
        if loss == "sparse_categorical_crossentropy":
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=out)
        out = tf.reshape(out, [-1])
        y = tf.reshape(tf.cast(y, tf.float32), [-1])
        if loss == "binary_crossentropy":
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=out)
        return 0.5 * tf.square(out - y)

    def _flat_grad(self, x, y):
        tf = self.tf
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            loss = tf.reduce_mean(self._loss_vec(y, out))
        grads = tape.gradient(loss, self.vars)
        grads = [tf.zeros(s) if g is None else g for g, s in zip(grads, self.shapes)]
        if any(isinstance(g, tf.IndexedSlices) for g in grads):
            grads = [tf.convert_to_tensor(g) for g in grads]
        return tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in grads], 0), loss

    # -------------------------------------------------------- gradients ---
    def gradient(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Flat gradient (float32, (d,)) and mean loss of one batch at the current parameters."""
        if self._grad_fn is None:
            self._grad_fn = self.tf.function(self._flat_grad, reduce_retracing=True)
        g, loss = self._grad_fn(self.tf.constant(x), self.tf.constant(y))
        return g.numpy(), float(loss)

    def gradients(self, xs: np.ndarray, ys: np.ndarray, params: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Gradients of n batches at once: xs (n, B, ...), ys (n, B) -> ((n, d), (n,) losses).

        ``params`` (d,): set the parameters first, in the same traced call. One
        traced function per n (an unrolled loop of n tapes: faster than a pfor
        Jacobian on CPU for these models).
        """
        tf = self.tf
        n = int(xs.shape[0])
        fn = self._multi_fns.get(n)
        if fn is None:
            shapes, sizes, vs = self.shapes, self.sizes, self.vars

            def multi(flat, set_params, xs, ys):
                if set_params:
                    for v, p, s in zip(vs, tf.split(flat, sizes), shapes):
                        v.assign(tf.cast(tf.reshape(p, s), v.dtype))
                gs, ls = [], []
                for i in range(n):
                    g, loss = self._flat_grad(xs[i], ys[i])
                    gs.append(g)
                    ls.append(loss)
                return tf.stack(gs), tf.stack(ls)

            fn = tf.function(multi, reduce_retracing=True)
            self._multi_fns[n] = fn
        if params is None:
            flat, set_params = np.zeros(self.d, np.float32), False
        else:
            flat, set_params = np.asarray(params, np.float32), True
            if flat.shape != (self.d,):
                raise ValueError(f"parameters: expected shape ({self.d},), got {flat.shape}")
        g, losses = fn(tf.constant(flat), set_params, tf.constant(xs), tf.constant(ys))
        return g.numpy(), losses.numpy()

    # ------------------------------------------------------- evaluation ---
    def evaluate(self, x: np.ndarray | None = None, y: np.ndarray | None = None, batch: int = 4096) -> dict:
        """Mean loss and metric (accuracy, or R^2 for regression) on the test set (or x, y)."""
        tf = self.tf
        x = self.exp.x_test if x is None else x
        y = self.exp.y_test if y is None else y
        if self._eval_fn is None:

            @tf.function(reduce_retracing=True)
            def ev(xb, yb):
                out = self.model(xb, training=False)
                return self._loss_vec(yb, out), tf.cast(out, tf.float32)

            self._eval_fn = ev
        losses, outs = [], []
        for i in range(0, len(x), batch):
            lv, out = self._eval_fn(tf.constant(x[i : i + batch]), tf.constant(y[i : i + batch]))
            losses.append(lv.numpy())
            outs.append(out.numpy())
        lv = np.concatenate(losses).astype(np.float64)
        out = np.concatenate(outs)
        loss = float(lv.mean()) if lv.size else float("nan")
        if not np.isfinite(loss):
            loss = float("nan")
        if self.exp.loss == "sparse_categorical_crossentropy":
            clean = np.where(np.isfinite(out), out, -np.inf)
            metric = float(np.mean(np.argmax(clean, axis=1) == y)) if out.size else float("nan")
        elif self.exp.loss == "binary_crossentropy":
            metric = float(np.mean((out.reshape(-1) > 0) == (y > 0.5)))
        else:
            yv = y.astype(np.float64)
            ss = float(np.sum((yv - yv.mean()) ** 2))
            res = float(np.sum((yv - out.reshape(-1).astype(np.float64)) ** 2))
            metric = 1.0 - res / ss if ss > 0 and np.isfinite(res) else float("nan")
        return {"loss": loss, "accuracy": metric}
