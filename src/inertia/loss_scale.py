"""``inertia.LossScaleOptimizer``: dynamic loss scaling around any inertia optimizer."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

import numpy as np

from inertia.optimizer import Optimizer, _BASE_ARGUMENTS, _check_countable, _config_dict, _reset, check_finite_number, locked
from inertia.variable import Variable

__all__ = ["LossScaleOptimizer"]

_BASE_DEFAULTS = {
    "learning_rate": None,
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


class LossScaleOptimizer(Optimizer):
    """Dynamic loss scaling, as ``keras.optimizers.LossScaleOptimizer``.

    Multiply the loss by ``scale_loss`` before differentiating; ``apply`` then checks the
    gradients: all finite -> divide them by the scale and let the inner optimizer step
    (the scale doubles after ``dynamic_growth_steps`` finite steps in a row); any inf or
    NaN -> skip the step entirely (no variable, slot or inner counter moves) and halve the
    scale.

    Example:
        >>> import numpy as np, inertia
        >>> opt = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.5))
        >>> w = inertia.Variable([1.0, 2.0])
        >>> opt.apply([np.array([1.0, 6.0], "float32") * 32768], [w])
        >>> w.numpy()
        array([ 0.5, -1. ], dtype=float32)
        >>> opt.apply([np.array([np.inf, 1.0], "float32")], [w])   # skipped, scale halved
        >>> float(opt.dynamic_scale), w.numpy()
        (16384.0, array([ 0.5, -1. ], dtype=float32))
    """

    def __init__(
        self,
        inner_optimizer: Optimizer,
        initial_scale: float = 2.0**15,
        dynamic_growth_steps: int = 2000,
        name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("dynamic", True) is False:
            raise ValueError(
                "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set "
                "`loss_scale_factor` directly on the `inner_optimizer`."
            )
        for argument in _BASE_ARGUMENTS:
            if argument in kwargs:
                if kwargs[argument] != _BASE_DEFAULTS[argument]:
                    raise ValueError(
                        f"LossScaleOptimizer does not support `{argument}`. Instead, set `{argument}` "
                        f"on the `inner_optimizer`. Received: {argument}={kwargs[argument]!r}"
                    )
                kwargs.pop(argument)
        kwargs.pop("jit_compile", None)
        if kwargs:
            raise ValueError("LossScaleOptimizer does not support arguments: " + ", ".join(f"`{k}`" for k in kwargs) + f". Received: {kwargs}")
        if not isinstance(inner_optimizer, Optimizer):
            raise TypeError(
                f"Argument `inner_optimizer` must be an inertia.Optimizer. Received: inner_optimizer={inner_optimizer!r}"
            )
        initial_scale = check_finite_number("initial_scale", initial_scale)
        with np.errstate(over="ignore"):
            held = float(np.float32(initial_scale))  # the scale is held in float32
        if initial_scale <= 0 or not 0 < held < math.inf:
            raise ValueError(
                f"Argument `initial_scale` must be > 0 and finite in float32. Received: initial_scale={initial_scale}"
            )
        if (
            not isinstance(dynamic_growth_steps, numbers.Integral)
            or isinstance(dynamic_growth_steps, bool)
            or dynamic_growth_steps < 1
        ):
            raise ValueError(
                f"Argument `dynamic_growth_steps` must be an integer >= 1. Received: dynamic_growth_steps={dynamic_growth_steps!r}"
            )
        _check_countable("dynamic_growth_steps", dynamic_growth_steps, "int32")  # the step_counter's dtype
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.initial_scale = initial_scale
        self.dynamic_growth_steps = int(dynamic_growth_steps)
        inner_optimizer.loss_scale_factor = None

    def build(self, var_list: Sequence[Any]) -> None:
        wrappers = self._register_trainables(var_list)
        self.step_counter = self.add_variable((), initializer="zeros", dtype="int32", name="step_counter")
        self.dynamic_scale = self.add_variable((), initializer=self.initial_scale, dtype="float32", name="dynamic_scale")
        self.inner_optimizer.build(wrappers)
        self.built = True

    def _all_variables(self) -> list[Variable]:
        return list(self._variables) + self.inner_optimizer._all_variables()

    def _state_variables(self) -> list[tuple[str, Variable]]:
        inner = [(f"inner_optimizer/{key}", v) for key, v in self.inner_optimizer._state_variables()]
        return [(v.name, v) for v in self._variables] + inner

    def _loaded_value_rules(self) -> dict[int, tuple[str, Optional[int]]]:
        rules = {**super()._loaded_value_rules(), **self.inner_optimizer._loaded_value_rules()}
        if self.built:
            # The count of finite steps since the last rescale: it grows the scale at growth - 1.
            rules[id(self.step_counter)] = ("count", self.dynamic_growth_steps)
            rules[id(self.dynamic_scale)] = ("scale", None)
        return rules

    @locked
    def apply(self, grads: Sequence[Any], trainable_variables: Optional[Sequence[Any]] = None) -> None:
        grads = list(grads)
        if len(grads) == 0:
            return
        grads, variables = self._prepare(grads, trainable_variables)
        ops = self._backend
        present = [g for g in grads if g is not None]
        inner = self.inner_optimizer
        aggregating = not self._skip_aggregation and inner._aggregates()
        finite = ops.finite_flag(present)
        if aggregating:
            finite = self._finite_on_every_replica(finite, variables[0])

        def finite_step() -> None:
            scale = self.dynamic_scale.value
            unscaled = [
                g if g is None or v.overwrite_with_gradient else g / ops.cast(scale, ops.dtype_name(g))
                for g, v in zip(grads, variables)
            ]
            previous, inner._skip_aggregation = inner._skip_aggregation, not aggregating
            try:
                inner.apply(unscaled, variables)
            finally:
                inner._skip_aggregation = previous
            self._branch(
                self._flag(self.step_counter.value == self.dynamic_growth_steps - 1),
                lambda: rescale(2.0),
                lambda: self.step_counter.assign(self.step_counter.value + 1),
            )

        def rescale(factor: float) -> None:
            """Restart the count of finite steps and multiply the scale by ``factor``."""
            _reset(self.step_counter)
            scale = self.dynamic_scale.value
            self.dynamic_scale.assign(scale * ops.scalar(factor, "float32", like=scale))

        with ops.step_context():
            self._branch(finite, finite_step, lambda: rescale(0.5))

    def _finite_on_every_replica(self, finite: Any, like: Variable) -> Any:
        """Whether every replica's gradients are finite: each replica's non-finite flag
        through the aggregation stage (an average or a sum is 0 only when every flag is),
        so that all skip a step together, or none does (a replica skipping alone would
        leave the others waiting in the next collective)."""
        ops = like.backend
        zero, one = ops.scalar(0.0, like.dtype, like=like.value), ops.scalar(1.0, like.dtype, like=like.value)
        flag = (zero if finite else one) if isinstance(finite, bool) else ops.where(finite, zero, one)
        flag = ops.zeros((1,), like.dtype, like=like.value) + flag
        ((aggregated, _),) = self.inner_optimizer.aggregate_gradients([(flag, None)])
        if ops.is_traced(aggregated):
            return ops.sum(aggregated) == 0
        return bool(np.all(ops.to_numpy(aggregated) == 0))

    @property
    def aggregate_gradients(self) -> Any:
        """The inner optimizer's aggregation stage (assigning one here gives it to the inner
        optimizer, which runs it on its real updates); the loss scale's skip decision goes
        through it too, so that every replica skips together."""
        return self.inner_optimizer.aggregate_gradients

    @aggregate_gradients.setter
    def aggregate_gradients(self, stage: Any) -> None:
        self.inner_optimizer.aggregate_gradients = stage

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        # The base constructor sets a placeholder rate before the inner optimizer exists.
        if "inner_optimizer" not in self.__dict__:
            Optimizer.learning_rate.fset(self, learning_rate)
        else:
            self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Any:
        return self.inner_optimizer.iterations

    def scale_loss(self, loss: Any) -> Any:
        """``loss * scale``: the dynamic scale once built, the initial scale before."""
        if self.built:
            scale = self.dynamic_scale.value
            return loss * (scale if self._backend.is_array(loss) else float(scale))
        return loss * self.initial_scale

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self) -> dict:
        from inertia.optimizers import serialize

        return {
            "name": self.name,
            "inner_optimizer": serialize(self.inner_optimizer),
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: Optional[dict] = None) -> "LossScaleOptimizer":
        from inertia.optimizers import deserialize

        config = _config_dict(config)
        config["inner_optimizer"] = deserialize(config["inner_optimizer"], custom_objects=custom_objects)
        return cls(**config)
