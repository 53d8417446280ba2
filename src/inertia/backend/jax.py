"""The JAX backend: immutable arrays, so ``assign`` returns the new array.

JAX arrays cannot be updated in place: hold them in ``inertia.Variable``s, or use
``Optimizer.stateless_apply`` (pure and traceable) inside ``jax.jit``. float64 needs
``jax.config.update("jax_enable_x64", True)``, as everywhere in JAX.

Sharded arrays (a ``NamedSharding`` over several devices) keep their sharding: an array
made ``like=`` one (a slot, a loaded checkpoint value) is laid out as it is, a scalar or
an array of another shape (a counter) is replicated over its mesh, and inertia's compiled
step gives back every array placed as it came in (:meth:`JaxBackend.keep_placements`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from inertia.backend.jax import BACKEND
    >>> weights = jax.device_put(jnp.ones(4), jax.devices()[0])
    >>> BACKEND.zeros((4,), "float32", like=weights).sharding == weights.sharding
    True
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from inertia.backend.base import Array, ArrayBackend

_FLOATING = {"float16", "bfloat16", "float32", "float64"}


def _placement_like(like: Any, shape: Sequence[int]) -> Any:
    """Where a new array of ``shape`` made ``like=`` a concrete array spread over several
    devices goes: ``like``'s own sharding for its shape (a slot sharded as its parameter),
    replicated over its mesh for any other shape (a counter, a scalar), so that every array
    of an optimizer's step lives on the same devices. None (JAX's default device, as for
    single-device arrays) otherwise: a traced ``like`` has no placement to copy, and a
    multi-device sharding without a mesh has no replicated form to give."""
    if not isinstance(like, jax.Array) or isinstance(like, jax.core.Tracer):
        return None
    sharding = like.sharding
    if len(sharding.device_set) < 2:
        return None
    if tuple(shape) == like.shape:
        return sharding
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    return None


def _constrained(value: Any, sharding: Any) -> Any:
    """``value`` (traced) laid out as ``sharding``: a constraint on XLA's choice over a mesh
    of automatic axes; over explicit axes (sharding in the type) ``reshard``, as JAX
    requires there."""
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and jax.sharding.AxisType.Explicit in tuple(getattr(mesh, "axis_types", ())):
        return jax.sharding.reshard(value, sharding)
    return jax.lax.with_sharding_constraint(value, sharding)


def _placed(value: Any, placement: Any) -> Any:
    return value if placement is None else jax.device_put(value, placement)


class JaxBackend(ArrayBackend):
    name = "jax"
    compiles = True

    def is_array(self, value: Any) -> bool:
        return isinstance(value, jax.Array)

    def is_mutable_native(self, value: Any) -> bool:
        return False

    def is_traced(self, value: Any) -> bool:
        """Whether ``value`` is abstract (inside ``jax.jit``): no Python branching on it."""
        return isinstance(value, jax.core.Tracer)

    def dtype_name(self, value: Array) -> str:
        return jnp.asarray(value).dtype.name

    def is_floating(self, dtype: str) -> bool:
        return dtype in _FLOATING

    def shape(self, value: Array) -> tuple[int, ...]:
        return tuple(jnp.shape(value))

    def asarray(self, value: Any, dtype: str | None = None, like: Array | None = None) -> Array:
        if not isinstance(value, jax.Array):
            value = np.asarray(value)
            if value.dtype.kind in "OSUV" and value.dtype.name != "bfloat16":
                raise TypeError(f"Cannot make a JAX array of value={value!r} (dtype {value.dtype})")
        if dtype in ("int64", "uint64"):
            # A 64-bit counter (tf.keras' int64 `iter`) is 32-bit where JAX runs without x64:
            # asked for directly, so that JAX does not warn about a truncation inertia chose.
            dtype = jax.dtypes.canonicalize_dtype(dtype).name
        array = jnp.array(value, dtype=dtype, copy=True)
        return array if like is None else _placed(array, _placement_like(like, array.shape))

    def cast(self, value: Array, dtype: str) -> Array:
        value = jnp.asarray(value)
        return value if value.dtype.name == dtype else value.astype(dtype)

    def zeros(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        placement = None if like is None else _placement_like(like, shape)
        return jnp.zeros(tuple(shape), dtype=dtype, device=placement)

    def scalar(self, value: Any, dtype: str, like: Array | None = None) -> Array:
        return _placed(jnp.asarray(value, dtype=dtype), None if like is None else _placement_like(like, ()))

    def copy(self, value: Array) -> Array:
        return jnp.array(value, copy=True)

    def to_numpy(self, value: Array) -> Any:
        return np.array(value, copy=True)

    def assign(self, target: Array, value: Array) -> Array:
        return jnp.asarray(value, dtype=target.dtype)

    def sqrt(self, x: Array) -> Array:
        return jnp.sqrt(x)

    def square(self, x: Array) -> Array:
        return jnp.square(x)

    def sum(self, x: Array, keepdims: bool = False) -> Array:
        return jnp.sum(x, keepdims=keepdims)

    def maximum(self, x: Array, y: Any) -> Array:
        return jnp.maximum(x, y)

    def minimum(self, x: Array, y: Any) -> Array:
        return jnp.minimum(x, y)

    def clip(self, x: Array, low: Any, high: Any) -> Array:
        return jnp.clip(x, low, high)

    def where(self, condition: Array, x: Any, y: Any) -> Array:
        return jnp.where(condition, x, y)

    def add(self, y: Array, x: Array) -> Array:
        # Bitwise y + x (x * -1 is exact, and y - (-x) is y + x in IEEE arithmetic). XLA:CPU
        # runs a fusion made of one add about twice as slowly as a multiply-subtract one, and
        # the momentum step's `w + v` is such a fusion: phrased so, a jitted ResNet-50 step
        # takes 15 ms instead of 29 on a 2-core CPU.
        return y - x * -1

    def all_finite(self, arrays: Sequence[Array]) -> bool:
        return all(bool(jnp.isfinite(a).all()) for a in arrays)

    def finite_flag(self, arrays: Sequence[Array]) -> Any:
        flags = [jnp.all(jnp.isfinite(a)) for a in arrays]
        flag = jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)
        return flag if self.is_traced(flag) else bool(flag)

    def compile(self, function: Callable, donate_argnums: tuple = ()) -> Callable:
        return jax.jit(function, donate_argnums=donate_argnums)

    def colocated(self, arrays: Sequence[Array]) -> list:
        # Counters made before the variables were known (INERTIA_BACKEND=jax) sit on the
        # default device, uncommitted: replicated over the variables' mesh once, here, the
        # first step's program is the one every later step repeats.
        mesh = next((a.sharding.mesh for a in arrays if isinstance(a.sharding, NamedSharding) and len(a.sharding.device_set) > 1), None)
        if mesh is None:
            return list(arrays)
        replicated = NamedSharding(mesh, PartitionSpec())
        return [a if a.committed or len(a.sharding.device_set) > 1 else jax.device_put(a, replicated) for a in arrays]

    def placements(self, arrays: Sequence[Array]) -> tuple:
        """Each array's sharding (hashable; compared at every repeat of a compiled step)."""
        return tuple(a.sharding for a in arrays)

    def spans_devices(self, placements: Any) -> bool:
        return placements is not None and any(len(p.device_set) > 1 for p in placements)

    def keep_placements(self, values: Sequence[Array], placements: Any) -> list:
        """Inside a compiled step: each value constrained to the sharding its input had where
        that spans several devices (XLA's propagation could otherwise pick another, e.g.
        replicate a slot reset to zeros); single-device values are left to XLA."""
        if placements is None:
            return list(values)
        return [_constrained(v, p) if len(p.device_set) > 1 else v for v, p in zip(values, placements)]

    def are_native(self, arrays: Sequence[Any]) -> bool:
        return all(map(isinstance, arrays, repeat(jax.Array)))

    def value_and_grad(
        self, function: Callable[[list[Array]], Array], values: list[Array]
    ) -> tuple[Array, list[Array]]:
        loss, grads = jax.value_and_grad(function)(list(values))
        return loss, list(grads)


BACKEND = JaxBackend()
