"""``inertia.legacy.SGD``: tf.keras' legacy (OptimizerV2) SGD, on the one engine.

The update is Keras' (lr inside the velocity, ``ApplyKerasMomentum``): it is inherited
from :class:`inertia.SGD`, whose ``update_step`` calls the shared rule. What this face
changes is the OptimizerV2 surface: hyperparameters held in float32 (and cast to each
variable's dtype), the old ``decay`` (``lr / (1 + decay*iterations)``), clipping in the
legacy order where clipvalue and clipnorm combine, an int64 ``iter`` counter, slots named
``<variable>/momentum``, ``get_weights`` / ``set_weights`` as ``[iterations, slots...]``,
and the legacy config layout. There is no weight decay, EMA, loss scaling or accumulation,
as in tf.keras' legacy optimizers.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

from inertia import pipeline
from inertia.engine.step import TF_KERAS_LEGACY, GroupSettings
from inertia.optimizer import (
    _config_dict, _describe, _is_real_number, _positional_arity, _weights_list, check_finite_number, checked_pairs, locked,
)
from inertia.rule import sgd_update
from inertia.schedules import LearningRateSchedule
from inertia.sgd import SGD as _KerasSGD
from inertia.variable import Variable

__all__ = ["SGD"]

_ALLOWED_KWARGS = {"clipnorm", "clipvalue", "global_clipnorm", "lr", "decay"}


class SGD(_KerasSGD):
    """Gradient descent with momentum, as ``tf.keras.optimizers.legacy.SGD``.

    Update rule (``v`` is the "momentum" slot, from zero; ``lr`` is decayed as
    ``lr / (1 + decay*iterations)`` when ``decay > 0``)::

        momentum == 0:  w <- w - lr*g
        otherwise:      v <- momentum*v - lr*g
                        w <- w + v                        (plain)
                        w <- w + momentum*v - lr*g        (nesterov)

    Gradients are clipped first: clipvalue, then clipnorm, then global_clipnorm (clipvalue
    combines with either norm; clipnorm and global_clipnorm exclude each other).

    Args:
        learning_rate: a float, a :class:`inertia.schedules.LearningRateSchedule` (called
            with the step as a float of the variable's dtype), or a zero-argument callable.
        momentum: float in [0, 1].
        nesterov: Nesterov momentum.
        name: the prefix of the optimizer's variable paths.
        **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``decay`` (each >= 0)
            and the deprecated ``lr`` (which takes precedence over ``learning_rate``).

    Example:
        >>> import inertia.legacy
        >>> opt = inertia.legacy.SGD(learning_rate=0.1)
        >>> var = inertia.Variable(1.0)
        >>> step_count = opt.minimize(lambda: (var ** 2) / 2.0, [var]).numpy()
        >>> round(float(var), 6), int(step_count)
        (0.9, 1)
    """

    _iterations_name = "iter"
    _iterations_dtype = "int64"
    # IndexedSlices step only the rows they name ("lazy" momentum, as OptimizerV2's sparse kernels).
    _takes_sparse_gradients = True

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        name: str = "SGD",
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _ALLOWED_KWARGS)
        if unknown:
            raise TypeError(
                f"Unexpected keyword argument passed to optimizer: {unknown[0]}. "
                f"Allowed kwargs are {sorted(_ALLOWED_KWARGS)}."
            )
        for key, value in kwargs.items():
            if value is None or key == "lr":
                continue
            check_finite_number(key, value)
            if value < 0:
                raise ValueError(f"Expected {key} >= 0, received: {value}")
        for key in ("clipnorm", "global_clipnorm"):
            if kwargs.get(key) == 0:
                raise ValueError(
                    f"Expected {key} > 0, received: {kwargs[key]} (a zero norm would zero every "
                    "gradient, or make it NaN)."
                )
        if kwargs.get("clipnorm") is not None and kwargs.get("global_clipnorm") is not None:
            raise ValueError(
                "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
                f"`clipnorm`={kwargs['clipnorm']}, `global_clipnorm`={kwargs['global_clipnorm']}."
            )
        if kwargs.get("lr") is not None:
            warnings.warn("The `lr` argument is deprecated, use `learning_rate` instead.", UserWarning, stacklevel=2)
            learning_rate = kwargs["lr"]
            self._check_learning_rate(learning_rate, "lr")  # errors name the keyword the user wrote
        if _is_real_number(momentum) and not 0 <= float(momentum) <= 1:
            raise ValueError(
                f"`momentum` must be between [0, 1]. Received: momentum={momentum} (of type {type(momentum)})."
            )
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name)
        self.clipnorm = kwargs.get("clipnorm")
        self.clipvalue = kwargs.get("clipvalue")
        self.global_clipnorm = kwargs.get("global_clipnorm")
        self._initial_decay = float(kwargs.get("decay") or 0.0)
        self.decay = self._initial_decay
        self._slots: dict[int, dict[str, Variable]] = {}
        self._slot_names: list[str] = []
        self._not_weights: set[int] = set()

    # --- hyperparameters -------------------------------------------------------------------
    @property
    def learning_rate(self) -> Any:
        """The float32 hyperparameter variable, or the schedule / callable's current value."""
        lr = self._learning_rate
        if isinstance(lr, (Variable, LearningRateSchedule)):
            return lr
        return lr()

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        # OptimizerV2 assigns a float into the hyperparameter and lets anything replace it.
        kind = self._check_learning_rate(learning_rate)
        if kind == "float" and isinstance(self._learning_rate, Variable):
            self._learning_rate.assign(self._backend.scalar(float(learning_rate), "float32", like=self._learning_rate.value))
            self._learning_rate_given = float(learning_rate)
            return
        if isinstance(self._learning_rate, Variable):
            self._untrack_variable(self._learning_rate)
        self._learning_rate_given = None
        self._set_learning_rate(learning_rate, kind)

    @property
    def lr(self) -> Any:
        """The deprecated alias of ``learning_rate``."""
        return self.learning_rate

    @lr.setter
    def lr(self, lr: Any) -> None:
        self._check_learning_rate(lr, "lr")
        self.learning_rate = lr

    def _hyper(self, value: float, variable: Variable) -> Any:
        """A hyperparameter the legacy way: a float32 value cast to the variable's dtype."""
        ops = variable.backend
        return ops.cast(ops.scalar(value, "float32", like=variable.value), variable.dtype)

    def _momentum_scalar(self, variable: Variable) -> Any:
        return self._hyper(self.momentum, variable)

    def _learning_rate_array(self) -> Any:
        return None  # computed per variable dtype in _decayed_lr, as OptimizerV2 does

    def _decayed_lr(self, variable: Variable) -> Any:
        """``lr_t`` for one dtype: the schedule sees ``iterations`` as a float of that dtype;
        then ``lr_t / (1 + decay*iterations)`` with the constructor's decay, when it is > 0
        (OptimizerV2 reads ``_initial_decay``: a ``decay`` assigned later changes no update)."""
        ops, dtype = variable.backend, variable.dtype
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            value = lr(ops.cast(self._iterations.value, dtype))
            lr_t = ops.cast(value if ops.is_array(value) else ops.asarray(value, like=variable.value), dtype)
        elif isinstance(lr, Variable):
            lr_t = ops.cast(lr.value, dtype)
        else:
            value = self._called_learning_rate()
            value = value.value if isinstance(value, Variable) else value
            lr_t = ops.cast(ops.asarray(value, dtype="float32", like=variable.value), dtype)
        if self._initial_decay > 0:
            step = ops.cast(self._iterations.value, dtype)
            lr_t = lr_t / (1 + self._hyper(self._initial_decay, variable) * step)
        return lr_t

    def _backend_update_step(self, grads: list, variables: list[Variable], learning_rate: Any) -> None:
        rates: dict[str, Any] = {}
        for variable in variables:
            if variable.dtype not in rates:
                rates[variable.dtype] = self._decayed_lr(variable)
        ops = variables[0].backend if variables else None
        sparse = [ops.is_sparse(g) for g in grads]
        dense = [(g, v) for g, v, s in zip(grads, variables, sparse) if not s]
        if dense and self._tensorflow_kernels_step(*map(list, zip(*dense)), lambda v: rates[v.dtype]):
            dense = []
        for gradient, variable in dense:
            self.update_step(gradient, variable, rates[variable.dtype])
        for gradient, variable, is_sparse in zip(grads, variables, sparse):
            if is_sparse:
                self._update_rows(gradient, variable, rates[variable.dtype])

    def _update_rows(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        """A sparse gradient's step, "lazy" as OptimizerV2's sparse kernels: rows named twice
        are summed, then only the named rows of the weights and of their momentum move, by
        the same rule as a dense step; the other rows' momentum neither decays nor acts."""
        ops = variable.backend
        slot = self.momentums[self._get_variable_index(variable)] if self.momentums else None
        if slot is None:
            # Without momentum OptimizerV2 adds each named row's -lr*g as it comes, a row
            # named twice twice (a scatter-add), rather than summing the duplicates first.
            steps = -(ops.sparse_values(gradient) * learning_rate)
            variable._value = ops.add_rows(variable.value, ops.sparse_indices(gradient), steps)
            return
        values, indices = ops.unique_rows(gradient)
        weight, velocity = sgd_update(
            self._rule, ops.gather_rows(variable.value, indices), values, ops.gather_rows(slot.value, indices),
            learning_rate, self._momentum_scalar(variable), add=ops.add,
        )
        slot._value = ops.assign_rows(slot.value, indices, velocity)
        variable._value = ops.assign_rows(variable.value, indices, weight)

    def _clip_gradients(self, grads: list, variables: Sequence[Variable]) -> list:
        """clipvalue, then clipnorm, then global_clipnorm; a sparse gradient's rows are
        clipped as given (a norm over its values, rows named twice counted twice, as
        ``tf.clip_by_norm`` on IndexedSlices)."""
        if not grads:
            return grads
        ops = variables[0].backend

        def each(gradient: Any, clip: Any) -> Any:
            return ops.sparse_map(gradient, clip) if ops.is_sparse(gradient) else clip(gradient)

        if self.clipvalue is not None:
            grads = [each(g, lambda x: pipeline.clip_by_value(ops, x, self.clipvalue)) for g in grads]
        if self.clipnorm is not None:
            # Sharded gradients (DTensor): their norms summed across the ranks in one collective.
            squares = pipeline.squared_norms(ops, grads, None) if ops.squares_reducer(grads) is not None else [None] * len(grads)
            grads = [
                each(g, lambda x, squared=squared: pipeline.clip_by_norm(ops, x, self.clipnorm, squared))
                for g, squared in zip(grads, squares)
            ]
        if self.global_clipnorm is not None:
            dense = [ops.sparse_values(g) if ops.is_sparse(g) else g for g in grads]
            clipped = iter(pipeline.clip_by_global_norm(ops, dense, self.global_clipnorm, reciprocal_in_dtype=True))
            grads = [each(g, lambda _: next(clipped)) for g in grads]
        return grads

    # --- the step as data, for the engine's fast paths ----------------------------------------
    step_description = TF_KERAS_LEGACY

    def _engine_groups(self, first: Variable, has_buffer: bool) -> tuple[list, Optional[float]]:
        ops = first.backend
        learning_rate = float(ops.to_numpy(self._decayed_lr(first)))
        group = GroupSettings(
            learning_rate=learning_rate, momentum=float(self.momentum), nesterov=self.nesterov,
            keeps_buffer=has_buffer,
            clipnorm=None if self.clipnorm is None else float(self.clipnorm),
            clipvalue=None if self.clipvalue is None else float(self.clipvalue),
        )
        return [group], None if self.global_clipnorm is None else float(self.global_clipnorm)

    # --- slots and weights -------------------------------------------------------------------
    def add_variable_from_reference(
        self, reference_variable: Any, name: Optional[str] = None, initializer: Any = "zeros"
    ) -> Variable:
        """A slot named ``<variable name>/<slot name>`` (``kernel/momentum``); one made
        earlier by ``add_slot`` is reused, as OptimizerV2's ``_create_slots`` does."""
        return self.add_slot(reference_variable, name or "var", initializer)

    def add_slot(self, var: Any, slot_name: str, initializer: Any = "zeros", shape: Optional[Sequence[int]] = None) -> Variable:
        """The slot ``slot_name`` of ``var``, created (zeros by default) if it does not exist."""
        reference = self._reference_of(var)
        existing = self._slots.get(id(reference), {}).get(slot_name)
        return existing if existing is not None else self._new_slot(reference, slot_name, initializer, shape)

    def _new_slot(self, reference: Variable, slot_name: str, initializer: Any, shape: Optional[Sequence[int]]) -> Variable:
        shape = reference.shape if shape is None else tuple(int(s) for s in shape)
        ops = reference.backend
        with ops.outside_trace():
            value = ops.holder(self._initial_value(initializer, shape, reference.dtype, reference.value))
        slot = Variable._alias(value, ops, self._new_variable_name(f"{reference.name}/{slot_name}"))
        slot.trainable = False
        self._slots.setdefault(id(reference), {})[slot_name] = slot
        if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)
        return self._track(slot)

    def get_slot(self, var: Any, slot_name: str) -> Variable:
        """The slot variable ``slot_name`` (``"momentum"``) of ``var``."""
        reference = self._reference_of(var) if not isinstance(var, Variable) else var
        slots = self._slots.get(id(reference), {})
        if slot_name not in slots:
            raise KeyError(
                f"No slot {slot_name!r} for {_describe(var)}; its slots are {sorted(slots)} "
                "(slots exist after the first apply_gradients or build)."
            )
        return slots[slot_name]

    def get_slot_names(self) -> list[str]:
        """Names of the slots created so far: ``["momentum"]`` once built with momentum."""
        return list(self._slot_names)

    def add_weight(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Optional[str] = None,
        initializer: Any = "zeros",
        trainable: Optional[bool] = None,
        synchronization: Any = None,
        aggregation: Any = None,
    ) -> Variable:
        """A new optimizer variable (float32 and trainable by default). As in OptimizerV2, it
        is tracked but not one of ``weights``: only the counter and the slots are."""
        variable = self.add_variable(shape, initializer=initializer, dtype=dtype or "float32", name=name)
        variable.trainable = True if trainable is None else bool(trainable)
        self._not_weights.add(id(variable))
        return variable

    def _weights(self) -> list[Variable]:
        # The learning-rate hyperparameter and add_weight's variables are tracked (compiled
        # steps read them) but, as in OptimizerV2, they are not weights.
        return [v for v in self._variables if v is not self._learning_rate and id(v) not in self._not_weights]

    def variables(self) -> list[Variable]:  # type: ignore[override]
        """``[iterations, slots and weights in the order they were created]`` (a method, as in OptimizerV2)."""
        return self._weights()

    @property
    def weights(self) -> list[Variable]:
        """The same list as ``variables()``."""
        return self._weights()

    def get_weights(self) -> list[Any]:
        """The weights' values as NumPy arrays: ``[iterations, slots...]``."""
        return [v.numpy() for v in self._weights()]

    @locked
    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set ``[iterations, slots...]`` (lengths, shapes and the counter's range are checked
        before any change)."""
        weights = _weights_list(weights)
        params = self._weights()
        if len(params) != len(weights):
            raise ValueError(  # tf.keras' text, double space included
                f"You called `set_weights(weights)` on optimizer {self.name} with a  weight list of length "
                f"{len(weights)}, but the optimizer was expecting {len(params)} weights. "
                f"Provided weights: {str(weights)[:50]}..."
            )
        self._assign_all(params, weights, "weights")

    # --- apply and gradients -------------------------------------------------------------------
    @locked
    def apply_gradients(  # type: ignore[override]
        self, grads_and_vars: Any, name: Optional[str] = None, experimental_aggregate_gradients: bool = True
    ) -> Variable:
        """Apply ``(gradient, variable)`` pairs; returns the ``iterations`` variable.

        As in OptimizerV2, pairs with a None gradient are dropped first (with a warning), and
        a variable seen for the first time gets its slots now, after those made before: a
        variable without a gradient on the first step, or not given then, is no error.
        """
        pairs = checked_pairs(grads_and_vars)  # before a new variable is registered
        if pairs:
            kept = [(g, v) for g, v in pairs if g is not None]
            if kept and len(kept) < len(pairs):
                missing = [self._name_of(v) for g, v in pairs if g is None]
                warnings.warn(
                    f"Gradients do not exist for variables {missing} when minimizing the loss. "
                    "If using `model.compile()`, did you forget to provide a `loss` argument?",
                    stacklevel=2,
                )
                pairs = kept
            if self.built:
                known = self._trainable_variables_indices
                new = [v for _, v in pairs if id(v) not in known]
                if new:
                    unique = [v for i, v in enumerate(new) if all(v is not w for w in new[:i])]
                    # Checked before the new variables get slots: a bad one changes nothing.
                    self._check_targets(self._trainable_variables + unique, "grads_and_vars")
                    for gradient, variable in pairs:
                        if id(variable) not in known:
                            self._check_gradient(gradient, variable)
                    self._add_variables(unique)
        return super().apply_gradients(pairs, name=name, skip_gradients_aggregation=not experimental_aggregate_gradients)

    def _name_of(self, target: Any) -> str:
        if isinstance(target, Variable):
            return target.path
        index = self._trainable_variables_indices.get(id(target))
        return self._trainable_variables[index].path if index is not None else _describe(target)

    def _add_variables(self, variables: list) -> None:
        """Register variables first seen now, and make their momentum slots (as
        OptimizerV2's ``_create_slots`` for the variables of each call)."""
        wrappers = self._register_more_trainables(variables)
        if self.momentums:
            self.momentums = self.momentums + self.add_optimizer_variables(wrappers, "momentum")

    @locked
    def minimize(  # type: ignore[override]
        self, loss: Any, var_list: Any, grad_loss: Any = None, name: Optional[str] = None, tape: Any = None
    ) -> Variable:
        """Differentiate ``loss`` (weighted by ``grad_loss`` when given) and apply the step."""
        return self.apply_gradients(self._compute_weighted_gradients(loss, var_list, grad_loss, tape), name=name)

    def _compute_weighted_gradients(self, loss: Any, var_list: Any, grad_loss: Any, tape: Any) -> list:
        if grad_loss is None:
            return self.compute_gradients(loss, var_list, tape)
        variables = list(var_list() if callable(var_list) else var_list)
        ops = self._check_targets(variables, "var_list")
        first = variables[0].value if isinstance(variables[0], Variable) else variables[0]
        # Cast before tracing: inside NumPy's autograd the loss is a box with no dtype name.
        weights = ops.cast(ops.asarray(grad_loss, like=first), ops.dtype_name(first))

        def weighted(value: Any) -> Any:
            value = value.value if isinstance(value, Variable) else value
            return ops.sum(value * weights)

        if callable(loss):
            if _positional_arity(loss) > 0:
                return self.compute_gradients(lambda *arrays: weighted(loss(*arrays)), variables, tape)
            return self.compute_gradients(lambda: weighted(loss()), variables, tape)
        return self.compute_gradients(weighted(loss), variables, tape)

    def get_gradients(self, loss: Any, params: Any) -> list:
        """Gradients of ``loss`` with respect to ``params`` (no clipping, as in OptimizerV2)."""
        grads = [g for g, _ in self.compute_gradients(loss, params)]
        for gradient, param in zip(grads, params):
            if gradient is None:
                raise ValueError(
                    f"Variable {_describe(param)} has `None` for gradient. Please make sure that all of your "
                    "ops have a gradient defined (i.e. are differentiable)."
                )
        return grads

    def get_updates(self, loss: Any, params: Any) -> list:
        """Apply one step from ``loss``; returns ``[iterations]`` (the update "ops")."""
        params = list(params)
        return [self.apply_gradients(zip(self.get_gradients(loss, params), params))]

    # --- config -------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The legacy layout: name, the clip options that are set, learning_rate, decay,
        momentum, nesterov."""
        config: dict[str, Any] = {"name": self.name}
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        lr = self._learning_rate
        config["learning_rate"] = lr() if callable(lr) and not isinstance(lr, LearningRateSchedule) else self._learning_rate_config()
        config.update({"decay": self._initial_decay, "momentum": self.momentum, "nesterov": self.nesterov})
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: Optional[dict] = None) -> "SGD":
        """The optimizer ``get_config()`` describes (``lr`` is read as ``learning_rate``)."""
        config = _config_dict(config)
        if "lr" in config:
            if not isinstance(config["lr"], dict):  # a serialized schedule is checked when deserialized
                cls._check_learning_rate(config["lr"], "lr")
            config["learning_rate"] = config.pop("lr")
        return super().from_config(config, custom_objects)

