"""The fused fast path of ``inertia.SGD`` for host memory (NumPy, and torch on the CPU).

One call of the compiled kernel (``_kernels.c``, built by :mod:`inertia.kernels`) runs a
whole Keras step for every tensor: unscale, accumulation mean, clipnorm / global_clipnorm /
clipvalue, decoupled weight decay, momentum or Nesterov, and the EMA, reading and writing
each array once, in place, with no temporaries, on all cores. It follows the reference path's
order of operations in the variables' dtype (float32 or float64), so it gives the same
numbers: the only difference is the sum inside a norm (double lanes instead of NumPy's
pairwise float sum), well within 1 ulp of the clipped gradient.

The path is taken when ``jit_compile=True`` and the step is one it covers; anything else
(float16 / bfloat16, constraints, missing gradients, a subclass that changes a pipeline
stage, a gradient that is not a contiguous array of the variable's dtype and shape...) runs
the reference path, which also raises every error. Nothing is modified before the kernel
has checked all its arrays, so a step still happens whole or not at all.

What the kernel needs about the variables (addresses, sizes, which ones decay) is kept in a
plan, rebuilt only when the variables, their arrays or the weight-decay exclusions change.
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

import numpy as np

from inertia import kernels
from inertia.optimizer import _same_objects, _value_of

__all__ = ["fused_apply"]

_MODE_NONE, _MODE_PLAIN, _MODE_NESTEROV = 0, 1, 2
_CLIP_NONE, _CLIP_NORM, _CLIP_GLOBAL, _CLIP_VALUE = 0, 1, 2, 3
_DTYPES = {"float32": 0, "float64": 1}

# The methods whose stock versions the kernel reproduces: a class that overrides any of them
# (tf.keras legacy's float32 hyperparameters and clipping order, a user's own update_step)
# keeps the reference path.
_STAGES = (
    "update_step",
    "_update",
    "_apply_prepared",
    "_backend_apply_gradients",
    "_backend_update_step",
    "_clip_gradients",
    "_apply_weight_decay",
    "_use_weight_decay",
    "_momentum_scalar",
    "_update_model_variables_moving_average",
    "_overwrite_variables_directly_with_gradients",
    "_filter_empty_gradients",
    "_learning_rate_array",
    "_rule",
)
_stock_classes: dict[type, bool] = {}


def _is_stock(cls: type) -> bool:
    known = _stock_classes.get(cls)
    if known is None:
        from inertia.sgd import SGD

        known = _stock_classes[cls] = issubclass(cls, SGD) and all(
            getattr(cls, name) is getattr(SGD, name) for name in _STAGES
        )
    return known


class _Plan:
    """The kernel's view of one list of variables (None fields: no fast path for them)."""

    __slots__ = (
        "targets", "exclusions", "eligible", "ops", "dtype", "is_double", "variables", "values",
        "addresses", "weights", "velocities", "averages", "accumulators", "sizes", "shapes", "offsets",
        "shape_tuples", "decay",
    )

    def __init__(self, targets: list, exclusions: tuple) -> None:
        self.targets = targets
        self.exclusions = exclusions
        self.eligible = False


def _exclusions(optimizer: Any) -> tuple:
    return (optimizer._exclude_from_weight_decay_ids, optimizer._exclude_from_weight_decay_pattern, optimizer.weight_decay)


def _stock_targets(optimizer: Any, targets: list) -> Optional[tuple[list, list]]:
    """(wrappers, slot indices) of ``targets`` when a fast path can run the stock step for
    them: known variables of one dtype (float32 or float64), without constraints or
    overwrite-with-gradient, and all of the trainable variables when the EMA or accumulation
    is on (both cover every trainable variable, not only this list). None otherwise: the
    reference path runs, and raises what it must."""
    try:
        optimizer._check_targets(targets)  # also: one backend
        wrappers = [optimizer._wrapper_of(t) for t in targets]
    except (TypeError, ValueError):
        return None
    if not wrappers or wrappers[0].dtype not in _DTYPES:
        return None
    dtype = wrappers[0].dtype
    if any(w.dtype != dtype or w.constraint is not None or w.overwrite_with_gradient for w in wrappers):
        return None
    indices = [optimizer._get_variable_index(w) for w in wrappers]
    if (optimizer.use_ema or optimizer.gradient_accumulation_steps) and indices != list(
        range(len(optimizer._trainable_variables))
    ):
        return None
    return wrappers, indices


