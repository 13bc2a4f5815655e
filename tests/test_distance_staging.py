"""Same bits whatever the rows' addresses (distance.cpp: TileView).

The exact distance kernel (n <= 32) reads a tile in place when every row's
slice starts on a 64-byte line, and otherwise (from 16 rows on, and for the
last, partial tile of d) copies it to an aligned scratch tile first. Staging
moves values, never lanes, so every output must be bitwise the same for the
same values at any address: here each input is placed on a 64-byte line and
then 1, 2 and 4 elements past one (numpy's own arrays sit 16 bytes past a
line), contiguous and as a list of separately allocated rows, and the rules
that use the distance pass (the exact kernel: geometric median, centered
clipping in coefficient space, nnm; the selection kernels: krum, multi-krum)
are compared with the on-line result byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyagg


def placed(values: np.ndarray, shift: int) -> np.ndarray:
    """A copy of `values` whose first element is `shift` elements past a 64-byte line."""
    item = values.dtype.itemsize
    buf = np.empty(values.size + 64 // item + shift + 1, dtype=values.dtype)
    start = (-buf.ctypes.data % 64) // item + shift
    out = buf[start : start + values.size].reshape(values.shape)
    out[...] = values
    assert (out.ctypes.data - shift * item) % 64 == 0
    return out


def row_list(values: np.ndarray, shift: int) -> list[np.ndarray]:
    """Each row separately allocated, the i-th (shift + i) % 5 elements past a line."""
    return [placed(values[i], (shift + i) % 5) for i in range(values.shape[0])]


CASES = [
    ("geometric-median", {}),
    ("centered-clipping", {"tau": 0.5, "L": 3}),
    ("krum", {"f": 1}),
    ("multi-krum", {"f": 1}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [5, 15, 16, 20, 32])
@pytest.mark.parametrize("d", [1, 33, 1024, 4112, 9001])
def test_same_bits_at_any_address(dtype, n, d):
    rng = np.random.default_rng(n * 100003 + d)
    values = rng.standard_normal((n, d)).astype(dtype)
    values[: n // 5] *= -3.0
    if d > 40:
        values[1, 17] = np.nan  # a non-finite row: D = +inf to it, in both layouts
    ref = {name: pyagg.aggregate(placed(values, 0), name, **kw) for name, kw in CASES}
    ref_nnm = pyagg.preaggregate(placed(values, 0), "nnm", f=2)
    for shift in (1, 2, 4):
        for layout in (placed(values, shift), row_list(values, shift)):
            for name, kw in CASES:
                got = pyagg.aggregate(layout, name, **kw)
                assert got.tobytes() == ref[name].tobytes(), (name, shift, type(layout))
            got = pyagg.preaggregate(layout, "nnm", f=2)
            assert np.asarray(got).tobytes() == np.asarray(ref_nnm).tobytes(), ("nnm", shift)


def test_staged_geometric_median_matches_reference():
    """The staged path's values, not only its agreement with the in-place one:
    GM on rows 16 bytes past a line against a float64 Weiszfeld iteration."""
    rng = np.random.default_rng(5)
    n, d = 20, 3001
    values = rng.standard_normal((n, d)).astype(np.float32)
    G = placed(values, 4)
    got = pyagg.aggregate(G, "geometric-median").astype(np.float64)
    X = values.astype(np.float64)
    z = X.mean(axis=0)
    for _ in range(200):
        w = 1.0 / np.maximum(1e-6, np.linalg.norm(X - z, axis=1))
        z_new = (w[:, None] * X).sum(axis=0) / w.sum()
        if np.linalg.norm(z_new - z) <= 1e-12 * np.linalg.norm(z):
            z = z_new
            break
        z = z_new
    assert np.linalg.norm(got - z) <= 1e-4 * np.linalg.norm(z)
