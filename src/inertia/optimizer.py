"""``inertia.Optimizer``: the Keras 3 optimizer base class, on any array backend.

The base class owns everything that is not the update rule: variable tracking and naming,
the two step counters, the learning rate (float, schedule or callable), and the order of
the gradient stages in one ``apply``:

    drop None gradients -> overwrite-with-gradient variables -> divide by loss_scale_factor
    -> accumulate (micro-steps only add; the N-th step uses the mean) -> clip (one mode)
    -> decoupled weight decay of the pre-update weights -> update_step
    -> EMA (first step copies) and overwrite every ``ema_overwrite_frequency`` steps
    -> constraints -> iterations += 1

Every argument and input is validated before any variable, slot or counter changes, so a
step happens whole or not at all; loaded counters and hyperparameters are range-checked the
same way. A step holds the optimizer's lock, so one optimizer may be stepped from several
threads. The stages themselves live in ``pipeline.py``.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from inertia import backend as backends
from inertia import pipeline
from inertia.backend.base import ArrayBackend
from inertia.distributed import every_gradient, present_after
from inertia.engine import optimizer_host
from inertia.engine.compiled import CompiledSteps, values_swapped
from inertia.engine.step import StepDescription
from inertia.schedules import LearningRateSchedule
from inertia.variable import Variable, _unique_name

__all__ = ["Optimizer"]

_BASE_ARGUMENTS = (
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "global_clipnorm",
    "clipvalue",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _is_real_number(value: Any) -> bool:
    """Python or NumPy real numbers (and 0-d real arrays); never bools."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        getattr(value, "shape", None) == ()
        and dtype is not None
        and getattr(dtype, "kind", "") in "iuf"
        and type(value).__module__.split(".")[0] == "numpy"
    )


def check_finite_number(name: str, value: Any, *, minimum: Optional[float] = None) -> float:
    """``value`` as a Python float, or a ValueError / TypeError naming ``name`` and ``value``."""
    if not _is_real_number(value):
        raise TypeError(f"Argument `{name}` must be a real number. Received: {name}={value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"Argument `{name}` must be a finite number. Received: {name}={value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"Argument `{name}` must be >= {minimum}. Received: {name}={value!r}")
    return number


def _check_optional_number(name: str, value: Any) -> Optional[float]:
    return None if value is None else check_finite_number(name, value)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def locked(method: _Method) -> _Method:
    """Run ``method`` holding the instance's ``_lock`` (a ``threading.RLock``): one
    optimizer stepped from several threads takes each step whole. Re-entrant, as a step
    calls other locked methods (``apply_gradients`` calls ``apply``)."""

    @functools.wraps(method)
    def holding_the_lock(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return holding_the_lock  # type: ignore[return-value]


def checked_pairs(grads_and_vars: Any) -> list:
    """``grads_and_vars`` as a list of (gradient, variable) pairs, or a TypeError / ValueError
    naming the argument; nothing is consumed twice (a ``zip`` is read once)."""
    if grads_and_vars is None or isinstance(grads_and_vars, (str, bytes, Mapping)) or not isinstance(grads_and_vars, Iterable):
        raise TypeError(
            "Argument `grads_and_vars` must be an iterable of (gradient, variable) pairs. "
            f"Received: grads_and_vars={grads_and_vars!r:.200}"
        )
    pairs = list(grads_and_vars)
    if not pairs:
        raise ValueError("Argument `grads_and_vars` is empty: received grads_and_vars=[]; expected (gradient, variable) pairs.")
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"Argument `grads_and_vars` must hold (gradient, variable) pairs. Received: {pair!r}")
        if isinstance(pair[0], Variable):
            # A gradient is an array; an inertia.Variable first is a pair written the wrong way round.
            raise TypeError(
                "Argument `grads_and_vars` must hold (gradient, variable) pairs, the gradient first; this pair "
                f"has {_describe(pair[0])} (an inertia.Variable) first: write (gradient, variable), not "
                "(variable, gradient) (a gradient held in a Variable goes in as its `.value`). "
                f"Received: {pair!r:.300}"
            )
    return pairs


def _config_dict(config: Any) -> dict:
    if not isinstance(config, Mapping):
        raise TypeError(f"Argument `config` must be a dict, as `get_config()` returns. Received: config={config!r:.200}")
    return dict(config)


def _weights_list(weights: Any) -> list:
    if weights is None or isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Iterable):
        raise TypeError(
            f"Argument `weights` must be a list of arrays, one per optimizer variable. Received: weights={weights!r:.200}"
        )
    return list(weights)


