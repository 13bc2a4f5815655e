"""Reference implementations of every rule and pre-aggregator, in plain numpy.

Written from shared/spec/rules.md and the semantics the engine documents where
the spec is silent (engine/src/cpu/cpu_backend.h), never from the C++ code.
The code is deliberately simple, loop-based and slow: it is the oracle the
engine is tested against, so it must be obviously correct rather than fast.

Conventions (the engine's, decided where the spec is silent):

- sums are taken in float64 and rounded to the input dtype once, at the end;
- a "non-finite row" holds any NaN or +-inf; distance-based rules treat it as
  infinitely far from every row (D = inf, D[i][i] = inf too) and never select
  it; ties are broken by the lowest row index;
- squared distances are exact: sum of (x_i - x_j)^2 computed in float64 from
  the differences, never from the Gram form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

F64 = np.float64

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- helpers ---
def _rnd(x: np.ndarray | float, dtype: np.dtype) -> np.ndarray:
    """Round a float64 result to the input dtype (once)."""
    return np.asarray(x, dtype=F64).astype(dtype)


def finite_rows(G: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows holding only finite values."""
    return np.all(np.isfinite(G), axis=1)


def mean64(rows: np.ndarray) -> np.ndarray:
    """Mean of rows, in float64 (not rounded); inf + -inf -> NaN without a warning."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(rows, dtype=F64).sum(axis=0) / len(rows)


def median_of(values: Sequence[float]) -> float:
    """Median of finite values (even count: mean of the two middle ones); none -> 0."""
    v = sorted(float(x) for x in values if math.isfinite(x))
    k = len(v)
    if k == 0:
        return 0.0
    if k % 2:
        return v[k // 2]
    return (v[k // 2 - 1] + v[k // 2]) / 2.0


def median64(G: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of the finite values, float64 (not rounded)."""
    return np.array([median_of(G[:, c]) for c in range(G.shape[1])], dtype=F64)


def sqdist(G: np.ndarray) -> np.ndarray:
    """Exact squared distances; inf for any pair involving a non-finite row."""
    n = G.shape[0]
    G64 = G.astype(F64)
    fin = finite_rows(G)
    D = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(n):
            if fin[i] and fin[j]:
                diff = G64[i] - G64[j]
                D[i, j] = float(np.dot(diff, diff))
    return D


def krum_scores(D: np.ndarray, R: Sequence[int], f: int) -> dict[int, float]:
    """Krum scores of the rows R, neighbours among R only.

    score_i = sum of the k = |R|-f-2 smallest D[i][j], j in R, j != i; when
    k <= 0 every score is 0. A non-finite row (D[i][i] = inf) scores +inf
    whatever k is: the spec says it is never selected.
    """
    k = len(R) - f - 2
    scores = {}
    for i in R:
        if math.isinf(D[i, i]):
            scores[i] = math.inf
            continue
        if k <= 0:
            scores[i] = 0.0
            continue
        others = sorted(float(D[i, j]) for j in R if j != i)
        scores[i] = float(sum(others[:k]))
    return scores


def ranked(scores: dict[int, float]) -> list[int]:
    """Row indices by increasing score, ties -> lowest index."""
    return sorted(scores, key=lambda i: (scores[i], i))


# ---------------------------------------------------- coordinate-wise rules ---
def average(G: np.ndarray, f: int = 0) -> np.ndarray:
    """Mean of the n rows (non-robust baseline; NaN/inf propagate)."""
    return _rnd(mean64(G), G.dtype)


def average_nan(G: np.ndarray, f: int = 0) -> np.ndarray:
    """Per coordinate, mean of the finite values; none -> 0."""
    out = np.zeros(G.shape[1], dtype=F64)
    for c in range(G.shape[1]):
        v = [float(x) for x in G[:, c] if math.isfinite(x)]
        out[c] = math.fsum(v) / len(v) if v else 0.0
    return _rnd(out, G.dtype)


def median(G: np.ndarray, f: int = 0) -> np.ndarray:
    """Per coordinate, median of the finite values; none -> 0."""
    return _rnd(median64(G), G.dtype)


