"""Checkpoints of the torch face: ``inertia.torch.SGD`` (``FlatParameters`` included).

Tensors are named after torch's ``state_dict`` indices: ``state.<param index>.<key>``
(``momentum_buffer``, ``average``, ``gradient_accumulator``) and, for tensor-valued group
options, ``param_groups.<group>.<key>``; the document adds ``param_groups`` (as torch's
``state_dict`` holds them, tensors replaced by references) and ``params`` (each parameter's
shape and dtype). The group options ``lr`` and ``momentum``'s value are state (torch's LR
schedulers move them) and are restored from the file; the others are configuration.

torch is imported by the functions that need it (only users of the torch face call them).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from inertia import backend as backends
from inertia.checkpoint.arrays import ArrayBytes, snapshot, to_backend
from inertia.checkpoint.checks import Context, check_array, check_config, jsonable, momentum_enabled, raise_problems

_STATE_ROLES = {"momentum_buffer": "momentum", "average": "ema_average", "gradient_accumulator": "gradient_accumulator"}
# param-group options compared with the optimizer's; the others (lr, momentum's value,
# initial_lr, ...) are state in torch, moved by LR schedulers, and restored from the file.
_COMPARED_GROUP_KEYS = ("nesterov", "dampening", "weight_decay", "maximize", "clipnorm", "clipvalue")
_WIDE_KEYS = ("use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps", "global_clipnorm")
_TENSOR_REF = "__tensor__"
_COUNTERS = ("micro_steps", "updates")
_NOT_GROUP_SETTINGS = _COUNTERS + ("clip_group", "aggregate")


def _indexed_params(optimizer: Any, state_dict: dict) -> dict[int, Any]:
    """Param index (as torch's state_dict numbers them) -> the parameter."""
    indexed: dict[int, Any] = {}
    for group, saved in zip(optimizer.param_groups, state_dict["param_groups"]):
        for param, index in zip(group["params"], saved["params"]):
            indexed.setdefault(index, param)
    return indexed


def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _config(optimizer: Any) -> dict:
    config = {key: getattr(optimizer, key) for key in _WIDE_KEYS}
    config["flat_parameters"] = optimizer._flat is not None
    return jsonable(config, "the optimizer's options")


def _number_or_value(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else value.tolist()
    return value


def _comparable(config: dict, groups: list[dict]) -> dict:
    out = dict(config)
    for index, group in enumerate(groups):
        for key in _COMPARED_GROUP_KEYS:
            out[f"param_groups.{index}.{key}"] = jsonable(_number_or_value(group.get(key)), f"param group {index}'s {key!r}")
        out[f"param_groups.{index}.momentum_enabled"] = momentum_enabled(_number_or_value(group.get("momentum", 0)))
    return out


def save(optimizer: Any) -> tuple[dict, dict[str, ArrayBytes]]:
    import torch

    if optimizer._ema_swapped:
        raise ValueError(
            "Cannot save the optimizer while the EMA weights are swapped in (its averages hold the weights "
            "now): call `swap_ema_weights()` again, or leave the `ema_weights()` block, first."
        )
    state_dict = optimizer.state_dict()
    indexed = _indexed_params(optimizer, state_dict)
    tensors: dict[str, ArrayBytes] = {}
    table: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Cannot save the state of param {index}: entry {key!r} is not a tensor ({value!r:.100}).")
            name = f"state.{index}.{key}"
            tensors[name] = snapshot(value, name)  # state_dict() holds the live tensors: copied now
            table[name] = {"role": _STATE_ROLES.get(key, key), "param": int(index)}
    groups = []
    scalars: dict[str, Any] = {}
    for number, group in enumerate(state_dict["param_groups"]):
        saved: dict[str, Any] = {}
        for key, value in group.items():
            if key in _NOT_GROUP_SETTINGS:
                continue  # the counters are the document's "counters"; how ranks communicate is not state
            if isinstance(value, torch.Tensor):
                name = f"param_groups.{number}.{key}"
                tensors[name] = snapshot(value, name)
                table[name] = {"role": "hyperparameter", "group": number, "key": key}
                saved[key] = {_TENSOR_REF: name}
            else:
                saved[key] = jsonable(value, f"param group {number}'s {key!r}")
        groups.append(saved)
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):  # the value written, from its snapshot
            taken = tensors[f"param_groups.{number}.lr"].floats()
            lr = float(taken.reshape(-1)[0]) if taken.size == 1 else taken.tolist()
        scalars[f"param_groups.{number}.lr"] = jsonable(lr, "lr")
    counters = {key: optimizer._counter(key) for key in _COUNTERS}
    document = {
        "backend": "torch",
        "config": _config(optimizer),
        "counters": {key: int(counters[key]) for key in _COUNTERS},
        "scalars": scalars,
        "tensors": table,
        "param_groups": groups,
        "params": [
            {"shape": list(indexed[i].shape), "dtype": _dtype_name(indexed[i])} for i in sorted(indexed)
        ],
    }
    return document, tensors


def _saved_layout(context: Context) -> tuple[list, list]:
    """The document's ``param_groups`` and ``params``, checked for their form."""
    groups, params = context.entry("param_groups", list), context.entry("params", list)

    def indices(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)

    if not all(isinstance(g, dict) and indices(g.get("params")) for g in groups) or not all(
        isinstance(p, dict) and indices(p.get("shape")) and isinstance(p.get("dtype"), str) for p in params
    ):
        raise context.fail(
            "its metadata's 'param_groups' (dicts, each with a list of param indices) or 'params' (each param's "
            "shape and dtype) are malformed."
        )
    return groups, params


def load(optimizer: Any, context: Context, var_list: Any) -> Callable[[], None]:
    import torch

    from inertia.torch import _check_group

    if optimizer._ema_swapped:
        raise context.fail("the optimizer's EMA weights are swapped in: call `swap_ema_weights()` again before loading.")
    saved_groups, saved_params = _saved_layout(context)
    groups = optimizer.param_groups
    sizes = [len(g["params"]) for g in saved_groups]
    if sizes != [len(g["params"]) for g in groups]:
        raise context.fail(
            f"its param groups hold {sizes} parameters, the optimizer's {[len(g['params']) for g in groups]}."
        )
    current = optimizer.state_dict()  # only to number the parameters as torch does
    indexed = _indexed_params(optimizer, current)
    saved_indices = [i for g in saved_groups for i in g["params"]]
    if sorted(set(saved_indices)) != list(range(len(saved_params))) or len(saved_params) != len(indexed):
        raise context.fail(f"its param groups number {len(saved_params)} parameters; the optimizer has {len(indexed)}.")
    problems = []
    by_position = [indexed[i] for g in current["param_groups"] for i in g["params"]]
    at_index = dict(zip(saved_indices, by_position))
    for index, info in enumerate(saved_params):
        param = at_index[index]
        if list(param.shape) != info.get("shape") or _dtype_name(param) != info.get("dtype"):
            problems.append(
                f"param {index} is {info.get('dtype')} of shape {tuple(info.get('shape') or ())} in the checkpoint, "
                f"{_dtype_name(param)} of shape {tuple(param.shape)} in the optimizer"
            )
    raise_problems(context, problems)
    torch_ops = backends.get("torch")

    def decoded(value: Any, like: Any) -> Any:
        if isinstance(value, dict) and set(value) == {_TENSOR_REF}:
            name = value[_TENSOR_REF]
            if not isinstance(name, str) or name not in context.arrays:
                raise context.fail(f"its metadata refers to a tensor {name!r} that it does not hold.")
            return to_backend(torch_ops, context.arrays[name], like=like if isinstance(like, torch.Tensor) else None)
        return value

    restored = []
    for saved, group in zip(saved_groups, groups):
        restored.append({key: decoded(value, group.get(key)) for key, value in saved.items() if key != "params"})
    accepted = check_config(context, _comparable(context.entry("config", dict), restored), _comparable(_config(optimizer), groups))
    new_groups = []
    for number, (saved, values, group) in enumerate(zip(saved_groups, restored, groups)):
        values = dict(values)
        for key in _COMPARED_GROUP_KEYS:  # accepted differences keep the optimizer's own values
            if f"param_groups.{number}.{key}" in accepted:
                values[key] = group.get(key)
        try:
            _check_group({**optimizer.defaults, **values}, optimizer._optimizer_wide())
        except (TypeError, ValueError) as error:
            raise context.fail(f"param group {number}: {error}") from None
        new_groups.append({**values, "params": list(saved["params"])})

    state: dict[int, dict[str, Any]] = {}
    for name, info in context.document["tensors"].items():
        if info.get("role") == "hyperparameter":
            continue
        index, key = info.get("param"), name.rsplit(".", 1)[-1]
        if not isinstance(index, int) or name != f"state.{index}.{key}" or index not in at_index:
            problems.append(f"tensor {name!r} belongs to no parameter of the optimizer")
            continue
        if key not in _STATE_ROLES:
            problems.append(f"tensor {name!r} is state inertia.torch.SGD does not keep ({key!r})")
            continue
        param = at_index[index]
        check_array(name, context.arrays[name], tuple(param.shape), _dtype_name(param), problems)
        state.setdefault(index, {})[key] = name
    for key in ("average", "gradient_accumulator"):
        option = "use_ema" if key == "average" else "gradient_accumulation_steps"
        if not getattr(optimizer, option) and any(key in entries for entries in state.values()):
            problems.append(f"it holds {key!r} tensors, which an optimizer without {option} does not keep")
    counters = context.entry("counters", dict)
    for key in _COUNTERS:
        value = counters.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= np.iinfo(np.int64).max:
            problems.append(f"counter {key!r} must be an integer in [0, 2**63 - 1]; the checkpoint holds {value!r}")
    raise_problems(context, problems)
    tensors = {
        index: {key: to_backend(torch_ops, context.arrays[name], like=at_index[index]) for key, name in entries.items()}
        for index, entries in state.items()
    }
    state_dict = {
        "state": tensors,
        "param_groups": new_groups,
        "inertia": {key: counters[key] for key in _COUNTERS},
    }

    def commit() -> None:
        optimizer.load_state_dict(state_dict)

    return commit