@backends.opaque_to_autograph
class Optimizer:
    """Abstract optimizer base class with the whole Keras 3 feature set.

    Subclasses implement ``build`` (create slots with ``add_variable_from_reference`` after
    calling ``super().build``), ``update_step(gradient, variable, learning_rate)`` and
    ``get_config``, exactly as for ``keras.optimizers.Optimizer``.

    Args:
        learning_rate: a float (ints and NumPy scalars are accepted too), a
            :class:`inertia.schedules.LearningRateSchedule` called with the raw step
            counter, or a zero-argument callable.
        weight_decay: decoupled decay ``w <- w - w*wd*lr`` of the pre-update weights.
        clipnorm / global_clipnorm / clipvalue: at most one gradient clipping mode.
        use_ema / ema_momentum / ema_overwrite_frequency: exponential moving average of
            the weights, copied into them every ``ema_overwrite_frequency`` steps.
        loss_scale_factor: static loss scale; gradients are divided by it first.
        gradient_accumulation_steps: update every N calls with the mean gradient.
        name: the optimizer's name, the prefix of its variables' paths.
        jit_compile: take the fused fast path where one exists (the reference path
            otherwise).

    Example (a custom optimizer):
        >>> import numpy as np, inertia
        >>> class SignSGD(inertia.Optimizer):
        ...     def update_step(self, gradient, variable, learning_rate):
        ...         lr = np.asarray(learning_rate, variable.dtype)
        ...         variable.assign(variable - lr * np.sign(gradient))
        ...     def get_config(self):
        ...         return super().get_config()
        >>> w = inertia.Variable([1.0, -1.0])
        >>> SignSGD(learning_rate=0.5).apply([np.array([3.0, -2.0], "float32")], [w])
        >>> w.numpy()
        array([ 0.5, -0.5], dtype=float32)
    """

    # The step counter's name and dtype (tf.keras' legacy optimizers count in int64 "iter").
    _iterations_name = "iteration"
    _iterations_dtype = "int32"
    # True only while inertia's own compiled step is traced (engine/compiled.py; see `_fused_update`).
    _in_own_step = False
    # Within one apply_gradients(skip_gradients_aggregation=True): no aggregation stage.
    _skip_aggregation = False
    # Within one apply(): a plain callable learning rate's value, once called (see `_called_learning_rate`).
    _in_apply = False
    _step_learning_rate: Optional[tuple] = None
    # Python attributes a compiled step bakes in: changing one compiles a new step.
    _compiled_attributes: tuple[str, ...] = (
        "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
        "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.split(".")[0] == "inertia":  # a user's own subclass is AutoGraph's to convert
            backends.opaque_to_autograph(cls)

    def __init__(
        self,
        learning_rate: Any,
        weight_decay: Optional[float] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: Optional[int] = None,
        loss_scale_factor: Optional[float] = None,
        gradient_accumulation_steps: Optional[int] = None,
        name: Optional[str] = None,
        jit_compile: bool = True,
        **kwargs: Any,
    ) -> None:
        self._lock = threading.RLock()
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.", stacklevel=2)
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        if name is None:
            name = _unique_name(_snake_case(type(self).__name__))
        elif not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"Argument `name` must be a non-empty string without '/'. Received: name={name!r}")
        if gradient_accumulation_steps is not None and gradient_accumulation_steps is not False:
            if (
                not isinstance(gradient_accumulation_steps, numbers.Integral)
                or isinstance(gradient_accumulation_steps, bool)
                or (gradient_accumulation_steps != 0 and gradient_accumulation_steps < 2)
            ):
                raise ValueError(
                    "`gradient_accumulation_steps` must be an integer >= 2. "
                    f"Received: gradient_accumulation_steps={gradient_accumulation_steps!r}"
                )
            _check_countable("gradient_accumulation_steps", gradient_accumulation_steps, self._iterations_dtype)
        if not isinstance(use_ema, (bool, numbers.Integral)):
            raise TypeError(f"Argument `use_ema` must be a bool. Received: use_ema={use_ema!r}")
        ema_momentum = check_finite_number("ema_momentum", ema_momentum)
        if use_ema:
            if not 0.0 <= ema_momentum <= 1.0:
                raise ValueError(
                    f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={ema_momentum}"
                )
            if ema_overwrite_frequency and (
                not isinstance(ema_overwrite_frequency, numbers.Integral)
                or isinstance(ema_overwrite_frequency, bool)
                or ema_overwrite_frequency < 1
            ):
                raise ValueError(
                    "`ema_overwrite_frequency` must be an integer >= 1 or None. "
                    f"Received: ema_overwrite_frequency={ema_overwrite_frequency!r}"
                )
            if ema_overwrite_frequency:
                _check_countable("ema_overwrite_frequency", ema_overwrite_frequency, self._iterations_dtype)
        clip_values = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        if sum(value is not None for value in clip_values.values()) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}"
            )
        clip_values = {key: _check_optional_number(key, value) for key, value in clip_values.items()}
        weight_decay = _check_optional_number("weight_decay", weight_decay)
        loss_scale_factor = _check_optional_number("loss_scale_factor", loss_scale_factor)
        if loss_scale_factor is not None and loss_scale_factor <= 0:
            raise ValueError(f"Argument `loss_scale_factor` must be > 0. Received: loss_scale_factor={loss_scale_factor}")
        lr_kind = self._check_learning_rate(learning_rate)

        self.name = name
        self.weight_decay = weight_decay
        self.clipnorm = clip_values["clipnorm"]
        self.clipvalue = clip_values["clipvalue"]
        self.global_clipnorm = clip_values["global_clipnorm"]
        self.use_ema = bool(use_ema)
        self.ema_momentum = ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency if use_ema and ema_overwrite_frequency else None
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps or None
        self.jit_compile = bool(jit_compile)
        self.built = False
        self._backend: ArrayBackend = backends.default()
        self._variables: list[Variable] = []
        self._variable_names: set[str] = set()
        self._trainable_variables: list[Variable] = []
        self._trainable_variables_indices: dict[int, int] = {}
        self._model_variables_moving_average: list[Optional[Variable]] = []
        self._accumulated_gradients: list[Optional[Variable]] = []
        self._exclude_from_weight_decay_variables: list = []
        self._exclude_from_weight_decay_ids: set[int] = set()
        self._exclude_from_weight_decay_pattern: Optional[re.Pattern] = None
        self._compiled = CompiledSteps()
        self._fused_plan: Any = None
        self._iterations = self.add_variable((), initializer="zeros", dtype=self._iterations_dtype, name=self._iterations_name)
        self._learning_rate_given: Optional[float] = None
        self._learning_rate: Any = None
        self._set_learning_rate(learning_rate, lr_kind)

    # ------------------------------------------------------------------------------------
    # learning rate
    # ------------------------------------------------------------------------------------
    @staticmethod
    def _check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> str:
        """The kind of ``learning_rate`` ("float", "schedule", "callable"), or an error naming
        ``name``: the keyword the user wrote (tf.keras' legacy ``lr`` too)."""
        if isinstance(learning_rate, LearningRateSchedule):
            return "schedule"
        if callable(learning_rate) and not _is_real_number(learning_rate):
            return "callable"
        if not _is_real_number(learning_rate):
            raise ValueError(
                f"Argument `{name}` should be float, or an instance of LearningRateSchedule, "
                "or a callable (that takes in the current iteration value and returns the "
                f"corresponding learning rate value). Received instead: {name}={learning_rate!r}"
            )
        check_finite_number(name, learning_rate, minimum=0.0)
        return "float"

    def _set_learning_rate(self, learning_rate: Any, kind: str) -> None:
        if kind == "float":
            self._learning_rate_given = float(learning_rate)
            self._learning_rate = self.add_variable((), initializer=float(learning_rate), dtype="float32", name="learning_rate")
        else:
            self._learning_rate = learning_rate

    @property
    def learning_rate(self) -> Any:
        """The current learning rate: the variable, or the schedule / callable evaluated now."""
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        kind = self._check_learning_rate(learning_rate)
        if kind != "float":
            if isinstance(self._learning_rate, Variable):
                self._untrack_variable(self._learning_rate)
            self._learning_rate = learning_rate
            self._learning_rate_given = None
            return
        if not isinstance(self._learning_rate, Variable):
            kind_text = (
                "a `LearningRateSchedule` object"
                if isinstance(self._learning_rate, LearningRateSchedule)
                else "a callable"
            )
            raise TypeError(
                f"This optimizer was created with {kind_text} as its `learning_rate` constructor "
                "argument, hence its learning rate is not settable. If you need the learning rate "
                "to be settable, you should instantiate the optimizer with a float `learning_rate` "
                f"argument. Received: learning_rate={learning_rate!r}"
            )
        self._learning_rate.assign(self._backend.scalar(float(learning_rate), "float32", like=self._learning_rate.value))
        self._learning_rate_given = float(learning_rate)

    def _get_current_learning_rate(self) -> Any:
        if isinstance(self._learning_rate, LearningRateSchedule):
            return self._learning_rate(self._iterations.value)
        if isinstance(self._learning_rate, Variable):
            return self._learning_rate.value
        if callable(self._learning_rate):
            return self._called_learning_rate()
        return self._learning_rate

    def _called_learning_rate(self) -> Any:
        """A plain callable learning rate's value, called once per step: within one ``apply``
        a fast path that declines (or plans again) and the path that then runs share it."""
        if self._step_learning_rate is not None:
            return self._step_learning_rate[0]
        value = self._learning_rate()
        if self._in_apply:
            self._step_learning_rate = (value,)
        return value

    def _learning_rate_array(self) -> Any:
        """The learning rate of this step as a 0-d array (cast to each variable's dtype later)."""
        value = self._get_current_learning_rate()
        if isinstance(value, Variable):
            value = value.value
        if not self._backend.is_array(value):
            value = self._backend.asarray(value, like=self._iterations.value)
        return value

    # ------------------------------------------------------------------------------------
    # counters and variables
    # ------------------------------------------------------------------------------------
    @property
    def iterations(self) -> Any:
        """Steps taken: the counter variable, or ``raw // N`` under gradient accumulation."""
        if self.gradient_accumulation_steps:
            return self._iterations.value // self.gradient_accumulation_steps
        return self._iterations

    @property
    def variables(self) -> list[Variable]:
        """The optimizer's variables, in Keras' order: iteration, learning_rate, slots."""
        return self._all_variables()

    def _all_variables(self) -> list[Variable]:
        """Every variable a step may change (wrappers add their inner optimizer's)."""
        return list(self._variables)

    def _steps_taken(self) -> Any:
        """The accumulation-aware step count (the EMA's clock), before this step's increment."""
        raw = self._iterations.value
        return raw // self.gradient_accumulation_steps if self.gradient_accumulation_steps else raw

    def _flag(self, condition: Any) -> Any:
        """A condition on counters: a Python bool, unless it is traced (inside ``jax.jit``)."""
        return condition if self._backend.is_traced(condition) else bool(condition)

    def _branch(self, flag: Any, if_true: Callable[[], None], if_false: Optional[Callable[[], None]] = None) -> None:
        """Run one branch of a step. Under tracing both run and every variable selects its
        value with ``where(flag, ...)`` (the way compiled code branches on data)."""
        if isinstance(flag, bool):
            if flag:
                if_true()
            elif if_false is not None:
                if_false()
            return
        variables = self._all_variables() + list(self._trainable_variables)
        ops = self._backend
        if ops.holds_state_in_place and all(ops.is_mutable_native(v._value) for v in variables):
            ops.branch(flag, if_true, if_false)  # tf.cond: each branch assigns the variables it changes
            return
        before = [v._value for v in variables]
        if_true()
        taken = [v._value for v in variables]
        for variable, value in zip(variables, before):
            variable._value = value
        if if_false is not None:
            if_false()
        for variable, value in zip(variables, taken):
            if value is not variable._value:
                variable._value = variable.backend.where(flag, value, variable._value)

    def _new_variable_name(self, name: str) -> str:
        unique, index = name, 0
        while unique in self._variable_names:
            index += 1
            unique = f"{name}_{index}"
        self._variable_names.add(unique)
        return unique

    def _track(self, variable: Variable) -> Variable:
        variable._path = f"{self.name}/{variable.name}"
        self._variables.append(variable)
        return variable

    def _untrack_variable(self, variable: Variable) -> None:
        self._variables = [v for v in self._variables if v is not variable]
        self._variable_names.discard(variable.name)

    def add_variable(
        self,
        shape: Sequence[int],
        initializer: Any = "zeros",
        dtype: Optional[str] = None,
        aggregation: str = "none",
        name: Optional[str] = None,
    ) -> Variable:
        """Create and track an optimizer variable (a non-trainable :class:`Variable`)."""
        dtype = dtype or "float32"
        shape = tuple(int(s) for s in shape)
        like = self._trainable_variables[0].value if self._trainable_variables else None
        with self._backend.outside_trace():
            value = self._backend.holder(self._initial_value(initializer, shape, dtype, like))
        variable = Variable._alias(value, self._backend, self._new_variable_name(name or "variable"))
        variable.trainable = False
        return self._track(variable)

    def _initial_value(self, initializer: Any, shape: tuple, dtype: str, like: Any) -> Any:
        ops = self._backend
        if isinstance(initializer, str):
            if initializer == "zeros":
                return ops.zeros(shape, dtype, like=like)
            if initializer == "ones":
                return ops.zeros(shape, dtype, like=like) + ops.scalar(1, dtype, like=like)
            raise ValueError(f"Unknown initializer: initializer={initializer!r}. Use 'zeros', 'ones', a number or a callable.")
        if callable(initializer):
            return ops.cast(ops.asarray(initializer(shape, dtype), like=like), dtype)
        value = ops.asarray(initializer, dtype=dtype, like=like)
        if ops.shape(value) != shape:
            value = ops.zeros(shape, dtype, like=like) + value
        return value

    def add_variable_from_reference(
        self, reference_variable: Any, name: Optional[str] = None, initializer: Any = "zeros"
    ) -> Variable:
        """A slot shaped, typed and placed like ``reference_variable``.

        Named ``<reference path with '/' as '_'>_<name>``, e.g. ``dense_kernel_momentum``.
        """
        reference = self._reference_of(reference_variable)
        prefix = reference.path.replace("/", "_").replace(":", "_")
        ops = reference.backend
        with ops.outside_trace():
            value = ops.holder(self._initial_value(initializer, reference.shape, reference.dtype, reference.value))
        variable = Variable._alias(value, ops, self._new_variable_name(f"{prefix}_{name or 'var'}"))
        variable.trainable = False
        return self._track(variable)

    def add_optimizer_variables(
        self, trainable_variables: Sequence[Any], name: Any, initializer: Any = "zeros"
    ) -> Any:
        """One slot per variable (None for overwrite-with-gradient variables), or a tuple of
        such lists when ``name`` is a list of names."""
        names = [name] if isinstance(name, str) else list(name)
        lists: list[list[Optional[Variable]]] = [[] for _ in names]
        for variable in trainable_variables:
            skip = self._reference_of(variable).overwrite_with_gradient
            for slots, slot_name in zip(lists, names):
                slots.append(None if skip else self.add_variable_from_reference(variable, slot_name, initializer))
        return lists[0] if isinstance(name, str) else tuple(lists)

    def _get_variable_index(self, variable: Any) -> int:
        return self._trainable_variables_indices[id(variable)]

    def _reference_of(self, target: Any) -> Variable:
        """The Variable behind a slot's reference: any Variable, or a built native array."""
        return target if isinstance(target, Variable) else self._wrapper_of(target)

    def _wrapper_of(self, target: Any) -> Variable:
        """The built Variable for a user's target; an unknown target is an error."""
        index = self._trainable_variables_indices.get(id(target))
        if index is not None:
            return self._trainable_variables[index]
        raise ValueError(
            f"Unknown variable: {_describe(target)}. This optimizer can only be called for the "
            "variables it was originally built with. When working with a new set of variables, "
            "you should recreate a new optimizer instance."
        )

    # ------------------------------------------------------------------------------------
    # build
    # ------------------------------------------------------------------------------------
    def _check_targets(self, targets: Sequence[Any], argument: str = "trainable_variables") -> ArrayBackend:
        """Targets must be floating Variables or mutable native arrays of one backend."""
        seen: set[int] = set()
        backend: Optional[ArrayBackend] = None
        first: Any = None
        for target in targets:
            if isinstance(target, Variable):
                ops = target.backend
            else:
                ops = backends.of(target)
                if ops is None or not ops.is_mutable_native(target):
                    raise TypeError(
                        f"Argument `{argument}` must hold inertia.Variable objects or mutable arrays "
                        f"(numpy.ndarray, torch.Tensor). Received: {_describe(target)}"
                        + (
                            "; JAX arrays are immutable: wrap them in inertia.Variable or use "
                            "`stateless_apply`."
                            if ops is not None and ops.name == "jax"
                            else ""
                        )
                    )
            dtype = ops.dtype_name(target.value if isinstance(target, Variable) else target)
            if not ops.is_floating(dtype):
                raise TypeError(
                    f"Argument `{argument}` must hold floating-point variables. "
                    f"Received: {_describe(target)} of dtype {dtype}"
                )
            if id(target) in seen:
                raise ValueError(f"Argument `{argument}` lists a variable twice: {_describe(target)}")
            seen.add(id(target))
            if backend is None:
                backend, first = ops, target
            elif ops is not backend:
                raise ValueError(
                    f"All variables of one optimizer must use one backend. Received: "
                    f"{_describe(first)} on {backend.name} and {_describe(target)} on {ops.name}"
                )
        return backend or self._backend

    def _register_trainables(self, variables: Sequence[Any]) -> list[Variable]:
        """Index the variables; native arrays get an aliasing Variable named ``param_<i>``."""
        variables = list(variables)
        ops = self._check_targets(variables, "var_list")
        if ops is not self._backend:
            self._move_own_variables(ops, variables[0])
        self._trainable_variables = []
        self._trainable_variables_indices = {}
        return self._index_trainables(variables, ops)

    def _index_trainables(self, variables: list, ops: ArrayBackend) -> list[Variable]:
        """Append ``variables`` (checked) to the trainable list and index them."""
        start = len(self._trainable_variables)
        wrappers = [
            v if isinstance(v, Variable) else Variable._alias(v, ops, f"param_{start + i}") for i, v in enumerate(variables)
        ]
        self._trainable_variables = self._trainable_variables + wrappers
        for index, (target, wrapper) in enumerate(zip(variables, wrappers), start=start):
            self._trainable_variables_indices[id(target)] = index
            self._trainable_variables_indices[id(wrapper)] = index
        return wrappers

    def _register_more_trainables(self, variables: Sequence[Any]) -> list[Variable]:
        """Add variables to a built optimizer (tf.keras' legacy optimizers take new variables
        at any step); returns their wrappers. The base slots (EMA averages, accumulators) are
        made for them; a subclass makes its own. Checked before anything changes."""
        variables = list(variables)
        ops = self._check_targets(self._trainable_variables + variables, "var_list")  # one backend, no repeats
        wrappers = self._index_trainables(variables, ops)
        if self.use_ema:
            self._model_variables_moving_average = self._model_variables_moving_average + self.add_optimizer_variables(wrappers, "average")
        if self.gradient_accumulation_steps:
            self._accumulated_gradients = self._accumulated_gradients + [
                self.add_variable_from_reference(v, "gradient_accumulator") for v in wrappers
            ]
        return wrappers

    def _move_own_variables(self, ops: ArrayBackend, like: Any) -> None:
        """Re-home the counters created at construction onto the variables' backend/device."""
        like_value = like.value if isinstance(like, Variable) else like
        with ops.outside_trace():
            for variable in self._variables:
                variable._value = ops.holder(ops.asarray(variable.numpy(), dtype=variable.dtype, like=like_value))
                variable._backend = ops
        self._backend = ops

    def build(self, var_list: Sequence[Any]) -> None:
        """Create the base slots (EMA averages, gradient accumulators) for ``var_list``.

        Subclasses call ``super().build(var_list)`` first, then create their own slots.
        """
        variables = self._register_trainables(var_list)
        if self.use_ema:
            self._model_variables_moving_average = self.add_optimizer_variables(variables, "average")
        if self.gradient_accumulation_steps:
            self._accumulated_gradients = [
                self.add_variable_from_reference(v, "gradient_accumulator") for v in variables
            ]
        self.built = True

    # ------------------------------------------------------------------------------------
    # weight decay
    # ------------------------------------------------------------------------------------
    def exclude_from_weight_decay(
        self, var_list: Optional[Iterable[Any]] = None, var_names: Optional[Iterable[str]] = None
    ) -> None:
        """Exempt variables from weight decay: by identity, or by regular expressions searched
        in the variable's (short) name. Each call replaces the previous exclusions."""
        names = list(var_names) if var_names is not None else []
        for item in names:
            if not isinstance(item, str):
                raise TypeError(f"Argument `var_names` must hold strings. Received: var_names={var_names!r}")
        pattern = None
        if names:
            try:
                pattern = re.compile("|".join(sorted(set(names))))
            except re.error as error:
                raise ValueError(f"Argument `var_names` holds an invalid regular expression: var_names={names!r} ({error})") from None
        # The variables themselves are kept (not only their ids): a copy of the optimizer keys
        # its exclusions by the copied variables.
        self._exclude_from_weight_decay_variables = list(var_list or [])
        self._exclude_from_weight_decay_ids = {id(v) for v in self._exclude_from_weight_decay_variables}
        self._exclude_from_weight_decay_pattern = pattern

    def _use_weight_decay(self, variable: Variable) -> bool:
        excluded = self._exclude_from_weight_decay_ids
        if id(variable) in excluded or (variable._aliases_native and id(variable.value) in excluded):
            return False
        pattern = self._exclude_from_weight_decay_pattern
        return not (pattern is not None and pattern.search(variable.name))

    def _apply_weight_decay(self, variables: Sequence[Variable], learning_rate: Any) -> None:
        if self.weight_decay is None:
            return
        weight_decay = self._weight_decay_rate()
        for variable in variables:
            if self._use_weight_decay(variable):
                variable.assign(pipeline.decoupled_weight_decay(variable.backend, variable.value, weight_decay, learning_rate))

    def _weight_decay_rate(self) -> float:
        """The decay rate as the face rounds it (Keras 3: the Python float, rounded once to
        each variable's dtype)."""
        return self.weight_decay

    # ------------------------------------------------------------------------------------
    # apply
    # ------------------------------------------------------------------------------------
    def aggregate_gradients(self, grads_and_vars: list) -> list:
        """The gradient-aggregation stage: ``(gradient, variable)`` pairs in, the same pairs
        with each gradient aggregated across replicas out. Identity on one process.

        It runs on real update steps only (never on accumulation micro-steps), after the
        accumulation mean and before clipping, in ``apply``, ``apply_gradients``,
        ``minimize`` and ``stateless_apply``; under tracing (``jax.jit``, ``shard_map``)
        it is traced with the step. Override it, or assign a ready-made one:
        ``opt.aggregate_gradients = inertia.torch.all_reduce_mean()`` (torch.distributed),
        ``inertia.distributed.jax.pmean("data")`` (inside ``shard_map`` / ``pmap``). It
        runs holding the optimizer's lock: replicas are processes, or one traced program,
        never threads stepping one optimizer.
        """
        return grads_and_vars

    def _aggregates(self) -> bool:
        """Whether this step has an aggregation stage: ``aggregate_gradients`` overridden
        or assigned, and not skipped (``apply_gradients(skip_gradients_aggregation=True)``)."""
        if self._skip_aggregation:
            return False
        return "aggregate_gradients" in self.__dict__ or type(self).aggregate_gradients is not Optimizer.aggregate_gradients

    def _aggregated(self, grads: list, variables: list, with_presence: bool = True) -> tuple[list, list]:
        """``grads`` through ``aggregate_gradients``, checked: one gradient per variable, in
        order, each an array of the variable's backend, shape and dtype. Returns the
        aggregated gradients and, per variable, whether some replica had a gradient for it.

        ``with_presence``: ``grads`` may hold None (this replica has no gradient there); the
        stage then gets zeros in their place and, last, a presence vector paired with None
        (:func:`inertia.distributed.every_gradient`), so that every replica aggregates the
        same layout. A traced step (one program on every device) passes its list as it is."""
        ops = variables[0].backend
        if with_presence:
            arrays = every_gradient(ops, grads, [v.value for v in variables])
            owners: list = list(variables) + [None]
        else:
            arrays, owners = list(grads), list(variables)
        pairs = list(zip(arrays, owners))
        returned = self.aggregate_gradients(pairs)
        returned = list(returned) if isinstance(returned, (list, tuple)) else returned
        if not isinstance(returned, list) or len(returned) != len(pairs):
            raise ValueError(
                f"`aggregate_gradients` must return {len(pairs)} (gradient, variable) pairs, one per pair it was "
                f"given. Received: {returned!r:.200}"
            )
        aggregated = []
        for (gradient, variable), pair in zip(pairs, returned):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"`aggregate_gradients` must return (gradient, variable) pairs. Received: {pair!r:.200}")
            new = pair[0].value if isinstance(pair[0], Variable) else pair[0]
            if backends.of(new) is not ops or ops.shape(new) != ops.shape(gradient) or ops.dtype_name(new) != ops.dtype_name(gradient):
                what = _describe(variable) if variable is not None else "the presence vector"
                raise TypeError(
                    f"`aggregate_gradients` returned for {what} {_describe(new)}; expected a {ops.name} "
                    f"array of shape {ops.shape(gradient)} and dtype {ops.dtype_name(gradient)}, as the gradient it aggregates."
                )
            aggregated.append(new)
        if with_presence:
            return aggregated[:-1], present_after(ops, aggregated[-1])
        return aggregated, [True] * len(aggregated)

    @locked
    def apply_gradients(
        self, grads_and_vars: Iterable[tuple], name: Optional[str] = None, skip_gradients_aggregation: bool = False
    ) -> Variable:
        """Apply ``(gradient, variable)`` pairs; returns the iteration counter variable.
        ``skip_gradients_aggregation``: this step has no aggregation stage (the gradients
        are aggregated already)."""
        pairs = checked_pairs(grads_and_vars)
        grads, variables = zip(*pairs)
        previous, self._skip_aggregation = self._skip_aggregation, bool(skip_gradients_aggregation)
        try:
            self.apply(list(grads), list(variables))
        finally:
            self._skip_aggregation = previous
        return self._iterations

    @locked
    def apply(self, grads: Sequence[Any], trainable_variables: Optional[Sequence[Any]] = None) -> None:
        """Apply gradients to variables (the optimizer's built list when none are given)."""
        grads = list(grads)
        if len(grads) == 0:
            return
        self._in_apply, self._step_learning_rate = True, None
        try:
            self._apply(grads, trainable_variables)
        finally:
            self._in_apply, self._step_learning_rate = False, None

    def _apply(self, grads: list, trainable_variables: Optional[Sequence[Any]]) -> None:
        aggregating = self._aggregates() and not self._backend.is_traced(self._iterations.value)
        if aggregating and self._is_update_step():
            self._apply_aggregated(grads, trainable_variables)
            return
        if self.jit_compile and (
            self._fused_apply(grads, trainable_variables)
            or (not aggregating and self._compiled.repeat(self, grads, trainable_variables))
        ):
            return
        grads, variables = self._prepare(grads, trainable_variables)
        ops = self._backend
        # A plain callable learning rate may read Python state, so it runs eagerly (a compiled
        # step would call it once, when tracing, and keep that value for good). So does a
        # micro-step with an aggregation stage: compiled, it would trace the stage too.
        plain_callable = callable(self._learning_rate) and not isinstance(self._learning_rate, LearningRateSchedule)
        if (self.jit_compile and ops.compiles and not plain_callable and not aggregating
                and not ops.is_traced(self._iterations.value)):
            kept_grads, kept = self._filter_empty_gradients(grads, variables)
            self._compiled.run(self, kept_grads, kept, trainable_variables, repeatable=len(kept) == len(grads))
            return
        with ops.step_context():
            self._apply_prepared(grads, variables)

    def _is_update_step(self) -> bool:
        """Whether this step is a real update (not an accumulation micro-step)."""
        steps = self.gradient_accumulation_steps
        return not steps or (int(self._iterations.value) + 1) % steps == 0

    def _apply_aggregated(self, grads: list, trainable_variables: Optional[Sequence[Any]]) -> None:
        """A real update with an aggregation stage, in the pipeline's order: unscale, the
        accumulation mean, ``aggregate_gradients``, then the rest of the step (on the host
        kernel where it covers it). The stage and every check run before the first change,
        so a failing collective changes nothing."""
        every_grad, every_variable = self._prepare(grads, trainable_variables)
        grads, variables = self._filter_empty_gradients(every_grad, every_variable)
        # The stage sees every variable given (zeros where this replica has no gradient), so
        # that every replica aggregates the same layout; a variable no replica has a
        # gradient for is skipped after it, as without a stage.
        stage = [(g, v) for g, v in zip(every_grad, every_variable) if not v.overwrite_with_gradient]
        steps = self.gradient_accumulation_steps
        final, kept = [], [v for _, v in stage]
        for gradient, variable in stage:
            if gradient is not None and self.loss_scale_factor is not None:
                gradient = pipeline.unscale(variable.backend, gradient, self.loss_scale_factor)
            if gradient is not None and steps:
                accumulator = self._accumulated_gradients[self._get_variable_index(variable)].value
                gradient = pipeline.accumulated_mean(variable.backend, gradient, accumulator, steps)
            final.append(gradient)
        if kept:
            final, present = self._aggregated(final, kept)
            final, kept = [g for g, p in zip(final, present) if p], [v for v, p in zip(kept, present) if p]
        with self._backend.step_context():
            self._overwrite_variables_directly_with_gradients(grads, variables)
            # The kernel's plan is kept by the targets as given: the step's own list when it is whole.
            given = self._trainable_variables if trainable_variables is None else list(trainable_variables)
            if final and self.jit_compile and optimizer_host.apply_final(self, final, given if len(given) == len(kept) else kept):
                return
            if final:
                self._update(final, kept, aggregated=True)
                for variable in kept:
                    if variable.constraint is not None:
                        variable.assign(variable.constraint(variable))
            for accumulator in self._accumulated_gradients if steps else ():
                if accumulator is not None:
                    _reset(accumulator)
            self._iterations.assign(self._iterations.value + 1)

    def describe_step(self) -> Optional[StepDescription]:
        """This optimizer's step as data for the engine's fast paths
        (:mod:`inertia.engine.step`), or None: the base class knows no rule, so a custom
        optimizer's ``update_step`` always runs on the reference path."""
        return None

    def _slots_for_engine(self) -> dict:
        """The rule's slot lists by name (``"momentum"``), for the engine's fast paths."""
        return {}

    def _engine_groups(self, first: Variable, has_buffer: bool) -> tuple[list, Optional[float]]:
        """This step's group settings (one group) and global clip norm, for the fast paths."""
        raise NotImplementedError

    def _fused_apply(self, grads: list, trainable_variables: Optional[Sequence[Any]]) -> bool:
        """Run the whole step on a fast path where one covers it (the host kernel; torch's
        multi-tensor kernels off the CPU); False to take the reference path (nothing changed)."""
        if optimizer_host.apply(self, grads, trainable_variables):
            return True
        if self._backend.name == "torch":
            from inertia.multi_tensor import multi_tensor_apply

            return multi_tensor_apply(self, grads, trainable_variables)
        return False

    def _prepare(self, grads: list, trainable_variables: Optional[Sequence[Any]]) -> tuple[list, list[Variable]]:
        """Validate everything (building if needed); returns checked gradients and wrappers.

        Nothing is modified unless every check passes; building happens only then.
        """
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be built on "
                    "a list of variables. Call `optimizer.build(trainable_variables)` first."
                )
            if len(grads) != len(self._trainable_variables):
                raise ValueError(
                    "When passing `grads` as a list of gradient tensors, the gradients must match "
                    f"`optimizer.variables` one-to-one. Received a list of {len(grads)} gradients, but "
                    f"the optimizer is tracking {len(self._trainable_variables)} trainable variables."
                )
            targets: list = list(self._trainable_variables)
        else:
            targets = list(trainable_variables)
            if len(grads) != len(targets):
                raise ValueError(
                    f"Arguments `grads` and `trainable_variables` must have the same length. "
                    f"Received: {len(grads)} gradients and {len(targets)} variables."
                )
            self._check_targets(targets)
            if self.built:
                targets = [self._wrapper_of(t) for t in targets]
        checked = [self._check_gradient(g, t) for g, t in zip(grads, targets)]
        if all(g is None for g in checked):
            raise ValueError("No gradients provided for any variable.")
        if not self.built:
            first = targets[0]
            # Inside a tf.function being traced, the state is made outside the graph.
            with (first.backend if isinstance(first, Variable) else backends.of(first)).outside_trace():
                self.build(targets)
            self.built = True
            targets = [self._wrapper_of(t) for t in targets]
        return checked, targets

    def _check_gradient(self, gradient: Any, target: Any) -> Any:
        """The gradient as an array of the target's backend and dtype, or a clear error."""
        if gradient is None:
            return None
        if isinstance(gradient, Variable):
            gradient = gradient.value
        ops = target.backend if isinstance(target, Variable) else backends.of(target)
        value = target.value if isinstance(target, Variable) else target
        name = _describe(target)
        grad_ops = backends.of(gradient)
        if grad_ops is ops and ops.is_sparse(gradient):
            return self._checked_sparse_gradient(ops, gradient, value, name)
        if grad_ops is not None and grad_ops.is_sparse(gradient):
            raise TypeError(f"The gradient for {name} is a sparse {grad_ops.name} gradient but the variable is on {ops.name}.")
        if grad_ops is None:
            try:
                gradient = ops.asarray(gradient, like=value)
            except (TypeError, ValueError):
                raise TypeError(f"The gradient for {name} is not a numeric array. Received: gradient={gradient!r}") from None
        elif grad_ops is not ops:
            raise TypeError(
                f"The gradient for {name} is a {grad_ops.name} array but the variable is on {ops.name}; "
                f"convert it first. Received: gradient of type {type(gradient).__name__}"
            )
        dtype = ops.dtype_name(gradient)
        if not ops.is_floating(dtype):
            raise TypeError(
                f"Gradients must be floating-point arrays; the gradient for {name} has dtype {dtype} "
                f"(int, bool, complex and object gradients are rejected, not cast). Received: gradient={gradient!r}"
            )
        if ops.shape(gradient) != ops.shape(value):
            raise ValueError(
                f"The gradient for {name} has shape {ops.shape(gradient)} but the variable has shape "
                f"{ops.shape(value)}."
            )
        return ops.cast(gradient, ops.dtype_name(value))

    #: Whether the face steps sparse gradients (TF's IndexedSlices) row by row, as tf.keras'
    #: optimizers do; the others take the dense gradient a sparse one stands for.
    _takes_sparse_gradients = False

    def _checked_sparse_gradient(self, ops: ArrayBackend, gradient: Any, value: Any, name: str) -> Any:
        """A sparse gradient checked like a dense one: floating, of the variable's shape; cast
        to its dtype, and densified unless the face steps rows."""
        dtype = ops.dtype_name(gradient)
        if not ops.is_floating(dtype):
            raise TypeError(
                f"Gradients must be floating-point arrays; the sparse gradient for {name} has dtype {dtype}. "
                f"Received: gradient={gradient!r:.200}"
            )
        shape, expected = ops.shape(gradient), ops.shape(value)
        if shape != expected and not (shape[:1] == (None,) and shape[1:] == expected[1:]):
            raise ValueError(f"The gradient for {name} has shape {shape} but the variable has shape {expected}.")
        problem = ops.sparse_problem(gradient, expected)
        if problem is not None:
            raise ValueError(f"The sparse gradient for {name} {problem}. Received: gradient={gradient!r:.200}")
        gradient = ops.sparse_map(gradient, lambda rows: ops.cast(rows, ops.dtype_name(value)))
        return gradient if self._takes_sparse_gradients else ops.densify(gradient)

    def _apply_prepared(self, grads: list, variables: list[Variable]) -> None:
        grads, variables = self._filter_empty_gradients(grads, variables)
        grads, variables = self._overwrite_variables_directly_with_gradients(grads, variables)
        if grads:
            if self.loss_scale_factor is not None:
                grads = [pipeline.unscale(v.backend, g, self.loss_scale_factor) for g, v in zip(grads, variables)]
            self._backend_apply_gradients(grads, variables)
            for variable in variables:
                if variable.constraint is not None:
                    variable.assign(variable.constraint(variable))
        self._iterations.assign(self._iterations.value + 1)

    def _filter_empty_gradients(self, grads: list, variables: list[Variable]) -> tuple[list, list[Variable]]:
        missing = [v.path for g, v in zip(grads, variables) if g is None]
        if missing:
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss. "
                "If using `model.compile()`, did you forget to provide a `loss` argument?",
                stacklevel=4,
            )
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            return [g for g, _ in pairs], [v for _, v in pairs]
        return grads, variables

    def _overwrite_variables_directly_with_gradients(
        self, grads: list, variables: list[Variable]
    ) -> tuple[list, list[Variable]]:
        """Variables flagged ``overwrite_with_gradient`` take the gradient as their value
        (float8 scale bookkeeping); under accumulation they keep the running maximum."""
        if not any(v.overwrite_with_gradient for v in variables):
            return grads, variables
        kept_grads, kept_vars = [], []
        steps = self.gradient_accumulation_steps
        for gradient, variable in zip(grads, variables):
            if not variable.overwrite_with_gradient:
                kept_grads.append(gradient)
                kept_vars.append(variable)
            elif steps:
                accumulator = self._accumulated_gradients[self._get_variable_index(variable)]
                running_max = variable.backend.maximum(gradient, accumulator.value)

                def take_maximum(variable=variable, accumulator=accumulator, running_max=running_max) -> None:
                    variable.assign(running_max)
                    _reset(accumulator)

                self._branch(
                    self._flag((self._iterations.value + 1) % steps == 0),
                    take_maximum,
                    lambda accumulator=accumulator, running_max=running_max: accumulator.assign(running_max),
                )
            else:
                variable.assign(gradient)
        return kept_grads, kept_vars

    def _backend_apply_gradients(self, grads: list, variables: list[Variable]) -> None:
        steps = self.gradient_accumulation_steps
        if not steps:
            self._update(grads, variables)
            return
        accumulators = [self._accumulated_gradients[self._get_variable_index(v)] for v in variables]

        def update() -> None:
            means = [pipeline.accumulated_mean(v.backend, g, a.value, steps) for g, a, v in zip(grads, accumulators, variables)]
            self._update(means, variables)
            for accumulator in self._accumulated_gradients:
                if accumulator is not None:
                    _reset(accumulator)

        def accumulate() -> None:
            # No clipping, decay, update or EMA on micro-steps: the EMA advancing only on
            # real update steps is a deliberate deviation from Keras.
            for gradient, accumulator in zip(grads, accumulators):
                accumulator.assign(pipeline.accumulate(accumulator.value, gradient))

        self._branch(self._flag((self._iterations.value + 1) % steps == 0), update, accumulate)

    def _update(self, grads: list, variables: list[Variable], aggregated: bool = False) -> None:
        """A real update step: aggregate (unless ``aggregated`` already), clip, decay,
        update_step, then the EMA."""
        if not aggregated and self._aggregates():  # traced: the stage is part of the traced step
            grads, _ = self._aggregated(grads, variables, with_presence=False)
        learning_rate = self._learning_rate_array()
        if not self._fused_update(grads, variables, learning_rate):
            grads = self._clip_gradients(grads, variables)
            self._apply_weight_decay(variables, learning_rate)
            self._backend_update_step(grads, variables, learning_rate)
            if self.use_ema:
                self._advance_moving_averages(variables)
        if self.use_ema:
            steps_taken = self._steps_taken()
            frequency = self.ema_overwrite_frequency
            if frequency:
                averaged = self._moving_average_targets(variables)
                self._branch(
                    self._flag((steps_taken + 1) % frequency == 0),
                    lambda: self._overwrite_model_variables_with_average_value(averaged),
                )

    def _advance_moving_averages(self, variables: list[Variable]) -> None:
        """The EMA stage of an update of ``variables``: Keras 3 advances every trainable
        variable's average, the first step copying the variable."""
        self._update_model_variables_moving_average(self._trainable_variables, self._flag(self._steps_taken() == 0))

    def _moving_average_targets(self, variables: list[Variable]) -> list:
        """The variables an EMA overwrite replaces by their averages after an update of
        ``variables``: every trainable variable (Keras 3)."""
        return self._trainable_variables

    def _fused_update(self, grads: list, variables: list[Variable], learning_rate: Any) -> bool:
        """Trace clip, decay, update_step and the EMA as one fused operation where the engine
        has one for this step (a custom call on JAX's CPU); False to run them one by one."""
        if self._backend.name != "jax" or not self._in_own_step:
            return False
        from inertia.xla_fused import fused_update

        return fused_update(self, grads, variables, learning_rate)

    def _clip_gradients(self, grads: list, variables: Sequence[Variable]) -> list:
        if not grads:
            return grads
        return pipeline.clip(variables[0].backend, grads, self.clipnorm, self.global_clipnorm, self.clipvalue)

    def _backend_update_step(self, grads: list, variables: list[Variable], learning_rate: Any) -> None:
        """Run ``update_step`` for each pair; subclasses may fuse this loop."""
        for gradient, variable in zip(grads, variables):
            self.update_step(gradient, variable, learning_rate)

    def update_step(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        """Update one variable from its (processed) gradient. Subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement `update_step(gradient, variable, learning_rate)`.")

    # ------------------------------------------------------------------------------------
    # EMA
    # ------------------------------------------------------------------------------------
    def _update_model_variables_moving_average(
        self, variables: Sequence[Variable], first: Any, averages: Optional[Sequence[Optional[Variable]]] = None
    ) -> None:
        """Advance the averages (each trainable variable's, or ``averages``, paired with
        ``variables``); ``first``: the first step, where an average starts at its variable."""
        for variable, average in zip(variables, self._model_variables_moving_average if averages is None else averages):
            if average is not None:
                average.assign(pipeline.ema_update(variable.backend, average.value, variable.value, self.ema_momentum, first))

    def _overwrite_model_variables_with_average_value(self, variables: Sequence[Any]) -> None:
        averages = self._model_variables_moving_average
        if len(variables) != len(averages):  # some of them: each with its own average
            averages = [averages[self._get_variable_index(v)] for v in variables]
        for variable, average in zip(variables, averages):
            if average is not None:
                _assign_to(variable, average.value)

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        """Copy the EMA of the weights into ``var_list`` (no-op without ``use_ema``)."""
        if not self.use_ema:
            return
        var_list = list(var_list)
        if len(var_list) != len(self._model_variables_moving_average):
            raise ValueError(
                f"The length of model variables ({len(var_list)}) to override does not match the length "
                f"of model variables stored in the optimizer ({len(self._model_variables_moving_average)}). "
                "Please check if the optimizer was called on your model."
            )
        self._overwrite_model_variables_with_average_value(var_list)

    # ------------------------------------------------------------------------------------
    # gradients
    # ------------------------------------------------------------------------------------
    def scale_loss(self, loss: Any) -> Any:
        """Multiply a loss by the static loss scale (identity without one)."""
        return loss * self.loss_scale_factor if self.loss_scale_factor is not None else loss

    @locked  # the loss is called with the variables holding traced values: no step may run meanwhile
    def compute_gradients(self, loss: Any, var_list: Any, tape: Any = None) -> list[tuple]:
        """``[(gradient, variable)]`` of ``loss`` with the backend's own autodiff.

        ``loss`` is a zero-argument callable reading the ``inertia.Variable`` objects of
        ``var_list`` (operators and ``.value`` are traced), or a callable taking one array
        per variable (needed for native arrays). ``var_list`` may itself be a callable.
        On TensorFlow, ``loss`` may also be a tensor computed under ``tape`` (a
        ``tf.GradientTape``), and a zero-argument callable differentiates ``tf.Variable``s.
        """
        variables = list(var_list() if callable(var_list) else var_list)
        if not variables:
            raise ValueError(f"Argument `var_list` must not be empty. Received: var_list={var_list!r}")
        ops = self._check_targets(variables, "var_list")
        values = [v.value if isinstance(v, Variable) else v for v in variables]
        if tape is not None:
            if ops.name != "tensorflow":
                raise ValueError(
                    "Argument `tape` (a tf.GradientTape) is only meaningful for TensorFlow variables; on the "
                    f"{ops.name} backend inertia differentiates `loss` itself. Received: tape={tape!r}"
                )
            return list(zip(ops.grad_of_natives(loss, values, tape=tape), variables))
        natives = not any(isinstance(v, Variable) for v in variables)
        differentiates_natives = natives and hasattr(ops, "grad_of_natives")
        if not callable(loss):
            if not differentiates_natives:
                raise TypeError(
                    f"Argument `loss` must be a callable on the {ops.name} backend (a zero-argument "
                    f"function, or one taking an array per variable). Received: loss={loss!r}"
                )
            grads = ops.grad_of_natives(loss, values)
        elif _positional_arity(loss) > 0:
            _, grads = ops.value_and_grad(lambda arrays: loss(*arrays), values)
        elif all(isinstance(v, Variable) for v in variables):
            _, grads = ops.value_and_grad(lambda arrays: _call_with_values(loss, variables, arrays), values)
        elif differentiates_natives:
            grads = ops.grad_of_natives(loss, values)
        else:
            raise TypeError(
                "A zero-argument `loss` can only be differentiated with respect to inertia.Variable "
                "objects; for native arrays pass a loss that takes one array per variable, e.g. "
                "`lambda w, b: ...`."
            )
        return list(zip(grads, variables))

    @locked
    def minimize(self, loss: Any, var_list: Any, tape: Any = None) -> Variable:
        """Compute the gradients of ``loss`` and apply them; returns the iteration counter."""
        return self.apply_gradients(self.compute_gradients(loss, var_list, tape))

    # ------------------------------------------------------------------------------------
    # stateless use
    # ------------------------------------------------------------------------------------
    @locked  # the optimizer's variables hold the given values meanwhile
    def stateless_apply(
        self, optimizer_variables: Sequence[Any], grads: Sequence[Any], trainable_variables: Sequence[Any]
    ) -> tuple[list, list]:
        """Pure form of ``apply``: returns ``(new_trainable_values, new_optimizer_values)``.

        Neither the given values nor the optimizer's own state are modified.
        """
        if not self.built:
            raise ValueError(
                f"To call `stateless_apply`, {type(self).__name__} must be built (i.e. its variables must "
                "have been created). You can build it via `optimizer.build(trainable_variables)`."
            )
        own = self._all_variables()
        trainables = list(self._trainable_variables)
        optimizer_variables, trainable_variables = list(optimizer_variables), list(trainable_variables)
        if len(optimizer_variables) != len(own):
            raise ValueError(
                f"Argument `optimizer_variables` must have one value per optimizer variable: expected "
                f"{len(own)}, received {len(optimizer_variables)}."
            )
        if len(trainable_variables) != len(trainables):
            raise ValueError(
                f"Argument `trainable_variables` must have one value per built variable: expected "
                f"{len(trainables)}, received {len(trainable_variables)}."
            )
        with values_swapped(own + trainables, optimizer_variables + trainable_variables):
            self.apply(grads)
            return [v.value for v in trainables], [v.value for v in own]

    # ------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------
    def _state_variables(self) -> list[tuple[str, Variable]]:
        """``(key, variable)`` for every variable, keys stable across processes."""
        return [(v.name, v) for v in self._variables]

    @locked
    def save_own_variables(self, store: Any) -> None:
        """Write every variable into ``store`` (a dict-like), keyed by its name."""
        for key, variable in self._state_variables():
            store[key] = variable.numpy()

    @locked
    def load_own_variables(self, store: Any) -> None:
        """Restore the variables from ``store``.

        Accepts inertia's name-keyed layout, and Keras' index-keyed layout (``"0"``,
        ``"1"``, ...) when the counts match. Anything else raises a ValueError listing what
        is missing or unexpected, as does a counter or learning rate out of range (see
        ``_assign_all``); nothing is loaded then.
        """
        if not (callable(getattr(store, "keys", None)) and hasattr(store, "__getitem__")):
            raise TypeError(
                "Argument `store` must be a mapping of variable names to arrays, as `save_own_variables` "
                f"fills. Received: store={store!r:.200}"
            )
        entries = self._state_variables()
        keys = list(store.keys())
        expected = [key for key, _ in entries]
        if set(keys) == {str(i) for i in range(len(entries))} and set(keys) != set(expected):
            values = [store[str(i)] for i in range(len(entries))]
            expected = [str(i) for i in range(len(entries))]
        else:
            missing = [k for k in expected if k not in store]
            unexpected = [k for k in keys if k not in set(expected)]
            if missing or unexpected:
                hint = " This optimizer has not been built yet: call `optimizer.build(variables)` first." if not self.built else ""
                raise ValueError(
                    f"Cannot load the state of optimizer {self.name!r}: the store does not match its "
                    f"{len(entries)} variables. Missing: {missing}; unexpected: {unexpected}.{hint}"
                )
            values = [store[k] for k in expected]
        self._assign_all([v for _, v in entries], values, "store", expected)

    @locked
    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set every optimizer variable from a list in the order of ``variables``."""
        weights = _weights_list(weights)
        if not self.built:
            raise ValueError(
                "You are calling `set_weights()` on an optimizer that has not yet been built. Please "
                "call `optimizer.build(trainable_variables)` to create the optimizer weights before "
                "calling `set_weights()`."
            )
        variables = self._all_variables()
        if len(weights) != len(variables):
            raise ValueError(
                f"Argument `weights` must have one array per optimizer variable: expected {len(variables)}, "
                f"received {len(weights)}."
            )
        self._assign_all(variables, weights, "weights")

    def _loaded_value_rules(self) -> dict[int, tuple[str, Optional[int]]]:
        """What a loaded value must be, by variable id, for the variables a bad value would
        silently corrupt: ``("count", limit)``: a whole number in ``[0, limit)`` (``None``:
        up to the dtype's maximum, excluded, so the next increment cannot wrap);
        ``("rate", None)``: finite and >= 0; ``("scale", None)``: finite and > 0."""
        rules: dict[int, tuple[str, Optional[int]]] = {id(self._iterations): ("count", None)}
        if isinstance(self._learning_rate, Variable):
            rules[id(self._learning_rate)] = ("rate", None)
        return rules

    def _assign_all(
        self, variables: Sequence[Variable], values: Sequence[Any], argument: str, keys: Optional[Sequence[Any]] = None
    ) -> None:
        """Assign every value, or none: each is checked (shape, dtype, and the ranges of
        ``_loaded_value_rules``) and converted before the first assignment. ``keys`` name
        the values in messages (``store['iteration']``; list positions by default)."""
        import numpy as np

        rules = self._loaded_value_rules()
        arrays = []
        for index, (variable, value) in enumerate(zip(variables, values)):
            where = f"{argument}[{(index if keys is None else keys[index])!r}]"
            if value is None:
                raise TypeError(f"Optimizer variable {variable.path} cannot take None (argument `{argument}`). Received: {where}=None")
            array = np.asarray(value)
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Optimizer variable {variable.path} has shape {variable.shape} not compatible with "
                    f"provided weight shape {tuple(array.shape)} (argument `{argument}`)."
                )
            rule = rules.get(id(variable))
            if rule is not None:
                _check_loaded_value(variable, array, rule, where)
            if array.dtype.kind == "c":
                raise TypeError(
                    f"Optimizer variable {variable.path} cannot take a complex value (argument `{argument}`); "
                    f"received dtype {array.dtype}."
                )
            try:  # convert every value before assigning any, so a bad one changes nothing
                arrays.append(variable.backend.asarray(array, dtype=variable.dtype, like=variable.value))
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"Optimizer variable {variable.path} of dtype {variable.dtype} cannot take the provided "
                    f"value of dtype {array.dtype} (argument `{argument}`): {error}"
                ) from None
        for variable, array in zip(variables, arrays):
            variable.assign(array)

    # ------------------------------------------------------------------------------------
    # config
    # ------------------------------------------------------------------------------------
    def _learning_rate_config(self) -> Any:
        from inertia import schedules

        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return schedules.serialize(lr)
        if isinstance(lr, Variable):
            current = float(lr.numpy())
            given = self._learning_rate_given
            # The float the user gave, unless the variable was changed behind the setter.
            if given is not None and float(_float32(given)) == current:
                return given
            return current
        return lr

    def get_config(self) -> dict:
        """The constructor arguments, in Keras' key order."""
        config = {
            "name": self.name,
            "learning_rate": self._learning_rate_config(),
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": self.loss_scale_factor,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        if not self.jit_compile:
            config["jit_compile"] = False
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: Optional[dict] = None) -> "Optimizer":
        """The optimizer described by ``get_config()``'s output (checked as the constructor's arguments)."""
        from inertia import schedules

        config = _config_dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"], custom_objects=custom_objects)
        return cls(**config)

    def __repr__(self) -> str:
        return f"<inertia.{type(self).__name__} name={self.name!r} built={self.built}>"

    def __getstate__(self) -> dict:
        with self._lock:  # a copy taken while another thread steps gets a whole step
            state = dict(self.__dict__)
        state["_compiled"] = CompiledSteps()  # compiled functions are rebuilt on demand
        state["_fused_plan"] = None
        state.pop("_lock", None)  # a lock is not state (and cannot be pickled): each copy gets its own
        # Indexes keyed by id() mean nothing in a copy: they are keyed again by the copied
        # variables in __setstate__.
        state.pop("_trainable_variables_indices", None)
        state.pop("_exclude_from_weight_decay_ids", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._trainable_variables_indices = {}
        for index, wrapper in enumerate(getattr(self, "_trainable_variables", None) or []):
            self._trainable_variables_indices[id(wrapper)] = index
            if wrapper._aliases_native:
                self._trainable_variables_indices[id(wrapper.value)] = index
        self._exclude_from_weight_decay_ids = {id(v) for v in getattr(self, "_exclude_from_weight_decay_variables", [])}


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _float32(value: float) -> float:
    import numpy as np

    return float(np.float32(value))


def _check_countable(name: str, value: int, counter_dtype: str) -> None:
    """A period the step counter (of ``counter_dtype``) must be able to reach."""
    import numpy as np

    limit = int(np.iinfo(counter_dtype).max)
    if value > limit:
        raise ValueError(
            f"`{name}` must be at most {limit}: the {counter_dtype} step counter never reaches a larger "
            f"count. Received: {name}={value!r}"
        )


def _check_loaded_value(variable: Variable, array: Any, rule: tuple[str, Optional[int]], where: str) -> None:
    """A loaded value of a counter or hyperparameter variable is in range, or a TypeError /
    ValueError naming where it came from and the value; rejected, never wrapped or truncated."""
    import numpy as np

    kind, limit = rule
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"Optimizer variable {variable.path} takes a real number, not a value of dtype {array.dtype}. "
            f"Received: {where}={array!r:.200}"
        )
    number = array.item()
    if kind == "count":
        top = int(np.iinfo(variable.dtype).max)
        limit = top if limit is None else min(limit, top)
        whole = array.dtype.kind in "iu" or (math.isfinite(number) and float(number).is_integer())
        if not whole or not 0 <= number < limit:
            raise ValueError(
                f"Optimizer variable {variable.path} is a step counter of dtype {variable.dtype}: it takes a whole "
                f"number in [0, {limit}) (nothing is wrapped or truncated). Received: {where}={array!r}"
            )
        return
    with np.errstate(over="ignore"):
        stored = float(np.asarray(number, dtype=variable.dtype))  # as the variable will hold it
    positive = kind == "scale"
    if not (math.isfinite(number) and math.isfinite(stored)) or stored < 0 or (positive and stored <= 0):
        raise ValueError(
            f"Optimizer variable {variable.path} takes a finite number {'> 0' if positive else '>= 0'} "
            f"(as {variable.dtype}). Received: {where}={array!r}"
        )


def _describe(target: Any) -> str:
    if isinstance(target, Variable):
        return f"variable {target.path!r}"
    shape = getattr(target, "shape", None)
    return f"{type(target).__module__}.{type(target).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else f" {target!r}")


def _reset(variable: Variable) -> None:
    variable.assign(variable.backend.zeros(variable.shape, variable.dtype, like=variable.value))


def _assign_to(target: Any, value: Any) -> None:
    if isinstance(target, Variable):
        target.assign(value)
    else:
        backends.of(target).assign(target, value)


def _positional_arity(function: Callable) -> int:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 0
    return sum(
        1
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def _call_with_values(loss: Callable[[], Any], variables: Sequence[Variable], values: Sequence[Any]) -> Any:
    """Call a zero-argument loss while the variables hold the traced values."""
    with values_swapped(variables, values, copy=False):
        return loss()
