"""Checkpoints of the MLX face: ``inertia.mlx.SGD``, whose state is a tree of NumPy, torch,
JAX or MLX arrays.

Tensors are named by their paths in the state tree joined by dots, as
``mlx.utils.tree_flatten`` names them (``step``, ``learning_rate``, ``layer.w.v``); the
document adds ``tree``, the tree's shape as JSON (dicts, lists and tuples kept apart; every
array replaced by ``{"tensor": name}``, every other value by ``{"value": ...}``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from inertia import backend as backends
from inertia.checkpoint.arrays import ArrayBytes, snapshot, to_backend
from inertia.checkpoint.checks import (
    Context,
    check_array,
    check_config,
    check_counter,
    check_names,
    check_rate,
    jsonable,
    momentum_enabled,
    raise_problems,
)


def _config(optimizer: Any) -> dict:
    return jsonable(
        {
            "momentum": optimizer.momentum,
            "weight_decay": optimizer.weight_decay,
            "dampening": optimizer.dampening,
            "nesterov": optimizer.nesterov,
            "learning_rate_kind": "schedule" if "learning_rate" in optimizer._schedulers else "value",
        },
        "the optimizer's options",
    )


def _comparable(config: dict) -> dict:
    return {**config, "momentum_enabled": momentum_enabled(config.get("momentum"))}


def _is_array(value: Any) -> bool:
    ops = backends.of(value)
    return ops is not None and ops.is_array(value)


def _skeleton(node: Any, path: tuple, arrays: dict, table: dict) -> dict:
    """The state tree as JSON, every array replaced by ``{"tensor": name}`` (and put in
    ``arrays`` under that name, its role in ``table``)."""
    if isinstance(node, dict):
        items = []
        for key, value in node.items():
            if not _is_key(key):
                raise TypeError(f"Cannot save the MLX state: key {key!r} at {_dotted(path) or 'the top'} is not a str or int.")
            items.append([key, _skeleton(value, path + (key,), arrays, table)])
        return {"dict": items}
    if isinstance(node, (list, tuple)):
        kind = "list" if isinstance(node, list) else "tuple"
        return {kind: [_skeleton(value, path + (i,), arrays, table) for i, value in enumerate(node)]}
    if _is_array(node):
        name = _dotted(path)
        if name in arrays:
            raise ValueError(f"Cannot save the MLX state: two entries flatten to the name {name!r}.")
        arrays[name] = node
        if path == ("step",):
            table[name] = {"role": "step"}
        elif path == ("learning_rate",):
            table[name] = {"role": "learning_rate"}
        elif path[-1] == "v" and len(path) > 1:
            table[name] = {"role": "velocity", "parameter": _dotted(path[:-1])}
        else:
            table[name] = {"role": "state"}
        return {"tensor": name}
    return {"value": jsonable(node, f"the MLX state entry {_dotted(path)!r}")}


def _is_key(key: Any) -> bool:
    return isinstance(key, (str, int)) and not isinstance(key, bool)


def _dotted(path: tuple) -> str:
    return ".".join(str(key) for key in path)


def save(optimizer: Any) -> tuple[dict, dict[str, ArrayBytes]]:
    arrays: dict[str, Any] = {}
    table: dict[str, dict] = {}
    tree = _skeleton(optimizer.state, (), arrays, table)
    tensors = {name: snapshot(value, name) for name, value in arrays.items()}

    def value(key: str) -> np.ndarray:  # from the snapshot: the file agrees with itself
        return tensors[key].numpy() if key in tensors else np.asarray(optimizer.state[key])

    document = {
        "backend": optimizer._ops.name,
        "config": _config(optimizer),
        "counters": {"step": int(value("step"))},
        "scalars": {"learning_rate": jsonable(value("learning_rate").tolist(), "learning_rate")},
        "tensors": table,
        "tree": tree,
    }
    return document, tensors


def load(optimizer: Any, context: Context, var_list: Any) -> Callable[[], None]:
    from inertia.mlx import _step_dtype

    check_config(context, _comparable(context.entry("config", dict)), _comparable(_config(optimizer)))
    current: dict[str, Any] = {}
    _skeleton(optimizer.state, (), current, {})
    initialized = any(key not in ("step", "learning_rate") for key in optimizer.state)
    if initialized:
        ops = optimizer._ops
    else:
        name = context.entry("backend", str)
        try:
            ops = backends.get(name)
        except Exception as error:
            raise context.fail(
                f"its state lives in {name} arrays, and {name} cannot be used here ({error}). Call "
                "optimizer.init(parameters) first to load it into your parameters' array library."
            ) from None
    tree = context.entry("tree", dict)
    expected = current if initialized else None
    problems: list[str] = []
    names_in_tree: list[str] = []

    def build(node: Any, path: tuple) -> Any:
        def malformed() -> ValueError:
            return context.fail(f"its state tree is malformed at {_dotted(path) or 'the top'!r}.")

        if not isinstance(node, dict) or len(node) != 1:
            raise malformed()
        (kind, value), = node.items()
        if kind == "dict":
            if not isinstance(value, list) or not all(isinstance(item, list) and len(item) == 2 and _is_key(item[0]) for item in value):
                raise malformed()
            return {key: build(child, path + (key,)) for key, child in value}
        if kind in ("list", "tuple"):
            if not isinstance(value, list):
                raise malformed()
            items = [build(child, path + (i,)) for i, child in enumerate(value)]
            return items if kind == "list" else tuple(items)
        if kind == "value":
            return value
        if kind != "tensor" or not isinstance(value, str) or value not in context.arrays:
            raise context.fail(f"its state tree refers to a tensor {value!r} that it does not hold.")
        names_in_tree.append(value)
        stored = context.arrays[value]
        like = expected.get(value) if expected is not None else None
        if path == ("step",):
            dtype = _step_dtype(ops)
            conversion = check_counter(context, value, stored, dtype, problems)
            return made(value, stored, conversion, like)
        if path == ("learning_rate",):
            # Its dtype is the schedule's (a scheduled rate is computed again at the next step),
            # or float32: the file's array is restored as it is.
            check_rate(value, stored, problems)
        elif like is not None:
            check_array(value, stored, tuple(ops.shape(like)), ops.dtype_name(like), problems)
        return made(value, stored, None, like)

    def made(name: str, stored: ArrayBytes, dtype: Optional[str], like: Any) -> Callable[[], Any]:
        def make() -> Any:
            array = to_backend(ops, stored, dtype=dtype, like=like)
            # A library may hold fewer dtypes than the one saved from (JAX without x64 makes
            # float32 of float64): the state is not changed silently.
            if ops.dtype_name(array) != (dtype or stored.dtype):
                raise context.fail(
                    f"its tensor {name!r} is {dtype or stored.dtype}, which {ops.name} arrays cannot hold here (it "
                    f"becomes {ops.dtype_name(array)})."
                )
            return array

        return make

    skeleton = build(tree, ())
    if not isinstance(skeleton, dict) or "step" not in skeleton or "learning_rate" not in skeleton:
        raise context.fail("its state tree lacks the 'step' or 'learning_rate' entry.")
    if expected is not None:
        check_names(
            context, list(expected), names_in_tree,
            " The optimizer was initialized for other parameters (or the checkpoint was saved for others).",
        )
    raise_problems(context, problems)

    def materialize(node: Any) -> Any:
        if callable(node):
            return node()
        if isinstance(node, dict):
            return {key: materialize(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            items = [materialize(value) for value in node]
            return items if isinstance(node, list) else tuple(items)
        return node

    state = materialize(skeleton)  # every array made before the optimizer sees any

    def commit() -> None:
        optimizer.state = state

    return commit
