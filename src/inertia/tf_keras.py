"""``inertia.tf_keras``: the tf.keras 2.11+ optimizers (``tf_keras.optimizers.Optimizer`` and
``SGD``, TF 2.11-2.15's ``tf.keras.optimizers``), on the one engine.

The update is Keras' (lr inside the velocity), the rule of :mod:`inertia.rule`; the stages
are the base class' (:mod:`inertia.pipeline`). What this face changes is tf.keras 2.11+'s
own surface and numbers:

- the moving average of the weights starts as a copy of each variable when the optimizer is
  built, advances only for the variables that received a gradient, with ``1 - m`` rounded
  from the Python float (the Optimizer doc's EMA example gives -0.125, Keras 3 -0.25), and an
  overwrite replaces those variables only;
- momentum slots ``m`` exist even when momentum is 0 (the step then goes through them);
- ``iterations`` is int64 (``iteration``); the learning rate is a variable, but not one of
  ``variables`` (``[iteration, averages..., slots...]``, callable as in tf_keras);
- a callable learning rate is called once, when the optimizer is made (tf_keras makes a
  variable of its value); ``lr=`` is ignored with a warning; ``decay``,
  ``gradient_aggregator`` and ``gradient_transformers`` are errors; there is no loss scale
  factor and no gradient accumulation;
- clipping: clipnorm, else global_clipnorm (``tf.clip_by_global_norm``'s rounding), else
  clipvalue; only clipnorm with global_clipnorm is an error;
- ``tf.IndexedSlices`` gradients: clipped as given, rows named twice summed, then the
  momentum decays densely and ``-lr*g`` is added to the named rows (dense-equivalent);
- ``update_step(gradient, variable)`` (no learning-rate argument: ``self.learning_rate``),
  ``add_variable_from_reference(model_variable, variable_name, shape=None,
  initial_value=None)`` naming slots ``<variable_name>/<variable>``, and the config keys of
  tf_keras (``is_legacy_optimizer: False``).

Example (the Optimizer doc's EMA example):
    >>> import numpy as np, inertia.tf_keras
    >>> opt = inertia.tf_keras.SGD(learning_rate=1, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3)
    >>> var1, var2 = np.array(2.0, np.float32), np.array(2.0, np.float32)
    >>> for _ in range(3):
    ...     _ = opt.apply_gradients(zip([np.float32(1.0), np.float32(1.0)], [var1, var2]))
    >>> float(var1), float(var2)
    (-0.125, -0.125)
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Optional, Sequence

from inertia import pipeline
from inertia.engine.step import TF_KERAS, StepDescription
from inertia.optimizer import Optimizer as _KerasOptimizer
from inertia.optimizer import check_finite_number, locked
from inertia.rule import sgd_update
from inertia.schedules import LearningRateSchedule
from inertia.sgd import SGD as _KerasSGD
from inertia.variable import Variable

__all__ = ["Optimizer", "SGD"]

_LEGACY_KWARGS = ("decay", "gradient_aggregator", "gradient_transformers")


class CallableList(list):
    """A list that may also be called, as tf_keras' ``variables`` (``opt.variables()`` works)."""

    def __call__(self) -> list:
        return self


def _tf_name(variable: Variable) -> str:
    """A variable's name as tf.keras names slots after it: a ``tf.Variable``'s own name
    (``dense/kernel``), else the inertia Variable's path."""
    native = variable.value if variable._aliases_native else None
    name = getattr(native, "name", None)
    if isinstance(name, str) and name:
        return name[:-2] if name.endswith(":0") else name
    return variable.path


