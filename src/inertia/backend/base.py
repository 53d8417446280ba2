"""The contract every array backend implements.

The optimizer, the rule and the gradient pipeline only ever call these methods and Python
operators (``+ - * /``) on arrays, so a new array library is one new module.
Dtypes are passed around as canonical names (``"float32"``, ``"bfloat16"``, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Sequence

Array = Any


class ArrayBackend(ABC):
    name: str
    #: Whether ``compile`` really compiles (the optimizer then runs eager steps compiled).
    compiles: bool = False
    #: Whether state is written in place even while a step is traced (TensorFlow's
    #: variables inside ``tf.function``): a traced branch then runs through ``branch``.
    holds_state_in_place: bool = False

    def __reduce__(self) -> tuple:
        # One instance per library: code compares backends with `is`, so a copy or an
        # unpickled optimizer must get the very same object back, not a clone.
        from inertia.backend import get

        return (get, (self.name,))

    # --- identity and dtypes -------------------------------------------------------------
    @abstractmethod
    def is_array(self, value: Any) -> bool:
        """Whether ``value`` is an array (or array scalar) of this library."""

    @abstractmethod
    def is_mutable_native(self, value: Any) -> bool:
        """Whether ``value`` is a native array the optimizer may update in place."""

    @abstractmethod
    def dtype_name(self, value: Array) -> str:
        """Canonical dtype name of an array."""

    @abstractmethod
    def is_floating(self, dtype: str) -> bool:
        """Whether a canonical dtype name is a real floating type."""

    @abstractmethod
    def shape(self, value: Array) -> tuple[int, ...]:
        """Shape as a tuple of ints."""

    # --- creation and conversion -------------------------------------------------------------
    @abstractmethod
    def asarray(self, value: Any, dtype: str | None = None, like: Array | None = None) -> Array:
        """A new array of ``value`` (copied), in ``dtype``, on ``like``'s device if given."""

    @abstractmethod
    def cast(self, value: Array, dtype: str) -> Array:
        """``value`` in ``dtype`` (no copy when it already is)."""

    @abstractmethod
    def zeros(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        """A zero-filled array."""

    def empty(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        """A new array whose values are about to be overwritten (zeros where a library has no
        uninitialised arrays)."""
        return self.zeros(shape, dtype, like=like)

    @abstractmethod
    def scalar(self, value: Any, dtype: str, like: Array | None = None) -> Array:
        """A 0-d value of ``dtype`` used as a hyperparameter in arithmetic with arrays."""

    @abstractmethod
    def copy(self, value: Array) -> Array:
        """An independent copy."""

    @abstractmethod
    def to_numpy(self, value: Array) -> Any:
        """A NumPy array holding a copy of the values."""

    def holder(self, value: Array, trainable: bool = False) -> Array:
        """Where a new piece of state (an optimizer slot or counter, an ``inertia.Variable``'s
        value) lives: ``value`` itself, or a mutable container of it (TensorFlow: a
        ``tf.Variable``, which a traced step assigns in place)."""
        return value

    def outside_trace(self) -> Any:
        """The context in which new state is made while a step is being traced (TensorFlow:
        the eager context around a ``tf.function``); a no-op elsewhere."""
        import contextlib

        return contextlib.nullcontext()

    def branch(self, flag: Any, if_true: Callable[[], None], if_false: Optional[Callable[[], None]]) -> None:
        """Run ``if_true`` or ``if_false`` on a traced ``flag``, for a backend whose state is
        written in place while traced (``holds_state_in_place``)."""
        raise NotImplementedError(f"The {self.name} backend selects traced branches by value.")

    # --- sparse gradients (TensorFlow's IndexedSlices) -------------------------------------------
    def is_sparse(self, value: Any) -> bool:
        """Whether ``value`` is a sparse gradient: some rows of a tensor, the rest zero."""
        return False

    def densify(self, value: Any) -> Array:
        """A sparse gradient as the dense array it stands for (rows named twice summed)."""
        return value

    def sparse_map(self, value: Any, function: Callable[[Array], Array]) -> Any:
        """A sparse gradient with ``function`` applied to its rows' values (same rows)."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    def sparse_problem(self, value: Any, shape: tuple) -> Optional[str]:
        """What is wrong with a sparse gradient for a variable of ``shape`` (rows of the
        wrong shape, indices that are not integers or name no row), or None; checked before a
        step changes anything (indices are read where they are concrete, not while traced)."""
        return None

    def sparse_values(self, value: Any) -> Array:
        """A sparse gradient's rows' values, as given (duplicates not summed)."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    def unique_rows(self, value: Any) -> tuple[Array, Array]:
        """``(values, indices)`` of a sparse gradient, each row named once (duplicates summed)."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    def gather_rows(self, x: Array, indices: Array) -> Array:
        """Rows ``indices`` of ``x``."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    def sparse_indices(self, value: Any) -> Array:
        """The rows a sparse gradient names, as given (a row may be named twice)."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    def add_rows(self, target: Array, indices: Array, rows: Array) -> Array:
        """``target`` with ``rows`` added to its rows ``indices``, each in turn (a row named
        twice gets both); returns the array that now holds it, as ``assign`` does."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    def assign_rows(self, target: Array, indices: Array, rows: Array) -> Array:
        """``target`` with rows ``indices`` set to ``rows`` (in place where the backend writes
        in place); returns the array that now holds it, as ``assign`` does."""
        raise NotImplementedError(f"The {self.name} backend has no sparse gradients.")

    # --- mutation ----------------------------------------------------------------------------
    @abstractmethod
    def assign(self, target: Array, value: Array) -> Array:
        """Write ``value`` into ``target``; return the array that now holds the value.

        Mutable libraries write in place and return ``target``; immutable ones return the
        new array (cast to ``target``'s dtype).
        """

    # --- math used by the gradient pipeline ----------------------------------------------------
    @abstractmethod
    def sqrt(self, x: Array) -> Array: ...

    @abstractmethod
    def square(self, x: Array) -> Array: ...

    @abstractmethod
    def sum(self, x: Array, keepdims: bool = False) -> Array: ...

    @abstractmethod
    def maximum(self, x: Array, y: Any) -> Array: ...

    @abstractmethod
    def minimum(self, x: Array, y: Any) -> Array: ...

    @abstractmethod
    def clip(self, x: Array, low: Any, high: Any) -> Array: ...

    @abstractmethod
    def where(self, condition: Array, x: Any, y: Any) -> Array: ...

    def add(self, y: Array, x: Array) -> Array:
        """``y + x``, elementwise; a backend may phrase it differently for speed, with the same bits."""
        return y + x

    @abstractmethod
    def all_finite(self, arrays: Sequence[Array]) -> bool:
        """Whether every element of every array is finite (a host bool)."""

    def is_traced(self, value: Any) -> bool:
        """Whether ``value`` is abstract (traced by a compiler): no Python branching on it."""
        return False

    def finite_flag(self, arrays: Sequence[Array]) -> Any:
        """Whether every element is finite: a host bool, or a 0-d bool array when traced."""
        return self.all_finite(arrays)

    def compile(self, function: Callable, donate_argnums: tuple = ()) -> Callable:
        """``function`` compiled for this backend (``jax.jit``, the arguments at
        ``donate_argnums`` donated); identity where eager is best."""
        return function

    def colocated(self, arrays: Sequence[Array]) -> list:
        """``arrays`` with those free to move (JAX: uncommitted, on the default device) put
        where the others are spread (replicated over their mesh), so that a compiled step
        sees its state placed as it will keep it; the same arrays by default."""
        return list(arrays)

    def placements(self, arrays: Sequence[Array]) -> Any:
        """Where each of ``arrays`` lives, as a hashable value a compiled step is keyed on
        (JAX: the shardings); None where placement never changes a compiled step."""
        return None

    def spans_devices(self, placements: Any) -> bool:
        """Whether any array of ``placements`` is spread over several devices (then a
        compiled step declines fused operations that cannot be partitioned)."""
        return False

    def keep_placements(self, values: Sequence[Array], placements: Any) -> list:
        """Inside a compiled function: ``values`` placed as ``placements`` say (the inputs'
        placements, so that donated state keeps its sharding); identity by default."""
        return list(values)

    def are_native(self, arrays: Sequence[Any]) -> bool:
        """Whether every one of ``arrays`` is this backend's own array type (part of the cheap
        check that lets a compiled step run again without the full validation; a compiled
        step checks shapes and dtypes itself)."""
        return False

    def kernel_address(self, value: Array, dtype: str) -> int | None:
        """The address of ``value``'s memory for the fused CPU kernels (``inertia.kernels``):
        a C-contiguous, aligned, writable host array of ``dtype``; None when it is not one
        (the optimizer then takes the reference path)."""
        return None

    def kernel_operands(self, arrays: Sequence[Any], dtype: str, shapes: Sequence[tuple], writable: bool) -> list | None:
        """``arrays`` as the host kernel takes them, checked again at every step: arrays it
        checks itself (NumPy: data pointer, flags, dtype and shape are read in C), or the
        addresses of arrays checked here (type, host memory, dtype, shape, strides, sign
        bits, and writability when ``writable``); None if any does not fit."""
        return None

    def kernel_shards(self, lists: Sequence[Optional[Sequence[Any]]]) -> Optional[tuple[list, Any]]:
        """The arrays the host kernel writes for a step's ``lists`` (weights first; None where
        a list is absent) and their layout: the lists themselves and None for whole arrays;
        each sharded array's local shard and the shards' layout for a backend whose arrays
        may be distributed (torch's DTensor); None when the shards do not line up."""
        return list(lists), None

    def squares_reducer(self, arrays: Sequence[Array]) -> Optional[Callable[[list], list]]:
        """How clipping sums the squared norms of ``arrays`` across the ranks holding their
        other shards (an :data:`inertia.pipeline.SquaresReducer`, one collective for the
        list); None for whole arrays."""
        return None

    def kernel_wrote(self, arrays: Sequence[Any]) -> None:
        """Record that the host kernel wrote ``arrays`` in place (torch: bump their autograd
        version counters, as torch's own in-place operations do)."""

    def step_context(self) -> Any:
        """The context an optimizer step runs in: no autograd recording (torch), and no
        warnings for overflow / division by zero / NaN (NumPy): non-finite gradients are
        data, not bugs, and Keras lets them flow silently."""
        import contextlib

        return contextlib.nullcontext()

    # --- autodiff ----------------------------------------------------------------------------
    @abstractmethod
    def value_and_grad(
        self, function: Callable[[list[Array]], Array], values: list[Array]
    ) -> tuple[Array, list[Array]]:
        """The value of ``function(values)`` and its gradient with respect to each value."""
