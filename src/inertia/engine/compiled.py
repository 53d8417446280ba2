"""Inertia's own compiled step, for backends that compile (JAX).

The Keras-style optimizers run a step on JAX as one compiled pure function of (optimizer
state, weights, gradients): the base class' stages in their order (``Optimizer._apply_prepared``)
traced once per set of variables, Python hyperparameters compiled in, the learning rate an
array of the state (changing it never recompiles), state and weights donated (the step
updates them in place; an array read from ``.value`` before a step is invalid after it, as in
Keras' JAX trainer). A later step with the same variables and settings repeats it with only a
type check of the gradients: the compiled function refuses to trace again (``Retrace``), so
gradients of another structure, shape or dtype take the full validation instead.

Example:
    >>> import jax.numpy as jnp, inertia
    >>> w = inertia.Variable(jnp.ones(2))
    >>> opt = inertia.SGD(learning_rate=0.5)
    >>> opt.apply([jnp.ones(2)], [w]); opt.apply([jnp.ones(2)], [w])
    >>> len(opt._compiled.steps), [float(x) for x in w.value]
    (1, [0.0, 0.0])
"""

from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

from inertia.variable import Variable

__all__ = ["CompiledSteps", "values_swapped"]

_value_of = operator.attrgetter("_value")


class Retrace(Exception):
    """A repeated compiled step was called with gradients it was not traced for."""


class _LastStep(NamedTuple):
    """The last compiled step and what it was compiled for (see ``CompiledSteps.repeat``)."""

    step: Callable
    targets: Optional[list]  # as given to apply(); None: the built list
    own: list
    trainables: list
    constants: tuple
    learning_rate: Any
    count: int  # gradients it takes
    placements: Any  # where the state was (``ArrayBackend.placements``)


def _constants(optimizer: Any) -> tuple:
    """The Python attributes the step bakes in: changing one compiles a new step."""
    return tuple(getattr(optimizer, name, None) for name in optimizer._compiled_attributes)


class CompiledSteps:
    """One optimizer's compiled steps (by variables and settings) and the last one run."""

    def __init__(self) -> None:
        self.steps: dict = {}
        self.last: Optional[_LastStep] = None
        self._retrace_allowed = False

    def run(self, optimizer: Any, grads: list, variables: list, targets: Any = None, repeatable: bool = True) -> None:
        """Run one validated step of ``variables`` (the optimizer's wrappers) compiled."""
        own, trainables = optimizer._all_variables(), list(optimizer._trainable_variables)
        ops = optimizer._backend
        constants = _constants(optimizer)
        indices = tuple(optimizer._get_variable_index(v) for v in variables)
        for variable, value in zip(own + trainables, ops.colocated([v._value for v in own + trainables])):
            variable._value = value
        placements = ops.placements([v._value for v in own + trainables])
        key = (indices, tuple(map(id, own)), id(optimizer._learning_rate), constants, placements)
        step = self.steps.get(key)
        if step is None:
            chosen = [trainables[i] for i in indices]
            # A fused operation (the XLA custom call) has no partitioning rule: on arrays
            # sharded over several devices XLA would gather each whole array onto every
            # device for it and return it replicated. XLA's own fusions partition instead.
            fused_allowed = not ops.spans_devices(placements)
            own_placements = None if placements is None else placements[: len(own)]
            trainable_placements = None if placements is None else placements[len(own):]

            def pure(own_values: list, trainable_values: list, gradients: list) -> tuple[list, list]:
                if not self._retrace_allowed:
                    raise Retrace  # a repeat met gradients of another structure, shape or dtype
                with values_swapped(own + trainables, own_values + trainable_values, copy=False):
                    optimizer._in_own_step = fused_allowed  # fused operations may replace reference ones
                    try:
                        optimizer._apply_prepared(list(gradients), chosen)
                    finally:
                        optimizer._in_own_step = False
                    # Placed as they came in: the donated buffers are reused in place, and a
                    # sharded variable or slot stays sharded, whatever XLA would choose.
                    return (
                        ops.keep_placements([v.value for v in own], own_placements),
                        ops.keep_placements([v.value for v in trainables], trainable_placements),
                    )

            step = self.steps[key] = ops.compile(pure, donate_argnums=(0, 1))
            # Donation consumes the arrays passed in: give the step private copies first, so
            # that no array the caller still holds (an initial value, say) is invalidated.
            for variable in own + trainables:
                variable._value = ops.copy(variable._value)
        self._retrace_allowed = True  # these gradients were validated
        try:
            _run(step, own, trainables, grads)
        finally:
            self._retrace_allowed = False
        self.last = _LastStep(
            step, None if targets is None else list(targets), own, trainables, constants, optimizer._learning_rate,
            len(variables), placements,
        ) if repeatable else None

    def repeat(self, optimizer: Any, grads: list, trainable_variables: Optional[Sequence[Any]]) -> bool:
        """Repeat the last compiled step with new gradients, skipping the per-variable Python
        work, when nothing it depends on changed; False (nothing done) otherwise.

        Gradients of the backend's own type are all it checks here: the compiled step was
        traced for gradients that passed the full validation, and gradients of any other
        structure, shape or dtype would make it trace again, which it refuses (``Retrace``)
        before anything runs, so that the full path validates them."""
        last = self.last
        if last is None or any(g is None for g in grads):  # not `None in grads`: that calls ==
            return False
        if trainable_variables is None:
            if last.targets is not None or len(grads) != last.count or len(grads) != len(optimizer._trainable_variables):
                return False
        elif last.targets is None or not (
            len(last.targets) == len(trainable_variables) and all(map(operator.is_, last.targets, trainable_variables))
        ):
            return False
        ops = optimizer._backend
        if (
            optimizer._learning_rate is not last.learning_rate
            or _constants(optimizer) != last.constants
            or len(optimizer._all_variables()) != len(last.own)
            or ops.is_traced(optimizer._iterations.value)
            or not ops.are_native(grads)
            # a variable assigned an array placed elsewhere (another sharding) needs its own step
            or ops.placements(list(map(_value_of, last.own + last.trainables))) != last.placements
        ):
            return False
        try:
            _run(last.step, last.own, last.trainables, grads)
        except Retrace:
            return False
        return True


def _run(step: Callable, own: list, trainables: list, grads: list) -> None:
    own_values, trainable_values = step(list(map(_value_of, own)), list(map(_value_of, trainables)), grads)
    for variable, value in zip(own, own_values):
        variable._value = value
    for variable, value in zip(trainables, trainable_values):
        variable._value = value


@contextmanager
def values_swapped(variables: Sequence[Any], values: Sequence[Any], copy: bool = True) -> Iterator[None]:
    """Let ``variables`` (``inertia.Variable``s) hold ``values`` (copies, so in-place updates
    never reach the caller's arrays) for the duration of the block; restore the originals
    afterwards."""
    saved = [v._value for v in variables]
    try:
        for variable, value in zip(variables, values):
            if isinstance(value, Variable):
                value = value.value
            ops = variable.backend
            if copy:
                value = ops.cast(ops.asarray(value, like=variable._value), variable.dtype) if not ops.is_array(value) else ops.cast(ops.copy(value), variable.dtype)
            variable._value = value
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable._value = value