class Optimizer(_KerasOptimizer):
    """The tf.keras 2.11+ optimizer base class, for custom optimizers.

    A subclass calls ``super().__init__(name=..., **kwargs)``, sets its learning rate with
    ``self._learning_rate = self._build_learning_rate(learning_rate)``, creates its slots in
    ``build`` with ``add_variable_from_reference`` after ``super().build(var_list)``
    (setting ``self._built = True`` at the end), and implements
    ``update_step(gradient, variable)``, reading ``self.learning_rate``.

    Args:
        name: the optimizer's name, the prefix of its variables' paths.
        weight_decay: decoupled decay ``w -= w*wd*lr`` of the pre-update weights.
        clipnorm / global_clipnorm / clipvalue: the first that is set clips; clipnorm
            with global_clipnorm is an error.
        use_ema / ema_momentum / ema_overwrite_frequency: the moving average of the
            weights (from the weights at build), copied into them every
            ``ema_overwrite_frequency`` steps.
        jit_compile: take the fast path where one exists.

    Example (a custom optimizer, as tf-keras-Optimizer.md describes):
        >>> import numpy as np, inertia.tf_keras
        >>> class SignSGD(inertia.tf_keras.Optimizer):
        ...     def __init__(self, learning_rate=0.01, name="SignSGD", **kwargs):
        ...         super().__init__(name=name, **kwargs)
        ...         self._learning_rate = self._build_learning_rate(learning_rate)
        ...     def update_step(self, gradient, variable):
        ...         lr = np.asarray(self.learning_rate, variable.dtype)
        ...         variable.assign(variable - lr * np.sign(gradient))
        >>> w = np.array([1.0, -1.0], np.float32)
        >>> _ = SignSGD(learning_rate=0.5).apply_gradients([(np.array([3.0, -2.0], np.float32), w)])
        >>> w
        array([ 0.5, -0.5], dtype=float32)
    """

    _iterations_name = "iteration"
    _iterations_dtype = "int64"
    _takes_sparse_gradients = True
    # Inside a step: `learning_rate` is this step's rate (a schedule's, at the step's count).
    _in_update = False

    def __init__(
        self,
        name: str,
        weight_decay: Optional[float] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: Optional[int] = None,
        jit_compile: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("is_legacy_optimizer", None)  # in every config, for deserialization only
        if kwargs.pop("mesh", None) is not None:
            raise ValueError("Argument `mesh` (DTensor) is not supported by inertia; shard with JAX or torch instead.")
        if kwargs.pop("lr", None):
            warnings.warn(
                "`lr` is deprecated in TF-Keras optimizer, please use `learning_rate` or use the legacy optimizer, "
                f"e.g.,tf.keras.optimizers.legacy.{type(self).__name__}. It is ignored.",
                UserWarning,
                stacklevel=3,
            )
        for key in kwargs:
            if key in _LEGACY_KWARGS:
                raise ValueError(
                    f"{key} is deprecated in the new TF-Keras optimizer, please check the docstring for valid "
                    f"arguments, or use the legacy optimizer, e.g., tf.keras.optimizers.legacy.{type(self).__name__}."
                    f" Received: {key}={kwargs[key]!r}"
                )
            raise TypeError(
                f"{key} is not a valid argument, kwargs should be empty  for `optimizer_experimental.Optimizer`. "
                f"Received: {key}={kwargs[key]!r}"
            )
        if clipnorm is not None and global_clipnorm is not None:
            raise ValueError(
                "At most one of `clipnorm` and `global_clipnorm` can be set. Received: "
                f"clipnorm={clipnorm}, global_clipnorm={global_clipnorm}."
            )
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        clips = {key: None if value is None else check_finite_number(key, value) for key, value in clips.items()}
        # The rate is set by the subclass (`_build_learning_rate`): until then, none.
        super().__init__(
            learning_rate=_no_learning_rate, weight_decay=weight_decay, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency, name=name, jit_compile=jit_compile,
        )
        self.clipnorm, self.clipvalue, self.global_clipnorm = clips["clipnorm"], clips["clipvalue"], clips["global_clipnorm"]

    # --- the learning rate ----------------------------------------------------------------------
    def _build_learning_rate(self, learning_rate: Any) -> Any:
        """The learning rate as this optimizer holds it: a float32 variable named
        ``learning_rate`` (not one of ``variables``), or the schedule. A callable is called
        now, once, and its value held, as tf_keras does."""
        if callable(learning_rate) and not isinstance(learning_rate, LearningRateSchedule):
            learning_rate = learning_rate()
            learning_rate = learning_rate.value if isinstance(learning_rate, Variable) else learning_rate
            if not isinstance(learning_rate, numbers.Real):
                import numpy as np

                learning_rate = float(np.asarray(learning_rate))
        kind = self._check_learning_rate(learning_rate)
        if isinstance(self._learning_rate, Variable):
            self._untrack_variable(self._learning_rate)
        self._learning_rate_given = None
        self._set_learning_rate(learning_rate, kind)
        return self._learning_rate

    @property
    def learning_rate(self) -> Any:
        """The learning rate: the variable, or a schedule's rate of the last step (of this
        step inside one, of step 0 before the first), as tf_keras' ``current_learning_rate``."""
        lr = self._learning_rate
        if lr is _no_learning_rate:
            raise ValueError("Missing learning rate, please set self.learning_rate at optimizer creation time.")
        if isinstance(lr, LearningRateSchedule):
            step = self._iterations.value
            if not self._in_update:
                step = self._backend.maximum(step - 1, 0) if self._backend.is_array(step) else max(step - 1, 0)
            return lr(step)
        return lr

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        if isinstance(learning_rate, LearningRateSchedule):
            if isinstance(self._learning_rate, Variable):
                self._untrack_variable(self._learning_rate)
            self._learning_rate, self._learning_rate_given = learning_rate, None
            return
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError(
                "This optimizer was created with a `LearningRateSchedule` object as its `learning_rate` constructor "
                "argument, hence its learning rate is not settable. If you need the learning rate to be settable, you "
                f"should instantiate the optimizer with a float `learning_rate` argument. Received: learning_rate={learning_rate!r}"
            )
        self._check_learning_rate(learning_rate)
        self._learning_rate.assign(self._backend.scalar(float(learning_rate), "float32", like=self._learning_rate.value))
        self._learning_rate_given = float(learning_rate)

    @property
    def lr(self) -> Any:
        """The alias of ``learning_rate``."""
        return self.learning_rate

    @lr.setter
    def lr(self, learning_rate: Any) -> None:
        self.learning_rate = learning_rate

    def _get_current_learning_rate(self) -> Any:
        if self._learning_rate is _no_learning_rate:
            raise ValueError("Missing learning rate, please set self.learning_rate at optimizer creation time.")
        return super()._get_current_learning_rate()

    # --- variables --------------------------------------------------------------------------------
    @property
    def variables(self) -> CallableList:  # type: ignore[override]
        """``[iteration, averages..., slots...]``: every variable but the learning rate."""
        return CallableList(v for v in self._variables if v is not self._learning_rate)

    @property
    def _built(self) -> bool:
        return self.built

    @_built.setter
    def _built(self, value: bool) -> None:
        self.built = bool(value)

    def add_variable(  # type: ignore[override]
        self, shape: Sequence[int], dtype: Optional[str] = None, initializer: Any = "zeros", name: Optional[str] = None
    ) -> Variable:
        """A new optimizer variable (float32 by default), one of ``variables``."""
        return super().add_variable(shape, initializer=initializer, dtype=dtype, name=name)

    def add_variable_from_reference(  # type: ignore[override]
        self, model_variable: Any, variable_name: str, shape: Optional[Sequence[int]] = None, initial_value: Any = None
    ) -> Variable:
        """A slot for ``model_variable`` named ``<variable_name>/<its name>`` (``m/dense/kernel``):
        zeros of its shape (or ``shape``) and dtype, or ``initial_value``."""
        reference = self._reference_of(model_variable)
        ops = reference.backend
        shape = reference.shape if shape is None else tuple(int(s) for s in shape)
        if initial_value is None:
            initializer: Any = "zeros"
        else:
            start = initial_value.value if isinstance(initial_value, Variable) else initial_value
            initializer = lambda *_: start  # noqa: E731 - a copy of it is made below
        with ops.outside_trace():
            value = ops.holder(self._initial_value(initializer, shape, reference.dtype, reference.value))
        variable = Variable._alias(value, ops, self._new_variable_name(f"{variable_name}/{_tf_name(reference)}"))
        variable.trainable = False
        return self._track(variable)

    def build(self, var_list: Sequence[Any]) -> None:
        """Index ``var_list`` and, with the EMA on, make each variable's average, a copy of it
        now. Subclasses call it first, then make their slots and set ``self._built = True``."""
        if self.built:
            return
        variables = self._register_trainables(var_list)
        if self.use_ema:
            self._model_variables_moving_average = [
                self.add_variable_from_reference(v, "average", initial_value=v) for v in variables
            ]

    # --- weight decay ---------------------------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list: Any = None, var_names: Any = None) -> None:
        """Exempt variables from weight decay, by identity or by regular expressions searched in
        their names; only before the optimizer is built, as in tf_keras."""
        if self.built:
            raise ValueError("`exclude_from_weight_decay()` can only be configued before the optimizer is built.")
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def _use_weight_decay(self, variable: Variable) -> bool:
        excluded = self._exclude_from_weight_decay_ids
        if id(variable) in excluded or (variable._aliases_native and id(variable.value) in excluded):
            return False
        pattern = self._exclude_from_weight_decay_pattern
        native = getattr(variable.value, "name", None) if variable._aliases_native else None
        name = native if isinstance(native, str) else variable.name  # a tf.Variable's own name, ":0" included
        return not (pattern is not None and pattern.search(name))

    # --- the step ------------------------------------------------------------------------------------
    @locked
    def apply_gradients(  # type: ignore[override]
        self, grads_and_vars: Any, name: Optional[str] = None, skip_gradients_aggregation: bool = False, **kwargs: Any
    ) -> Variable:
        """Apply ``(gradient, variable)`` pairs; returns ``iterations``. The optimizer is built
        on the first call with every variable given (a None gradient too); a None gradient is
        then skipped with a warning."""
        unknown = set(kwargs) - {"experimental_aggregate_gradients"}
        if unknown:
            raise TypeError(f"apply_gradients() got unexpected keyword arguments: {sorted(unknown)}")
        pairs = list(grads_and_vars)
        if not pairs:
            return self._iterations
        skip = skip_gradients_aggregation or not kwargs.get("experimental_aggregate_gradients", True)
        return super().apply_gradients(pairs, name=name, skip_gradients_aggregation=skip)

    def _backend_update_step(self, grads: list, variables: list[Variable], learning_rate: Any) -> None:
        for gradient, variable in zip(grads, variables):
            self.update_step(gradient, variable)

    def update_step(self, gradient: Any, variable: Variable) -> None:  # type: ignore[override]
        """Update one variable from its (processed) gradient, reading ``self.learning_rate``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `update_step(gradient, variable)`.")

    def _update(self, grads: list, variables: list[Variable], aggregated: bool = False) -> None:
        previous, self._in_update = self._in_update, True
        try:
            super()._update(grads, variables, aggregated)
        finally:
            self._in_update = previous

    def _weight_decay_rate(self) -> float:
        # `tf.cast(self.weight_decay, dtype)`: the Python float becomes a float32 tensor first.
        return _float32(self.weight_decay)

    def _clip_gradients(self, grads: list, variables: Sequence[Variable]) -> list:
        """clipnorm, else global_clipnorm, else clipvalue (the first that is set and > 0), as
        ``tf.clip_by_norm`` / ``tf.clip_by_global_norm`` / ``tf.clip_by_value``; a sparse
        gradient's rows are clipped as given (before rows named twice are summed)."""
        if not grads:
            return grads
        ops = variables[0].backend
        dense = [ops.sparse_values(g) if ops.is_sparse(g) else g for g in grads]
        if self.clipnorm and self.clipnorm > 0:
            clipped = [pipeline.clip_by_norm(ops, g, self.clipnorm) for g in dense]
        elif self.global_clipnorm and self.global_clipnorm > 0:
            clipped = pipeline.clip_by_global_norm(ops, dense, self.global_clipnorm, reciprocal_in_dtype=True)
        elif self.clipvalue and self.clipvalue > 0:
            clipped = [pipeline.clip_by_value(ops, g, self.clipvalue) for g in dense]
        else:
            return list(grads)
        return [ops.sparse_map(g, lambda _, c=c: c) if ops.is_sparse(g) else c for g, c in zip(grads, clipped)]

    def _advance_moving_averages(self, variables: list[Variable]) -> None:
        """The averages of the step's variables only: ``m*average + (1-m)*variable``."""
        for variable in variables:
            average = self._model_variables_moving_average[self._get_variable_index(variable)]
            average.assign(
                pipeline.ema_update(variable.backend, average.value, variable.value, self.ema_momentum, False, complement_rounded_once=True)
            )

    def _moving_average_targets(self, variables: list[Variable]) -> list:
        return list(variables)

    @locked
    def load_own_variables(self, store: Any) -> None:
        """Restore the variables from ``store``: inertia's name-keyed layout, or tf_keras' own,
        ``"0"``, ``"1"``, ... over ``variables`` (the learning rate is not one of them)."""
        keys = set(store.keys()) if callable(getattr(store, "keys", None)) else None
        variables = self.variables
        if keys is not None and keys == {str(i) for i in range(len(variables))} and self.built:
            names = [str(i) for i in range(len(variables))]
            self._assign_all(variables, [store[key] for key in names], "store", names)
            return
        super().load_own_variables(store)

    # --- config --------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """tf_keras' keys, in its order (a subclass adds its own after them)."""
        return {
            "name": self.name,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "jit_compile": self.jit_compile,
            "is_legacy_optimizer": False,
        }


def _float32(value: float) -> float:
    """``value`` rounded to float32, as ``tf.cast`` of a Python float rounds it first."""
    import numpy as np

    return float(np.float32(value))


def _no_learning_rate() -> None:
    """The learning rate of a tf_keras.Optimizer whose subclass has not set one yet."""
    raise ValueError("Missing learning rate, please set self.learning_rate at optimizer creation time.")


class SGD(Optimizer, _KerasSGD):
    """Gradient descent with momentum, as ``tf_keras.optimizers.SGD`` (tf.keras 2.11+).

    Update rule (``m`` is the momentum slot, from zero, made even when momentum is 0)::

        m <- momentum*m - lr*g
        w <- w + m                               (plain)
        w <- w + momentum*m - lr*g               (nesterov, with the new m)

    Args:
        learning_rate: a float, a :class:`inertia.schedules.LearningRateSchedule`, or a
            callable (called once, now).
        momentum: float in [0, 1].
        nesterov: Nesterov momentum.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
            ema_overwrite_frequency, jit_compile, name: as :class:`Optimizer`.

    Example (tf-keras-SGD.md's doctests):
        >>> import numpy as np, inertia.tf_keras
        >>> opt = inertia.tf_keras.SGD(0.1, momentum=0.9)
        >>> var = inertia.Variable(1.0)
        >>> loss = lambda: (var ** 2) / 2.0
        >>> _ = opt.minimize(loss, [var])
        >>> round(1.0 - float(var), 6)
        0.1
        >>> before = float(var)
        >>> _ = opt.minimize(loss, [var])
        >>> round(before - float(var), 6)
        0.18
    """

    step_description: StepDescription = TF_KERAS

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: Optional[float] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: Optional[int] = None,
        jit_compile: bool = True,
        name: str = "SGD",
        **kwargs: Any,
    ) -> None:
        momentum = check_finite_number("momentum", momentum)
        if not 0 <= momentum <= 1:
            raise ValueError(f"`momentum` must be between [0, 1]. Received: momentum={momentum!r}")
        Optimizer.__init__(
            self, name=name, weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency, jit_compile=jit_compile, **kwargs,
        )
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        self.momentums: list[Optional[Variable]] = []

    def build(self, var_list: Sequence[Any]) -> None:
        """The base slots, then one ``m`` slot per variable, whatever the momentum."""
        super().build(var_list)
        if self.built:
            return
        self.momentums = [self.add_variable_from_reference(v, "m") for v in self._trainable_variables]
        self._built = True

    def describe_step(self) -> Optional[StepDescription]:
        return self.step_description if type(self).update_step is SGD.update_step else None

    def _momentum_scalar(self, variable: Variable) -> Any:
        # `tf.cast(self.momentum, dtype)`: float32 first, then the variable's dtype.
        return variable.backend.scalar(_float32(self.momentum), variable.dtype, like=variable.value)

    def _engine_groups(self, first: Variable, has_buffer: bool) -> tuple[list, Optional[float]]:
        import dataclasses

        groups, global_clipnorm = _KerasSGD._engine_groups(self, first, has_buffer)
        return [dataclasses.replace(g, weight_decay=_float32(g.weight_decay)) for g in groups], global_clipnorm

    def update_step(self, gradient: Any, variable: Variable) -> None:  # type: ignore[override]
        ops, dtype = variable.backend, variable.dtype
        lr = ops.cast(self._learning_rate_array(), dtype)
        slot = self.momentums[self._get_variable_index(variable)]
        weight, velocity = sgd_update(
            self._rule, variable.value, ops.cast(gradient, dtype), slot.value, lr, self._momentum_scalar(variable), add=ops.add,
        )
        slot.assign(velocity)
        variable.assign(weight)

    def _backend_update_step(self, grads: list, variables: list[Variable], learning_rate: Any) -> None:
        ops = variables[0].backend if variables else None
        sparse = [ops.is_sparse(g) for g in grads]
        dense = [(g, v) for g, v, s in zip(grads, variables, sparse) if not s]
        if dense and (type(self).update_step is not SGD.update_step
                      or not self._tensorflow_kernels_step(*map(list, zip(*dense)), lambda v: learning_rate)):
            super()._backend_update_step(*map(list, zip(*dense)), learning_rate)
        for gradient, variable, is_sparse in zip(grads, variables, sparse):
            if is_sparse:
                self._update_rows(gradient, variable, ops.cast(learning_rate, variable.dtype))

    def _update_rows(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        """A sparse gradient's step as tf_keras takes it: rows named twice summed, the momentum
        decayed densely, ``-lr*g`` added to the named rows of it (and, with Nesterov, of the
        weights, before ``momentum*m``), then ``w += m``: the dense step's numbers, but for
        Nesterov's rounding order."""
        ops = variable.backend
        values, indices = ops.unique_rows(gradient)
        steps = -(values * learning_rate)
        slot = self.momentums[self._get_variable_index(variable)]
        momentum = self._momentum_scalar(variable)
        slot.assign(slot.value * momentum)
        slot._value = ops.add_rows(slot.value, indices, steps)
        if self.nesterov:
            variable._value = ops.add_rows(variable.value, indices, steps)
            variable.assign(variable.value + slot.value * momentum)
        else:
            variable.assign(ops.add(variable.value, slot.value))

    def get_config(self) -> dict:
        config = Optimizer.get_config(self)
        # A callable rate was read when the optimizer was made: this is its value then.
        config.update({"learning_rate": self._learning_rate_config(), "momentum": self.momentum, "nesterov": self.nesterov})
        return config

    def __repr__(self) -> str:
        return f"<inertia.tf_keras.{type(self).__name__} name={self.name!r} built={self.built}>"

