"""The Keras-style optimizers (``inertia.SGD`` and ``inertia.legacy.SGD``) on the host kernel.

The base class' step (``Optimizer.apply``) asks here first. When the optimizer describes its
step (``describe_step()``: None for a class with its own ``update_step``), its variables are
float32 or float64 host arrays (NumPy, CPU torch) without constraints or
overwrite-with-gradient, and every gradient is an array of their dtype and shape, the whole
step (unscale, accumulation, clipping, decay, momentum or Nesterov, EMA) runs in one kernel
call, in place. Anything else takes the reference path, which also raises every error.

What the kernel needs about the variables (shapes, addresses, which ones decay) is kept in a
plan, made again when the variables, their arrays or the weight-decay exclusions change; the
kernel re-checks the arrays themselves at every step (:mod:`inertia.engine.host`).
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

from inertia.engine import host
from inertia.engine.step import StepDescription

__all__ = ["apply", "apply_final"]

_CONSTRAINT_OF = operator.attrgetter("constraint")
_OVERWRITES_OF = operator.attrgetter("overwrite_with_gradient")
_VALUE_OF = operator.attrgetter("_value")


class _Plan:
    """The kernel's view of one list of variables (``memory`` None: no fast path for them)."""

    __slots__ = ("targets", "exclusions", "memory", "variables", "values", "wrappers", "velocities", "averages",
                 "accumulators", "flags", "accumulator_memory", "final_memory")

    def __init__(self, targets: list, exclusions: tuple) -> None:
        self.targets = targets
        self.exclusions = exclusions
        self.memory: Optional[host.MemoryPlan] = None
        self.final_memory: Optional[host.MemoryPlan] = None


def _values_of(variables: Optional[list]) -> Optional[list]:
    """The arrays the variables hold now (None for a slot list that is not kept)."""
    return None if variables is None else list(map(_VALUE_OF, variables))


def _exclusions(optimizer: Any) -> tuple:
    return (optimizer._exclude_from_weight_decay_ids, optimizer._exclude_from_weight_decay_pattern, optimizer.weight_decay)


def stock_targets(optimizer: Any, targets: list) -> Optional[tuple[list, list]]:
    """(wrappers, slot indices) of ``targets`` when a fast path can run the described step
    for them: known variables of one float dtype, without constraints or
    overwrite-with-gradient, and all of the trainable variables when the EMA or accumulation
    is on (both cover every trainable variable). None otherwise: the reference path runs, and
    raises what it must."""
    try:
        optimizer._check_targets(targets)  # also: one backend
        wrappers = [optimizer._wrapper_of(t) for t in targets]
    except (TypeError, ValueError):
        return None
    if not wrappers:
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
    found = stock_targets(optimizer, targets)
    if found is None:
        return plan
    wrappers, indices = found
    slots = optimizer._slots_for_engine()
    lists = [None if kept is None else [kept[i] for i in indices] for kept in (
        slots.get("momentum"),
        optimizer._model_variables_moving_average if optimizer.use_ema else None,
        optimizer._accumulated_gradients if optimizer.gradient_accumulation_steps else None,
    )]
    if any(kept is not None and any(v is None for v in kept) for kept in lists):
        return plan
    plan.wrappers = wrappers
    plan.velocities, plan.averages, plan.accumulators = lists
    plan.variables = wrappers + [v for kept in lists if kept is not None for v in kept]
    plan.values = _values_of(plan.variables)
    ops, dtype = wrappers[0].backend, wrappers[0].dtype
    plan.memory = host.plan_memory(ops, dtype, [_values_of(wrappers)] + [_values_of(kept) for kept in lists])
    if plan.accumulators is not None:
        plan.accumulator_memory = host.plan_memory(ops, dtype, [_values_of(plan.accumulators)])
    # An update whose gradients are final (aggregated): the accumulators are not the kernel's.
    plan.final_memory = host.plan_memory(ops, dtype, [_values_of(wrappers)] + [_values_of(kept) for kept in lists[:2]])
    decays = optimizer.weight_decay is not None
    plan.flags = bytes(host.FLAG_DECAY if decays and optimizer._use_weight_decay(w) else 0 for w in wrappers)
    return plan


def _current_plan(optimizer: Any, targets: list) -> Optional[_Plan]:
    plan = optimizer._fused_plan
    if (
        plan is None
        or not (len(plan.targets) == len(targets) and all(map(operator.is_, plan.targets, targets)))
        or plan.exclusions != _exclusions(optimizer)
        or (plan.memory is not None and not all(map(operator.is_, map(_VALUE_OF, plan.variables), plan.values)))
    ):
        plan = optimizer._fused_plan = _make_plan(optimizer, targets)  # new variables, or an array was replaced
    if plan.memory is None:
        return None
    # A constraint or overwrite_with_gradient set since the plan was made: the reference path.
    wrappers = plan.wrappers
    if list(map(_CONSTRAINT_OF, wrappers)).count(None) != len(wrappers) or any(map(_OVERWRITES_OF, wrappers)):
        return None
    return plan


