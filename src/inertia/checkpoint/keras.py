"""Checkpoints of the Keras faces: ``inertia.Optimizer`` (``inertia.SGD``, subclasses),
``inertia.LossScaleOptimizer`` and ``inertia.legacy.SGD``.

Tensors are named as ``save_own_variables`` names the variables (``iteration``,
``learning_rate``, ``dense_kernel_momentum``, ``inner_optimizer/...``); the document adds
``built`` and ``trainable_variables``. An unbuilt optimizer given ``var_list`` is built on a
copy first, so that every check runs against the slots the build would make.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from inertia.checkpoint.arrays import ArrayBytes, snapshot
from inertia.checkpoint.checks import (
    COUNTER_ROLES,
    Context,
    check_array,
    check_config,
    check_counter,
    check_names,
    check_rate,
    class_name,
    jsonable,
    momentum_enabled,
    raise_problems,
)
from inertia.loss_scale import LossScaleOptimizer
from inertia.optimizer import Optimizer
from inertia.schedules import LearningRateSchedule
from inertia.variable import Variable


def _learning_rate_kind(optimizer: Optimizer) -> str:
    lr = optimizer._learning_rate
    if isinstance(lr, Variable):
        return "variable"
    return "schedule" if isinstance(lr, LearningRateSchedule) else "callable"


def _config(optimizer: Optimizer) -> dict:
    if isinstance(optimizer, LossScaleOptimizer):
        inner = optimizer.inner_optimizer
        return {
            "initial_scale": optimizer.initial_scale,
            "dynamic_growth_steps": optimizer.dynamic_growth_steps,
            "inner_optimizer": {"class": class_name(inner), **_config(inner)},
        }
    config = dict(optimizer.get_config())
    config.pop("name", None)  # names and compilation change no number
    config.pop("jit_compile", None)
    kind = _learning_rate_kind(optimizer)
    if kind == "schedule":
        from inertia import schedules

        config["learning_rate"] = schedules.serialize(optimizer._learning_rate)
    elif kind == "callable":
        function = optimizer._learning_rate
        config["learning_rate"] = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"
    config["learning_rate_kind"] = kind
    return jsonable(config, "the optimizer's config")


def _comparable(config: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in config.items():
        if key == "inner_optimizer" and isinstance(value, dict):
            out.update(_comparable(value, f"{prefix}inner_optimizer."))
            continue
        if key == "learning_rate" and config.get("learning_rate_kind") == "variable":
            continue  # the value is state (the learning-rate variable), restored from the file
        out[prefix + key] = value
        if key == "momentum" and isinstance(value, (int, float)):
            out[prefix + "momentum_enabled"] = momentum_enabled(value)
    return out


@dataclass
class _Role:
    info: dict
    limit: Optional[int] = None  # a counter's exclusive upper bound


_VARIABLE = _Role({"role": "variable"})


def _roles(optimizer: Optimizer) -> dict[int, _Role]:
    roles: dict[int, _Role] = {}
    trainables = optimizer._trainable_variables

    def mark(variables: Iterable[Optional[Variable]], role: str) -> None:
        for index, variable in enumerate(variables):
            if variable is not None:
                info = {"role": role}
                if index < len(trainables):
                    info["variable"] = trainables[index].path
                roles[id(variable)] = _Role(info)

    roles[id(optimizer._iterations)] = _Role({"role": "iterations"})
    if isinstance(optimizer._learning_rate, Variable):
        roles[id(optimizer._learning_rate)] = _Role({"role": "learning_rate"})
    mark(optimizer._model_variables_moving_average, "ema_average")
    mark(optimizer._accumulated_gradients, "gradient_accumulator")
    mark(getattr(optimizer, "momentums", None) or [], "momentum")
    if isinstance(optimizer, LossScaleOptimizer):
        if optimizer.built:
            roles[id(optimizer.step_counter)] = _Role({"role": "loss_scale_counter"}, limit=optimizer.dynamic_growth_steps)
            roles[id(optimizer.dynamic_scale)] = _Role({"role": "loss_scale"})
        roles.update(_roles(optimizer.inner_optimizer))
    return roles


def save(optimizer: Optimizer) -> tuple[dict, dict[str, ArrayBytes]]:
    roles = _roles(optimizer)
    tensors: dict[str, ArrayBytes] = {}
    table: dict[str, dict] = {}
    counters: dict[str, int] = {}
    scalars: dict[str, float] = {}
    for name, variable in optimizer._state_variables():
        if name in tensors:
            raise ValueError(f"Cannot save optimizer {optimizer.name!r}: two of its variables are named {name!r}.")
        tensors[name] = taken = snapshot(variable.value, name)
        info = roles.get(id(variable), _VARIABLE).info
        table[name] = info
        if info["role"] in COUNTER_ROLES:  # read from the snapshot: the file agrees with itself
            counters[name] = taken.integer()
        elif info["role"] in ("learning_rate", "loss_scale"):
            scalars[name] = float(taken.floats())
    document = {
        "backend": optimizer._backend.name,
        "built": bool(optimizer.built),
        "config": _config(optimizer),
        "counters": counters,
        "scalars": scalars,
        "tensors": table,
        "trainable_variables": [
            {"path": v.path, "shape": list(v.shape), "dtype": v.dtype} for v in optimizer._trainable_variables
        ],
    }
    return document, tensors


def load(optimizer: Optimizer, context: Context, var_list: Optional[Iterable[Any]]) -> Callable[[], None]:
    target = optimizer
    if var_list is not None:
        var_list = list(var_list)
        if optimizer.built:
            known = optimizer._trainable_variables_indices
            if len(var_list) != len(optimizer._trainable_variables) or any(id(v) not in known for v in var_list):
                raise TypeError(
                    f"Argument `var_list` is for building an unbuilt optimizer; optimizer {optimizer.name!r} is already "
                    f"built for {len(optimizer._trainable_variables)} other variables. Received: var_list={var_list!r:.200}"
                )
        else:
            # Built on a copy first: every check runs against the slots the build would make,
            # and the optimizer itself is built only once they pass.
            try:
                target = copy.deepcopy(optimizer)
            except Exception as error:  # a subclass holding something that cannot be copied
                raise TypeError(
                    f"Cannot build a copy of optimizer {optimizer.name!r} to check the checkpoint against ({error}): "
                    "call optimizer.build(var_list) first, then inertia.load without var_list."
                ) from None
            target.build(var_list)
    check_config(context, _comparable(context.entry("config", dict)), _comparable(_config(target)))

    entries = target._state_variables()
    hint = ""
    if not target.built:
        hint = (
            " The optimizer has not been built: pass var_list=[...] to inertia.load, or call "
            "optimizer.build(variables) first."
        )
    elif len(entries) == len(context.arrays):
        hint = " Slots are keyed by the variables' paths: give the variables the names they had when saved."
    check_names(context, [name for name, _ in entries], context.arrays, hint)

    roles = _roles(target)
    problems: list[str] = []
    conversions: dict[str, Optional[str]] = {}
    for name, variable in entries:
        stored = context.arrays[name]
        role = roles.get(id(variable), _VARIABLE)
        kind = role.info["role"]
        if kind in COUNTER_ROLES:
            conversions[name] = check_counter(context, name, stored, variable.dtype, problems, role.limit)
            continue
        check_array(name, stored, variable.shape, variable.dtype, problems)
        if kind == "learning_rate":
            check_rate(name, stored, problems)
        elif kind == "loss_scale":
            check_rate(name, stored, problems, positive=True)
    raise_problems(context, problems)
    store = {}
    for name, _ in entries:
        array = context.arrays[name].numpy()
        store[name] = array.astype(conversions[name]) if conversions.get(name) else array

    def commit() -> None:
        if target is not optimizer:
            optimizer.build(var_list)
        optimizer.load_own_variables(store)

    return commit
