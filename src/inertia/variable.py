"""``inertia.Variable``: a named, mutable holder of one array, like ``keras.Variable``."""

from __future__ import annotations

import itertools
import numbers
import threading
from typing import Any, Callable

from inertia import backend as backends
from inertia.backend.base import ArrayBackend

__all__ = ["Variable"]

_auto_name_lock = threading.Lock()
_auto_name_counters: dict[str, itertools.count] = {}


def _unique_name(base: str) -> str:
    """``variable``, ``variable_1``, ``variable_2``... per process, as Keras names them."""
    with _auto_name_lock:
        counter = _auto_name_counters.setdefault(base, itertools.count())
        index = next(counter)
    return base if index == 0 else f"{base}_{index}"


def _default_dtype(value: Any) -> str | None:
    """Keras' defaults for Python values: floats are float32, ints int32, bools bool."""
    probe = value
    while isinstance(probe, (list, tuple)) and probe:
        probe = probe[0]
    if isinstance(probe, bool):
        return "bool"
    if isinstance(probe, numbers.Integral):
        return "int32"
    if isinstance(probe, numbers.Real):
        return "float32"
    return None


@backends.opaque_to_autograph
class Variable:
    """A named, mutable array on one backend (NumPy, PyTorch, JAX or TensorFlow).

    ``Variable(1.0)`` holds a float32 scalar on the default backend (``$INERTIA_BACKEND``,
    NumPy unless set); an array initial value keeps its own library, device and dtype.
    On NumPy and PyTorch the storage is updated in place, so ``.value`` is a live view of
    the variable; on TensorFlow the value lives in a ``tf.Variable`` (``.value``), assigned
    in place, inside ``tf.function`` too; ``.numpy()`` returns a copy.

    Example:
        >>> import inertia
        >>> v = inertia.Variable([1.0, 2.0], name="w")
        >>> v.assign_sub([0.5, 0.5]).numpy()
        array([0.5, 1.5], dtype=float32)
    """

    def __init__(
        self,
        initial_value: Any,
        dtype: str | Any | None = None,
        name: str | None = None,
        trainable: bool = True,
        constraint: Callable[[Any], Any] | None = None,
        overwrite_with_gradient: bool = False,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(
                f"Argument `name` must be a non-empty string without '/'. Received: name={name!r}"
            )
        if constraint is not None and not callable(constraint):
            raise TypeError(f"Argument `constraint` must be callable. Received: constraint={constraint!r}")
        if isinstance(initial_value, Variable):
            initial_value = initial_value.value
        backend = backends.of(initial_value) or backends.default()
        if dtype is not None:
            dtype = _dtype_name(dtype)
        elif not backend.is_array(initial_value):
            dtype = _default_dtype(initial_value)
        try:
            value = backend.asarray(initial_value, dtype=dtype)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Argument `initial_value` cannot be made into an array: "
                f"initial_value={initial_value!r} ({error})"
            ) from None
        value = backend.holder(value, trainable=bool(trainable))
        self._init(backend, value, name or _unique_name("variable"), trainable)
        self.constraint = constraint
        self.overwrite_with_gradient = bool(overwrite_with_gradient)

    def _init(self, backend: ArrayBackend, value: Any, name: str, trainable: bool) -> None:
        self._backend = backend
        self._value = value
        self._name = name
        self._path = name
        self.trainable = bool(trainable)
        self.constraint = None
        self.overwrite_with_gradient = False
        self._aliases_native = False

    @classmethod
    def _alias(cls, native: Any, backend: ArrayBackend, name: str) -> "Variable":
        """A Variable over a user's mutable native array: writes go into that array."""
        variable = cls.__new__(cls)
        variable._init(backend, native, name, True)
        variable._aliases_native = True
        return variable

    # --- properties -------------------------------------------------------------------------
    @property
    def backend(self) -> ArrayBackend:
        return self._backend

    @property
    def value(self) -> Any:
        return self._value

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        return self._path

    @property
    def shape(self) -> tuple[int, ...]:
        return self._backend.shape(self._value)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> str:
        return self._backend.dtype_name(self._value)

    # --- mutation ---------------------------------------------------------------------------
    def assign(self, value: Any) -> "Variable":
        """Set the value (cast to this variable's dtype); shapes must match."""
        if isinstance(value, Variable):
            value = value.value
        if not self._backend.is_array(value):
            value = self._backend.asarray(value, dtype=self.dtype, like=self._value)
        if self._backend.shape(value) != self.shape:
            raise ValueError(
                f"The shape of the value must match the variable's shape in `assign`: "
                f"variable {self.path!r} has shape {self.shape}, received value of shape "
                f"{self._backend.shape(value)}."
            )
        self._value = self._backend.assign(self._value, value)
        return self

    def assign_add(self, value: Any) -> "Variable":
        return self.assign(self._value + _unwrap(value))

    def assign_sub(self, value: Any) -> "Variable":
        return self.assign(self._value - _unwrap(value))

    def numpy(self) -> Any:
        """A NumPy copy of the value."""
        return self._backend.to_numpy(self._value)

    # --- Python protocols -------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"<inertia.Variable path={self.path!r} shape={self.shape} dtype={self.dtype} "
            f"backend={self._backend.name} value={self.numpy()!r}>"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __float__(self) -> float:
        return float(self.numpy())

    def __int__(self) -> int:
        return int(self.numpy())

    def __bool__(self) -> bool:
        return bool(self.numpy())

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d Variable")
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        return self._value[index]

    def __neg__(self) -> Any:
        return -self._value

    def __pos__(self) -> Any:
        return +self._value

    def __abs__(self) -> Any:
        return abs(self._value)

    __hash__ = object.__hash__


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Variable) else value


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)  # numpy dtypes and scalar types
    if isinstance(name, str):
        return name
    if isinstance(dtype, type):
        import numpy as np

        return np.dtype(dtype).name
    text = str(dtype)  # torch.float32 -> "float32"
    return text.split(".")[-1]


def _binary(op: Callable[[Any, Any], Any], reflected: bool = False) -> Callable[[Variable, Any], Any]:
    if reflected:
        return lambda self, other: op(_unwrap(other), self._value)
    return lambda self, other: op(self._value, _unwrap(other))


def _install_operators() -> None:
    import operator

    for name, op in [
        ("add", operator.add),
        ("sub", operator.sub),
        ("mul", operator.mul),
        ("truediv", operator.truediv),
        ("floordiv", operator.floordiv),
        ("mod", operator.mod),
        ("pow", operator.pow),
        ("matmul", operator.matmul),
    ]:
        setattr(Variable, f"__{name}__", _binary(op))
        setattr(Variable, f"__r{name}__", _binary(op, reflected=True))
    for name in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(Variable, f"__{name}__", _binary(getattr(operator, name)))


_install_operators()


def _array_ufunc(self: Variable, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
    """NumPy ufuncs (``np.square(v)``, ``array + v``) see the value, never the object."""
    if "out" in kwargs:
        kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
    return getattr(ufunc, method)(*(_unwrap(x) for x in inputs), **kwargs)


Variable.__array_ufunc__ = _array_ufunc
