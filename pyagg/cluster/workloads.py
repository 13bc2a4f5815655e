"""Workloads (``--experiment``): a Keras model and a dataset, pluggable by module path.

(Named ``workloads`` so as not to be confused with the ``pyagg experiment``
command, :mod:`pyagg.experiment`; ``pyagg.cluster.experiments`` remains as an
alias for code written against it.)

An experiment is what a training run learns: a function building an
(uncompiled) Keras model whose output is logits (classification) or a value
(regression), the train and test arrays, and the loss. The cluster needs
nothing else: workers compute gradients of ``loss(y, model(x))`` on their
shard, the server evaluates the model on the test set.

Built in (nothing is downloaded):

- ``digits-mlp``: scikit-learn's 8x8 digits (1797 images, 10 classes),
  64-32-10 MLP. About 2.4k parameters; the workhorse of the Byzantine
  experiments and the tests.
- ``digits-cnn``: the same data as 8x8x1 images, a small CNN (2 conv layers).
- ``shapes-cnn``: image classification at a realistic size: generated 32x32
  RGB textures of 10 classes (no download), a CNN of about 1.07M parameters
  (``width`` scales it).
- ``synthetic``: a linear (``task=linear``) or logistic (``task=logistic``)
  regression task of any dimension ``dim``, for scaling runs.

Bring your own: ``--experiment mypkg.mymodule:factory`` (``--experiment-args
k=v,...`` are passed to the factory as keyword arguments) where ``factory``
returns an :class:`Experiment`::

    from pyagg.cluster.workloads import Experiment
    def factory(seed=0):
        (x, y), (xt, yt) = my_data()
        return Experiment(name="mine", build_model=lambda: my_keras_model(),
                          x_train=x, y_train=y, x_test=xt, y_test=yt,
                          loss="sparse_categorical_crossentropy", num_classes=10)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Experiment",
    "EXPERIMENTS",
    "digits_mlp",
    "digits_cnn",
    "synthetic",
    "shapes_cnn",
    "load_experiment",
    "parse_kv",
    "describe",
]

LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy", "mse")


@dataclass
class Experiment:
    """A model + dataset.

    Attributes
    ----------
    name : str
        Shown in logs and summaries.
    build_model : callable
        ``build_model() -> keras.Model``; called once per process (server and
        every worker). It must be deterministic given ``keras.utils.set_random_seed``
        (the server's initial parameters are the ones that count: workers always
        receive the server's parameters before computing a gradient).
    x_train, y_train, x_test, y_test : numpy.ndarray
        float32 inputs; int labels (classification) or float targets.
    loss : str
        ``"sparse_categorical_crossentropy"`` (model outputs logits, one per
        class), ``"binary_crossentropy"`` (one logit) or ``"mse"``.
    num_classes : int or None
        Number of classes (label-flip attack); None for regression.
    metric : str
        Name of the quality metric reported in the ``accuracy`` column:
        ``"accuracy"`` for classification, ``"r2"`` (coefficient of
        determination) for regression.
    info : dict
        Free-form description recorded in summary.json.
    """

    name: str
    build_model: Callable[[], Any]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    loss: str = "sparse_categorical_crossentropy"
    num_classes: int | None = 10
    metric: str = "accuracy"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"experiment {self.name!r}: loss must be one of {LOSSES}, got {self.loss!r}")
        self.x_train = np.ascontiguousarray(self.x_train, dtype=np.float32)
        self.x_test = np.ascontiguousarray(self.x_test, dtype=np.float32)
        ydt = np.int32 if self.loss == "sparse_categorical_crossentropy" else np.float32
        self.y_train = np.ascontiguousarray(self.y_train, dtype=ydt)
        self.y_test = np.ascontiguousarray(self.y_test, dtype=ydt)
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"experiment {self.name!r}: inputs and labels differ in length")
        if self.loss != "sparse_categorical_crossentropy":
            self.num_classes = None if self.loss == "mse" else 2
        if self.loss == "mse":
            self.metric = "r2"


# ------------------------------------------------------------------ digits ---
def _digits(seed: int, test_fraction: float = 0.2):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def digits_mlp(seed: int = 0, hidden: int = 32, data_seed: int = 1234) -> Experiment:
    """Digits, 64-``hidden``-10 MLP (ReLU), softmax cross-entropy on logits.

    The train/test split (1437/360) depends on ``data_seed`` only, so runs with
    different ``seed`` are evaluated on the same test set.
    """
    import keras

    x, y, xt, yt = _digits(data_seed)
    hidden = int(hidden)

    def build():
        return keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(10)]
        )

    return Experiment("digits-mlp", build, x, y, xt, yt, info={"hidden": hidden, "data_seed": data_seed})


def digits_cnn(seed: int = 0, data_seed: int = 1234) -> Experiment:
    """Digits as 8x8x1 images; Conv(16)-Pool-Conv(32)-GlobalAvgPool-Dense(10)."""
    import keras

    x, y, xt, yt = _digits(data_seed)

    def build():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10),
            ]
        )

    return Experiment(
        "digits-cnn", build, x.reshape(-1, 8, 8, 1), y, xt.reshape(-1, 8, 8, 1), yt, info={"data_seed": data_seed}
    )


# --------------------------------------------------------------- synthetic ---
def synthetic(
    seed: int = 0,
    dim: int = 100,
    task: str = "logistic",
    n_train: int = 4096,
    n_test: int = 1024,
    noise: float = 0.1,
    data_seed: int = 1234,
) -> Experiment:
    """Linear or logistic regression on Gaussian inputs, ``dim`` features.

    The model is one Dense layer (``dim + 1`` parameters), so ``dim`` sets the
    gradient size: use it for scaling runs (``dim=1_000_000`` sends 4 MB
    gradients). Targets come from a fixed random ``w*``: ``y = x.w* + noise``
    (linear, metric R^2) or ``y = [x.w* + noise > 0]`` (logistic, metric
    accuracy).
    """
    import keras

    dim = int(dim)
    if dim < 1:
        raise ValueError(f"synthetic: dim must be >= 1, got {dim}")
    if task not in ("linear", "logistic"):
        raise ValueError(f"synthetic: task must be 'linear' or 'logistic', got {task!r}")
    rng = np.random.default_rng(data_seed)
    w = rng.standard_normal(dim) / np.sqrt(dim)
    n_train, n_test = int(n_train), int(n_test)
    x = rng.standard_normal((n_train + n_test, dim), dtype=np.float32)
    z = x @ w.astype(np.float32) + float(noise) * rng.standard_normal(n_train + n_test).astype(np.float32)
    y = z if task == "linear" else (z > 0).astype(np.float32)

    def build():
        return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(1)])

    loss = "mse" if task == "linear" else "binary_crossentropy"
    return Experiment(
        f"synthetic-{task}",
        build,
        x[:n_train],
        y[:n_train],
        x[n_train:],
        y[n_train:],
        loss=loss,
        info={"dim": dim, "task": task, "noise": noise, "data_seed": data_seed},
    )


# ------------------------------------------------------------ shapes-cnn ---
def _shapes_data(n: int, size: int, classes: int, noise: float, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` generated RGB images (size x size x 3) of ``classes`` classes, balanced.

    Class c is a fixed random smooth texture (a sum of a few low-frequency 2-D
    sinusoids per channel, from ``data_seed``); a sample is its class texture,
    shifted by a random offset (circularly, up to a quarter of the side),
    scaled in contrast, plus Gaussian pixel noise of standard deviation
    ``noise``. Nothing is downloaded; the same arguments give the same bytes.
    """
    rng = np.random.default_rng([data_seed, 7])
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    templates = np.zeros((classes, size, size, 3), np.float32)
    for c in range(classes):
        for ch in range(3):
            for _ in range(3):
                fy, fx = rng.integers(1, 4, size=2)
                ph = rng.uniform(0, 2 * np.pi)
                templates[c, :, :, ch] += np.sin(2 * np.pi * (fy * yy + fx * xx) / size + ph).astype(np.float32)
    templates /= np.abs(templates).max(axis=(1, 2, 3), keepdims=True)
    y = np.arange(n, dtype=np.int32) % classes
    rng.shuffle(y)
    x = np.empty((n, size, size, 3), np.float32)
    shifts = rng.integers(-(size // 4), size // 4 + 1, size=(n, 2))
    contrast = rng.uniform(0.6, 1.4, size=n).astype(np.float32)
    for i in range(n):
        x[i] = np.roll(templates[y[i]], tuple(shifts[i]), axis=(0, 1)) * contrast[i]
    x += np.float32(noise) * rng.standard_normal(x.shape, dtype=np.float32)
    return x, y


def shapes_cnn(seed: int = 0, size: int = 32, classes: int = 10, width: int = 256, n_train: int = 2000,
               n_test: int = 500, noise: float = 0.8, data_seed: int = 1234) -> Experiment:
    """Image classification at a realistic size: generated 32x32 RGB textures, a CNN of about 1.1M parameters.

    Data: :func:`_shapes_data` (``classes`` textures, random shifts, contrast and
    pixel noise). Model: Conv(32, 3x3)-Pool-Conv(64, 3x3)-Pool-Flatten-
    Dense(``width``, ReLU)-Dense(``classes``), logits. With the defaults
    d = 1,070,794 (the dense layer on the 8x8x64 feature map dominates;
    ``width`` scales d linearly: width=2048 gives about 8.5M).
    """
    import keras

    size, classes, width = int(size), int(classes), int(width)
    if size < 8 or size % 4:
        raise ValueError(f"shapes-cnn: size must be a multiple of 4, >= 8, got {size}")
    x, y = _shapes_data(int(n_train) + int(n_test), size, classes, float(noise), int(data_seed))

    def build():
        return keras.Sequential([
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(classes),
        ])

    n_train = int(n_train)
    return Experiment("shapes-cnn", build, x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=classes,
                      info={"size": size, "classes": classes, "width": width, "noise": noise, "data_seed": data_seed})


def _shapes_size(a: dict[str, Any]) -> dict[str, int]:
    size, classes, width = int(a["size"]), int(a["classes"]), int(a["width"])
    flat = (size // 4) * (size // 4) * 64
    d = (27 * 32 + 32) + (9 * 32 * 64 + 64) + (flat * width + width) + (width * classes + classes)
    rows = int(a["n_train"]) + int(a["n_test"])
    return {"d": d, "data_bytes": rows * (size * size * 3 * 4 * 2 + 4)}


EXPERIMENTS: dict[str, Callable[..., Experiment]] = {
    "digits-mlp": digits_mlp,
    "digits-cnn": digits_cnn,
    "synthetic": synthetic,
    "shapes-cnn": shapes_cnn,
}
"""Built-in experiments by short name."""


def describe(spec: str, **kwargs: Any) -> dict[str, int]:
    """Parameter count ``d`` and data size in bytes of a built-in experiment, computed from its arguments
    alone (no TensorFlow, no data generated): what :func:`pyagg.cluster.checks.estimate_memory` needs.
    Raises ValueError for a name that is not built in."""
    import inspect

    if spec not in EXPERIMENTS:
        raise ValueError(f"describe: {spec!r} is not a built-in experiment")
    sig = inspect.signature(EXPERIMENTS[spec])
    bad = [k for k in kwargs if k not in sig.parameters]
    if bad:
        from .checks import did_you_mean

        raise ValueError(f"experiment {spec!r}: unknown argument {bad[0]!r}"
                         f"{did_you_mean(bad[0], [p for p in sig.parameters if p != 'seed'])} "
                         f"(accepted: {', '.join(p for p in sig.parameters if p != 'seed')})")
    a = {k: p.default for k, p in sig.parameters.items()}
    a.update(kwargs)
    if spec == "digits-mlp":
        h = int(a["hidden"])
        return {"d": 64 * h + h + h * 10 + 10, "data_bytes": 1797 * (64 + 1) * 4}
    if spec == "digits-cnn":
        return {"d": (9 * 16 + 16) + (9 * 16 * 32 + 32) + (32 * 10 + 10), "data_bytes": 1797 * (64 + 1) * 4}
    if spec == "synthetic":
        dim, rows = int(a["dim"]), int(a["n_train"]) + int(a["n_test"])
        # x (float32) and, while it is generated and split, about a quarter more
        return {"d": dim + 1, "data_bytes": int(rows * (dim + 2) * 4 * 1.25)}
    info = IMAGE_SIZES.get(spec)
    if info is not None:
        return info(a)
    raise ValueError(f"describe: no size model for {spec!r}")  # pragma: no cover - every built-in has one


IMAGE_SIZES: dict[str, Callable[[dict[str, Any]], dict[str, int]]] = {"shapes-cnn": lambda a: _shapes_size(a)}
"""Size models of the image experiments."""


# ----------------------------------------------------------------- loading ---
def _convert(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_kv(text: str | None) -> dict[str, Any]:
    """Parse ``"a=1,b=0.5,c=x"`` into ``{"a": 1, "b": 0.5, "c": "x"}``."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r} (in {text!r})")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _convert(v.strip())
    return out


def load_experiment(spec: str, seed: int = 0, **kwargs: Any) -> Experiment:
    """Build an experiment from a short name or ``package.module:factory``.

    Parameters
    ----------
    spec : str
        A key of :data:`EXPERIMENTS` or ``"package.module:factory"``.
    seed : int
        Passed to the factory as ``seed`` (when it accepts it).
    **kwargs
        Factory keyword arguments (``--experiment-args``).
    """
    if spec in EXPERIMENTS:
        factory = EXPERIMENTS[spec]
    elif ":" in spec:
        mod_name, attr = spec.split(":", 1)
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"experiment {spec!r}: cannot import module {mod_name!r} ({exc})") from exc
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ValueError(f"experiment {spec!r}: module {mod_name!r} has no callable {attr!r}")
    else:
        raise ValueError(
            f"unknown experiment {spec!r}: use one of {', '.join(EXPERIMENTS)} or 'package.module:factory'"
        )
    import inspect

    try:
        sig = inspect.signature(factory)
        accepts_seed = "seed" in sig.parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
        )
    except (TypeError, ValueError):
        accepts_seed = False
    exp = factory(seed=seed, **kwargs) if accepts_seed else factory(**kwargs)
    if not isinstance(exp, Experiment):
        raise ValueError(f"experiment {spec!r}: factory returned {type(exp).__name__}, expected Experiment")
    return exp
