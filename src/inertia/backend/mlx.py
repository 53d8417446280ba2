"""The MLX backend: immutable ``mlx.core.array``s, so ``assign`` returns the new array.

MLX arrays, like JAX's, cannot be updated in place: the MLX face (``inertia.mlx.SGD``)
returns new parameter trees, as ``mlx.optimizers`` does. MLX evaluates lazily; values are
materialised when converted to NumPy.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np

from inertia.backend.base import Array, ArrayBackend

_FLOATING = {"float16", "bfloat16", "float32", "float64"}


def _mx_dtype(name: str) -> Any:
    dtype = getattr(mx, name, None)
    if not isinstance(dtype, mx.Dtype):
        raise TypeError(f"MLX has no dtype named {name!r}")
    return dtype


class MlxBackend(ArrayBackend):
    name = "mlx"

    def is_array(self, value: Any) -> bool:
        return isinstance(value, mx.array)

    def is_mutable_native(self, value: Any) -> bool:
        return False

    def dtype_name(self, value: Array) -> str:
        return str(value.dtype).rsplit(".", 1)[-1]

    def is_floating(self, dtype: str) -> bool:
        return dtype in _FLOATING

    def shape(self, value: Array) -> tuple[int, ...]:
        return tuple(value.shape)

    def asarray(self, value: Any, dtype: str | None = None, like: Array | None = None) -> Array:
        if not isinstance(value, mx.array):
            value = np.asarray(value)
            if value.dtype.kind in "OSUV":
                raise TypeError(f"Cannot make an MLX array of value={value!r} (dtype {value.dtype})")
            value = mx.array(value)
        return value.astype(_mx_dtype(dtype)) if dtype is not None else mx.array(value)

    def cast(self, value: Array, dtype: str) -> Array:
        if not isinstance(value, mx.array):
            value = mx.array(value)
        return value if self.dtype_name(value) == dtype else value.astype(_mx_dtype(dtype))

    def zeros(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        return mx.zeros(tuple(shape), dtype=_mx_dtype(dtype))

    def scalar(self, value: Any, dtype: str, like: Array | None = None) -> Array:
        return mx.array(value, dtype=_mx_dtype(dtype))

    def copy(self, value: Array) -> Array:
        return mx.array(value)

    def to_numpy(self, value: Array) -> Any:
        if self.dtype_name(value) == "bfloat16":  # NumPy cannot read MLX's bfloat16 buffer
            import ml_dtypes

            return np.array(value.astype(mx.float32)).astype(ml_dtypes.bfloat16)
        return np.array(value, copy=True)

    def assign(self, target: Array, value: Array) -> Array:
        return self.cast(value, self.dtype_name(target))

    def sqrt(self, x: Array) -> Array:
        return mx.sqrt(x)

    def square(self, x: Array) -> Array:
        return mx.square(x)

    def sum(self, x: Array, keepdims: bool = False) -> Array:
        return mx.sum(x, keepdims=keepdims)

    def maximum(self, x: Array, y: Any) -> Array:
        return mx.maximum(x, y)

    def minimum(self, x: Array, y: Any) -> Array:
        return mx.minimum(x, y)

    def clip(self, x: Array, low: Any, high: Any) -> Array:
        return mx.clip(x, low, high)

    def where(self, condition: Array, x: Any, y: Any) -> Array:
        return mx.where(condition, x, y)

    def all_finite(self, arrays: Sequence[Array]) -> bool:
        return all(bool(mx.all(mx.isfinite(a)).item()) for a in arrays)

    def value_and_grad(
        self, function: Callable[[list[Array]], Array], values: list[Array]
    ) -> tuple[Array, list[Array]]:
        loss, grads = mx.value_and_grad(function)(list(values))
        return loss, list(grads)


BACKEND = MlxBackend()