def trimmed_mean(G: np.ndarray, f: int = 0) -> np.ndarray:
    """Per coordinate: sort (-inf smallest, NaN as +inf), drop f each end, mean."""
    n = G.shape[0]
    out = np.zeros(G.shape[1], dtype=F64)
    for c in range(G.shape[1]):
        col = [float(x) for x in G[:, c]]
        # NaN keyed as +inf (ties among +inf/NaN by row index).
        order = sorted(range(n), key=lambda i: (math.inf if math.isnan(col[i]) else col[i], i))
        kept = [col[i] for i in order[f : n - f]]
        if all(map(math.isfinite, kept)):
            out[c] = math.fsum(kept) / len(kept)
        else:
            with np.errstate(invalid="ignore"):
                out[c] = float(np.mean(np.array(kept, dtype=F64)))
    return _rnd(out, G.dtype)


def _averaged_median_col(col: Sequence[float], beta: int) -> float:
    v = [float(x) for x in col if math.isfinite(x)]
    if not v:
        return 0.0
    m = median_of(v)
    closest = sorted(v, key=lambda x: (abs(x - m), x))[: min(beta, len(v))]
    return math.fsum(closest) / len(closest)


def averaged_median(G: np.ndarray, f: int = 0, beta: int | None = None) -> np.ndarray:
    """Per coordinate, the mean of the beta finite values closest to the median."""
    n = G.shape[0]
    beta = n - f if beta is None else beta
    out = np.array([_averaged_median_col(G[:, c], beta) for c in range(G.shape[1])], dtype=F64)
    return _rnd(out, G.dtype)


# ------------------------------------------------------- distance rules ---
def krum_index(G: np.ndarray, f: int) -> int:
    """Index of the row Krum selects."""
    D = sqdist(G)
    return ranked(krum_scores(D, range(G.shape[0]), f))[0]


def krum(G: np.ndarray, f: int = 0) -> np.ndarray:
    """The row with the lowest Krum score (a bitwise copy)."""
    return G[krum_index(G, f)].copy()


def multi_krum(G: np.ndarray, f: int = 0, m: int | None = None) -> np.ndarray:
    """Mean of the m rows with the lowest Krum scores (scores computed once)."""
    n = G.shape[0]
    m = n - f - 2 if m is None else m
    order = ranked(krum_scores(sqdist(G), range(n), f))
    return _rnd(mean64(G[order[:m]]), G.dtype)


def bulyan_selection(G: np.ndarray, f: int) -> list[int]:
    """The theta = n-2f rows Bulyan selects, in selection order."""
    n = G.shape[0]
    D = sqdist(G)
    R = list(range(n))
    sel = []
    for _ in range(n - 2 * f):
        best = ranked(krum_scores(D, R, f))[0]
        sel.append(best)
        R.remove(best)
    return sel


def bulyan(G: np.ndarray, f: int = 0) -> np.ndarray:
    """Bulyan: n-2f Krum selections, then averaged median with beta = theta-2f."""
    sel = bulyan_selection(G, f)
    theta = len(sel)
    return averaged_median(G[sel], beta=theta - 2 * f)


def krum_neighbours(D: np.ndarray, f: int) -> list[list[int]]:
    """For each row i, its n-f-2 nearest other rows (by (D[i][j], j)), nearest first."""
    n = D.shape[0]
    k = n - f - 2
    return [sorted((j for j in range(n) if j != i), key=lambda j: (float(D[i, j]), j))[:k] for i in range(n)]


