"""The NumPy backend: the embedded default. Autodiff through the ``autograd`` package."""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Callable, Sequence

import numpy as np

from inertia.backend.base import Array, ArrayBackend

try:  # bfloat16 and friends, when installed (they come with jax and keras)
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    _ml_dtypes = None

_EXTRA_FLOATS = ("bfloat16",)


def _np_dtype(dtype: str) -> np.dtype:
    if dtype in _EXTRA_FLOATS:
        if _ml_dtypes is None:
            raise TypeError(f"dtype={dtype!r} on NumPy needs the `ml_dtypes` package.")
        return np.dtype(getattr(_ml_dtypes, dtype))
    return np.dtype(dtype)


class NumpyBackend(ArrayBackend):
    name = "numpy"

    def is_array(self, value: Any) -> bool:
        return isinstance(value, (np.ndarray, np.generic))

    def is_mutable_native(self, value: Any) -> bool:
        return isinstance(value, np.ndarray) and value.flags.writeable

    def dtype_name(self, value: Array) -> str:
        return np.asarray(value).dtype.name

    def is_floating(self, dtype: str) -> bool:
        if dtype in _EXTRA_FLOATS:
            return True
        try:
            return np.issubdtype(np.dtype(dtype), np.floating)
        except TypeError:
            return False

    def shape(self, value: Array) -> tuple[int, ...]:
        return tuple(np.shape(value))

    def asarray(self, value: Any, dtype: str | None = None, like: Array | None = None) -> Array:
        return np.array(value, dtype=None if dtype is None else _np_dtype(dtype), copy=True)

    def cast(self, value: Array, dtype: str) -> Array:
        target = _np_dtype(dtype)
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype == target:
            return value
        return np.asarray(value).astype(target)

    def zeros(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        return np.zeros(tuple(shape), dtype=_np_dtype(dtype))

    def empty(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        return np.empty(tuple(shape), dtype=_np_dtype(dtype))

    def scalar(self, value: Any, dtype: str, like: Array | None = None) -> Array:
        return np.asarray(value).astype(_np_dtype(dtype))[()]

    def copy(self, value: Array) -> Array:
        return np.array(value, copy=True)

    def to_numpy(self, value: Array) -> Any:
        return np.array(value, copy=True)

    def assign(self, target: Array, value: Array) -> Array:
        np.copyto(target, value, casting="unsafe")
        return target

    def sqrt(self, x: Array) -> Array:
        return np.sqrt(x)

    def square(self, x: Array) -> Array:
        return np.square(x)

    def sum(self, x: Array, keepdims: bool = False) -> Array:
        return np.sum(x, keepdims=keepdims)

    def maximum(self, x: Array, y: Any) -> Array:
        return np.maximum(x, y)

    def minimum(self, x: Array, y: Any) -> Array:
        return np.minimum(x, y)

    def clip(self, x: Array, low: Any, high: Any) -> Array:
        # np.clip promotes an ml_dtypes bfloat16 array to float32; the result keeps x's dtype.
        return np.clip(x, low, high).astype(x.dtype, copy=False)

    def where(self, condition: Array, x: Any, y: Any) -> Array:
        return np.where(condition, x, y)

    def all_finite(self, arrays: Sequence[Array]) -> bool:
        return all(bool(np.isfinite(a).all()) for a in arrays)

    def step_context(self) -> Any:
        return np.errstate(all="ignore")

    def kernel_address(self, value: Array, dtype: str) -> int | None:
        flags = value.flags if type(value) is np.ndarray else None
        if flags is None or value.dtype != _np_dtype(dtype) or not (flags.c_contiguous and flags.aligned and flags.writeable):
            return None
        return value.ctypes.data

    def kernel_operands(self, arrays: Sequence[Any], dtype: str, shapes: Sequence[tuple], writable: bool) -> list | None:
        # NumPy's own arrays only (subclasses and other libraries' buffers take the reference
        # path): the kernel reads each one's pointer, flags, dtype and shape itself.
        return list(arrays) if all(map(operator.is_, map(type, arrays), repeat(np.ndarray))) else None

    def value_and_grad(
        self, function: Callable[[list[Array]], Array], values: list[Array]
    ) -> tuple[Array, list[Array]]:
        from autograd import value_and_grad

        loss, grads = value_and_grad(function)(list(values))
        return loss, [np.asarray(g) for g in grads]


BACKEND = NumpyBackend()
