"""Learning-rate schedules that give Keras 3's numbers (``keras.optimizers.schedules``).

A schedule is a callable object: ``schedule(step)`` returns the learning rate for the
optimizer step ``step`` as a 0-d array. The six built-in schedules take Keras' arguments,
defaults and names, return the same ``get_config()`` dictionaries (same keys, same order)
and compute the same float32 values, operation for operation.

Numerics
    The learning rate is computed in the dtype of ``initial_learning_rate`` seen as an
    array: float32 for Python numbers (Keras' ``floatx``), otherwise the array's own float
    dtype (``np.float64(0.1)`` gives float64, ``np.float16`` float16). The step is cast to
    that dtype and every intermediate value stays in it.

    Keras 3.15 (NumPy backend) itself computes in float32 even for ``np.float64``
    hyperparameters, and in int32 (with meaningless results) for a Python ``int``
    ``initial_learning_rate``. Here a float64 learning rate gives float64, and an integer
    one is treated as float32.

Backends
    The formulas run in ``numpy`` or, for a JAX step, in ``jax.numpy``. They use array
    functions only (no Python branching on values), so a schedule can be traced by
    ``jax.jit`` with the step as a traced argument.

Serialisation
    :func:`serialize` gives ``{"module": "inertia.schedules", "class_name": ...,
    "config": ..., "registered_name": None}``; :func:`deserialize` reads that, the form
    Keras writes (module ``keras.optimizers.schedules``) and the module-less
    ``{"class_name", "config"}`` form.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from inertia.backend import array_namespace

__all__ = [
    "LearningRateSchedule",
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
    "serialize",
    "deserialize",
]

# Keras' ``floatx``: the dtype Keras gives to Python floats.
_FLOATX = np.dtype("float32")

_MODULE = "inertia.schedules"
# Module names under which a serialised schedule may refer to the classes defined here.
_KNOWN_MODULES = frozenset(
    {
        _MODULE,
        "keras.optimizers.schedules",
        "keras.src.optimizers.schedules",
        "keras.src.optimizers.schedules.learning_rate_schedule",
        # tf.keras 2.x wrote these.
        "keras.optimizers.schedules.learning_rate_schedule",
        "tf_keras.optimizers.schedules",
    }
)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _numpy_dtype(value: Any) -> np.dtype | None:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    dtype = getattr(dtype, "as_numpy_dtype", dtype)  # a TensorFlow DType
    try:
        return np.dtype(dtype)
    except TypeError:  # e.g. a torch dtype
        return None


def _is_real(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    # 0-d arrays (NumPy, JAX) holding one real number, bfloat16 included.
    dtype = _numpy_dtype(value)
    if dtype is None or getattr(value, "ndim", None) != 0:
        return False
    return dtype.kind in "fiu" or (dtype.kind == "V" and "float" in dtype.name)


def _check_real(name: str, value: Any) -> None:
    """A finite real number: TypeError for anything that is not a number, ValueError for nan/inf."""
    if not _is_real(value):
        raise TypeError(
            f"Argument `{name}` must be a real number. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    try:
        finite = math.isfinite(float(value))
    except OverflowError:  # a Python int too large for a float
        finite = False
    if not finite:
        raise ValueError(f"Argument `{name}` must be a finite number. Received: {name}={value}")


def _check_positive(name: str, value: Any) -> None:
    _check_real(name, value)
    if value <= 0:
        # Keras' own message.
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value}")


def _check_non_negative(name: str, value: Any) -> None:
    _check_real(name, value)
    if value < 0:
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Argument `{name}` must be a bool. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )


def _check_name(value: Any) -> None:
    # None is accepted because tf.keras 2 configs carry ``"name": None``.
    if value is not None and not isinstance(value, str):
        raise TypeError(
            "Argument `name` must be a string. "
            f"Received: name={value!r} of type {type(value).__name__}"
        )


def _check_sequence(name: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
        raise TypeError(
            f"Argument `{name}` must be a list of numbers. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    items = list(value)
    for index, item in enumerate(items):
        _check_real(f"{name}[{index}]", item)
    return items


def _is_integer(value: Any) -> bool:
    if isinstance(value, numbers.Integral):
        return True
    dtype = _numpy_dtype(value)
    return dtype is not None and dtype.kind in "iu"


# --------------------------------------------------------------------------------------------
# Array helpers shared by the schedules
# --------------------------------------------------------------------------------------------


def _namespace(step: Any) -> tuple[Any, Any]:
    """The array namespace for ``step`` and the step as something that namespace accepts."""
    from inertia.variable import Variable  # here, so that importing schedules stays cheap

    if isinstance(step, Variable):
        step = step.value
    if step is None or isinstance(step, (str, bytes)):
        raise TypeError(
            f"A learning rate schedule needs a numeric step. Received: step={step!r} "
            f"of type {type(step).__name__}"
        )
    xp = array_namespace(step)
    if xp is np and not isinstance(step, (numbers.Number, np.ndarray, np.generic)):
        # Arrays of other libraries (torch) are read on the host.
        from inertia import backend as backends

        try:
            owner = backends.of(step)
        except (ImportError, NotImplementedError):
            owner = None
        step = owner.to_numpy(step) if owner is not None else np.asarray(step)
    return xp, step


def _canonical(dtype: np.dtype, xp: Any) -> np.dtype:
    if xp is np or getattr(xp, "has_every_dtype", False):
        return np.dtype(dtype)
    # Without ``jax_enable_x64`` JAX has no float64 (or int64): use what it would give.
    import jax

    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _float_dtype(value: Any, xp: Any) -> np.dtype:
    """The dtype a schedule computes in: that of ``initial_learning_rate`` as an array."""
    dtype = _numpy_dtype(value)
    if dtype is None or dtype.kind in "iub":
        # Python numbers are float32 as in Keras; an integer lr would make Keras compute
        # in int32 (every decay rate truncated to 0), which no one wants, so it is float32.
        dtype = _FLOATX
    return _canonical(dtype, xp)


def _keras_dtype(value: Any, xp: Any) -> np.dtype:
    """The dtype Keras gives to ``value`` on its own: int32 / float32 for Python numbers."""
    dtype = _numpy_dtype(value)
    if dtype is None:
        if isinstance(value, (bool, np.bool_)):
            dtype = np.dtype(bool)
        elif isinstance(value, numbers.Integral):
            dtype = np.dtype("int32") if -(2**31) <= value < 2**31 else np.dtype("int64")
        else:
            dtype = _FLOATX
    return _canonical(dtype, xp)


def _cast(value: Any, dtype: np.dtype, xp: Any) -> Any:
    return xp.asarray(value, dtype=dtype)


def _cast_via_own_dtype(value: Any, dtype: np.dtype, xp: Any) -> Any:
    """Convert ``value`` to its own (Keras) dtype first, then cast: float -> int truncates."""
    return xp.asarray(xp.asarray(value, dtype=_keras_dtype(value, xp)), dtype=dtype)


def _result(value: Any, dtype: np.dtype, xp: Any) -> Any:
    # NumPy arithmetic on 0-d arrays returns scalars; hand back an array of the exact dtype.
    return xp.asarray(value, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


class LearningRateSchedule:
    """Base class of learning-rate schedules: ``schedule(step)`` gives the learning rate.

    A subclass implements ``__call__(self, step)``, returning the learning rate for the
    (integer) optimizer step, and ``get_config()``, returning the constructor arguments so
    that ``cls.from_config(config)`` rebuilds an equal schedule.

    Example:
        >>> class Halving(LearningRateSchedule):
        ...     def __init__(self, initial_learning_rate):
        ...         self.initial_learning_rate = initial_learning_rate
        ...     def __call__(self, step):
        ...         return self.initial_learning_rate / 2 ** step
        ...     def get_config(self):
        ...         return {"initial_learning_rate": self.initial_learning_rate}
        >>> Halving(1.0)(3)
        0.125
        >>> Halving.from_config(Halving(0.5).get_config()).initial_learning_rate
        0.5
    """

    def __call__(self, step: Any) -> Any:
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`__call__(self, step)`."
        )

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`get_config()` in order to be serializable."
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LearningRateSchedule":
        """Rebuild a schedule from the output of :meth:`get_config`."""
        return cls(**config)

    def __repr__(self) -> str:
        try:
            config = self.get_config()
        except NotImplementedError:
            return object.__repr__(self)
        arguments = ", ".join(f"{key}={value!r}" for key, value in config.items())
        return f"{self.__class__.__name__}({arguments})"


class _RateDecay(LearningRateSchedule):
    """Shared by the two schedules driven by ``decay_rate`` and ``step / decay_steps``."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool,
        name: str,
    ) -> None:
        _check_real("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_real("decay_rate", decay_rate)
        _check_bool("staircase", staircase)
        _check_name(name)
        super().__init__()
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def _progress(self, step: Any) -> tuple[Any, Any, Any, Any, Any]:
        """``(xp, dtype, initial, decay_rate, p)`` with ``p = step / decay_steps``, floored
        when ``staircase``, all in the dtype of the initial learning rate (as Keras)."""
        xp, step = _namespace(step)
        dtype = _float_dtype(self.initial_learning_rate, xp)
        initial = _cast(self.initial_learning_rate, dtype, xp)
        decay_rate = _cast(self.decay_rate, dtype, xp)
        p = _cast(step, dtype, xp) / _cast(self.decay_steps, dtype, xp)
        if self.staircase:
            p = xp.floor(p)
        return xp, dtype, initial, decay_rate, p

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class ExponentialDecay(_RateDecay):
    """Exponential decay: ``lr = initial_learning_rate * decay_rate ** (step / decay_steps)``.

    With ``staircase=True`` the exponent is ``floor(step / decay_steps)``, so the learning
    rate drops by a factor ``decay_rate`` every ``decay_steps`` steps.

    Args:
        initial_learning_rate: The learning rate at step 0; its dtype is the result's.
        decay_steps: Steps per factor of ``decay_rate``; must be > 0.
        decay_rate: The factor applied every ``decay_steps`` steps.
        staircase: Decay in discrete steps instead of continuously.
        name: The schedule's name, kept in its config.

    Example:
        >>> schedule = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
        >>> schedule(10)
        array(0.05, dtype=float32)
        >>> ExponentialDecay(0.1, 10, 0.5, staircase=True)(19)
        array(0.05, dtype=float32)
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        name: str = "ExponentialDecay",
    ) -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step: Any) -> Any:
        xp, dtype, initial, decay_rate, p = self._progress(step)
        return _result(initial * xp.power(decay_rate, p), dtype, xp)


class PiecewiseConstantDecay(LearningRateSchedule):
    """A constant learning rate per interval of steps.

    ``lr = values[0]`` for ``step <= boundaries[0]``, ``values[i]`` for
    ``boundaries[i-1] < step <= boundaries[i]`` and ``values[-1]`` for
    ``step > boundaries[-1]``: intervals include their right end.

    As in Keras, the result has the dtype of ``values[0]`` (float32 for a Python float,
    int32 for a Python int: integer values give an integer learning rate). When
    ``values[0]`` is an integer but other values are floats, the result takes the float
    dtype, as on Keras' JAX backend (its NumPy backend fails). The boundaries are cast to
    the step's dtype before the comparison (so a float boundary is truncated for an
    integer step). Keras adds up the values of all the intervals that contain the step,
    which matters only when the boundaries are not increasing; this does the same.

    Args:
        boundaries: At least one step number, increasing.
        values: One more number than ``boundaries``.
        name: The schedule's name, kept in its config.

    Example:
        >>> schedule = PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])
        >>> schedule(100), schedule(101), schedule(1000)
        (array(1., dtype=float32), array(0.5, dtype=float32), array(0.1, dtype=float32))
    """

    def __init__(
        self,
        boundaries: Sequence[float],
        values: Sequence[float],
        name: str = "PiecewiseConstant",
    ) -> None:
        boundary_list = _check_sequence("boundaries", boundaries)
        value_list = _check_sequence("values", values)
        if len(boundary_list) != len(value_list) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundary_list)}, and "
                f"values={values} of length {len(value_list)}."
            )
        if not boundary_list:
            # Keras accepts this and then fails with an IndexError at the first call.
            raise ValueError(
                "Argument `boundaries` must contain at least one boundary. "
                f"Received: boundaries={boundaries}"
            )
        _check_name(name)
        super().__init__()
        self.boundaries = boundary_list
        self.values = value_list
        self.name = name

    def _value_dtype(self, xp: Any) -> np.dtype:
        dtype = _keras_dtype(self.values[0], xp)
        if dtype.kind in "iu":
            floats = [_keras_dtype(v, xp) for v in self.values if not _is_integer(v)]
            if floats:
                # An int accumulator cannot hold float values: Keras' NumPy backend fails
                # here, its JAX backend promotes to the float type. Promote, as JAX does.
                dtype = _canonical(np.result_type(*floats), xp)
        return dtype

    def __call__(self, step: Any) -> Any:
        xp, step = _namespace(step)
        step = xp.asarray(step, dtype=_keras_dtype(step, xp))
        bounds = [_cast_via_own_dtype(b, step.dtype, xp) for b in self.boundaries]
        dtype = self._value_dtype(xp)
        values = [_cast_via_own_dtype(v, dtype, xp) for v in self.values]

        def term(condition: Any, value: Any) -> Any:
            return xp.asarray(condition, dtype=dtype) * value

        # Same terms, in the same order, as Keras' sum.
        result = xp.asarray(0, dtype=dtype)
        result = result + term(step <= bounds[0], values[0])
        result = result + term(step > bounds[-1], values[-1])
        for low, high, value in zip(bounds[:-1], bounds[1:], values[1:-1]):
            result = result + term((step > low) & (step <= high), value)
        return _result(result, dtype, xp)

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate``.

    Without ``cycle``::

        s = min(step, decay_steps)
        lr = (initial_learning_rate - end_learning_rate) * (1 - s / decay_steps) ** power
             + end_learning_rate

    With ``cycle=True`` the decay restarts: ``decay_steps`` is replaced by the first
    multiple of it that is >= ``step`` (``decay_steps`` itself at step 0), so the rate is
    ``end_learning_rate`` at each multiple and jumps back up on the next step.

    Args:
        initial_learning_rate: The learning rate at step 0; its dtype is the result's.
        decay_steps: The length of the decay; must be > 0.
        end_learning_rate: The learning rate reached after ``decay_steps`` steps.
        power: The exponent of the polynomial (1.0 is linear).
        cycle: Restart the decay every ``decay_steps`` steps.
        name: The schedule's name, kept in its config.

    Example:
        >>> schedule = PolynomialDecay(0.05, decay_steps=10, end_learning_rate=0.001)
        >>> schedule(5)
        array(0.0255, dtype=float32)
        >>> PolynomialDecay(0.05, 10, 0.001, cycle=True)(15)
        array(0.01325, dtype=float32)
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str = "PolynomialDecay",
    ) -> None:
        _check_real("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_real("end_learning_rate", end_learning_rate)
        _check_real("power", power)
        _check_bool("cycle", cycle)
        _check_name(name)
        super().__init__()
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp, step = _namespace(step)
        dtype = _float_dtype(self.initial_learning_rate, xp)
        initial = _cast(self.initial_learning_rate, dtype, xp)
        end = _cast(self.end_learning_rate, dtype, xp)
        power = _cast(self.power, dtype, xp)
        s = _cast(step, dtype, xp)
        decay_steps = _cast(self.decay_steps, dtype, xp)
        if self.cycle:
            multiplier = xp.where(s == 0, _cast(1.0, dtype, xp), xp.ceil(s / decay_steps))
            decay_steps = decay_steps * multiplier
        else:
            s = xp.minimum(s, decay_steps)
        p = s / decay_steps
        # Clamped: compiled (XLA) code may round ``1 - p`` to a tiny negative number at the
        # end of the decay, and a negative base to a fractional power is NaN.
        decayed = (initial - end) * xp.power(xp.maximum(1 - p, _cast(0, dtype, xp)), power)
        return _result(decayed + end, dtype, xp)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(_RateDecay):
    """Inverse-time decay: ``lr = initial_learning_rate / (1 + decay_rate * step / decay_steps)``.

    With ``staircase=True`` the ratio ``step / decay_steps`` is rounded down.

    Args:
        initial_learning_rate: The learning rate at step 0; its dtype is the result's.
        decay_steps: The step scale of the decay; must be > 0.
        decay_rate: How fast the rate decays.
        staircase: Decay in discrete steps instead of continuously.
        name: The schedule's name, kept in its config.

    Example:
        >>> schedule = InverseTimeDecay(0.1, decay_steps=10, decay_rate=1.0)
        >>> schedule(10)
        array(0.05, dtype=float32)
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        name: str = "InverseTimeDecay",
    ) -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step: Any) -> Any:
        xp, dtype, initial, decay_rate, p = self._progress(step)
        denominator = _cast(1, dtype, xp) + decay_rate * p
        return _result(initial / denominator, dtype, xp)


