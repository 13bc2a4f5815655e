"""Byzantine attacks on gradient aggregation, for tests, benchmarks and demos.

Every attack is a function of the honest gradients ``H`` (an ``(h, d)`` array,
one row per honest worker) and of the number ``f`` of Byzantine workers; it
returns the ``f`` Byzantine rows as an ``(f, d)`` array of the dtype of ``H``.
Omniscient attacks (sign flip, ALIE, IPM, mimic, ...) read the honest
gradients: in a real cluster the colluding workers obtain them through a
collusion channel (they are honest-looking workers themselves, or they
eavesdrop). Random attacks are seeded, so a run is reproducible.

Statistics (mean, standard deviation) are computed in float64 and the result
is rounded to the dtype of ``H`` once.

Examples
--------
>>> import numpy as np
>>> from pyagg import attacks
>>> H = np.ones((16, 5), dtype=np.float32)
>>> B = attacks.make_byzantine("sign_flip", H, f=4)
>>> B.shape, B.dtype, float(B[0, 0])
((4, 5), dtype('float32'), -1.0)
>>> G = np.concatenate([H, B])        # the n = 20 gradients the server sees
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "ATTACKS",
    "alie",
    "alie_z",
    "gaussian",
    "inf",
    "ipm",
    "make_byzantine",
    "mimic",
    "nan",
    "sign_flip",
    "zero",
]


# ----------------------------------------------------------------- helpers ---
def _check(H: Any, f: int) -> tuple[np.ndarray, int]:
    """Validate the honest gradients and f; return ``(H as ndarray, f)``."""
    H = np.asarray(H)
    if H.ndim != 2:
        raise ValueError(f"honest gradients must be a 2-D (h, d) array, got shape {H.shape}")
    if H.shape[0] < 1:
        raise ValueError("honest gradients: need at least one honest row, got h=0")
    if not np.issubdtype(H.dtype, np.floating):
        raise ValueError(f"honest gradients must be a floating-point array, got dtype {H.dtype}")
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise TypeError(f"f must be an integer, got {f!r}")
    if f < 0:
        raise ValueError(f"f must be >= 0, got f={f}")
    return H, int(f)


def _mean(H: np.ndarray) -> np.ndarray:
    """Coordinate-wise mean of the honest rows, in float64."""
    return H.astype(np.float64).mean(axis=0)


def _repeat(row: np.ndarray, f: int, dtype: np.dtype) -> np.ndarray:
    """``f`` copies of ``row`` as an ``(f, d)`` array of ``dtype``."""
    return np.repeat(np.asarray(row, dtype=np.float64)[None, :], f, axis=0).astype(dtype)


# ----------------------------------------------------------------- attacks ---
def sign_flip(H: np.ndarray, f: int, scale: float = 1.0) -> np.ndarray:
    """Send the opposite of the honest mean: ``-scale * mean(H)``.

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)``, float32 or float64.
    f : int
        Number of Byzantine rows to produce.
    scale : float, optional
        Multiplier of the flipped mean (default 1.0; large values make the
        attack cruder and easier to filter).

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of the dtype of ``H``, every row ``-scale * mean(H)``.
    """
    H, f = _check(H, f)
    return _repeat(-float(scale) * _mean(H), f, H.dtype)


def gaussian(H: np.ndarray, f: int, sigma: float = 200.0, seed: int = 0) -> np.ndarray:
    """Honest mean plus large isotropic Gaussian noise.

    Each Byzantine row is ``mean(H) + N(0, sigma^2 I)``, drawn independently
    (the mean is added so that the attack is not trivially recognisable by
    its centre).

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)``.
    f : int
        Number of Byzantine rows.
    sigma : float, optional
        Standard deviation of the noise, per coordinate (default 200).
    seed : int, optional
        Seed of the ``numpy.random.default_rng`` generator (default 0).

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of the dtype of ``H``.
    """
    H, f = _check(H, f)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be finite and >= 0, got sigma={sigma}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((f, H.shape[1])) * float(sigma)
    return (_mean(H)[None, :] + noise).astype(H.dtype)


def nan(H: np.ndarray, f: int) -> np.ndarray:
    """Rows full of NaN (a crashed worker, or a lost LossyMPI chunk).

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)`` (only the shape and dtype are used).
    f : int
        Number of Byzantine rows.

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of NaN, dtype of ``H``.
    """
    H, f = _check(H, f)
    return np.full((f, H.shape[1]), np.nan, dtype=H.dtype)


def inf(H: np.ndarray, f: int) -> np.ndarray:
    """Rows full of ``+inf`` (an overflowed or malicious worker).

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)`` (only the shape and dtype are used).
    f : int
        Number of Byzantine rows.

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of ``+inf``, dtype of ``H``.
    """
    H, f = _check(H, f)
    return np.full((f, H.shape[1]), np.inf, dtype=H.dtype)


def zero(H: np.ndarray, f: int) -> np.ndarray:
    """All-zero rows (a lazy worker that does not compute its gradient).

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)`` (only the shape and dtype are used).
    f : int
        Number of Byzantine rows.

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of zeros, dtype of ``H``.
    """
    H, f = _check(H, f)
    return np.zeros((f, H.shape[1]), dtype=H.dtype)


def alie_z(n: int, f: int) -> float:
    """Compute the z of "A Little Is Enough" for n workers, f of them Byzantine.

    Baruch et al. (NeurIPS 2019): the attackers need ``s = floor(n/2 + 1) - f``
    honest workers on their side to form a majority; z is the largest shift
    (in standard deviations) such that that many honest values are still
    farther from the mean: ``z = Phi^-1((n - s) / n)``, Phi the standard
    normal CDF (:class:`statistics.NormalDist`).

    Parameters
    ----------
    n : int
        Total number of workers (honest + Byzantine).
    f : int
        Number of Byzantine workers.

    Returns
    -------
    float
        The shift z, in units of the coordinate-wise standard deviation.

    Raises
    ------
    ValueError
        When ``(n - s) / n`` is not in (0, 1) (no such z exists, e.g. f too
        large for n).
    """
    if n < 1:
        raise ValueError(f"alie needs n >= 1 workers, got n={n}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(f"alie: no z for n={n}, f={f} (s={s}, (n-s)/n={p} is not in (0, 1))")
    return NormalDist().inv_cdf(p)


def alie(H: np.ndarray, f: int, n: int | None = None, z: float | None = None) -> np.ndarray:
    """ALIE, "A Little Is Enough" (Baruch et al., NeurIPS 2019).

    Every Byzantine row is ``mean(H) - z * std(H)``, coordinate-wise: a shift
    small enough to hide inside the honest spread, so that coordinate-wise
    and distance-based rules keep it, yet consistent across all coordinates
    and all Byzantine workers, so that it adds up.

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)``.
    f : int
        Number of Byzantine rows.
    n : int, optional
        Total number of workers, default ``h + f``. Used to derive z.
    z : float, optional
        Shift in standard deviations; default :func:`alie_z` ``(n, f)``.

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of the dtype of ``H``.

    Notes
    -----
    The standard deviation is the population one (``ddof=0``) of the honest
    rows.
    """
    H, f = _check(H, f)
    if n is None:
        n = H.shape[0] + f
    if z is None:
        z = alie_z(int(n), f)
    H64 = H.astype(np.float64)
    row = H64.mean(axis=0) - float(z) * H64.std(axis=0)
    return _repeat(row, f, H.dtype)


def ipm(H: np.ndarray, f: int, epsilon: float = 0.1) -> np.ndarray:
    """Inner Product Manipulation (Xie et al., UAI 2020): ``-epsilon * mean(H)``.

    With a small epsilon the Byzantine rows are close to the honest ones (so
    robust rules may keep them) yet their inner product with the true
    gradient is negative, which can stall or reverse the descent when they
    are averaged in.

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)``.
    f : int
        Number of Byzantine rows.
    epsilon : float, optional
        Scale of the reversed mean (default 0.1).

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array of the dtype of ``H``.
    """
    H, f = _check(H, f)
    return _repeat(-float(epsilon) * _mean(H), f, H.dtype)


def mimic(H: np.ndarray, f: int, target: int = 0) -> np.ndarray:
    """Copy one honest worker's gradient f times (Karimireddy et al., 2022).

    Harmless for a single step, but over-represents one worker: with
    heterogeneous data it biases the aggregate towards that worker's data.

    Parameters
    ----------
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)``.
    f : int
        Number of Byzantine rows.
    target : int, optional
        Index of the honest row copied (default 0; negative indices count
        from the end).

    Returns
    -------
    numpy.ndarray
        ``(f, d)`` array, every row a bitwise copy of ``H[target]``.
    """
    H, f = _check(H, f)
    h = H.shape[0]
    if not -h <= target < h:
        raise ValueError(f"mimic: target must index an honest row (h={h}), got target={target}")
    return np.repeat(H[target][None, :], f, axis=0).astype(H.dtype, copy=False)


ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "sign_flip": sign_flip,
    "gaussian": gaussian,
    "nan": nan,
    "inf": inf,
    "zero": zero,
    "alie": alie,
    "ipm": ipm,
    "mimic": mimic,
}
"""Every attack by name: ``name -> function(H, f, **params)``."""


def make_byzantine(name: str, H: np.ndarray, f: int, **kw: Any) -> np.ndarray:
    """Run the attack ``name`` on the honest gradients.

    Parameters
    ----------
    name : str
        A key of :data:`ATTACKS` (``"sign_flip"``, ``"gaussian"``, ``"nan"``,
        ``"inf"``, ``"zero"``, ``"alie"``, ``"ipm"``, ``"mimic"``).
    H : numpy.ndarray
        Honest gradients, shape ``(h, d)``.
    f : int
        Number of Byzantine rows.
    **kw
        Parameters of the attack (e.g. ``sigma``, ``seed`` for gaussian).

    Returns
    -------
    numpy.ndarray
        The ``(f, d)`` Byzantine rows, dtype of ``H``.

    Raises
    ------
    ValueError
        Unknown attack name (the message lists the known ones), or bad
        arguments.
    """
    try:
        attack = ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r} (known attacks: {', '.join(ATTACKS)})") from None
    return attack(H, f, **kw)
