"""The gradient stages of the Keras optimizer, as small functions over arrays.

Each stage is pure: arrays in, new arrays out. ``ops`` is the array backend
(:class:`inertia.backend.base.ArrayBackend`); hyperparameters arrive as Python numbers and
are cast to each array's dtype here, so the arithmetic runs in that dtype as Keras' does.
The optimizer (``optimizer.py``) owns the order in which these stages run.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from inertia.backend.base import ArrayBackend

# Sums squared norms across the ranks that hold shards of the same gradients (ZeRO's
# partitions, a DTensor's local shards): local squared sums in, global ones out, in one
# collective for the whole list. None: the backend's own for its arrays
# (``ops.squares_reducer``: DTensor's shards), none for whole arrays.
SquaresReducer = Callable[[list], list]

__all__ = [
    "SquaresReducer",
    "unscale",
    "accumulate",
    "accumulated_mean",
    "clip_by_norm",
    "clip_by_global_norm",
    "clip_by_value",
    "clip",
    "decoupled_weight_decay",
    "ema_update",
]


def _scalar(ops: ArrayBackend, value: Any, like: Any) -> Any:
    return ops.scalar(value, ops.dtype_name(like), like=like)


def unscale(ops: ArrayBackend, gradient: Any, factor: float) -> Any:
    """Undo a static loss scale: ``g / factor``."""
    return gradient / _scalar(ops, factor, gradient)


def accumulate(accumulator: Any, gradient: Any) -> Any:
    """A gradient-accumulation micro-step: ``acc + g``."""
    return gradient + accumulator


def accumulated_mean(ops: ArrayBackend, gradient: Any, accumulator: Any, steps: int) -> Any:
    """The gradient of an accumulation update step: the mean over the ``steps`` micro-steps."""
    return (gradient + accumulator) / _scalar(ops, steps, gradient)


def clip_by_norm(ops: ArrayBackend, gradient: Any, clipnorm: float, squared: Any = None) -> Any:
    """Per-tensor norm clipping: ``g * c / max(||g||, c)``.

    Like Keras, the result is ``(g*c)/c`` even when no clipping is needed, and the norm of
    an all-zero gradient is taken as 0 without a square root (its gradient would be NaN).
    ``squared``: the squared norm when it is known already (summed across shards).
    """
    c = _scalar(ops, clipnorm, gradient)
    if squared is None:
        squared = ops.sum(ops.square(gradient), keepdims=True)
        reduce_squares = ops.squares_reducer([gradient])
        if reduce_squares is not None:
            (squared,) = reduce_squares([squared])
    positive = squared > 0
    norm = ops.where(positive, ops.sqrt(ops.where(positive, squared, 1)), squared)
    return (gradient * c) / ops.maximum(norm, c)


def squared_norms(ops: ArrayBackend, gradients: Sequence[Any], reduce_squares: Optional[SquaresReducer]) -> list:
    """Each gradient's squared norm (a 0-d array), summed across shards by ``reduce_squares``
    (None: the backend's reducer for these arrays, if they are sharded)."""
    squares = [ops.sum(ops.square(g)) for g in gradients]
    reduce_squares = _reducer(ops, gradients, reduce_squares)
    return squares if reduce_squares is None else list(reduce_squares(squares))


def _reducer(ops: ArrayBackend, gradients: Sequence[Any], given: Optional[SquaresReducer]) -> Optional[SquaresReducer]:
    return given if given is not None else ops.squares_reducer(gradients)


def clip_by_global_norm(
    ops: ArrayBackend,
    gradients: Sequence[Any],
    clipnorm: float,
    reciprocal_in_dtype: bool = False,
    reduce_squares: Optional[SquaresReducer] = None,
) -> list:
    """Scale all gradients together so that their joint norm is at most ``clipnorm``.

    ``scale = c * min(1/norm, 1/c) + (norm - norm)``: 1 for a zero norm, and NaN for an
    infinite or NaN norm, so non-finite gradients stay visibly non-finite (as in Keras).
    Keras 3 rounds ``1/c`` once from the Python float; ``reciprocal_in_dtype`` forms it as
    ``tf.clip_by_global_norm`` does (tf.keras legacy), ``1 / c`` with ``c`` already in the
    norm's dtype: the two differ in the last bit for thresholds such as 1.7 in float32.
    ``reduce_squares`` sums the local total across the ranks that hold the other shards
    (one scalar per step).
    """
    squares = [ops.sum(ops.square(g)) for g in gradients]
    reduce_squares = _reducer(ops, gradients, reduce_squares)
    dtype = _widest(ops, squares)
    total = ops.cast(squares[0], dtype)
    for value in squares[1:]:
        total = total + ops.cast(value, dtype)
    if reduce_squares is not None:
        (total,) = reduce_squares([total])
    norm = ops.sqrt(total)
    c = ops.scalar(clipnorm, dtype, like=norm)
    if reciprocal_in_dtype:
        inverse_c = ops.scalar(1.0, dtype, like=norm) / c
    else:
        inverse_c = ops.scalar(1.0 / clipnorm, dtype, like=norm)  # rounded once, as in Keras
    one = ops.scalar(1.0, dtype, like=norm)  # an array, not a literal a graph optimizer could rewrite `1 / x` with
    scale = c * ops.minimum(one / norm, inverse_c) + (norm - norm)
    return [g * ops.cast(scale, ops.dtype_name(g)) for g in gradients]


def clip_by_value(ops: ArrayBackend, gradient: Any, clipvalue: float) -> Any:
    """Element-wise clipping to ``[-v, v]``."""
    v = _scalar(ops, clipvalue, gradient)
    return ops.clip(gradient, -v, v)


def clip(
    ops: ArrayBackend,
    gradients: Sequence[Any],
    clipnorm: Optional[float],
    global_clipnorm: Optional[float],
    clipvalue: Optional[float],
    reduce_squares: Optional[SquaresReducer] = None,
) -> list:
    """Keras' clipping: the first of clipnorm, global_clipnorm, clipvalue that is > 0.

    ``reduce_squares``: for sharded gradients, the norms are the whole tensors' (one
    collective for the list, see :data:`SquaresReducer`); None takes the backend's for
    its sharded arrays (DTensor), none for whole ones."""
    if clipnorm and clipnorm > 0:
        reduce_squares = _reducer(ops, gradients, reduce_squares)
        if reduce_squares is None:
            return [clip_by_norm(ops, g, clipnorm) for g in gradients]
        squares = squared_norms(ops, gradients, reduce_squares)
        return [clip_by_norm(ops, g, clipnorm, squared) for g, squared in zip(gradients, squares)]
    if global_clipnorm and global_clipnorm > 0:
        return clip_by_global_norm(ops, gradients, global_clipnorm, reduce_squares=reduce_squares)
    if clipvalue and clipvalue > 0:
        return [clip_by_value(ops, g, clipvalue) for g in gradients]
    return list(gradients)


def decoupled_weight_decay(ops: ArrayBackend, weight: Any, weight_decay: float, learning_rate: Any) -> Any:
    """Keras' decoupled decay of the pre-update weights: ``w - w*wd*lr``."""
    wd = _scalar(ops, weight_decay, weight)
    return weight - weight * wd * ops.cast(learning_rate, ops.dtype_name(weight))


def ema_update(
    ops: ArrayBackend, average: Any, weight: Any, ema_momentum: float, first: Any, complement_rounded_once: bool = False
) -> Any:
    """``m*avg + (1-m)*w``, with ``m = 0`` on the first step so the average starts at ``w``.

    ``first`` is a bool, or a 0-d bool array when traced. ``1 - m`` is formed in the
    dtype from ``m`` already rounded to it (Keras 3), or, with ``complement_rounded_once``,
    computed from the Python float and then rounded (tf.keras 2.11+: ``(1 - ema_momentum) * var``);
    the two differ in the last bit for momenta such as 0.99 in float32.
    """
    if complement_rounded_once:
        return _scalar(ops, ema_momentum, weight) * average + _scalar(ops, 1.0 - ema_momentum, weight) * weight
    if isinstance(first, bool):
        m = _scalar(ops, 0.0 if first else ema_momentum, weight)
    else:
        m = ops.where(first, _scalar(ops, 0.0, weight), _scalar(ops, ema_momentum, weight))
    return m * average + (1 - m) * weight


def _widest(ops: ArrayBackend, arrays: Sequence[Any]) -> str:
    order = ["float16", "bfloat16", "float32", "float64"]
    names = [ops.dtype_name(a) for a in arrays]
    return max(names, key=lambda n: order.index(n) if n in order else len(order))