class CosineDecay(LearningRateSchedule):
    """Cosine decay, optionally after a linear warmup (SGDR without restarts).

    With ``f(t, lr0) = lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * t / decay_steps)) + alpha)``:

    * ``warmup_target=None``: ``lr = f(min(step, decay_steps), initial_learning_rate)``.
    * otherwise, with ``W = warmup_steps`` and ``s = min(step, decay_steps + W)``:
      ``lr = (warmup_target - initial_learning_rate) * s / W + initial_learning_rate``
      while ``s < W`` (a linear ramp from ``initial_learning_rate``), then
      ``lr = f(s - W, warmup_target)``.

    ``alpha`` is the final rate as a fraction of the rate the decay starts from.

    Args:
        initial_learning_rate: The learning rate at step 0; its dtype is the result's.
        decay_steps: The length of the decay; must be > 0.
        alpha: The final rate as a fraction of the decay's starting rate.
        name: The schedule's name, kept in its config.
        warmup_target: The rate reached at the end of the warmup; None for no warmup.
        warmup_steps: The length of the warmup; must be >= 0.

    Example:
        >>> schedule = CosineDecay(1.0, decay_steps=1000)
        >>> schedule(500), schedule(5000)  # float32 cos(pi / 2) is not exactly 0
        (array(0.49999997, dtype=float32), array(0., dtype=float32))
        >>> warm = CosineDecay(0.0, 1000, warmup_target=10.0, warmup_steps=2000)
        >>> warm(1000), warm(2500)
        (array(5., dtype=float32), array(4.9999995, dtype=float32))
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        alpha: float = 0.0,
        name: str = "CosineDecay",
        warmup_target: float | None = None,
        warmup_steps: int = 0,
    ) -> None:
        _check_real("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_real("alpha", alpha)
        _check_name(name)
        if warmup_target is not None:
            _check_real("warmup_target", warmup_target)
        _check_non_negative("warmup_steps", warmup_steps)
        super().__init__()
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_steps = warmup_steps
        self.warmup_target = warmup_target

    def _decay(self, s: Any, decay_steps: Any, start: Any, dtype: np.dtype, xp: Any) -> Any:
        fraction = s / decay_steps
        cosine = 0.5 * (1.0 + xp.cos(_cast(math.pi, dtype, xp) * fraction))
        # Keras computes ``1 - alpha`` on the Python number, then rounds it to the dtype.
        decayed = _cast(1 - self.alpha, dtype, xp) * cosine + _cast(self.alpha, dtype, xp)
        return start * decayed

    def __call__(self, step: Any) -> Any:
        xp, step = _namespace(step)
        dtype = _float_dtype(self.initial_learning_rate, xp)
        initial = _cast(self.initial_learning_rate, dtype, xp)
        decay_steps = _cast(self.decay_steps, dtype, xp)
        s = _cast(step, dtype, xp)
        if self.warmup_target is None:
            s = xp.minimum(s, decay_steps)
            return _result(self._decay(s, decay_steps, initial, dtype, xp), dtype, xp)

        target = _cast(self.warmup_target, dtype, xp)
        warmup_steps = _cast(self.warmup_steps, dtype, xp)
        s = xp.minimum(s, decay_steps + warmup_steps)
        decayed = self._decay(s - warmup_steps, decay_steps, target, dtype, xp)
        if self.warmup_steps == 0:
            # No ramp: skipping it also avoids dividing by zero warmup steps.
            return _result(decayed, dtype, xp)
        ramp = (target - initial) * (s / warmup_steps) + initial
        return _result(xp.where(s < warmup_steps, ramp, decayed), dtype, xp)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Period ``i`` (from 0) lasts ``first_decay_steps * t_mul ** i`` steps and starts at
    ``initial_learning_rate * m_mul ** i``. With ``x = step / first_decay_steps``:

    * ``t_mul == 1``: ``i = floor(x)`` and ``t = x - i``;
    * otherwise: ``i = floor(log(1 - x * (1 - t_mul)) / log(t_mul))`` and
      ``t = (x - (1 - t_mul ** i) / (1 - t_mul)) / t_mul ** i``;

    then ``lr = initial_learning_rate * ((1 - alpha) * 0.5 * m_mul ** i * (1 + cos(pi * t))
    + alpha)``. The floor ``alpha * initial_learning_rate`` is not scaled by ``m_mul ** i``.

    Args:
        initial_learning_rate: The learning rate at step 0; its dtype is the result's.
        first_decay_steps: The length of the first period; must be > 0.
        t_mul: The factor by which each period is longer than the previous one.
        m_mul: The factor by which each period starts lower than the previous one.
        alpha: The final rate as a fraction of ``initial_learning_rate``.
        name: The schedule's name, kept in its config.

    Example:
        >>> schedule = CosineDecayRestarts(1.0, first_decay_steps=1000)
        >>> schedule(250), schedule(1000)
        (array(0.8535534, dtype=float32), array(1., dtype=float32))
        >>> schedule(1250)  # a quarter into the second period, twice as long
        array(0.96193975, dtype=float32)
    """

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: int,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        name: str = "SGDRDecay",
    ) -> None:
        _check_real("initial_learning_rate", initial_learning_rate)
        _check_positive("first_decay_steps", first_decay_steps)
        _check_real("t_mul", t_mul)
        _check_real("m_mul", m_mul)
        _check_real("alpha", alpha)
        _check_name(name)
        super().__init__()
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self._t_mul = t_mul
        self._m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step: Any) -> Any:
        xp, step = _namespace(step)
        dtype = _float_dtype(self.initial_learning_rate, xp)
        initial = _cast(self.initial_learning_rate, dtype, xp)
        first_decay_steps = _cast(self.first_decay_steps, dtype, xp)
        alpha = _cast(self.alpha, dtype, xp)
        t_mul = _cast(self._t_mul, dtype, xp)
        m_mul = _cast(self._m_mul, dtype, xp)
        fraction = _cast(step, dtype, xp) / first_decay_steps

        # t_mul is a constant, so the choice is made here (on its value in the compute
        # dtype, as Keras compares it) and never on a traced value.
        if np.asarray(self._t_mul, dtype=dtype) == 1:
            restart = xp.floor(fraction)
            fraction = fraction - restart
        else:
            restart = xp.floor(xp.log(1.0 - fraction * (1.0 - t_mul)) / xp.log(t_mul))
            t_mul_i = xp.power(t_mul, restart)
            completed = (1.0 - t_mul_i) / (1.0 - t_mul)
            fraction = (fraction - completed) / t_mul_i

        m_factor = xp.power(m_mul, restart)
        cosine = 0.5 * m_factor * (1.0 + xp.cos(_cast(math.pi, dtype, xp) * fraction))
        decayed = (1 - alpha) * cosine + alpha
        return _result(initial * decayed, dtype, xp)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self._t_mul,
            "m_mul": self._m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------

