"""Gradient aggregation over a named axis of ``shard_map`` / ``pmap`` (JAX).

Data parallelism in JAX runs one copy of the step per device inside ``jax.shard_map``
(or ``jax.pmap``), each on its own batch. :func:`pmean` is the aggregation stage that turns
each device's gradients into their mean over the named axis, with one ``jax.lax.pmean``
for the whole list, so that every device then clips and updates with the same gradients
and keeps the same weights, as one process on the whole batch would.

It is meant for ``stateless_apply`` traced inside ``shard_map`` / ``pmap``, where the
optimizer's ``aggregate_gradients`` stage is traced with the step. Outside a context that
binds the axis name, ``jax.lax.pmean`` has nothing to reduce over, and the call fails.

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import PartitionSpec as P
    >>> from inertia.distributed.jax import pmean
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))  # one device here; one per replica in use
    >>> per_device = jnp.arange(4.0).reshape(1, 4)
    >>> mean = jax.shard_map(lambda g: pmean("data").reduce([g])[0], mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    >>> np.asarray(mean(per_device)).tolist()
    [[0.0, 1.0, 2.0, 3.0]]
"""

from __future__ import annotations

from typing import Union

import jax

from inertia.distributed import GradientAggregator

__all__ = ["PMean", "pmean"]

AxisName = Union[str, tuple]


def _check_axis_name(axis_name: object) -> AxisName:
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise TypeError(
            "Argument `axis_name` must be the name of a shard_map / pmap axis (a non-empty str) "
            f"or a non-empty tuple of such names. Received: axis_name={axis_name!r}"
        )
    return axis_name  # type: ignore[return-value]


class PMean(GradientAggregator):
    """Averages gradients over the devices of ``axis_name`` (``jax.lax.pmean``).

    Example:
        >>> from inertia.distributed.jax import PMean
        >>> PMean("data").axis_name
        'data'
    """

    def __init__(self, axis_name: AxisName) -> None:
        self.axis_name = _check_axis_name(axis_name)

    def reduce(self, gradients: list) -> list:
        """Each gradient's mean over the axis' devices, in order (None stays None)."""
        try:
            # One call on the list: JAX issues the collectives of the whole list together
            # (None, a missing gradient, is an empty subtree and passes through).
            return list(jax.lax.pmean(list(gradients), self.axis_name))
        except NameError as error:  # JAX's "unbound axis name"
            raise ValueError(
                f"pmean(axis_name={self.axis_name!r}) must run where that axis is bound: inside "
                "jax.shard_map / jax.pmap over a mesh axis of that name (e.g. `stateless_apply` "
                f"traced there). JAX said: {error}"
            ) from None

    def __repr__(self) -> str:
        return f"pmean({self.axis_name!r})"


def pmean(axis_name: AxisName) -> PMean:
    """The aggregation stage that averages gradients over ``axis_name`` (a ``shard_map`` /
    ``pmap`` axis, or a tuple of them): attach it with
    ``optimizer.aggregate_gradients = inertia.distributed.jax.pmean("data")``.

    Example:
        >>> from inertia.distributed.jax import pmean
        >>> pmean("data")
        pmean('data')
    """
    return PMean(axis_name)
