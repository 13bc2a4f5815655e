"""Byzantine-resilient synchronous SGD in TensorFlow 2, with pyagg's TF op.

A small Keras model learns scikit-learn's digits (8x8 images, 10 classes).
A simulated cluster of n workers sends one gradient each per step; f of them
are Byzantine (pyagg.attacks; default: sign flip, each Byzantine worker
sends -10 times the honest mean). The server aggregates the n gradient lists with
``pyagg.tf_bridge.ServerAggregator`` — the ``PyaggAggregate`` op inside a
``tf.function`` — and applies the result with a Keras optimizer. Plain
averaging is destroyed by the attack; the robust rules train on.

Run::

    python examples/tf_digits.py                          # every rule, sign flip (x10)
    python examples/tf_digits.py --attack gaussian --attack-param sigma=200 --rules average krum
    python examples/tf_digits.py --attack none --rules average

The server side is a few lines of a custom training loop::

    server = ServerAggregator(model, "krum", f=3, optimizer=tf.keras.optimizers.SGD(0.1))

    @tf.function
    def server_step(worker_grads):        # list over workers of lists over variables
        server.apply(worker_grads)
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
import tensorflow as tf

from pyagg import attacks
from pyagg.tf_bridge import ServerAggregator

#: Rules shown by default (n = 15, f = 3 admits them all; bulyan needs n >= 4f+3).
DEFAULT_RULES = [
    "average",
    "krum",
    "multi-krum",
    "median",
    "trimmed-mean",
    "averaged-median",
    "bulyan",
    "bulyan-multikrum",
    "geometric-median",
    "centered-clipping",
    "mda",
]

#: Default attack and its parameters (this one drives plain averaging to chance level).
DEFAULT_ATTACK = "sign_flip"
DEFAULT_ATTACK_PARAMS = {"sign_flip": {"scale": 10.0}}

#: Rule parameters used by default. centered-clipping's radius tau must be on
#: the scale of the honest gradients' norm (about 1 here); the engine's
#: default tau = 10 lets a x10 sign flip through.
DEFAULT_RULE_PARAMS = {"centered-clipping": {"tau": 1.0}}


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits, scaled to [0, 1]; a fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    return train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)


def make_model(seed: int = 0) -> tf.keras.Model:
    """A 64-64-10 perceptron (4,810 parameters)."""
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential(
        [
            tf.keras.Input(shape=(64,)),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(10),
        ]
    )


def accuracy(model: tf.keras.Model, X: np.ndarray, y: np.ndarray) -> float:
    logits = model(X, training=False).numpy()
    return float(np.mean(np.argmax(logits, axis=1) == y))


def train(
    rule: str,
    attack: str | None = DEFAULT_ATTACK,
    *,
    n: int = 15,
    f: int = 3,
    steps: int = 300,
    batch: int = 32,
    lr: float = 0.1,
    seed: int = 0,
    attack_params: dict[str, Any] | None = None,
    rule_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the model with n simulated workers, f of them Byzantine.

    Parameters
    ----------
    rule : str
        The server's aggregation rule (see :func:`pyagg.rules`).
    attack : str or None
        A :data:`pyagg.attacks.ATTACKS` name for the f Byzantine workers, or
        None / "none": every worker is honest (f is still declared to the rule).
    n, f : int
        Workers and declared Byzantine workers.
    steps, batch, lr, seed : training hyper-parameters (batch per worker).
    attack_params, rule_params : dict
        Keyword arguments of the attack and of the rule (None: the defaults
        of DEFAULT_ATTACK_PARAMS and DEFAULT_RULE_PARAMS).

    Returns
    -------
    dict
        ``accuracy`` (test set), ``train_accuracy``, ``seconds``, ``rule``, ``attack``.
    """
    X_tr, X_te, y_tr, y_te = load_data(seed)
    model = make_model(seed)
    if rule_params is None:
        rule_params = DEFAULT_RULE_PARAMS.get(rule, {})
    server = ServerAggregator(model, rule, f, tf.keras.optimizers.SGD(lr), **rule_params)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    attack = None if attack in (None, "none") else attack
    h = n - f if attack else n  # honest workers
    if attack_params is None:
        attack_params = DEFAULT_ATTACK_PARAMS.get(attack or "", {})
    attack_params = dict(attack_params)
    rng = np.random.default_rng(seed)

    @tf.function
    def worker_gradients(xb: tf.Tensor, yb: tf.Tensor) -> list[list[tf.Tensor]]:
        """Each honest worker's gradient on its own batch (xb: [h, batch, 64])."""
        grads = []
        for w in range(h):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb[w], model(xb[w], training=True))
            grads.append(tape.gradient(loss, model.trainable_variables))
        return grads

    @tf.function
    def server_step(worker_grads: list[list[tf.Tensor]]) -> None:
        server.apply(worker_grads)  # flatten -> PyaggAggregate -> split -> optimizer

    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.integers(0, len(X_tr), size=(h, batch))
        grads = worker_gradients(tf.constant(X_tr[idx]), tf.constant(y_tr[idx]))
        if attack:
            # The Byzantine workers see the honest gradients (omniscient attacks).
            honest = server.flatten(grads).numpy()
            kw = dict(attack_params)
            if attack == "gaussian":
                kw.setdefault("seed", seed * 100_003 + step)
            byz = attacks.make_byzantine(attack, honest, f, **kw)
            grads = list(grads) + [server.unflatten(tf.constant(row)) for row in byz]
        server_step(grads)
    seconds = time.perf_counter() - t0
    return {
        "rule": rule,
        "attack": attack or "none",
        "accuracy": accuracy(model, X_te, y_te),
        "train_accuracy": accuracy(model, X_tr, y_tr),
        "seconds": seconds,
    }


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = float(v)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rules", nargs="+", default=DEFAULT_RULES)
    p.add_argument(
        "--attack",
        default=DEFAULT_ATTACK,
        help=f"pyagg.attacks name ({', '.join(attacks.ATTACKS)}) or 'none' (default: {DEFAULT_ATTACK})",
    )
    p.add_argument(
        "--attack-param",
        action="append",
        default=None,
        metavar="K=V",
        help="attack parameter, repeatable, e.g. scale=10 or sigma=200 (default for sign_flip: scale=10)",
    )
    p.add_argument("--n", type=int, default=15, help="workers (default 15)")
    p.add_argument("--f", type=int, default=3, help="Byzantine workers (default 3)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    attack_params = None if args.attack_param is None else _kv(args.attack_param)
    shown = attack_params if attack_params is not None else DEFAULT_ATTACK_PARAMS.get(args.attack, {})
    print(
        f"digits, 64-64-10 MLP, n={args.n} workers, f={args.f} Byzantine ({args.attack} {shown}), "
        f"{args.steps} steps of SGD(lr={args.lr}), batch {args.batch} per worker"
    )
    print(f"{'rule':<18} {'test acc':>8} {'train acc':>9} {'seconds':>8}")
    for rule in args.rules:
        r = train(
            rule,
            args.attack,
            n=args.n,
            f=args.f,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            attack_params=attack_params,
        )
        print(f"{rule:<18} {r['accuracy']:>8.3f} {r['train_accuracy']:>9.3f} {r['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
