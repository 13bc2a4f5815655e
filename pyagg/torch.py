"""pyagg for PyTorch: aggregate per-worker gradients into a module's ``.grad``.

Any ``torch.optim`` optimizer then steps with the robust aggregate::

    import pyagg.torch as pt

    agg = pt.GradientAggregator(model, "krum", f=1, pre=["nnm"])
    for step in ...:
        grads = []
        for batch in worker_batches:             # or: one gradient per process, all-gathered
            opt.zero_grad()
            loss_fn(model(batch.x), batch.y).backward()
            grads.append(pt.flat_grad(model))    # a detached copy, one flat vector
        agg.step(grads)                          # writes the aggregate into every p.grad
        opt.step()

Per-worker gradients may be an ``[n, d]`` tensor, a list of n flat tensors,
or a list of n lists of per-parameter tensors (``[p.grad for p in params]``
as each worker produced them). Parameters are taken in
``module.parameters()`` order, those with ``requires_grad`` only; a missing
``.grad`` counts as zeros. The aggregation runs where the gradients are
(CPU, or the GPU for CUDA tensors with a CUDA build); the result is written
in each parameter's dtype and device. The engine itself is not
differentiable: these helpers work on detached gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .api import Aggregator
from .errors import InvalidArgumentError

__all__ = ["GradientAggregator", "aggregate_into", "flat_grad", "write_flat_grad", "trainable"]


def trainable(module_or_params: torch.nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters that take a gradient, in a fixed order."""
    params = module_or_params.parameters() if isinstance(module_or_params, torch.nn.Module) else module_or_params
    out = [p for p in params if p.requires_grad]
    if not out:
        raise InvalidArgumentError("no parameter with requires_grad=True")
    return out


def flat_grad(module_or_params: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The current ``.grad`` of every trainable parameter, as one new flat tensor (zeros for None)."""
    params = trainable(module_or_params)
    dtype = dtype or params[0].dtype
    parts = [
        (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params
    ]
    return torch.cat(parts)


def write_flat_grad(module_or_params: Any, flat: torch.Tensor) -> None:
    """Write a flat gradient (as :func:`flat_grad` lays it out) into each parameter's ``.grad``."""
    params = trainable(module_or_params)
    total = sum(p.numel() for p in params)
    if flat.ndim != 1 or flat.numel() != total:
        raise InvalidArgumentError(f"flat gradient has shape {tuple(flat.shape)}, the parameters need ({total},)")
    off = 0
    with torch.no_grad():
        for p in params:
            k = p.numel()
            g = flat[off:off + k].view(p.shape).to(device=p.device, dtype=p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            off += k


def _stack(worker_grads: Any, params: list[torch.Tensor]) -> torch.Tensor:
    """Per-worker gradients -> one contiguous, detached [n, d] tensor."""
    total = sum(p.numel() for p in params)
    if isinstance(worker_grads, torch.Tensor):
        G = worker_grads.detach()
        if G.ndim != 2 or G.shape[1] != total:
            raise InvalidArgumentError(f"worker gradients have shape {tuple(G.shape)}, expected (n, {total})")
        return G.contiguous()
    if not isinstance(worker_grads, Sequence) or len(worker_grads) == 0:
        raise InvalidArgumentError("worker gradients: need an (n, d) tensor or a non-empty list (one entry per worker)")
    rows = []
    for i, w in enumerate(worker_grads):
        if isinstance(w, torch.Tensor):
            row = w.detach().reshape(-1)
        else:
            w = list(w)
            if len(w) != len(params):
                raise InvalidArgumentError(
                    f"worker {i} gave {len(w)} gradients, the module has {len(params)} trainable parameters"
                )
            for j, (g, p) in enumerate(zip(w, params)):
                if g is not None and tuple(g.shape) != tuple(p.shape):
                    raise InvalidArgumentError(
                        f"worker {i}, parameter {j}: gradient shape {tuple(g.shape)} "
                        f"!= parameter shape {tuple(p.shape)}"
                    )
            row = torch.cat([
                (g.detach() if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(w, params)
            ])
        if row.numel() != total:
            raise InvalidArgumentError(f"worker {i} gave {row.numel()} gradient values, the parameters have {total}")
        rows.append(row)
    dtype = rows[0].dtype
    return torch.stack([r.to(dtype) for r in rows]).contiguous()


class GradientAggregator:
    """A robust rule (with pre-aggregators and state) bound to a module's parameters.

    Parameters
    ----------
    module : torch.nn.Module or iterable of parameters
    rule, f, pre, **params
        As for :class:`pyagg.Aggregator` (stateful rules keep their state across steps).
    """

    def __init__(self, module: Any, rule: str, f: int = 0, pre: Sequence[Any] = (), **params: Any):
        self.params = trainable(module)
        self.aggregator = Aggregator(rule, f, pre, **params)

    def aggregate(self, worker_grads: Any) -> torch.Tensor:
        """The aggregate of per-worker gradients, flat (does not touch ``.grad``)."""
        return self.aggregator(_stack(worker_grads, self.params))

    def step(self, worker_grads: Any) -> torch.Tensor:
        """Aggregate and write the result into every parameter's ``.grad``; returns the flat aggregate."""
        g = self.aggregate(worker_grads)
        write_flat_grad(self.params, g)
        return g

    def reset(self) -> None:
        """Forget the rule's state (see :meth:`pyagg.Aggregator.reset`)."""
        self.aggregator.reset()


def aggregate_into(module: Any, worker_grads: Any, rule: str, f: int = 0, *, pre: Sequence[Any] = (),
                   **params: Any) -> torch.Tensor:
    """One-shot :meth:`GradientAggregator.step` (a stateless use of a rule)."""
    return GradientAggregator(module, rule, f, pre, **params).step(worker_grads)
