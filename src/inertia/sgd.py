"""``inertia.SGD``: Keras 3's SGD, a thin class over the shared rule in ``rule.py``."""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence

from inertia.engine.step import KERAS as KERAS_STEP
from inertia.engine.step import GroupSettings, StepDescription
from inertia.optimizer import Optimizer, _is_real_number, check_finite_number
from inertia.rule import SGDRule, sgd_update
from inertia.variable import Variable

__all__ = ["SGD"]



class SGD(Optimizer):
    """Gradient descent with momentum, exactly as ``keras.optimizers.SGD``.

    Update rule for a weight ``w`` with gradient ``g`` (after the base class' unscaling,
    accumulation, clipping and decoupled weight decay)::

        momentum == 0:  w <- w - lr*g
        otherwise:      v <- momentum*v - lr*g            (v: the "momentum" slot, from 0)
                        w <- w + v                        (plain)
                        w <- w + momentum*v - lr*g        (nesterov, with the new v)

    lr, momentum and g are cast to the weight's dtype, so float16 / bfloat16 weights keep
    their dtype. No momentum slots are created when momentum is 0.

    Args:
        learning_rate: float (ints and NumPy scalars too), schedule or zero-argument callable.
        momentum: float in [0, 1].
        nesterov: use Nesterov momentum.
        **kwargs: the base optimizer's arguments (weight_decay, clipnorm, clipvalue,
            global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency,
            loss_scale_factor, gradient_accumulation_steps, name, jit_compile).

    Example:
        >>> import inertia
        >>> opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
        >>> var = inertia.Variable(1.0)
        >>> loss = lambda: (var ** 2) / 2.0          # d(loss)/d(var) = var
        >>> _ = opt.minimize(loss, [var])
        >>> round(float(var), 6)                      # first step: 1 - 0.1*1
        0.9
        >>> _ = opt.minimize(loss, [var])
        >>> round(1.0 - 0.1 - float(var), 6)          # the second step is 0.18
        0.18
    """

    _compiled_attributes = Optimizer._compiled_attributes + ("momentum", "nesterov")

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
        loss_scale_factor: Optional[float] = None,
        gradient_accumulation_steps: Optional[int] = None,
        name: Optional[str] = "SGD",
        jit_compile: bool = True,
        **kwargs: Any,
    ) -> None:
        # Checked first so that a bad momentum never leaves a half-made optimizer around.
        if not _is_real_number(momentum):
            raise ValueError(f"`momentum` must be a float between [0, 1]. Received: momentum={momentum!r}")
        momentum = check_finite_number("momentum", momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be a float between [0, 1]. Received: momentum={momentum!r}")
        if not isinstance(nesterov, (bool, numbers.Integral)):
            raise TypeError(f"Argument `nesterov` must be a bool. Received: nesterov={nesterov!r}")
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            jit_compile=jit_compile,
            **kwargs,
        )
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        self.momentums: list[Optional[Variable]] = []

    def build(self, var_list: Sequence[Any]) -> None:
        """Create the base slots and, when momentum != 0, one "momentum" slot per variable."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = self.add_optimizer_variables(var_list, "momentum") if self.momentum != 0 else []

    def update_step(self, gradient: Any, variable: Variable, learning_rate: Any) -> None:
        ops = variable.backend
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        slot = self.momentums[self._get_variable_index(variable)] if self.momentums else None
        momentum = self._momentum_scalar(variable) if slot is not None else None
        weight, velocity = sgd_update(
            self._rule, variable.value, ops.cast(gradient, dtype), slot.value if slot is not None else None, lr, momentum,
            add=ops.add,
        )
        if slot is not None:
            slot.assign(velocity)
        variable.assign(weight)

    def _backend_update_step(self, grads: list, variables: list[Variable], learning_rate: Any) -> None:
        if not self._tensorflow_kernels_step(grads, variables, lambda variable: learning_rate):
            super()._backend_update_step(grads, variables, learning_rate)

    def _tensorflow_kernels_step(self, grads: list, variables: list[Variable], rate_of: Any) -> bool:
        """The update of every variable by TensorFlow's fused kernels of this rule
        (:mod:`inertia.engine.tf_training_ops`: in place, one kernel a variable, the reference path's
        bits), or False (nothing changed) where they do not run it: not TensorFlow, the
        reference path asked for (``jit_compile=False``), a custom ``update_step``, values
        that are not ``tf.Variable``s, sparse gradients. ``rate_of(variable)``: the
        learning rate for its dtype, before the cast."""
        ops = variables[0].backend if variables else None
        if ops is None or ops.name != "tensorflow" or not self.jit_compile or self.describe_step() is None:
            return False
        from inertia.engine.tf_training_ops import keras_momentum_steps

        dtypes = [v.dtype for v in variables]
        rates: dict[str, Any] = {}
        momenta: dict[str, Any] = {}
        for variable, dtype in zip(variables, dtypes):
            if dtype not in rates:
                rates[dtype] = ops.cast(rate_of(variable), dtype)
                momenta[dtype] = self._momentum_scalar(variable)
        slots = [self.momentums[self._get_variable_index(v)].value for v in variables] if self.momentums else None
        return keras_momentum_steps(
            [v.value for v in variables], slots, [ops.cast(g, dtype) for g, dtype in zip(grads, dtypes)],
            [rates[dtype] for dtype in dtypes], None if slots is None else [momenta[dtype] for dtype in dtypes],
            self.nesterov,
        )

    #: The step this face runs, as data (the engine's fast paths read it).
    step_description: StepDescription = KERAS_STEP

    def describe_step(self) -> Optional[StepDescription]:
        """The step as data, or None when a subclass defines its own ``update_step`` (its
        rule is code the engine cannot read: it keeps the reference path)."""
        return self.step_description if type(self).update_step is SGD.update_step else None

    def _slots_for_engine(self) -> dict:
        return {"momentum": self.momentums or None}  # the slots it built, whatever `momentum` is now

    def _engine_groups(self, first: Variable, has_buffer: bool) -> tuple[list, Optional[float]]:
        ops, dtype = first.backend, first.dtype
        learning_rate = float(ops.to_numpy(ops.cast(self._learning_rate_array(), dtype)))
        clip: dict = {}
        global_clipnorm = None
        if self.clipnorm and self.clipnorm > 0:  # the first of the three that is > 0, as Keras
            clip["clipnorm"] = float(self.clipnorm)
        elif self.global_clipnorm and self.global_clipnorm > 0:
            global_clipnorm = float(self.global_clipnorm)
        elif self.clipvalue and self.clipvalue > 0:
            clip["clipvalue"] = float(self.clipvalue)
        group = GroupSettings(
            learning_rate=learning_rate, momentum=float(self.momentum), weight_decay=float(self.weight_decay or 0.0),
            nesterov=self.nesterov, keeps_buffer=has_buffer, **clip,
        )
        return [group], global_clipnorm

    @property
    def _rule(self) -> SGDRule:
        # Read at every step, so that setting `nesterov` takes effect like `momentum` does.
        return self.step_description.rule(nesterov=self.nesterov)

    def _momentum_scalar(self, variable: Variable) -> Any:
        """The momentum as a 0-d array of the variable's dtype."""
        return variable.backend.scalar(self.momentum, variable.dtype, like=variable.value)

    def get_config(self) -> dict:
        config = super().get_config()
        jit_compile = config.pop("jit_compile", None)
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        if jit_compile is not None:
            config["jit_compile"] = jit_compile
        return config