_BUILTINS: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """The dictionary form of a schedule, in the layout Keras uses.

    Example:
        >>> data = serialize(ExponentialDecay(0.1, 10, 0.5))
        >>> data["module"], data["class_name"]
        ('inertia.schedules', 'ExponentialDecay')
        >>> data["config"]["decay_rate"]
        0.5
    """
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            "Argument `schedule` must be a `LearningRateSchedule`. "
            f"Received: schedule={schedule!r} of type {type(schedule).__name__}"
        )
    return {
        "module": _MODULE,
        "class_name": type(schedule).__name__,
        "config": schedule.get_config(),
        "registered_name": None,
    }


def _decode(value: Any) -> Any:
    """Undo the wrappers Keras' serialiser puts around tuples and NumPy values in a config."""
    if isinstance(value, Mapping) and set(value) >= {"class_name", "config"}:
        inner = value["config"]
        if value["class_name"] == "__tuple__" and isinstance(inner, Mapping):
            return tuple(_decode(v) for v in inner.get("value", ()))
        if value["class_name"] in ("__tensor__", "__numpy__") and isinstance(inner, Mapping):
            array = np.asarray(inner["value"], dtype=inner.get("dtype"))
            return array[()] if array.ndim == 0 else array
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def deserialize(
    config: Mapping[str, Any],
    custom_objects: Mapping[str, Callable[..., Any]] | None = None,
) -> LearningRateSchedule:
    """Rebuild a schedule from :func:`serialize`'s output or from Keras' own.

    Accepts ``{"module", "class_name", "config", "registered_name"}`` with module
    ``inertia.schedules`` or ``keras.optimizers.schedules``, and the module-less
    ``{"class_name", "config"}`` form. ``custom_objects`` maps class names (or registered
    names) to further schedule classes.

    Example:
        >>> deserialize({"class_name": "CosineDecay", "config": {"initial_learning_rate": 1.0,
        ...              "decay_steps": 1000}})(1000)
        array(0., dtype=float32)
    """
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise TypeError(
            "Argument `config` must be a dict with keys 'class_name' and 'config'. "
            f"Received: config={config!r}"
        )
    class_name = config["class_name"]
    arguments = config.get("config", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise TypeError(
            f"The 'config' of a serialised schedule must be a dict. Received: config={arguments!r}"
        )
    custom = dict(custom_objects or {})
    registered_name = config.get("registered_name")

    cls: Any = None
    for key in (registered_name, class_name):
        if key is not None and key in custom:
            cls = custom[key]
            break
    if cls is None:
        module = config.get("module")
        if module is not None and module not in _KNOWN_MODULES:
            raise ValueError(
                f"Could not deserialize learning rate schedule '{class_name}' from module "
                f"'{module}'. Pass its class in `custom_objects`."
            )
        cls = _BUILTINS.get(class_name) if isinstance(class_name, str) else None
        if cls is None:
            raise ValueError(
                f"Unknown learning rate schedule: class_name={class_name!r}. Expected one of "
                f"{sorted(_BUILTINS)}, or a class passed in `custom_objects`."
            )
    arguments = {key: _decode(value) for key, value in arguments.items()}
    if hasattr(cls, "from_config"):
        return cls.from_config(arguments)
    return cls(**arguments)