def _make_plan(optimizer: Any, targets: list) -> _Plan:
    plan = _Plan(targets, _exclusions(optimizer))
    found = _stock_targets(optimizer, targets)
    if found is None:
        return plan
    wrappers, indices = found
    ops = wrappers[0].backend
    dtype = wrappers[0].dtype
    slot_lists = []
    for slots in (
        optimizer.momentums or None,  # the reference updates the slots it built, whatever `momentum` is now
        optimizer._model_variables_moving_average if optimizer.use_ema else None,
        optimizer._accumulated_gradients if optimizer.gradient_accumulation_steps else None,
    ):
        slot_lists.append(None if slots is None else [slots[i] for i in indices])
    variables = wrappers + [v for slots in slot_lists if slots is not None for v in slots]
    values = [v._value for v in variables]
    addresses = [ops.kernel_address(value, dtype) for value in values]
    if any(a is None for a in addresses):
        return plan
    count = len(wrappers)
    groups, position = [addresses[:count]], count
    for slots in slot_lists:
        groups.append(None if slots is None else addresses[position : position + count])
        position += 0 if slots is None else count
    plan.weights, plan.velocities, plan.averages, plan.accumulators = groups
    shapes = [tuple(w.shape) for w in wrappers]
    packed, offsets = [], []
    for shape in shapes:
        offsets.append(len(packed))
        packed.extend((len(shape), *shape))
    plan.ops, plan.dtype, plan.is_double = ops, dtype, _DTYPES[dtype] == 1
    plan.variables, plan.values, plan.addresses = variables, values, addresses
    plan.sizes = np.array([int(np.prod(s, dtype=np.int64)) for s in shapes], dtype=np.int64)
    plan.shapes = np.array(packed or [0], dtype=np.int64)
    plan.offsets = np.array(offsets, dtype=np.int64)
    plan.shape_tuples = shapes
    decays = optimizer.weight_decay is not None
    plan.decay = bytes(1 if decays and optimizer._use_weight_decay(w) else 0 for w in wrappers)
    plan.eligible = True
    return plan


def _current_plan(optimizer: Any, targets: list) -> Optional[_Plan]:
    plan = optimizer._fused_plan
    if plan is None or not _same_objects(plan.targets, targets) or plan.exclusions != _exclusions(optimizer):
        plan = optimizer._fused_plan = _make_plan(optimizer, targets)
    elif plan.eligible and not all(map(operator.is_, map(_value_of, plan.variables), plan.values)):
        plan = optimizer._fused_plan = _make_plan(optimizer, targets)  # an array was replaced
    if not plan.eligible:
        return None
    if not plan.ops.kernel_addresses_stable:
        # torch: `.data =` or `set_` can move a tensor; the plan holds the old tensors, so an
        # unchanged address is still the live storage.
        if plan.ops.kernel_addresses(plan.values) != plan.addresses:
            plan = optimizer._fused_plan = _make_plan(optimizer, targets)
            if not plan.eligible:
                return None
    return plan


def _clip_setting(optimizer: Any) -> tuple[int, float, float]:
    if optimizer.clipnorm and optimizer.clipnorm > 0:
        return _CLIP_NORM, float(optimizer.clipnorm), 0.0
    if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:
        return _CLIP_GLOBAL, float(optimizer.global_clipnorm), 0.0
    if optimizer.clipvalue and optimizer.clipvalue > 0:
        return _CLIP_VALUE, 1.0, float(optimizer.clipvalue)
    return _CLIP_NONE, 1.0, 0.0


def fused_apply(optimizer: Any, grads: list, trainable_variables: Optional[Sequence[Any]]) -> bool:
    """Run one ``optimizer.apply(grads, trainable_variables)`` step in the fused kernel.

    Returns False, having changed nothing, when the step is not one the kernel covers; the
    caller then runs the reference path.
    """
    if not _is_stock(type(optimizer)):
        return False
    module = kernels.load()
    if module is None:
        return False
    if not optimizer.built:
        optimizer._prepare(grads, trainable_variables)  # checks everything, then builds
    targets = optimizer._trainable_variables if trainable_variables is None else trainable_variables
    if not isinstance(targets, list):
        targets = list(targets)
    if len(grads) != len(targets):
        return False
    plan = _current_plan(optimizer, targets)
    if plan is None:
        return False
    ops, dtype = plan.ops, plan.dtype
    gradients = ops.kernel_gradients(grads, dtype, plan.shape_tuples)
    if gradients is None:
        return False
    unscale = optimizer.loss_scale_factor
    steps = optimizer.gradient_accumulation_steps
    iterations = optimizer._iterations
    threads = kernels.thread_count()
    if steps and (int(iterations.value) + 1) % steps != 0:
        if unscale is not None:
            return False  # micro-steps then store unscaled gradients: the reference path does
        if not module.accumulate(plan.accumulators, gradients, plan.sizes, plan.shapes, plan.offsets, int(plan.is_double), threads):
            return False
        iterations.assign(iterations.value + 1)
        return True

    learning_rate = float(ops.to_numpy(ops.cast(optimizer._learning_rate_array(), dtype)))
    mode = _MODE_NONE if plan.velocities is None else (_MODE_NESTEROV if optimizer.nesterov else _MODE_PLAIN)
    clip, clipnorm, clipvalue = _clip_setting(optimizer)
    steps_taken = int(optimizer._steps_taken())
    ema_momentum = 0.0 if steps_taken == 0 else float(optimizer.ema_momentum)
    done = module.sgd_step(
        plan.weights, gradients, plan.velocities, plan.averages, plan.accumulators if steps else None,
        plan.sizes, plan.shapes, plan.offsets, plan.decay, int(plan.is_double), mode, clip, threads,
        learning_rate, float(optimizer.momentum), float(optimizer.weight_decay or 0.0), ema_momentum,
        float(unscale) if unscale is not None else 1.0, float(steps or 1), clipnorm, clipvalue,
    )
    if not done:
        return False
    frequency = optimizer.ema_overwrite_frequency
    if optimizer.use_ema and frequency and (steps_taken + 1) % frequency == 0:
        optimizer._overwrite_model_variables_with_average_value(optimizer._trainable_variables)
    iterations.assign(iterations.value + 1)
    return True
