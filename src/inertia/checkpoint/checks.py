"""What a load checks on every face before it changes anything, and how it says what does
not fit: the configuration policy (structural options must match; other hyperparameters
unless accepted), the tensors' names, shapes and dtypes, counter ranges, learning rates and
loss scales. Problems are gathered and raised together, in one ValueError that names the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

import numpy as np

from inertia.checkpoint.arrays import INTEGER_DTYPES, ArrayBytes

# Options that decide which state exists or what it means: they must match, always.
STRUCTURAL = {"use_ema", "gradient_accumulation_steps", "nesterov", "learning_rate_kind", "momentum_enabled", "flat_parameters"}
COUNTER_ROLES = {"iterations", "loss_scale_counter", "step"}
_ABSENT = object()


@dataclass
class Context:
    """One load: where (the message's start, naming the file), the file's document and
    arrays, and the hyperparameter changes the caller accepts."""

    where: str
    document: dict
    arrays: dict[str, ArrayBytes]
    allowed: Union[bool, frozenset]

    def fail(self, detail: str) -> ValueError:
        return ValueError(f"{self.where}: {detail}")

    def entry(self, key: str, kind: type) -> Any:
        value = self.document.get(key)
        if not isinstance(value, kind):
            raise self.fail(f"its metadata has no valid {key!r} entry (found {value!r:.100}).")
        return value


def class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON data (NumPy scalars become Python numbers), or a TypeError naming where."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"Cannot save {where}: a dict with keys other than strings: {value!r:.200}")
        return {k: jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"Cannot save {where}: a {type(value).__name__} is not JSON data ({value!r:.200}).")


# ----------------------------------------------------------------------------------------
# the configuration
# ----------------------------------------------------------------------------------------
def allowed_changes(allow: Any) -> Union[bool, frozenset]:
    """The argument ``allow_config_changes``, checked: True, or the option names accepted."""
    if isinstance(allow, bool):
        return True if allow else frozenset()
    names = [allow] if isinstance(allow, str) else None
    if names is None:
        try:
            names = list(allow)
        except TypeError:
            names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(
            "Argument `allow_config_changes` must be a bool or a collection of option names. "
            f"Received: allow_config_changes={allow!r}"
        )
    structural = sorted(n for n in names if n in STRUCTURAL)
    if structural:
        raise ValueError(
            f"Argument `allow_config_changes` names options that must match the checkpoint (they decide which "
            f"state exists or what it means): {structural}. Received: allow_config_changes={allow!r}"
        )
    return frozenset(names)


def _same(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or a == b


def check_config(context: Context, saved: dict, current: dict) -> set[str]:
    """Compare two comparable configurations (flat dicts). Structural differences raise;
    other differences raise unless allowed. Returns the keys accepted as different."""
    keys = list(dict.fromkeys([*saved, *current]))
    allowed = context.allowed
    if allowed is not True:
        unknown = sorted(n for n in allowed if not any(_matches(k, n) for k in keys))
        if unknown:
            raise context.fail(
                f"allow_config_changes names options the optimizer's configuration does not have: {unknown}. "
                f"Its options: {sorted(keys)}."
            )
    structural, changed = [], []
    for key in keys:
        a, b = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if not _same(a, b):
            (structural if key.rsplit(".", 1)[-1] in STRUCTURAL else changed).append((key, a, b))

    def listing(diffs: list) -> str:
        return "; ".join(f"{k}: checkpoint {_shown(a)}, optimizer {_shown(b)}" for k, a, b in diffs)

    if structural:
        raise context.fail(
            "the optimizer is configured differently from the checkpoint in options that decide which state "
            f"exists or what it means, which must match: {listing(structural)}. Create the optimizer with "
            "the checkpoint's values."
        )
    refused = [d for d in changed if not (allowed is True or any(_matches(d[0], n) for n in allowed))]
    if refused:
        names = sorted({k.rsplit(".", 1)[-1] for k, _, _ in refused})
        raise context.fail(
            f"the optimizer's hyperparameters differ from the checkpoint's: {listing(refused)}. To load the state "
            f"and keep the optimizer's own values, pass allow_config_changes={names!r} (or True)."
        )
    return {k for k, _, _ in changed}


def _matches(key: str, name: str) -> bool:
    return key == name or key.endswith("." + name)


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def momentum_enabled(momentum: Any) -> bool:
    """Whether a momentum option's value turns momentum on (a structural option)."""
    return isinstance(momentum, (int, float)) and momentum != 0


# ----------------------------------------------------------------------------------------
# the tensors
# ----------------------------------------------------------------------------------------
def check_names(context: Context, expected: Iterable[str], found: Iterable[str], hint: str = "") -> None:
    expected, found = list(expected), set(found)
    missing = [n for n in expected if n not in found]
    unexpected = sorted(found - set(expected))
    if missing or unexpected:
        raise context.fail(
            f"its tensors do not match the optimizer's state. Missing from the checkpoint: {missing}; "
            f"in the checkpoint but not in the optimizer: {unexpected}.{hint}"
        )


def check_array(name: str, stored: ArrayBytes, shape: tuple, dtype: str, problems: list) -> None:
    if tuple(stored.shape) != tuple(shape):
        problems.append(f"{name!r} has shape {tuple(stored.shape)} in the checkpoint, {tuple(shape)} in the optimizer")
    if stored.dtype != dtype:
        problems.append(f"{name!r} has dtype {stored.dtype} in the checkpoint, {dtype} in the optimizer")


def raise_problems(context: Context, problems: list) -> None:
    if problems:
        raise context.fail("; ".join(problems) + ".")


def check_counter(
    context: Context, name: str, stored: ArrayBytes, dtype: str, problems: list, limit: Optional[int] = None
) -> Optional[str]:
    """A counter: an integer scalar, >= 0, in the range of ``dtype`` (the optimizer's
    counter dtype) and below ``limit``; returns the dtype to convert to, or None."""
    if stored.dtype not in INTEGER_DTYPES or stored.shape != ():
        problems.append(f"counter {name!r} must be an integer scalar; the checkpoint holds {stored.dtype} of shape {stored.shape}")
        return None
    value = stored.integer()
    high = int(np.iinfo(dtype).max) if dtype in INTEGER_DTYPES else None
    # The dtype's maximum itself is out of range, as the faces' own loaders hold: one more
    # step would overflow it.
    if value < 0 or (high is not None and value >= high) or (limit is not None and value >= limit):
        bound = f"< {limit}" if limit is not None else f"< {high} (the range of {dtype}, less one step)"
        problems.append(f"counter {name!r} is {value}; it must be >= 0 and {bound}")
    counters = context.document.get("counters")
    if not isinstance(counters, dict) or counters.get(name) != value:
        listed = counters.get(name) if isinstance(counters, dict) else None
        problems.append(f"counter {name!r} is {value} in its tensor but {listed!r} in the metadata (the file is inconsistent)")
    return dtype if dtype != stored.dtype else None


def check_rate(name: str, stored: ArrayBytes, problems: list, *, positive: bool = False) -> None:
    """A learning rate (finite, >= 0) or, ``positive``, a loss scale (finite, > 0)."""
    if stored.dtype in INTEGER_DTYPES or stored.dtype == "bool":
        problems.append(f"{name!r} must be floating-point; the checkpoint holds {stored.dtype}")
        return
    values = stored.floats()
    if not np.all(np.isfinite(values)) or np.any(values <= 0 if positive else values < 0):
        rule = "finite and > 0" if positive else "finite and >= 0"
        problems.append(f"{name!r} must be {rule}; the checkpoint holds {values.tolist()!r:.100}")
