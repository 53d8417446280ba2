"""The TensorFlow backend: ``tf.Variable`` targets updated with ``assign``, ``tf.Tensor``
gradients, ``tf.GradientTape`` for ``minimize``, and steps that run inside ``tf.function``.

State lives in ``tf.Variable``s (:meth:`TensorflowBackend.holder`): the optimizer's
counters and slots, and the value of an ``inertia.Variable`` made from a TF value. Inside a
``tf.function`` a step is traced once into the graph: counters are read from their
variables (so a changed learning rate or a new step count never retraces), and the
optimizer's branches (accumulation micro-steps, the EMA overwrite, a loss-scale skip)
become ``tf.cond`` (:meth:`TensorflowBackend.branch`). New state made during a trace (the
first step builds the optimizer) is created outside the graph, as tf.keras does, so the
function may be traced once and called for good.

Arithmetic is TensorFlow's own; values are converted from Python and NumPy numbers exactly
as the NumPy backend converts them, so eager steps give NumPy's bits (schedules with
``cos`` / ``pow`` / ``log`` use TensorFlow's, as Keras 3 on TensorFlow does).

Example:
    >>> import tensorflow as tf, inertia
    >>> w = tf.Variable([1.0, 2.0])
    >>> opt = inertia.SGD(learning_rate=0.5)
    >>> opt.apply([tf.constant([1.0, 6.0])], [w])
    >>> w.numpy()
    array([ 0.5, -1. ], dtype=float32)
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from inertia.backend.base import Array, ArrayBackend
from inertia.backend.numpy import _np_dtype

_FLOATING = {"float16", "bfloat16", "float32", "float64"}


def _tf_dtype(dtype: str) -> tf.DType:
    try:
        return tf.as_dtype(dtype)
    except TypeError:
        raise TypeError(f"Unknown dtype for TensorFlow: dtype={dtype!r}") from None


def _device_scope(like: Any) -> Any:
    device = getattr(like, "device", None) if isinstance(like, (tf.Tensor, tf.Variable)) else None
    return tf.device(device) if device else contextlib.nullcontext()


def _from_host(value: Any, dtype: str | None) -> tf.Tensor:
    """A tensor of a Python or NumPy value, converted exactly as the NumPy backend does
    (one rounding from the value as given to ``dtype``)."""
    array = np.asarray(value)
    if dtype is not None:
        array = array.astype(_np_dtype(dtype))
    elif array.dtype.kind == "f" and array.dtype.itemsize == 8 and not isinstance(value, (np.ndarray, np.generic)):
        array = array.astype(np.float32)  # Python floats are float32, as Keras' floatx
    elif array.dtype == np.int64 and not isinstance(value, (np.ndarray, np.generic)):
        array = array.astype(np.int32)
    if array.dtype.kind in "OSUV" and array.dtype.name != "bfloat16":
        raise TypeError(f"Cannot make a TensorFlow tensor of value={value!r} (dtype {array.dtype})")
    return _opaque_to_grappler(tf.constant(array))


def _opaque_to_grappler(tensor: tf.Tensor) -> tf.Tensor:
    """``tensor``; in a graph, as an input that could be fed (``PlaceholderWithDefault``), so
    that Grappler's rewrites, which round differently from the eager step, cannot see
    through it: constant folding turns ``x / c`` into ``x * (1/c)`` and regroups
    ``c1 * (c2 * x)``, and the arithmetic optimizer turns ``1 / sqrt(x)`` into ``rsqrt(x)``.
    XLA compiles it as the identity."""
    if tf.executing_eagerly():
        return tensor
    return tf.raw_ops.PlaceholderWithDefault(input=tensor, shape=tensor.shape)


def is_sparse(value: Any) -> bool:
    """Whether ``value`` is a ``tf.IndexedSlices`` (a gradient of a gather or embedding lookup)."""
    return isinstance(value, tf.IndexedSlices)


class TensorflowBackend(ArrayBackend):
    name = "tensorflow"
    #: State lives in variables written in place, inside ``tf.function`` too: a traced
    #: branch is a ``tf.cond``, never a selection between two values (see ``branch``).
    holds_state_in_place = True

    # --- identity and dtypes -------------------------------------------------------------
    def is_array(self, value: Any) -> bool:
        return isinstance(value, (tf.Tensor, tf.Variable))

    def is_mutable_native(self, value: Any) -> bool:
        return isinstance(value, tf.Variable)

    def is_traced(self, value: Any) -> bool:
        """Inside a ``tf.function`` being traced, every value is symbolic."""
        return not tf.executing_eagerly()

    def dtype_name(self, value: Array) -> str:
        try:
            return value.dtype.name  # TF's DType and NumPy's dtype both name themselves
        except AttributeError:
            return np.asarray(value).dtype.name

    def is_floating(self, dtype: str) -> bool:
        return dtype in _FLOATING

    def shape(self, value: Array) -> tuple[int, ...]:
        if is_sparse(value):
            # A traced gradient's dense shape may be known only when run: its row count is then None.
            dense = tf.get_static_value(value.dense_shape)
            if dense is None:
                return (None,) + self.shape(value.values)[1:]
            return tuple(int(d) for d in dense)
        shape = tuple(value.shape.as_list())
        if None in shape:
            raise ValueError(f"inertia needs arrays of known shape; received a tensor of shape {value.shape}.")
        return shape

    # --- creation and conversion -----------------------------------------------------------
    def asarray(self, value: Any, dtype: str | None = None, like: Array | None = None) -> Array:
        with _device_scope(like):
            if isinstance(value, (tf.Tensor, tf.Variable)):
                tensor = tf.identity(value)
                return tensor if dtype is None or tensor.dtype.name == dtype else tf.cast(tensor, _tf_dtype(dtype))
            return _from_host(value, dtype)

    def cast(self, value: Array, dtype: str) -> Array:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            return value if value.dtype.name == dtype else tf.cast(value, _tf_dtype(dtype))
        return _from_host(value, dtype)

    def zeros(self, shape: Sequence[int], dtype: str, like: Array | None = None) -> Array:
        with _device_scope(like):
            return tf.zeros(tuple(shape), dtype=_tf_dtype(dtype))

    def scalar(self, value: Any, dtype: str, like: Array | None = None) -> Array:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            return self.cast(value, dtype)
        with _device_scope(like):
            return _from_host(value, dtype)

    def copy(self, value: Array) -> Array:
        return tf.identity(value)

    def to_numpy(self, value: Array) -> Any:
        if is_sparse(value):
            value = tf.convert_to_tensor(value)
        return np.array(value.numpy(), copy=True)

    def holder(self, value: Array, trainable: bool = False) -> Array:
        """A ``tf.Variable`` holding ``value``: where optimizer state and ``inertia.Variable``
        values live, so that a step inside ``tf.function`` assigns them in place. Made outside
        any graph being traced (``tf.init_scope``), from the value read there."""
        if isinstance(value, tf.Variable):
            return value
        if self.is_traced(value):
            raise ValueError(
                "inertia cannot make a tf.Variable of a value computed inside a tf.function being traced: create "
                "inertia.Variables, and build the optimizer (`optimizer.build(variables)`), outside the tf.function, "
                f"or from values TensorFlow can read there. Received: {value!r:.200}"
            )
        with tf.init_scope():
            return tf.Variable(value, trainable=trainable)

    def outside_trace(self) -> Any:
        """The context in which new state is made while a ``tf.function`` is traced: the eager
        context around it (``tf.init_scope``), as tf.keras builds its optimizers."""
        return tf.init_scope()

    # --- sparse gradients ----------------------------------------------------------------------
    def is_sparse(self, value: Any) -> bool:
        return is_sparse(value)

    def densify(self, value: Any) -> Array:
        return tf.convert_to_tensor(value) if is_sparse(value) else value

    def sparse_map(self, value: Any, function: Callable[[Array], Array]) -> Any:
        return tf.IndexedSlices(function(value.values), value.indices, value.dense_shape)

    def sparse_problem(self, value: Any, shape: tuple) -> Optional[str]:
        indices, values = value.indices, value.values
        if not indices.dtype.is_integer:
            return f"has indices of dtype {indices.dtype.name}, not integers"
        if indices.shape.rank != 1:
            return f"has indices of shape {tuple(indices.shape)}: one row index per value row is expected"
        rows = tuple(values.shape)
        if rows[1:] != tuple(shape[1:]) or (None not in rows[:1] + tuple(indices.shape) and rows[0] != indices.shape[0]):
            return f"has values of shape {rows} for {tuple(indices.shape)} indices: rows of shape {tuple(shape[1:])} expected"
        if self.is_traced(indices) or indices.shape[0] == 0:
            return None
        low, high = int(tf.reduce_min(indices)), int(tf.reduce_max(indices))
        if low < 0 or high >= shape[0]:
            return f"names rows {low} to {high}, outside 0 to {shape[0] - 1}"
        return None

    def sparse_values(self, value: Any) -> Array:
        return value.values

    def unique_rows(self, value: Any) -> tuple[Array, Array]:
        """Rows named more than once summed, as tf.keras does (``tf.unique`` then
        ``unsorted_segment_sum``, in order of first appearance)."""
        indices, positions = tf.unique(value.indices)
        return tf.math.unsorted_segment_sum(value.values, positions, tf.shape(indices)[0]), indices

    def gather_rows(self, x: Array, indices: Array) -> Array:
        return tf.gather(x, indices)

    def sparse_indices(self, value: Any) -> Array:
        return value.indices

    def add_rows(self, target: Array, indices: Array, rows: Array) -> Array:
        return self._scatter(target, indices, rows, "scatter_add", tf.tensor_scatter_nd_add)

    def assign_rows(self, target: Array, indices: Array, rows: Array) -> Array:
        return self._scatter(target, indices, rows, "scatter_update", tf.tensor_scatter_nd_update)

    def _scatter(self, target: Array, indices: Array, rows: Array, in_place: str, functional: Callable) -> Array:
        """Rows of ``target`` written by a variable's own scatter method (in place), or by
        ``functional`` into a new tensor (``assign``'s contract)."""
        rows = self.cast(rows, target.dtype.name)
        if isinstance(target, tf.Variable):
            getattr(target, in_place)(tf.IndexedSlices(rows, indices))
            return target
        return functional(target, tf.expand_dims(indices, -1), rows)

    # --- mutation ----------------------------------------------------------------------------
    def assign(self, target: Array, value: Array) -> Array:
        if isinstance(target, tf.Variable):
            target.assign(self.cast(value, target.dtype.name))
            return target
        return self.cast(value, target.dtype.name)

    def branch(self, flag: Any, if_true: Callable[[], None], if_false: Callable[[], None] | None) -> None:
        """A traced branch of a step: ``tf.cond``, whose branches assign variables in place."""

        def run(function: Callable[[], None] | None) -> Callable[[], None]:
            def branch_body() -> None:
                if function is not None:
                    function()

            return branch_body

        tf.cond(tf.convert_to_tensor(flag), run(if_true), run(if_false))

    # --- math used by the gradient pipeline -----------------------------------------------
    @staticmethod
    def _dense_part(value: Any) -> Array:
        return value.values if is_sparse(value) else value

    @staticmethod
    def _like(value: Any, x: Array) -> Array:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            return value
        return _from_host(value, x.dtype.name)

    def sqrt(self, x: Array) -> Array:
        return _opaque_to_grappler(tf.sqrt(x))

    def square(self, x: Array) -> Array:
        return tf.square(x)

    def sum(self, x: Array, keepdims: bool = False) -> Array:
        return tf.reduce_sum(x, keepdims=keepdims)

    def maximum(self, x: Array, y: Any) -> Array:
        return tf.maximum(x, self._like(y, x))

    def minimum(self, x: Array, y: Any) -> Array:
        return tf.minimum(x, self._like(y, x))

    def clip(self, x: Array, low: Any, high: Any) -> Array:
        return tf.clip_by_value(x, self._like(low, x), self._like(high, x))

    def where(self, condition: Array, x: Any, y: Any) -> Array:
        like = x if isinstance(x, (tf.Tensor, tf.Variable)) else y
        if not isinstance(like, (tf.Tensor, tf.Variable)):
            return tf.where(condition, _from_host(x, None), _from_host(y, None))
        return tf.where(condition, self._like(x, like), self._like(y, like))

    def all_finite(self, arrays: Sequence[Array]) -> bool:
        return all(bool(tf.reduce_all(tf.math.is_finite(self._dense_part(a)))) for a in arrays)

    def finite_flag(self, arrays: Sequence[Array]) -> Any:
        flags = [tf.reduce_all(tf.math.is_finite(self._dense_part(a))) for a in arrays]
        flag = tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)
        return flag if self.is_traced(flag) else bool(flag)

    def are_native(self, arrays: Sequence[Any]) -> bool:
        return all(isinstance(a, (tf.Tensor, tf.Variable)) for a in arrays)

    # --- autodiff ----------------------------------------------------------------------------
    def value_and_grad(
        self, function: Callable[[list[Array]], Array], values: list[Array]
    ) -> tuple[Array, list[Array]]:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for value in values:
                tape.watch(value)
            loss = function(list(values))
        return loss, list(tape.gradient(loss, list(values)))

    def grad_of_natives(self, loss: Any, targets: list[Array], tape: Any = None) -> list[Array]:
        """Gradients of a loss with respect to ``tf.Variable``s: a zero-argument callable run
        under a new ``tf.GradientTape``, or a tensor computed under ``tape``. A variable the
        loss does not depend on gets None (the optimizer warns and skips it), as in TF."""
        if tape is not None:
            if callable(loss):
                with tape:
                    loss = loss()
            return list(tape.gradient(loss, list(targets)))
        if not callable(loss):
            raise ValueError(
                "`tape` is required when a `Tensor` loss is passed. Received: loss={loss!r:.200}, tape=None.".format(loss=loss)
            )
        with tf.GradientTape(watch_accessed_variables=False) as new_tape:
            for target in targets:
                new_tape.watch(target)
            value = loss()
        return list(new_tape.gradient(value, list(targets)))


