"""Data shards (iid or non-iid Dirichlet) and reproducible mini-batches.

Every process computes the same shards from the same seed; a worker only
ever reads its own shard. Mini-batches are a pure function of (seed, worker,
step), so a run resumed from a checkpoint draws the very batches it would
have drawn without the interruption.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_shards", "batch_indices", "BatchSampler", "shard_summary"]


def make_shards(
    y: np.ndarray,
    n_workers: int,
    mode: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 8,
) -> list[np.ndarray]:
    """Split the training set between ``n_workers``.

    Parameters
    ----------
    y : numpy.ndarray
        Training labels (class ids; for regression targets, ``mode`` must be iid).
    n_workers : int
        Number of workers.
    mode : {"iid", "dirichlet"}
        ``iid``: a random permutation cut into equal parts. ``dirichlet``: for
        each class, the class's examples are divided between the workers in
        proportions drawn from Dirichlet(alpha) (Hsu et al. 2019): small alpha
        = each worker sees few classes.
    alpha : float
        Dirichlet concentration (``mode="dirichlet"``).
    seed : int
        Shuffling seed.
    min_size : int
        Dirichlet splits are redrawn (up to 100 times) until every worker has at
        least this many examples.

    Returns
    -------
    list of numpy.ndarray
        ``n_workers`` sorted int64 index arrays, disjoint, covering the set.
    """
    n = len(y)
    if n_workers < 1:
        raise ValueError(f"need at least one worker, got {n_workers}")
    if n < n_workers:
        raise ValueError(f"cannot split {n} examples between {n_workers} workers")
    rng = np.random.default_rng([int(seed), 7919])
    if mode == "iid":
        perm = rng.permutation(n)
        return [np.sort(p) for p in np.array_split(perm, n_workers)]
    if mode != "dirichlet":
        raise ValueError(f"shard mode must be 'iid' or 'dirichlet', got {mode!r}")
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise ValueError("dirichlet shards need integer class labels")
    classes = np.unique(y)
    min_size = min(int(min_size), n // n_workers)
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_workers, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for w, chunk in enumerate(np.split(idx, cuts)):
                parts[w].append(chunk)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            return shards
    raise ValueError(
        f"could not draw a Dirichlet(alpha={alpha}) split giving every one of {n_workers} workers "
        f">= {min_size} examples; raise alpha"
    )


def batch_indices(shard: np.ndarray, batch_size: int, seed: int, worker: int, step: int) -> np.ndarray:
    """The mini-batch of ``worker`` at ``step``: ``batch_size`` indices of its shard.

    Epochs of the shard in a random order (a pure function of seed, worker and
    epoch); a shard smaller than a batch is sampled with replacement. A pure
    function of its arguments (see :class:`BatchSampler` for the cached form).
    """
    return BatchSampler(shard, batch_size, seed, worker).indices(step)


class BatchSampler:
    """Mini-batches of one worker: ``indices(step)``, the same as :func:`batch_indices`.

    Caches the permutation of the current epoch, so consecutive steps cost a slice.
    """

    def __init__(self, shard: np.ndarray, batch_size: int, seed: int, worker: int):
        self.shard = np.asarray(shard)
        self.b = int(batch_size)
        self.seed, self.worker = int(seed), int(worker)
        self.per_epoch = len(self.shard) // self.b
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def indices(self, step: int) -> np.ndarray:
        if self.per_epoch == 0:  # shard smaller than a batch
            rng = np.random.default_rng([self.seed, self.worker, int(step), 104729])
            return self.shard[rng.integers(0, len(self.shard), self.b)]
        epoch, k = divmod(int(step), self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, self.worker, epoch, 104723])
            self._perm = rng.permutation(len(self.shard))
            self._epoch = epoch
        return self.shard[self._perm[k * self.b : (k + 1) * self.b]]


def shard_summary(y: np.ndarray, shards: list[np.ndarray], num_classes: int | None) -> list[dict]:
    """Size and (for classification) class histogram of each shard."""
    out = []
    for s in shards:
        item: dict = {"size": int(len(s))}
        if num_classes:
            item["classes"] = np.bincount(y[s].astype(np.int64), minlength=num_classes).tolist()
        out.append(item)
    return out
