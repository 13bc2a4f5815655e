"""pyagg for JAX: robust aggregation usable eagerly and inside ``jax.jit``.

::

    import jax, jax.numpy as jnp
    import pyagg.jax

    @jax.jit
    def step(G):                       # G: [n, d] (one row per worker)
        return pyagg.jax.aggregate(G, "krum", f=2)

    g = pyagg.jax.aggregate([g0, g1, g2, g3, g4, g5, g6], "median")   # same-shape arrays

The engine runs on the host through :func:`jax.pure_callback` with declared
output shapes (``[d]``, or the shape of one gradient for a list), so the call
traces, compiles and composes with the rest of a jitted step; XLA copies the
input to the host and the result back to the input's device. The rule, ``f``,
the parameters and the input's shape are checked when tracing (the engine's
messages), so a wrong call fails at ``jax.jit`` time, not inside XLA. The
aggregation has no gradient (do not differentiate through it). Under
``jax.vmap`` a batch of gradient sets is aggregated one set after the other.

:func:`pyagg.aggregate` on a traced JAX value calls this function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _ext
from .errors import InvalidArgumentError

__all__ = ["aggregate"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _pre_list(pre: Any, f: int) -> list[tuple[str, list[tuple[str, Any]]]]:
    if isinstance(pre, str) or (isinstance(pre, tuple) and len(pre) == 2 and isinstance(pre[1], Mapping)):
        pre = [pre]
    out = []
    for p in pre:
        if isinstance(p, str):
            out.append((p, []))
        elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], Mapping):
            out.append((p[0], [(str(k), v) for k, v in p[1].items()]))
        else:
            raise InvalidArgumentError(f"pre-aggregator must be a name or (name, params), got {p!r}")
    for name, params in out:
        _ext.Pre(name, f, params)  # validates the name and parameters now (trace time)
    return out


def aggregate(gradients: Any, rule: str, f: int = 0, *, pre: Sequence[Any] = (), **params: Any) -> Any:
    """Aggregate n gradients with a robust rule; works eagerly and under ``jax.jit``.

    Parameters
    ----------
    gradients : jax.Array or sequence of jax.Array
        ``[n, d]`` (one row per worker), or n arrays of one shape (each
        flattened; the result takes that shape). float32 or float64.
    rule, f, **params
        As for :func:`pyagg.aggregate`.
    pre : sequence
        Pre-aggregators applied first, each a name or ``(name, params)``
        (as for :class:`pyagg.Aggregator`; bucketing uses its fixed seed).

    Returns
    -------
    jax.Array
        ``[d]`` (or one gradient's shape), the input dtype.

    Raises
    ------
    pyagg.InvalidArgumentError
        Unknown rule or parameter, n below the rule's bound, d = 0, wrong
        rank or dtype: raised when tracing (or eagerly), with the engine's
        message.
    """
    import jax
    import jax.numpy as jnp

    from .api import aggregate as np_aggregate
    from .api import preaggregate as np_preaggregate

    if isinstance(f, bool) or not hasattr(f, "__index__"):
        raise InvalidArgumentError(f"f must be an integer, got {f!r}")
    f = int(f)
    plist = [(str(k), v) for k, v in params.items()]
    r = _ext.Rule(rule, f, plist)  # unknown rule / bad parameter: raised now
    pres = _pre_list(pre, f)

    out_shape: tuple[int, ...] | None = None
    if isinstance(gradients, (list, tuple)):
        if len(gradients) == 0:
            raise InvalidArgumentError("gradients: need at least one gradient, got n=0")
        arrs = [jnp.asarray(g) for g in gradients]
        for i, a in enumerate(arrs):
            if a.shape != arrs[0].shape or a.dtype != arrs[0].dtype:
                raise InvalidArgumentError(
                    f"gradients: gradients[0] is {arrs[0].shape} {arrs[0].dtype}, gradients[{i}] is {a.shape} {a.dtype}"
                )
        out_shape = tuple(arrs[0].shape)
        G = jnp.stack([a.reshape(-1) for a in arrs])
    else:
        G = jnp.asarray(gradients)
        if G.ndim != 2:
            raise InvalidArgumentError(f"gradients: expected a 2-D array (n, d), got shape {G.shape}")
    if np.dtype(G.dtype) not in _FLOATS:
        raise InvalidArgumentError(f"gradients: dtype must be float32 or float64, got {G.dtype}")
    n, d = int(G.shape[0]), int(G.shape[1])
    rows = n
    for name, pparams in pres:
        p = _ext.Pre(name, f, pparams)
        p.check(rows, d)
        rows = int(p.output_rows(rows))
    r.check(rows, d)  # n below the bound, d = 0: the engine's message, at trace time
    dtype = np.dtype(G.dtype)

    def host(g: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(g)  # XLA hands over a host buffer; usually already contiguous
        for name, pparams in pres:
            a = np_preaggregate(a, name, f, **dict(pparams))
        return np.asarray(np_aggregate(a, rule, f, **params), dtype=dtype)

    out = jax.pure_callback(host, jax.ShapeDtypeStruct((d,), dtype), G, vmap_method="sequential")
    return out.reshape(out_shape) if out_shape is not None else out