def _run(optimizer: Any, description: StepDescription, plan: _Plan, grads: list, final: bool = False) -> int:
    memory = plan.final_memory if final else plan.memory
    unscale = None if final else optimizer.loss_scale_factor
    steps = optimizer.gradient_accumulation_steps
    iterations = optimizer._iterations
    if memory is None:
        return host.DECLINED
    if steps and not final and (int(iterations.value) + 1) % steps != 0:
        if unscale is not None or plan.accumulator_memory is None:
            return host.DECLINED  # micro-steps then store unscaled gradients: the reference path does
        answer = host.accumulate(plan.accumulator_memory, _values_of(plan.accumulators), grads)
        if answer == host.DONE:
            iterations.assign(iterations.value + 1)
        return answer
    groups, global_clipnorm = optimizer._engine_groups(plan.wrappers[0], has_buffer=plan.velocities is not None)
    steps_taken = int(optimizer._steps_taken())
    done = host.run(
        memory, description, groups,
        weights=_values_of(plan.wrappers), grads=grads, velocities=_values_of(plan.velocities),
        averages=_values_of(plan.averages), accumulators=_values_of(plan.accumulators) if steps and not final else None,
        flags=plan.flags, global_clipnorm=global_clipnorm,
        unscale=float(unscale) if unscale is not None else 1.0, accumulation_steps=1 if final else steps or 1,
        ema_momentum=0.0 if steps_taken == 0 else float(optimizer.ema_momentum),
    )
    if done != host.DONE:
        return done
    frequency = optimizer.ema_overwrite_frequency
    if optimizer.use_ema and frequency and (steps_taken + 1) % frequency == 0:
        optimizer._overwrite_model_variables_with_average_value(optimizer._trainable_variables)
    if final and steps:
        for accumulator in plan.accumulators:
            accumulator.assign(accumulator.backend.zeros(accumulator.shape, accumulator.dtype, like=accumulator.value))
    iterations.assign(iterations.value + 1)
    return host.DONE


def _described(optimizer: Any) -> Optional[StepDescription]:
    """The optimizer's step as data when the kernel covers it: its EMA is Keras 3's."""
    description = optimizer.describe_step()
    if description is None or (optimizer.use_ema and description.ema_starts_at_build):
        return None
    return description


def apply_final(optimizer: Any, grads: list, wrappers: list) -> bool:
    """The rest of an update whose gradients are final (unscaled, averaged over the
    accumulation cycle and aggregated: ``Optimizer._apply_aggregated``): clipping, decay,
    the rule and the EMA in one kernel call; then the accumulators restart and the step
    counts. False, having changed nothing, where the kernel does not cover it."""
    description = _described(optimizer)
    if description is None or not host.enabled() or host.kernels.known_missing():
        return False
    plan = _current_plan(optimizer, wrappers)
    if plan is None or host.kernels.load() is None:
        return False
    answer = _run(optimizer, description, plan, grads, final=True)
    if answer == host.MOVED:
        plan = optimizer._fused_plan = _make_plan(optimizer, wrappers)
        answer = host.DECLINED if plan.memory is None else _run(optimizer, description, plan, grads, final=True)
    return answer == host.DONE


def apply(optimizer: Any, grads: list, trainable_variables: Optional[Sequence[Any]]) -> bool:
    """Run one ``optimizer.apply(grads, trainable_variables)`` step in the host kernel.

    Returns False, having changed nothing, when the step is not one the kernel covers; the
    caller then runs the reference path.
    """
    description = _described(optimizer)
    if description is None or not host.enabled() or host.kernels.known_missing():
        return False
    if not optimizer.built:
        optimizer._prepare(grads, trainable_variables)  # checks everything, then builds
    targets = optimizer._trainable_variables if trainable_variables is None else trainable_variables
    if not isinstance(targets, list):
        targets = list(targets)
    if len(grads) != len(targets):
        return False
    plan = _current_plan(optimizer, targets)
    # Loaded only for a step the kernel would run: a missing kernel then warns, and steps it
    # would never serve (JAX, CUDA, float16) stay silent.
    if plan is None or host.kernels.load() is None:
        return False
    answer = _run(optimizer, description, plan, grads)
    if answer == host.MOVED:  # a resized array, a tensor given new storage: plan again, once
        plan = optimizer._fused_plan = _make_plan(optimizer, targets)
        answer = host.DECLINED if plan.memory is None else _run(optimizer, description, plan, grads)
    return answer == host.DONE