def upper_averaged_median_col(col: Sequence[float], beta: int) -> float:
    """Mean of the beta finite values closest to the UPPER median (element k//2 of
    the k sorted finite values); ties -> the smaller value; none -> 0."""
    v = sorted(float(x) for x in col if math.isfinite(x))
    if not v:
        return 0.0
    m = v[len(v) // 2]
    closest = sorted(v, key=lambda x: (abs(x - m), x))[: min(beta, len(v))]
    return math.fsum(closest) / len(closest)


def bulyan_multikrum_sets(G: np.ndarray, f: int = 0, m: int | None = None) -> list[list[int]]:
    """AggregaThor's Bulyan over Multi-Krum, selection phase (spec, rules.md).

    Krum scores once on all n rows (n-f-2 nearest others); P[i][j] = D[i][j]
    when j is one of i's neighbours, else 0 ("pruned"); theta = n-2f-2 rounds:
    rank the remaining rows by (non-finite, score, index), take the m-t best,
    remove the best row r and subtract P[i][r] from every remaining score
    (an infinite score stays infinite). Returns the theta sets, rank order.
    """
    n = G.shape[0]
    m = n - f - 2 if m is None else m
    theta = n - 2 * f - 2
    D = sqdist(G)
    fin = finite_rows(G)
    nb = krum_neighbours(D, f)
    score = {i: (sum(float(D[i, j]) for j in nb[i]) if fin[i] else math.inf) for i in range(n)}
    remaining = list(range(n))
    sets = []
    for t in range(theta):
        order = sorted(remaining, key=lambda i: (not fin[i], score[i], i))
        sets.append(order[: m - t])
        r = order[0]
        remaining.remove(r)
        for i in remaining:
            if math.isfinite(score[i]) and r in nb[i]:
                score[i] -= float(D[i, r])
    return sets


def bulyan_multikrum(G: np.ndarray, f: int = 0, m: int | None = None) -> np.ndarray:
    """AggregaThor's Bulyan over Multi-Krum: the theta round means (each rounded to
    the input dtype), then per coordinate the mean of the beta = theta-2f values
    closest to the upper median."""
    sets = bulyan_multikrum_sets(G, f, m)
    theta = len(sets)
    contrib = np.array([_rnd(mean64(G[sorted(s)]), G.dtype) for s in sets], dtype=G.dtype)
    out = [upper_averaged_median_col(contrib[:, c], theta - 2 * f) for c in range(G.shape[1])]
    return _rnd(np.array(out, dtype=F64), G.dtype)


def mda_subset(G: np.ndarray, f: int) -> tuple[int, ...]:
    """The n-f rows of smallest diameter; ties -> lexicographically smallest tuple."""
    n = G.shape[0]
    D = sqdist(G)
    best, best_diam = None, math.inf
    for S in itertools.combinations(range(n), n - f):
        diam = float(D[np.ix_(S, S)].max())
        if best is None or diam < best_diam:
            best, best_diam = S, diam
    return best


def mda(G: np.ndarray, f: int = 0, max_subsets: float = 1e7) -> np.ndarray:
    """Minimum-diameter averaging (exact)."""
    return _rnd(mean64(G[list(mda_subset(G, f))]), G.dtype)


# ------------------------------------------------------- iterative rules ---
def geometric_median(
    G: np.ndarray, f: int = 0, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-7, init: str = "mean"
) -> np.ndarray:
    """Smoothed Weiszfeld (RFA) from the mean of the finite rows (init="mean",
    the spec's default; none -> 0) or from the coordinate-wise median."""
    fin = finite_rows(G)
    X = G[fin].astype(F64)
    if init == "median":
        z = median64(G)
    else:
        z = X.mean(axis=0) if len(X) else np.zeros(G.shape[1], dtype=F64)
    for _ in range(int(max_iter)):
        w = np.array([1.0 / max(nu, float(np.linalg.norm(x - z))) for x in X])
        sw = float(w.sum()) if len(w) else 0.0
        z_new = (w[:, None] * X).sum(axis=0) / sw if sw > 0 else z.copy()
        done = float(np.linalg.norm(z_new - z)) <= tol * float(np.linalg.norm(z))
        z = z_new
        if done:
            break
    return _rnd(z, G.dtype)


def centered_clipping(
    G: np.ndarray, f: int = 0, tau: float = 10.0, L: int = 1, state: np.ndarray | None = None
) -> np.ndarray:
    """v <- v + (1/n) sum_i clip(x_i - v, tau), L times, from `state` (or 0)."""
    n, d = G.shape
    fin = finite_rows(G)
    v = np.zeros(d, dtype=F64) if state is None else np.asarray(state, dtype=F64).copy()
    for _ in range(int(L)):
        acc = np.zeros(d, dtype=F64)
        for i in range(n):
            if not fin[i]:
                continue
            y = G[i].astype(F64) - v
            nrm = float(np.linalg.norm(y))
            c = 1.0 if nrm == 0 else min(1.0, tau / nrm)
            acc += c * y
        v = v + acc / n
    return _rnd(v, G.dtype)


# -------------------------------------------------------- pre-aggregators ---
def nnm(G: np.ndarray, f: int = 0) -> np.ndarray:
    """Each row -> mean of its n-f nearest rows, ranked by (non-finite, D, index),
    summed in increasing row-index order like every mean of selected rows."""
    n = G.shape[0]
    D = sqdist(G)
    fin = finite_rows(G)
    out = np.empty_like(G)
    for i in range(n):
        order = sorted(range(n), key=lambda j: (not fin[j], D[i, j], j))
        out[i] = _rnd(mean64(G[sorted(order[: n - f])]), G.dtype)
    return out


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014), the engine's shuffle generator."""

    def __init__(self, seed: int):
        self.state = int(seed) & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def bucket_permutation(n: int, seed: int) -> list[int]:
    """Fisher-Yates shuffle of range(n) driven by splitmix64(seed)."""
    rng = SplitMix64(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.next() % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def bucketing(G: np.ndarray, f: int = 0, s: int = 2, seed: int = 0) -> np.ndarray:
    """Shuffle the rows, average them in buckets of s (last bucket may be smaller)."""
    n = G.shape[0]
    perm = bucket_permutation(n, seed)
    nb = -(-n // s)
    return np.array([_rnd(mean64(G[perm[b * s : (b + 1) * s]]), G.dtype) for b in range(nb)], dtype=G.dtype)


def clipping(G: np.ndarray, f: int = 0, tau: float = 0.0) -> np.ndarray:
    """Static (tau > 0) or adaptive (tau == 0, ARC) norm clipping of each row."""
    n = G.shape[0]
    fin = finite_rows(G)
    G64 = G.astype(F64)
    norms = [float(np.linalg.norm(G64[i])) if fin[i] else math.inf for i in range(n)]
    out = G.copy()
    if tau > 0:
        for i in range(n):
            if fin[i] and norms[i] > 0:
                out[i] = _rnd(G64[i] * min(1.0, tau / norms[i]), G.dtype)
        return out
    k = (2 * f * (n - f)) // n
    if k == 0:
        return out
    order = sorted(range(n), key=lambda i: (-norms[i], i))
    C = norms[order[k]]
    if not math.isfinite(C):
        return out
    for i in range(n):
        if fin[i] and norms[i] > C:
            out[i] = _rnd(G64[i] * (C / norms[i]), G.dtype)
    return out


# ------------------------------------- next batch (shared/spec/rules_next.md) ---
# Written from rules_next.md. Everything is computed from the data in float64
# (Gram matrices as X_c @ X_c.T of explicitly centered rows, projections as
# dot products with the d-dimensional direction), not from distances.


def usable_rows(G: np.ndarray) -> list[int]:
    """Rows with every entry finite and a finite float64 sum of squares."""
    out = []
    for i in range(G.shape[0]):
        x = G[i].astype(F64)
        if np.all(np.isfinite(x)):
            with np.errstate(over="ignore"):
                if math.isfinite(float(np.sum(x * x))):
                    out.append(i)
    return out


def uniform01(rng: SplitMix64) -> float:
    return (rng.next() >> 11) * 2.0**-53


def start_vector(rng: SplitMix64, n: int) -> np.ndarray:
    return np.array([2.0 * uniform01(rng) - 1.0 for _ in range(n)])


def floyd(rng: SplitMix64, d: int, b: int) -> list[int]:
    S: set[int] = set()
    for j in range(d - b, d):
        t = rng.next() % (j + 1)
        S.add(j if t in S else t)
    return sorted(S)


def power(M: np.ndarray, s: np.ndarray, T: int) -> tuple[float, np.ndarray | None]:
    """POWER(M, s, T): (lambda, u); u None when M = 0."""
    m = M.shape[0]
    if m == 0 or np.all(np.diag(M) == 0):
        return 0.0, None
    u = np.array(s, dtype=F64)
    if np.all(M @ u == 0):
        j = int(np.argmax(np.diag(M)))  # argmax: the lowest index of the largest
        u = np.zeros(m)
        u[j] = 1.0
    for _ in range(T):
        w = M @ u
        u = w / np.linalg.norm(w)
    return float(u @ (M @ u)), u


def _nan_out(G: np.ndarray) -> np.ndarray:
    return np.full(G.shape[1], np.nan, dtype=G.dtype)


def dnc(G: np.ndarray, f: int = 0, niters: int = 5, b: int = 10000, c: float = 1.0, seed: int = 0,
        power_iters: int = 100) -> np.ndarray:
    n, d = G.shape
    rng = SplitMix64(seed)
    s = start_vector(rng, n)
    R = usable_rows(G)
    if not R:
        return _nan_out(G)
    keep = min(n - math.floor(c * f), len(R))
    X = G.astype(F64)
    I: set[int] | None = None
    for _ in range(niters):
        cols = list(range(d)) if b >= d else floyd(rng, d, b)
        Y = X[np.ix_(R, cols)]
        Y = Y - Y.mean(axis=0)
        lam, u = power(Y @ Y.T, s[R], power_iters)
        if u is None or lam <= 0:
            score = np.zeros(len(R))
        else:
            v = Y.T @ u / math.sqrt(lam)  # the top right singular vector
            score = (Y @ v) ** 2
        Ik = {R[a] for a in sorted(range(len(R)), key=lambda a: (score[a], a))[:keep]}
        if I is None:
            I = Ik
        elif I & Ik:
            I = I & Ik
    return _rnd(mean64(X[sorted(I)]), G.dtype)


def clipped_clustering(G: np.ndarray, f: int = 0, norm_history: str = "all", max_tau: float = math.inf,
                       linkage: str = "average", history: list[float] | None = None) -> np.ndarray:
    """history: the norms seen by earlier calls of the same Aggregator (extended in place)."""
    U = usable_rows(G)
    if not U:
        return _nan_out(G)
    X = G.astype(F64)
    norms = [float(np.linalg.norm(X[i])) for i in U]
    pool = norms
    if norm_history == "all" and history is not None:
        history.extend(norms)
        pool = history
    v = sorted(pool)
    k = len(v)
    tau = min(v[k // 2] if k % 2 else (v[k // 2 - 1] + v[k // 2]) / 2.0, max_tau)
    Y = [X[i] * (tau / nr) if nr > tau else X[i] for i, nr in zip(U, norms)]
    m = len(U)
    D = np.zeros((m, m))
    for a in range(m):
        for b2 in range(m):
            if a == b2:
                continue
            na, nb = np.linalg.norm(Y[a]), np.linalg.norm(Y[b2])
            sim = 0.0 if na == 0 or nb == 0 else float(Y[a] @ Y[b2]) / (na * nb)
            D[a, b2] = min(max(1.0 - sim, 0.0), 2.0)
    clusters = [[a] for a in range(m)]
    while len(clusters) > 2:
        best = None
        for p in range(len(clusters)):
            for q in range(p + 1, len(clusters)):
                vals = [D[a, b2] for a in clusters[p] for b2 in clusters[q]]
                link = min(vals) if linkage == "single" else sum(vals) / len(vals)
                key = (link, clusters[p][0], clusters[q][0])
                if best is None or key < best[0]:
                    best = (key, p, q)
        _, p, q = best
        clusters[p] = sorted(clusters[p] + clusters[q])
        del clusters[q]
        clusters.sort(key=lambda cl: cl[0])
    pick = max(clusters, key=lambda cl: (len(cl), -cl[0]))
    return _rnd(mean64(np.array([Y[a] for a in pick])), G.dtype)


def dnc_tie_outputs(G: np.ndarray, f: int = 0, rel: float = 1e-9) -> list[np.ndarray]:
    """DnC outputs when scores within `rel` of the keep boundary count as ties (mirror-image rows
    score equally in exact arithmetic, and the engine's centering from the distance matrix rounds
    differently from this reference's). Only for b >= d (every iteration selects the same set)."""
    n, d = G.shape
    rng = SplitMix64(0)
    s = start_vector(rng, n)
    R = usable_rows(G)
    if not R:
        return [_nan_out(G)]
    keep = min(n - f, len(R))
    X = G.astype(F64)
    Y = X[R] - X[R].mean(axis=0)
    lam, u = power(Y @ Y.T, s[R], 100)
    score = np.zeros(len(R)) if u is None or lam <= 0 else (Y @ (Y.T @ u / math.sqrt(lam))) ** 2
    order = sorted(range(len(R)), key=lambda a: (score[a], a))
    edge = score[order[keep - 1]]
    tol = rel * max(1.0, float(np.max(score)))
    sure = [a for a in order if score[a] < edge - tol]
    tied = [a for a in order if abs(score[a] - edge) <= tol]
    outs = []
    for extra in itertools.combinations(tied, keep - len(sure)):
        outs.append(_rnd(mean64(X[sorted(R[a] for a in sure + list(extra))]), G.dtype))
    return outs


def clipped_clustering_tie_outputs(G: np.ndarray, f: int = 0, rel: float = 1e-9,
                                   max_states: int = 20000) -> list[np.ndarray] | None:
    """Every output of a one-shot clipped clustering when linkage values within `rel` of the
    smallest count as ties (rounding may decide them: the engine updates linkages by
    Lance-Williams, this reference recomputes them) and when equal cluster sizes may go either
    way. Clusters are tracked as multisets of row classes (bitwise-equal clipped rows are one
    class), so duplicated rows do not multiply the search. None when more than max_states
    partitions would have to be visited."""
    U = usable_rows(G)
    if not U:
        return [_nan_out(G)]
    X = G.astype(F64)
    norms = [float(np.linalg.norm(X[i])) for i in U]
    v = sorted(norms)
    k = len(v)
    tau = v[k // 2] if k % 2 else (v[k // 2 - 1] + v[k // 2]) / 2.0
    Y = [X[i] * (tau / nr) if nr > tau else X[i] for i, nr in zip(U, norms)]
    keys = [y.tobytes() for y in Y]
    cls = [keys.index(kb) for kb in keys]  # class = first row with the same bytes
    m = len(U)
    D = np.zeros((m, m))
    for a in range(m):
        for b2 in range(m):
            if a != b2:
                na, nb = np.linalg.norm(Y[a]), np.linalg.norm(Y[b2])
                sim = 0.0 if na == 0 or nb == 0 else float(Y[a] @ Y[b2]) / (na * nb)
                D[a, b2] = min(max(1.0 - sim, 0.0), 2.0)
    outs: dict[bytes, np.ndarray] = {}
    seen: set = set()

    def canon(clusters):
        return tuple(sorted(tuple(sorted(cls[a] for a in cl)) for cl in clusters))

    def visit(clusters):
        c = canon(clusters)
        if c in seen:
            return True
        seen.add(c)
        if len(seen) > max_states:
            return False
        if len(clusters) <= 2:
            big = max(len(cl) for cl in clusters)
            for cl in clusters:
                if len(cl) == big:
                    out = _rnd(mean64(np.array([Y[a] for a in cl])), G.dtype)
                    outs[out.tobytes()] = out
            return True
        links = {}
        for p in range(len(clusters)):
            for q in range(p + 1, len(clusters)):
                vals = [D[a, b2] for a in clusters[p] for b2 in clusters[q]]
                links[p, q] = sum(vals) / len(vals)
        lo = min(links.values())
        for (p, q), link in links.items():
            if link <= lo + rel * max(1.0, lo):
                nxt = [cl for i, cl in enumerate(clusters) if i not in (p, q)] + [clusters[p] + clusters[q]]
                if not visit(nxt):
                    return False
        return True

    if not visit([[a] for a in range(m)]):
        return None
    return list(outs.values())


def smea_lambdas(G: np.ndarray, f: int) -> list[tuple[tuple[int, ...], float]]:
    """(subset, lambda) for every n-f subset, in itertools.combinations order."""
    n = G.shape[0]
    ok = set(usable_rows(G))
    X = G.astype(F64)
    out = []
    for S in itertools.combinations(range(n), n - f):
        if not set(S) <= ok:
            lam = math.inf
        else:
            Y = X[list(S)] - X[list(S)].mean(axis=0)
            lam = max(float(np.linalg.eigvalsh(Y @ Y.T / len(S))[-1]), 0.0)
        out.append((S, lam))
    return out


def smea_subset(G: np.ndarray, f: int) -> tuple[int, ...]:
    best, best_lam = None, math.inf
    for S, lam in smea_lambdas(G, f):
        if best is None or lam < best_lam:
            best, best_lam = S, lam
    return best


def smea(G: np.ndarray, f: int = 0, max_subsets: float = 1e6) -> np.ndarray:
    if math.comb(G.shape[0], f) > max_subsets:
        raise ValueError("smea: C(n, f) exceeds max_subsets")
    return _rnd(mean64(G[list(smea_subset(G, f))]), G.dtype)


def caf(G: np.ndarray, f: int = 0, power_iters: int = 100, seed: int = 0, _w_slack: float = 0.0,
        _lam_slack: float = 0.0) -> np.ndarray:
    """The spec's CAF. _w_slack and _lam_slack (tests only, default 0 = the spec) move the loop's
    `W > n - 2f` and the `lambda < best` comparisons by a relative amount: with them,
    :func:`tie_outputs` lists the results that rounding at an exact boundary may give."""
    n = G.shape[0]
    rng = SplitMix64(seed)
    s = start_vector(rng, n)
    R = usable_rows(G)
    if not R:
        return _nan_out(G)
    X = G.astype(F64)
    c = np.array([1.0 if i in R else 0.0 for i in range(n)])
    best, best_mu = math.inf, None
    while c.sum() > (n - 2 * f) * (1.0 + _w_slack):
        W = c.sum()
        A = [i for i in range(n) if c[i] > 0]
        p = c[A] / W
        mu = (c[A][:, None] * X[A]).sum(axis=0) / W
        Xc = X[A] - mu
        sq = np.sqrt(p)
        lam, u = power((sq[:, None] * Xc) @ (sq[:, None] * Xc).T, s[A], power_iters)
        if lam < (best if best == math.inf else best * (1.0 + _lam_slack)):
            best, best_mu = lam, mu
        if u is None or lam <= 0:
            break
        v = Xc.T @ (sq * u) / math.sqrt(lam)
        tau = (Xc @ v) ** 2
        if tau.max() == 0:
            break
        c[A] = c[A] * (1.0 - tau / tau.max())
    if best_mu is None:
        return _rnd(mean64(X[R]), G.dtype)
    return _rnd(best_mu, G.dtype)


def row_norm(x: np.ndarray, norm_order) -> float:
    x = x.astype(F64)
    if not np.all(np.isfinite(x)):
        return math.inf
    with np.errstate(over="ignore"):
        if not math.isfinite(float(np.sum(x * x))):
            return math.inf
    if norm_order in (math.inf, "inf"):
        return float(np.max(np.abs(x)))
    if norm_order == 1:
        return float(np.sum(np.abs(x)))
    return float(np.sqrt(np.sum(x * x)))


def zeroing(G: np.ndarray, f: int = 0, tau: float = 0.0, norm_order=math.inf, mode: str = "zero") -> np.ndarray:
    n = G.shape[0]
    ok = set(usable_rows(G))  # an unusable row is zeroed, even with tau = inf
    kept = [i for i in range(n) if i in ok and not row_norm(G[i], norm_order) > tau]
    X = G.astype(F64)
    total = X[kept].sum(axis=0) if kept else np.zeros(G.shape[1])
    if mode == "zero":
        return _rnd(total / n, G.dtype)
    return _rnd(total / len(kept) if kept else total, G.dtype)


def zeroing_pre(G: np.ndarray, f: int = 0, tau: float = 0.0, norm_order=math.inf) -> np.ndarray:
    out = G.copy()
    ok = set(usable_rows(G))
    for i in range(G.shape[0]):
        if i not in ok or row_norm(G[i], norm_order) > tau:
            out[i] = 0
    return out


# ------------------------------------------------------------- dispatch ---
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
    "dnc": dnc,
    "clipped-clustering": clipped_clustering,
    "smea": smea,
    "caf": caf,
    "zeroing": zeroing,
}

PRE = {"nnm": nnm, "bucketing": bucketing, "clipping": clipping, "zeroing": zeroing_pre}

# Parameters without a default (zeroing's threshold): what tests that sweep
# every rule pass (tau = 10 with the L-inf norm keeps the finite rows of the
# test data and zeroes the non-finite ones).
REQUIRED_PARAMS = {"zeroing": {"tau": 10.0}}
PRE_REQUIRED_PARAMS = {"zeroing": {"tau": 10.0}}

# Smallest n for f (the spec's bounds).
MIN_N = {
    "average": lambda f: 1,
    "average-nan": lambda f: 1,
    "median": lambda f: 1,
    "trimmed-mean": lambda f: 2 * f + 1,
    "averaged-median": lambda f: 2 * f + 1,
    "krum": lambda f: 2 * f + 3,
    "multi-krum": lambda f: 2 * f + 3,
    "bulyan": lambda f: 4 * f + 3,
    "bulyan-multikrum": lambda f: 4 * f + 3,
    "geometric-median": lambda f: 1,
    "centered-clipping": lambda f: 1,
    "mda": lambda f: 2 * f + 1,
    "dnc": lambda f: 2 * f + 1,
    "clipped-clustering": lambda f: 2 * f + 1,
    "smea": lambda f: 2 * f + 1,
    "caf": lambda f: 2 * f + 1,
    "zeroing": lambda f: 1,
}

ROBUST = [r for r in RULES if r != "average"]


def req(rule: str) -> dict:
    """The required parameters of `rule` (see REQUIRED_PARAMS), for tests that sweep every rule."""
    return dict(REQUIRED_PARAMS.get(rule, {}))


def pre_req(name: str) -> dict:
    return dict(PRE_REQUIRED_PARAMS.get(name, {}))


def tie_outputs(G: np.ndarray, rule: str, f: int = 0, rel: float = 1e-9) -> list[np.ndarray]:
    """Every output the spec allows for SMEA and CAF when exact ties meet rounding.

    SMEA: "selections can differ only between subsets whose lambda are within rounding", so the
    mean of every subset whose lambda is within `rel` of the smallest is allowed. CAF compares
    W = sum c against n - 2f and each lambda against the best so far; on integer inputs both often
    tie exactly, and either side of a tie is allowed (the four combinations of moving each
    comparison by -rel or +rel). DnC (b >= d): dnc_tie_outputs. Clipped clustering: see clipped_clustering_tie_outputs (None when
    the tie search is too large). Other rules: the reference output only."""
    G = np.asarray(G)
    if rule == "smea":
        lams = smea_lambdas(G, f)
        finite = [lam for _, lam in lams if math.isfinite(lam)]
        if not finite:
            return [smea(G, f)]
        lo = min(finite)
        tol = rel * max(1.0, max(finite))
        return [_rnd(mean64(G[list(S)]), G.dtype) for S, lam in lams if lam <= lo + tol]
    if rule == "caf":
        return [caf(G, f, _w_slack=ws, _lam_slack=ls) for ws in (-rel, rel) for ls in (-rel, rel)]
    if rule == "clipped-clustering":
        return clipped_clustering_tie_outputs(G, f, rel)
    if rule == "dnc" and G.shape[1] <= 10000:
        return dnc_tie_outputs(G, f, rel)
    return [aggregate(G, rule, f)]


def aggregate(G: np.ndarray, rule: str, f: int = 0, **params) -> np.ndarray:
    """Reference counterpart of :func:`pyagg.aggregate` (matrix input); required parameters
    not given take their REQUIRED_PARAMS test value."""
    G = np.asarray(G)
    return RULES[rule](G, f, **{**req(rule), **params})


def preaggregate(G: np.ndarray, name: str, f: int = 0, **params) -> np.ndarray:
    """Reference counterpart of :func:`pyagg.preaggregate`."""
    return PRE[name](np.asarray(G), f, **{**pre_req(name), **params})


class Aggregator:
    """Reference counterpart of :class:`pyagg.Aggregator` (state + pre chain)."""

    def __init__(self, rule: str, f: int = 0, pre: Sequence = (), **params):
        self.rule, self.f, self.params = rule, f, params
        self.pre = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in pre]
        self.state = None
        self.calls = 0
        self.history: list[float] = []  # clipped-clustering's norm history

    def aggregate(self, G: np.ndarray) -> np.ndarray:
        for name, p in self.pre:
            p = dict(p)
            if name == "bucketing":
                p["seed"] = p.get("seed", 0) + self.calls
            G = preaggregate(G, name, self.f, **p)
        params = dict(self.params)
        if self.rule == "centered-clipping":
            params["state"] = self.state
        if self.rule == "clipped-clustering":
            params["history"] = self.history
        out = aggregate(G, self.rule, self.f, **params)
        if self.rule == "centered-clipping":
            self.state = out.copy()
        self.calls += 1
        return out


# ------------------------------------------------------------ test data ---
def make_data(kind: str, n: int, d: int, dtype, seed: int = 0, bad: int = 0) -> np.ndarray:
    """Seeded (n, d) test gradients.

    kind: "random" (standard normal, a few rows scaled), "ties" (small
    integers: many equal values and equal distances), "nonfinite" (random,
    then `bad` rows corrupted by :func:`corrupt`, row 0 among them).
    """
    rng = np.random.default_rng(seed)
    if kind == "ties":
        G = rng.integers(-2, 3, size=(n, d)).astype(dtype)
    else:
        G = rng.standard_normal((n, d))
        G *= rng.choice([0.5, 1.0, 3.0], size=(n, 1))
        G = G.astype(dtype)
    if kind == "nonfinite":
        corrupt(G, bad, rng)
    return np.ascontiguousarray(G)


def corrupt(G: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Make k distinct rows non-finite (row 0 first), in place; return their indices.

    Patterns cycle over: NaN in some coordinates, +inf everywhere, -inf in
    some coordinates, NaN everywhere, a mix of NaN/+inf/-inf.
    """
    n, d = G.shape
    if k <= 0:
        return []
    rows = [0] + [int(i) for i in rng.choice(np.arange(1, n), size=k - 1, replace=False)]
    for t, i in enumerate(rows):
        some = rng.random(d) < 0.3
        some[rng.integers(d)] = True
        kind = t % 5
        if kind == 0:
            G[i, some] = np.nan
        elif kind == 1:
            G[i, :] = np.inf
        elif kind == 2:
            G[i, some] = -np.inf
        elif kind == 3:
            G[i, :] = np.nan
        else:
            G[i, :] = rng.choice([np.nan, np.inf, -np.inf], size=d)
    return rows
