"""Scale-out on the engines people already run: torch.distributed (DDP, ZeRO, FSDP2) and
JAX sharding. inertia adds no communication engine of its own; it adds the two hooks an
optimizer needs to give a single process' numbers under them:

* **gradient aggregation**, a stage of every face that runs on real update steps only,
  after the accumulation mean and before clipping (``Optimizer.aggregate_gradients``, the
  torch face's ``aggregate=``). A :class:`GradientAggregator` is a ready-made one:
  :func:`inertia.distributed.torch.all_reduce_mean` (a torch.distributed group) and
  :func:`inertia.distributed.jax.pmean` (a named axis of ``shard_map`` / ``pmap``).
* **norms of sharded gradients**: clipping sums the local squared norms across the ranks
  that hold the other shards in one collective (``pipeline.SquaresReducer``), for ZeRO's
  partitions (``clip_group=``) and DTensor's local shards.

Backend modules (``torch``, ``jax``, ``dtensor``) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

__all__ = ["GradientAggregator", "every_gradient", "present_after"]

_BACKEND_MODULES = ("torch", "jax", "dtensor")


def __getattr__(name: str) -> Any:
    # `inertia.distributed.jax.pmean(...)` without importing the submodule first; importing
    # this package alone must not import torch or jax.
    if name in _BACKEND_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class GradientAggregator:
    """A gradient-aggregation stage: ``reduce(gradients) -> gradients``, one array in and
    out per gradient, in order. Called with a list of gradients (the torch face's
    ``aggregate=``) or of ``(gradient, variable)`` pairs (the Keras faces'
    ``aggregate_gradients``), it returns the same structure.

    Every rank must call it on every real update step with the same number of gradients,
    as any collective requires.
    """

    def reduce(self, gradients: list) -> list:  # pragma: no cover - the subclasses' work
        raise NotImplementedError

    def __call__(self, items: Sequence[Any]) -> list:
        items = list(items)
        pairs = bool(items) and all(isinstance(item, tuple) and len(item) == 2 for item in items)
        gradients = [item[0] for item in items] if pairs else items
        reduced = list(self.reduce(gradients))
        if len(reduced) != len(gradients):
            raise ValueError(
                f"{type(self).__name__}.reduce returned {len(reduced)} gradients for {len(gradients)}; "
                "an aggregator returns one gradient per gradient, in order."
            )
        return [(g, item[1]) for g, item in zip(reduced, items)] if pairs else reduced


def every_gradient(ops: Any, gradients: Sequence[Any], likes: Sequence[Any]) -> list:
    """What a face hands its aggregation stage: one gradient per variable, in the optimizer's
    order (zeros where this rank has none), then a presence vector (1 where it has one).

    Every rank thus aggregates lists of the same length and layout, whichever variables its
    batch reached (as DDP fills unused parameters' gradients with zeros), and the aggregated
    presence tells which variables some rank had a gradient for: the others are skipped, as
    one process skips a variable without a gradient. A stage that averages or sums keeps
    the presence's meaning.
    """
    import numpy as np

    full = [g if g is not None else ops.zeros(ops.shape(like), ops.dtype_name(like), like=like)
            for g, like in zip(gradients, likes)]
    flags = np.array([g is not None for g in gradients], dtype=ops.dtype_name(likes[0]) if likes else "float32")
    return full + [ops.asarray(flags, like=likes[0] if likes else None)]


def present_after(ops: Any, presence: Any) -> list:
    """Which variables some rank had a gradient for, from the aggregated presence vector."""
    return [bool(flag > 0) for flag in ops.to_numpy(presence).reshape(-1)]
