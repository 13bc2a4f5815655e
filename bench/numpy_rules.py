"""Straightforward vectorised numpy versions of every rule and pre-aggregator.

This is the code a user would write with numpy alone (the baseline pyagg is
measured against): whole-array operations in the input dtype, a Python loop
over rows where the natural formulation has one (pairwise distances, Bulyan's
rounds, MDA's subsets). They are correct on finite input, which is what the
benchmark feeds them; non-finite handling and exact tie-breaking are the
engine's business (tested against tests/reference.py, not here).

Each function takes ``(G, f)`` with G an (n, d) array and returns a (d,)
array (rules) or an (n', d) array (pre-aggregators).
"""

from __future__ import annotations

import itertools

import numpy as np


# ------------------------------------------------------------ coordinate ---
def average(G, f=0):
    return G.mean(axis=0)


def average_nan(G, f=0):
    finite = np.isfinite(G)
    count = finite.sum(axis=0)
    total = np.where(finite, G, 0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 0).astype(G.dtype)


def median(G, f=0):
    return np.median(G, axis=0)


def trimmed_mean(G, f=0):
    n = G.shape[0]
    return np.sort(G, axis=0)[f : n - f].mean(axis=0)


def averaged_median(G, f=0, beta=None):
    n = G.shape[0]
    beta = n - f if beta is None else beta
    med = np.median(G, axis=0)
    idx = np.argsort(np.abs(G - med), axis=0)[:beta]
    return np.take_along_axis(G, idx, axis=0).mean(axis=0)


# -------------------------------------------------------------- distances ---
def pairwise_sqdist(G):
    """Exact squared distances, one row at a time: ((G - G[i])**2).sum(1)."""
    n = G.shape[0]
    D = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        D[i] = ((G - G[i]) ** 2).sum(axis=1)
    return D


def pairwise_sqdist_gram(G):
    """Gram form |x|^2 + |y|^2 - 2<x, y> (one BLAS call; cancels for close rows)."""
    sq = np.einsum("ij,ij->i", G, G)
    D = sq[:, None] + sq[None, :] - 2.0 * (G @ G.T)
    np.fill_diagonal(D, 0)
    return np.maximum(D, 0).astype(np.float64)


def krum_scores(D, f, rows=None):
    rows = np.arange(D.shape[0]) if rows is None else np.asarray(rows)
    sub = D[np.ix_(rows, rows)]
    k = len(rows) - f - 2
    if k <= 0:
        return np.zeros(len(rows))
    # column 0 of each sorted row is the distance to itself (0)
    return np.sort(sub, axis=1)[:, 1 : k + 1].sum(axis=1)


def krum(G, f=0, D=None):
    D = pairwise_sqdist(G) if D is None else D
    return G[int(np.argmin(krum_scores(D, f)))].copy()


def krum_gram(G, f=0):
    return krum(G, f, D=pairwise_sqdist_gram(G))


def multi_krum(G, f=0, m=None):
    n = G.shape[0]
    m = n - f - 2 if m is None else m
    order = np.argsort(krum_scores(pairwise_sqdist(G), f), kind="stable")
    return G[order[:m]].mean(axis=0)


def bulyan(G, f=0):
    n = G.shape[0]
    D = pairwise_sqdist(G)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        best = remaining[int(np.argmin(krum_scores(D, f, remaining)))]
        selected.append(best)
        remaining.remove(best)
    theta = len(selected)
    return averaged_median(G[selected], beta=theta - 2 * f)


def bulyan_multikrum(G, f=0, m=None):
    n = G.shape[0]
    m = n - f - 2 if m is None else m
    theta = n - 2 * f - 2
    D = pairwise_sqdist(G)
    remaining = list(range(n))
    contributions = []
    for t in range(theta):
        order = np.argsort(krum_scores(D, f, remaining), kind="stable")
        rows = [remaining[i] for i in order[: m - t]]
        contributions.append(G[rows].mean(axis=0))
        remaining.remove(remaining[order[0]])
    return averaged_median(np.stack(contributions), beta=theta - 2 * f)


def mda(G, f=0):
    n = G.shape[0]
    D = pairwise_sqdist(G)
    best, best_diam = None, np.inf
    for S in itertools.combinations(range(n), n - f):
        diam = D[np.ix_(S, S)].max()
        if diam < best_diam:
            best, best_diam = S, diam
    return G[list(best)].mean(axis=0)


# -------------------------------------------------------------- iterative ---
def geometric_median(G, f=0, nu=1e-6, max_iter=100, tol=1e-7):
    z = np.median(G, axis=0).astype(np.float64)
    for _ in range(max_iter):
        dist = np.linalg.norm(G - z, axis=1)
        w = 1.0 / np.maximum(nu, dist)
        z_new = (w @ G) / w.sum()
        done = np.linalg.norm(z_new - z) <= tol * np.linalg.norm(z)
        z = z_new
        if done:
            break
    return z.astype(G.dtype)


def centered_clipping(G, f=0, tau=10.0, L=1, v=None):
    v = np.zeros(G.shape[1], dtype=np.float64) if v is None else v
    for _ in range(L):
        Y = G - v
        norms = np.linalg.norm(Y, axis=1)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
        v = v + (scale[:, None] * Y).mean(axis=0)
    return v.astype(G.dtype)


# -------------------------------------------------------- pre-aggregators ---
def nnm(G, f=0):
    n = G.shape[0]
    D = pairwise_sqdist(G)
    out = np.empty_like(G)
    for i in range(n):
        out[i] = G[np.argsort(D[i], kind="stable")[: n - f]].mean(axis=0)
    return out


def splitmix64_permutation(n, seed=0):
    """The engine's shuffle (splitmix64 + Fisher-Yates), so results compare."""
    mask = (1 << 64) - 1
    state = seed

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = nxt() % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def bucketing(G, f=0, s=2, seed=0):
    n = G.shape[0]
    perm = splitmix64_permutation(n, seed)
    return np.stack([G[perm[b : b + s]].mean(axis=0) for b in range(0, n, s)])


def clipping(G, f=0, tau=0.0):
    n = G.shape[0]
    norms = np.linalg.norm(G, axis=1)
    if tau > 0:
        C = tau
    else:  # ARC: clip the k largest norms to the (k+1)-th largest
        k = (2 * f * (n - f)) // n
        if k == 0:
            return G.copy()
        C = np.sort(norms)[::-1][k]
    scale = np.minimum(1.0, C / np.maximum(norms, 1e-300))
    return (G * scale[:, None]).astype(G.dtype)


RULES = {
    "average": average,
    "average-nan": average_nan,
    "median": median,
    "trimmed-mean": trimmed_mean,
    "averaged-median": averaged_median,
    "krum": krum,
    "multi-krum": multi_krum,
    "bulyan": bulyan,
    "bulyan-multikrum": bulyan_multikrum,
    "geometric-median": geometric_median,
    "centered-clipping": centered_clipping,
    "mda": mda,
}

PRE = {"nnm": nnm, "bucketing": bucketing, "clipping": clipping}