BACKEND = TensorflowBackend()


def _variable_as_tensor(variable: Any, dtype: Any = None, name: Any = None, as_ref: bool = False) -> tf.Tensor:
    """An ``inertia.Variable`` in a TensorFlow operation (``tf.reduce_sum(w)``, the step
    counter a ``tf.function`` returns from ``apply_gradients``) reads its value."""
    return tf.convert_to_tensor(variable.value, dtype=dtype, name=name)


def _register_conversion() -> None:
    from inertia.variable import Variable

    tf.register_tensor_conversion_function(Variable, _variable_as_tensor)


_register_conversion()


class _NumpyLike:
    """The NumPy functions the learning-rate schedules use, as TensorFlow operations, so that
    a schedule runs on a TF step counter eagerly and inside ``tf.function`` alike
    (:func:`inertia.backend.array_namespace`). Python and NumPy numbers are converted as
    NumPy converts them."""

    #: Every dtype exists (no JAX-style canonicalisation without x64).
    has_every_dtype = True

    @staticmethod
    def asarray(value: Any, dtype: Any = None) -> tf.Tensor:
        name = None if dtype is None else getattr(dtype, "name", None) or np.dtype(dtype).name
        if isinstance(value, (tf.Tensor, tf.Variable)):
            tensor = tf.convert_to_tensor(value)
            return tensor if name is None or tensor.dtype.name == name else tf.cast(tensor, _tf_dtype(name))
        return _from_host(value, name)

    @staticmethod
    def _pair(x: Any, y: Any) -> tuple[Any, Any]:
        if isinstance(x, (tf.Tensor, tf.Variable)):
            return x, TensorflowBackend._like(y, x)
        return TensorflowBackend._like(x, y), y

    floor = staticmethod(tf.floor)
    ceil = staticmethod(tf.math.ceil)
    cos = staticmethod(tf.cos)
    log = staticmethod(tf.math.log)

    def power(self, x: Any, y: Any) -> tf.Tensor:
        return tf.pow(*self._pair(x, y))

    def minimum(self, x: Any, y: Any) -> tf.Tensor:
        return tf.minimum(*self._pair(x, y))

    def maximum(self, x: Any, y: Any) -> tf.Tensor:
        return tf.maximum(*self._pair(x, y))

    def where(self, condition: Any, x: Any, y: Any) -> tf.Tensor:
        return tf.where(condition, *self._pair(x, y))


NUMPY_LIKE = _NumpyLike()
