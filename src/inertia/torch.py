"""``inertia.torch.SGD``: a drop-in ``torch.optim.Optimizer`` with torch.optim.SGD's numbers.

The update is the shared heavy-ball rule (``rule.py``) configured the torch way: the
momentum buffer starts as the first gradient (so dampening applies from step 2), L2 weight
decay is added to the gradient, ``maximize`` flips it, the learning rate stays outside the
buffer. Every ``y + a*x`` goes through ``torch.add(y, x, alpha=a)``, the primitive
torch.optim.SGD itself uses, so the results are bit for bit torch's. On CPU tensors the
whole step runs in inertia's host kernel, which fuses each ``y + a*x`` as ``add(alpha=)``
does (the step's description is ``inertia.engine.step.TORCH``). Param groups,
``state_dict`` (loadable by torch.optim.SGD and back), closures and LR schedulers work as
with torch.optim.SGD. inertia adds keyword options: clipping, an EMA of the weights (with
a swap for evaluation), and gradient accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import operator
import threading
from collections.abc import Mapping
from itertools import chain, repeat
from typing import Any, Callable, Iterator, Optional

import numpy as np
from inertia._optional import missing_torch

try:
    import torch
except ModuleNotFoundError as error:
    if error.name != "torch":
        raise
    raise missing_torch("inertia.torch (the torch.optim drop-in)") from error

from inertia import multi_tensor, pipeline
from inertia.backend.torch import BACKEND as _TORCH_OPS
from inertia.engine import host
from inertia.engine.step import MODE_NONE, GroupSettings
from inertia.engine.step import TORCH as TORCH_STEP
from inertia.optimizer import locked
from inertia.rule import sgd_update
from inertia.distributed import every_gradient, present_after
from inertia.distributed.torch import all_reduce_mean, default_device, squares_and_count_reducer
from inertia.torch_flat import FlatParameters

__all__ = ["SGD", "FlatParameters", "all_reduce_mean"]

_GROUP_EXTRAS = {"clipnorm": None, "clipvalue": None}
_GRAD = operator.attrgetter("grad")
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}
_OPTIMIZER_WIDE = (
    "global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps",
    "clip_group", "aggregate",
)
_COMMUNICATION = ("clip_group", "aggregate")
# The step counters live in every param group (each holds the same values): where torch's
# state_dict hooks, ZeroRedundancyOptimizer's consolidation and other wrappers carry them.
_COUNTER_KEYS = ("micro_steps", "updates")
# A loaded group may lack what older torch versions did not save (filled in by __setstate__).
_GROUP_FALLBACKS = {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False, "fused": False}
# The per-parameter state this optimizer keeps: each a tensor of the parameter's shape (or None).
_SLOT_NAMES = ("momentum_buffer", "average", "gradient_accumulator")
# The devices torch.optim.SGD(fused=True) accepts parameters on (torch 2.13).
_FUSED_DEVICES = ("mps", "cuda", "xpu", "hpu", "cpu", "mtia", torch._C._get_privateuse1_backend_name())
# inertia's step counters are Python ints; a checkpoint may hold them as int64.
_COUNTER_LIMIT = 2**63 - 1


def _torch_add_scaled(y: torch.Tensor, x: torch.Tensor, alpha: Any) -> torch.Tensor:
    """``y + alpha*x`` as torch.optim.SGD forms it: ``add(alpha=)`` for a number; for a
    tensor that autograd differentiates (``differentiable=True``), ``addcmul``."""
    if isinstance(alpha, torch.Tensor):  # x is saved for alpha's gradient: a copy, as the step then writes x
        return torch.addcmul(y, x.clone(), alpha)
    return torch.add(y, x, alpha=alpha)


def _detached_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor's real view (last dimension 2), on which the gradient pipeline
    (accumulation, clipping by the modulus, the EMA) runs; any other tensor as it is."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _like(result: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``result`` (computed on ``_real(original)``) back in ``original``'s dtype."""
    return torch.view_as_complex(result) if original.is_complex() else result


class ConflictingOptionsError(ValueError, RuntimeError):
    """A ValueError, inertia's error for a bad argument, that is also the RuntimeError
    torch.optim.SGD raises for the same input: code written for either catches it."""


def _number(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _clips_by_norm(clipnorm: Any) -> bool:
    """Whether a group's clipnorm clips (as ``pipeline.clip`` reads it: set and > 0)."""
    return bool(clipnorm) and clipnorm > 0


def _check_number(name: str, value: Any, *, minimum: Optional[float] = 0.0, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element. Received: {name} of shape {tuple(value.shape)}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Argument `{name}` must be a real number. Received: {name}={value!r}")
    number = _number(value)
    if not math.isfinite(number):
        raise ValueError(f"Argument `{name}` must be finite. Received: {name}={value!r}")
    if minimum is not None and number < minimum:
        label = {"lr": "learning rate", "momentum": "momentum value", "weight_decay": "weight_decay value"}.get(name)
        text = f"Invalid {label}: {value}" if label else f"Argument `{name}` must be >= {minimum}"
        raise ValueError(f"{text} (argument `{name}`, received {value!r})")


def _check_group(group: dict, optimizer_wide: Optional[Mapping] = None) -> None:
    """torch.optim.SGD's checks, applied to every group, plus inertia's own. A group may
    repeat an optimizer-wide option (ZeroRedundancyOptimizer copies every constructor
    keyword into each group) with the optimizer's own value, ``optimizer_wide``."""
    _check_number("lr", group["lr"])
    _check_number("momentum", group["momentum"])
    _check_number("dampening", group["dampening"], minimum=None)
    _check_number("weight_decay", group["weight_decay"])
    for flag in ("nesterov", "maximize"):
        if not isinstance(group[flag], bool):
            raise TypeError(f"Argument `{flag}` must be a bool. Received: {flag}={group[flag]!r}")
    if group["nesterov"] and (_number(group["momentum"]) <= 0 or _number(group["dampening"]) != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum and zero dampening "
            f"(received momentum={group['momentum']}, dampening={group['dampening']})"
        )
    if group.get("fused") and group.get("differentiable"):
        raise ConflictingOptionsError("`fused` does not support `differentiable` (received fused=True, differentiable=True).")
    if group.get("fused") and group.get("foreach"):
        raise ConflictingOptionsError("`fused` and `foreach` cannot be `True` together (received fused=True, foreach=True).")
    for key in ("clipnorm", "clipvalue"):
        _check_number(key, group.get(key), optional=True)
    if group.get("clipnorm") is not None and group.get("clipvalue") is not None:
        raise ValueError(
            "Only one of `clipnorm` and `clipvalue` can be set for a param group. "
            f"Received: clipnorm={group['clipnorm']}, clipvalue={group['clipvalue']}"
        )
    own = optimizer_wide or {}  # each key's accepted values: the optimizer's, and the argument as given
    wide = [key for key in _OPTIMIZER_WIDE if key in group and not (key in own and any(_same(group[key], v) for v in own[key]))]
    if wide:
        key = wide[0]
        if key in own:
            raise ValueError(
                f"A param group sets {key}={group[key]!r}, but {key} applies to the whole optimizer, whose value is "
                f"{own[key][0]!r}: a group may only repeat it (as ZeroRedundancyOptimizer copies it into each group)."
            )
        raise ValueError(f"{wide} apply to the whole optimizer and cannot be set per param group.")
    for key in _COUNTER_KEYS:
        if key in group:
            _check_counter(f"param group key {key!r}", group[key])


def _same(value: Any, own: Any) -> bool:
    """Whether a group's copy of an optimizer-wide option is the optimizer's value: equal
    numbers or names; the very object for anything else (a process group, a callable)."""
    if value is own:
        return True
    if isinstance(value, bool) or isinstance(own, bool):
        return isinstance(value, bool) and isinstance(own, bool) and value == own
    if isinstance(value, numbers.Real) and isinstance(own, numbers.Real):
        return value == own
    return isinstance(value, str) and isinstance(own, str) and value == own


def _check_counter(where: str, value: Any) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where} must be an integer >= 0. Received: {value!r}")
    if value >= _COUNTER_LIMIT:
        raise ValueError(f"{where} must be below {_COUNTER_LIMIT} (an int64 counter; nothing is wrapped). Received: {value!r}")


def _check_clip_group(clip_group: Any, global_clipnorm: Optional[float]) -> None:
    if clip_group is None:
        return
    if clip_group != "world" and not _is_process_group(clip_group):
        raise TypeError(
            "Argument `clip_group` must be a torch.distributed process group, or 'world' for the default group "
            f"(a name that pickles, for state dicts that carry it). Received: clip_group={clip_group!r}"
        )
    if global_clipnorm is None:
        raise ValueError(
            "Argument `clip_group` sums global_clipnorm's norm over the ranks that hold the other shards; it needs "
            f"global_clipnorm. Received: clip_group={clip_group!r}, global_clipnorm=None"
        )


def _is_process_group(value: Any) -> bool:
    import torch.distributed as dist

    return dist.is_available() and isinstance(value, dist.ProcessGroup)


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent, a drop-in for ``torch.optim.SGD`` with inertia's extras.

    Update rule per parameter ``w`` with gradient ``g`` (the buffer ``b`` starts as the
    first gradient, as in torch)::

        g <- -g                                         (maximize)
        g <- g + weight_decay*w                         (L2)
        b <- g (first step)   else   b <- momentum*b + (1 - dampening)*g
        w <- w - lr*(g + momentum*b)   (nesterov)   or   w <- w - lr*b

    Parameters whose ``.grad`` is None are skipped, as in torch; a step where none has a
    gradient changes nothing (inertia's counters included). One optimizer may be stepped from
    several threads: each ``step`` holds its lock.

    Args:
        params: parameters, ``(name, parameter)`` pairs, or param-group dicts; or a
            :class:`FlatParameters`, whose flat buffers are then stepped (one tensor per
            buffer, for models of many small tensors; see its trade-offs).
        lr, momentum, dampening, weight_decay, nesterov, maximize: as torch.optim.SGD
            (also per param group).
        foreach / fused: None (the default), True: float32 / float64 CPU steps run in one call
            of inertia's host kernel (the whole step, every param group), with torch's
            for-loop numbers; tensors off the CPU (CUDA) take torch's multi-tensor calls, as
            ``torch.optim.SGD(foreach=True)`` does (``inertia.multi_tensor``); False
            (``foreach``): the per-parameter reference path, as torch's for-loop
            implementation. Steps neither covers take the reference path either way.
        clipnorm / clipvalue: per-tensor norm or element-wise clipping of the gradient
            before the update (per param group; at most one of them).
        global_clipnorm: clip all gradients together to this joint norm (optimizer-wide;
            not combined with clipnorm or clipvalue).
        use_ema / ema_momentum / ema_overwrite_frequency: keep ``avg <- m*avg + (1-m)*w``
            of every parameter after each update (the first copies the weights); copy the
            averages into the parameters every ``ema_overwrite_frequency`` updates.
            :meth:`swap_ema_weights` / :meth:`ema_weights` swap them in for evaluation.
        gradient_accumulation_steps: each ``step()`` adds the gradients to an accumulator;
            every N-th applies their mean (clipping and EMA act on real updates only). A
            micro-step without a gradient for a param counts as zero for it; a param with no
            gradient in the whole cycle is skipped.
        aggregate: a callable on a list of tensors returning their aggregates (one per
            tensor, same shapes), run on real updates only, after the accumulation mean
            and before clipping: with DDP's ``no_sync()`` on every micro-step and
            ``aggregate=inertia.torch.all_reduce_mean()``, replicas communicate once per
            update. It gets one gradient per parameter, in order (zeros where this rank
            has none), then a presence vector, so that every rank aggregates the same
            layout; a parameter no rank has a gradient for is skipped (an average or a
            sum keeps that meaning). Every rank steps together, so every ``step()``
            counts. For replicated parameters (DDP), not ZeRO's partitions.
        clip_group: a torch.distributed group (or ``"world"``) over whose ranks
            global_clipnorm's norm is summed, for state sharded by parameter
            (ZeroRedundancyOptimizer): one all_reduce of one scalar per update, which
            every rank joins, one whose shard has no gradient included.

    The step counters (``micro_steps``, ``updates``) live in every param group, where
    ``state_dict``, its hooks and ZeroRedundancyOptimizer's consolidation carry them.

    Example:
        >>> import torch, inertia.torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = inertia.torch.SGD([w], lr=0.1, momentum=0.9)
        >>> w.grad = torch.tensor([1.0, 1.0])
        >>> opt.step()
        >>> w.detach(), opt.state[w]["momentum_buffer"]
        (tensor([0.9000, 1.9000]), tensor([1., 1.]))
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | torch.Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: Optional[int] = None,
        gradient_accumulation_steps: Optional[int] = None,
        aggregate: Optional[Callable[[list], list]] = None,
        clip_group: Any = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "clipnorm": clipnorm,
            "clipvalue": clipvalue,
        }
        _check_group(defaults)
        _check_number("global_clipnorm", global_clipnorm, optional=True)
        if global_clipnorm is not None and (clipnorm is not None or clipvalue is not None):
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}"
            )
        if not isinstance(use_ema, bool):
            raise TypeError(f"Argument `use_ema` must be a bool. Received: use_ema={use_ema!r}")
        _check_number("ema_momentum", ema_momentum)
        if not 0.0 <= ema_momentum <= 1.0:
            raise ValueError(f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={ema_momentum}")
        for name, value, least in (
            ("ema_overwrite_frequency", ema_overwrite_frequency, 1),
            ("gradient_accumulation_steps", gradient_accumulation_steps, 2),
        ):
            if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least):
                raise ValueError(f"`{name}` must be an integer >= {least} or None. Received: {name}={value!r}")
        if aggregate is not None and not callable(aggregate):
            raise TypeError(f"Argument `aggregate` must be a callable on a list of gradients, or None. Received: aggregate={aggregate!r}")
        _check_clip_group(clip_group, global_clipnorm)
        self._given_options = dict(
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency, gradient_accumulation_steps=gradient_accumulation_steps,
            clip_group=clip_group, aggregate=aggregate,
        )
        self.aggregate = aggregate
        self.clip_group = clip_group
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.use_ema = use_ema
        self.ema_momentum = float(ema_momentum)
        self.ema_overwrite_frequency = int(ema_overwrite_frequency) if use_ema and ema_overwrite_frequency else None
        self.gradient_accumulation_steps = int(gradient_accumulation_steps) if gradient_accumulation_steps else None
        self._counters_without_groups = dict.fromkeys(_COUNTER_KEYS, 0)
        # compiled steps' updates not yet in the counters, and the EMA's first-update flag
        self._compiled_counts: dict = {"pending": False, "ema_made": False}
        self._ema_swapped = False
        self._lock = threading.RLock()
        self._flat: Optional[FlatParameters] = params if isinstance(params, FlatParameters) else None
        super().__init__(params.param_groups() if self._flat is not None else params, defaults)

    # --- groups and state ------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (validated: torch's checks and inertia's, for every group)."""
        if isinstance(param_group, dict):
            _check_group({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}, self._optimizer_wide())
        counters = {key: self._counter(key) for key in _COUNTER_KEYS}
        flat = getattr(self, "_flat", None)  # set before torch's __init__ adds the first groups
        if flat is not None and isinstance(param_group, dict):
            given = param_group.get("params")
            given = [given] if isinstance(given, torch.Tensor) else list(given or ())
            inside = [p for p in given if isinstance(p, torch.Tensor) and flat.holds(p)]
            if inside:
                raise ValueError(
                    "some parameters appear in more than one parameter group: a parameter of shape "
                    f"{tuple(inside[0].shape)} already lives in a FlatParameters buffer this optimizer steps."
                )
        super().add_param_group(param_group)
        self.param_groups[-1].update(counters)  # a group's counters are the optimizer's

    def _optimizer_wide(self) -> dict:
        """The optimizer-wide options, which a param group may only repeat: each as the
        optimizer holds it, and as the constructor was given it (ZeroRedundancyOptimizer
        copies the arguments themselves: ``ema_overwrite_frequency=5`` without EMA, a
        tensor ``global_clipnorm``)."""
        given = self.__dict__.get("_given_options", {})
        return {key: (getattr(self, key, None), given.get(key, getattr(self, key, None))) for key in _OPTIMIZER_WIDE}

    def _counter(self, key: str) -> int:
        self._count_compiled_steps()
        return self._raw_counter(key)

    def _count_compiled_steps(self) -> None:
        """Add the updates that compiled steps counted on the device to the counters.

        A compiled step cannot add to a Python int without being traced again for its next
        value, so it counts in a 0-d tensor instead; whatever reads the counters outside
        compiled code (``state_dict``, an eager step, ``updates``) adds the count first:
        one read of the device, after compiled steps only."""
        compiled = self.__dict__.get("_compiled_counts")
        # the two flags first: this runs on every eager read of a counter
        if not compiled or not (compiled.get("pending") or compiled.get("ema_made")) or torch.compiler.is_compiling():
            return
        if compiled.get("ema_made"):
            # Averages made for a compiled step that never ran (its tracing failed): zeros,
            # not averages. Dropped, the next update starts them from the weights.
            compiled["ema_made"] = False
            compiled["ema_fresh"].fill_(False)
            for param in self._parameters():
                if param in self.state:
                    self.state[param].pop("average", None)
        if not compiled.get("pending"):
            return
        compiled["pending"] = False
        counted = compiled["updates"]
        taken = int(counted.item())
        counted.zero_()
        if taken:
            for key in _COUNTER_KEYS:
                self._set_counter(key, self._raw_counter(key) + taken)

    def _raw_counter(self, key: str) -> int:
        """A counter as the groups hold it (compiled steps not yet added)."""
        groups = self.__dict__.get("param_groups")
        if groups:
            return groups[0].get(key, 0)
        return self.__dict__.get("_counters_without_groups", {}).get(key, 0)

    def _set_counter(self, key: str, value: int) -> None:
        for group in self.__dict__.get("param_groups") or ():
            group[key] = value
        self.__dict__.setdefault("_counters_without_groups", {})[key] = value

    @property
    def _micro_steps(self) -> int:
        return self._counter("micro_steps")

    @_micro_steps.setter
    def _micro_steps(self, value: int) -> None:
        self._set_counter("micro_steps", value)

    @property
    def _updates(self) -> int:
        return self._counter("updates")

    @_updates.setter
    def _updates(self, value: int) -> None:
        self._set_counter("updates", value)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("global_clipnorm", None)
        self.__dict__.setdefault("use_ema", False)
        self.__dict__.setdefault("ema_momentum", 0.99)
        self.__dict__.setdefault("ema_overwrite_frequency", None)
        self.__dict__.setdefault("gradient_accumulation_steps", None)
        self.__dict__.setdefault("aggregate", None)
        self.__dict__.setdefault("clip_group", None)
        # Counters pickled by an older version (attributes, not group keys) move into the groups.
        older = {key: self.__dict__.pop(f"_{key}") for key in _COUNTER_KEYS if f"_{key}" in self.__dict__}
        self.__dict__.setdefault("_counters_without_groups", dict.fromkeys(_COUNTER_KEYS, 0))
        self.__dict__.setdefault("_ema_swapped", False)
        self.__dict__.setdefault("_compiled_counts", {"pending": False, "ema_made": False})
        self.__dict__.setdefault("_given_options", {})
        self.__dict__.setdefault("_flat", None)
        # Not replaced when load_state_dict sets the state (it holds this lock then); a copy
        # or an unpickled optimizer gets its own (the lock is not state).
        self.__dict__.setdefault("_lock", threading.RLock())
        for group in self.param_groups:  # groups saved by torch.optim.SGD lack inertia's keys
            for key, value in {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False, "fused": False}.items():
                group.setdefault(key, value)
            for key, value in _GROUP_EXTRAS.items():  # the options this optimizer was built with
                group.setdefault(key, self.defaults.get(key, value))
            for key in _COUNTER_KEYS:  # and its counters start at 0
                group.setdefault(key, older.get(key, 0))

    def __getstate__(self) -> dict:
        self._count_compiled_steps()
        state = super().__getstate__()
        for key in _OPTIMIZER_WIDE + ("_counters_without_groups", "_ema_swapped", "_flat", "_given_options"):
            state[key] = getattr(self, key)
        return state

    @property
    def updates(self) -> int:
        """Real updates applied (``step()`` calls, or every N-th under accumulation)."""
        return self._updates

    @locked
    def state_dict(self) -> dict:
        """torch.optim.SGD's layout (``state``, ``param_groups``), loadable by it; each group
        also holds inertia's options and the step counters ``micro_steps`` and ``updates``
        (torch.optim.SGD keeps them as unknown group keys)."""
        self._count_compiled_steps()
        return super().state_dict()

    @locked
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of ``torch.optim.SGD`` (counters then restart
        at 0, and a missing EMA restarts from the weights at the next update). The counters
        come from the groups (a top-level ``"inertia"`` entry, as older versions saved
        them, is read too). torch.optim.SGD keeps group keys it does not know: a state dict
        of inertia's that went through it comes back with the counters it had then.

        Checked whole before anything changes: the layout, each group's hyperparameters (as
        the constructor checks them), each state tensor (a floating tensor of its
        parameter's shape, or None) and the counters' range."""
        if self._ema_swapped:
            raise RuntimeError("The EMA weights are swapped in; call `swap_ema_weights()` again before loading state.")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Argument `state_dict` must be a dict, as `state_dict()` returns. Received: state_dict={state_dict!r:.200}")
        if isinstance(state_dict.get("param_groups"), (list, tuple)):
            # How the saver communicated (ZeroRedundancyOptimizer copies every option into
            # the groups) is not state: a sharded run's state loads into an unsharded one.
            state_dict = {**state_dict, "param_groups": [
                {k: v for k, v in group.items() if k not in _COMMUNICATION} if isinstance(group, Mapping) else group
                for group in state_dict["param_groups"]
            ]}
        self._check_loaded_state(state_dict)
        counters = self._loaded_counters(state_dict)
        torch_part = {k: v for k, v in state_dict.items() if k != "inertia"}
        torch_part["param_groups"] = [  # the other optimizer-wide options, checked equal, are this optimizer's
            {k: v for k, v in group.items() if k not in _OPTIMIZER_WIDE} for group in torch_part["param_groups"]
        ]
        super().load_state_dict(torch_part)
        self._count_compiled_steps()  # steps before the load: replaced by the loaded counters
        self._micro_steps, self._updates = counters["micro_steps"], counters["updates"]

    @staticmethod
    def _loaded_counters(state_dict: Mapping) -> dict:
        """The counters of a state dict to load (0 for torch.optim.SGD's), checked."""
        if "inertia" in state_dict:  # the layout of inertia 0.1's state_dict
            counters = state_dict["inertia"]
            for key in _COUNTER_KEYS:
                value = counters.get(key) if isinstance(counters, dict) else None
                _check_counter(f"state_dict['inertia'][{key!r}]", value)
            return {key: int(counters[key]) for key in _COUNTER_KEYS}
        found = {}
        for key in _COUNTER_KEYS:
            values = {int(group.get(key, 0)) for group in state_dict["param_groups"]}
            if len(values) > 1:
                raise ValueError(
                    f"state_dict['param_groups'] hold different {key!r} counters {sorted(values)}; every group holds "
                    "the optimizer's counters, the same in each."
                )
            found[key] = values.pop() if values else 0
        return found

    def _check_loaded_state(self, state_dict: Mapping) -> None:
        """The layout, hyperparameters and state tensors of a state dict to load (see
        ``load_state_dict``); a ValueError / TypeError naming the key, before any change."""
        for key, kind in (("state", Mapping), ("param_groups", (list, tuple))):
            if key not in state_dict:
                raise ValueError(
                    f"Argument `state_dict` has no {key!r} entry: expected the layout `state_dict()` returns "
                    f"(keys 'state' and 'param_groups'). Received: a dict with keys {list(state_dict)[:10]}"
                )
            if not isinstance(state_dict[key], kind):
                raise ValueError(f"state_dict[{key!r}] must be a {'dict' if key == 'state' else 'list'}. Received: {state_dict[key]!r:.200}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict['param_groups'] has {len(saved_groups)} groups but this optimizer has "
                f"{len(self.param_groups)}; a state dict loads into the groups it was saved from."
            )
        indices: list = []
        for position, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            where = f"state_dict['param_groups'][{position}]"
            if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"{where} must be a dict with a 'params' list. Received: {saved!r:.200}")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{where} lists {len(saved['params'])} parameters but the group it loads into has "
                    f"{len(group['params'])}. Received: params={saved['params']!r:.200}"
                )
            for key in ("lr", "momentum", "dampening", "weight_decay"):
                if key not in saved:
                    raise ValueError(f"{where} has no {key!r} entry. Received: a group with keys {sorted(k for k in saved if k != 'params')}")
            extras = {key: self.defaults.get(key, value) for key, value in _GROUP_EXTRAS.items()}
            try:
                _check_group(
                    {**_GROUP_FALLBACKS, **extras, **{k: v for k, v in saved.items() if k != "params"}}, self._optimizer_wide()
                )
            except (TypeError, ValueError) as error:
                raise type(error)(f"{where}: {error}") from None
            indices += list(saved["params"])
        params = dict(zip(indices, (p for group in self.param_groups for p in group["params"])))
        for index, entry in state_dict["state"].items():
            param = params.get(index)
            if param is None:
                continue  # torch keeps state it cannot place; so does this optimizer
            if not isinstance(entry, Mapping):
                raise ValueError(f"state_dict['state'][{index!r}] must be a dict of tensors. Received: {entry!r:.200}")
            for name in _SLOT_NAMES:
                slot = entry.get(name)
                if slot is None:
                    continue  # torch.optim.SGD saves momentum_buffer=None without momentum
                if not (isinstance(slot, torch.Tensor) and slot.is_floating_point() and slot.shape == param.shape):
                    got = (
                        f"a tensor of dtype {slot.dtype} and shape {tuple(slot.shape)}"
                        if isinstance(slot, torch.Tensor) else f"{type(slot).__name__}: {slot!r:.100}"
                    )
                    raise ValueError(
                        f"state_dict['state'][{index!r}][{name!r}] must be None or a floating-point tensor of its "
                        f"parameter's shape {tuple(param.shape)}. Received: {got}"
                    )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's ``zero_grad``; the gradients of :class:`FlatParameters` buffers
        are zeroed in place instead (the model's gradients are views of them)."""
        if self._flat is None:
            super().zero_grad(set_to_none)
            return
        self._flat.zero_grad()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None or self._flat.owns(param):
                    continue
                if set_to_none:
                    param.grad = None
                else:
                    if param.grad.grad_fn is not None:
                        param.grad.detach_()
                    else:
                        param.grad.requires_grad_(False)
                    param.grad.zero_()

    # --- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One optimisation step (a micro-step under gradient accumulation).

        Every check runs before any parameter or state changes. The closure runs before the
        step takes the optimizer's lock: a backward that waits for other threads (replicas
        that step this optimizer) must not wait behind it.
        """
        if self._ema_swapped:
            raise RuntimeError("The EMA weights are swapped in; call `swap_ema_weights()` again before stepping.")
        self._opt_called = True  # what an LR scheduler's wrapper of `step` would record (see below)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            return self._traced_step(loss)
        return self._eager_step(loss)

    # LR schedulers wrap an optimizer's `step` to record that it ran, in a function that
    # torch.compile will not trace; this step records it itself, so they leave it as it is
    # and `torch.compile(fullgraph=True)` can trace a function that calls `optimizer.step()`.
    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]

    def _eager_step(self, loss: Any) -> Any:
        # differentiable=True: autograd records the step (torch.optim.SGD's rule).
        with self._lock, torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            return self._locked_step(loss)

    _step_outside_compiled_code = torch.compiler.disable(
        _eager_step,
        reason=(
            "inertia.torch.SGD runs this step eagerly, outside the compiled code: it uses gradient accumulation, "
            "ema_overwrite_frequency, aggregate, clip_group, FlatParameters or differentiable=True, or a parameter has "
            "a sparse gradient or is complex (fullgraph=True cannot trace such a step)"
        ),
    )

    # --- the step that torch.compile traces ---------------------------------------------------
    def _traced_step(self, loss: Any) -> Any:
        """The step as ``torch.compile`` traces it: torch ``_foreach_*`` operations on every
        parameter with a gradient, with no read of a device value and no Python test of a
        number that may change between steps, so that ``fullgraph=True`` holds and a step
        with a tensor learning rate is traced once, whatever a scheduler writes into it (a
        Python float that changes is traced twice: torch.compile takes it as a constant
        first, as an input from then on). The numbers are the eager step's within
        inductor's rounding.

        Checks run in :meth:`_init_group`, which torch.compile runs eagerly while it traces:
        they see every value the trace is made for, not values changed between compiled
        steps. Steps this path does not cover run eagerly outside the compiled code (a graph
        break): gradient accumulation, ``ema_overwrite_frequency``, ``aggregate``,
        ``clip_group``, FlatParameters, ``differentiable=True``, sparse gradients and
        complex parameters. The optimizer's lock is not taken."""
        covered = not (
            self.gradient_accumulation_steps or self.ema_overwrite_frequency or self.aggregate is not None
            or self.clip_group is not None or self._flat is not None or self.defaults.get("differentiable")
        )
        members = []
        for group in self.param_groups:
            params: list = []
            grads: list = []
            buffers: list = []
            covered = covered and self._init_group(group, params, grads, buffers)
            members.append((group, params, grads, buffers))
        if not covered:
            return self._step_outside_compiled_code(loss)
        every_grad = [grad for _, _, grads, _ in members for grad in grads]
        if not every_grad:
            return loss  # no gradient: nothing changes, as in torch.optim.SGD
        own = False
        if self.global_clipnorm is not None:
            clipped = iter(pipeline.clip_by_global_norm(_TORCH_OPS, every_grad, self.global_clipnorm))
            members = [(group, params, [next(clipped) for _ in grads], buffers) for group, params, grads, buffers in members]
            own = True
        for group, params, grads, buffers in members:
            if not params:
                continue
            group_owns = own
            if group["clipnorm"] is not None or group["clipvalue"] is not None:
                grads, group_owns = pipeline.clip(_TORCH_OPS, grads, group["clipnorm"], None, group["clipvalue"]), True
            settings = GroupSettings(
                learning_rate=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
            )
            made = multi_tensor.heavy_ball_traced(torch, settings, params, grads, buffers, group_owns)
            if buffers:
                self._keep_new_buffers(params, buffers, made)
        if self.use_ema:
            self._traced_ema()
        # Counted in a tensor and a dict (compiled code writes neither Python ints nor, on
        # an Optimizer, attributes): see _count_compiled_steps.
        compiled = self._compiled_counts
        if "updates" in compiled:
            compiled["updates"].add_(1)
        else:  # where torch.compile traced _init_group instead of running it
            compiled["updates"] = torch.ones((), dtype=torch.int64, device=every_grad[0].device)
        compiled["pending"] = True
        return loss

    def _traced_ema(self) -> None:
        """The EMA of every parameter in a compiled step, with :meth:`_update_ema`'s numbers
        (``m`` and ``1 - m`` formed in each dtype). The averages were made by
        :meth:`_init_group` (as zeros, outside the graph: an average made in the graph came
        back from inductor as the parameter itself, torch 2.13); on their first update
        ``m`` is 0, read from a flag tensor, so the first step and the later ones are one
        graph: ``0*0 + 1*w`` is the eager path's copy of the weights."""
        fresh = self._compiled_counts["ema_fresh"]
        by_dtype: dict = {}
        for param in self._parameters():
            averages, params = by_dtype.setdefault(param.dtype, ([], []))
            averages.append(self.state[param]["average"])
            params.append(param)
        for dtype, (averages, params) in by_dtype.items():
            device = averages[0].device
            m = torch.where(
                fresh, torch.zeros((), dtype=dtype, device=device), torch.full((), self.ema_momentum, dtype=dtype, device=device)
            )
            torch._foreach_mul_(averages, m)
            torch._foreach_add_(averages, torch._foreach_mul(params, 1 - m))
        fresh.fill_(False)
        self._compiled_counts["ema_made"] = False

    def _compiled_step_covers(self) -> bool:
        """Whether :meth:`_traced_step` covers this step, every group considered: valid
        hyperparameters (an invalid one: the eager step raises its error), gradients it
        can take, and EMA averages for every parameter or none (a group added later)."""
        optimizer_wide = self._optimizer_wide()
        for group in self.param_groups:
            try:
                _check_group({k: v for k, v in group.items() if k != "params"}, optimizer_wide)
            except (TypeError, ValueError):
                return False
            if not self._traceable_gradients(group):
                return False
        if self.use_ema:
            averages = [p in self.state and self.state[p].get("average") is not None for p in self._parameters()]
            if any(averages) and not all(averages):
                return False
        return True

    @staticmethod
    def _traceable_gradients(group: dict) -> bool:
        """Whether :meth:`_traced_step` covers a group's gradients (dense, real, of their
        parameters' shapes and kinds; the eager step raises the errors of the others)."""
        for param in group["params"]:
            grad = param.grad
            if grad is not None and (
                grad.is_sparse or param.is_complex() or grad.is_complex() or grad.shape != param.shape
                or not (param.is_floating_point() and grad.is_floating_point())
            ):
                return False
        return True

    def _init_group(self, group: dict, params: list, grads: list, buffers: list) -> bool:
        """Collect a param group's parameters with a gradient, their gradients and momentum
        buffers for :meth:`_traced_step`; False where that path does not cover them.

        torch.compile runs this method eagerly while it traces (as it runs torch.optim's own
        ``_init_group``): the checks read real values, and state made here is an input of
        the compiled graph, not an output. A missing momentum buffer is made here as zeros
        when ``dampening`` is 0 (then ``momentum*0 + g`` is torch's first buffer, ``g``), so
        that the first compiled step and the later ones trace one graph; with dampening,
        the first step's buffers are made in the graph (``clone`` of the gradient), and the
        next step is traced once more, as torch.optim.SGD's is."""
        if not self._compiled_step_covers():
            return False  # before any state is made: the eager step checks (and raises) on its own
        momentum = group["momentum"]
        for param in group["params"]:
            if param.grad is not None:
                params.append(param)
                grads.append(param.grad)
        if isinstance(momentum, torch.Tensor) or momentum != 0:  # as the traced step reads it
            # zeros only without dampening: an eager step that finds one then forms torch's
            # first buffer too, momentum*0 + 1*g = g
            zeros_are_fresh = _number(group["dampening"]) == 0
            for param in params:
                if self.state[param].get("momentum_buffer") is None and zeros_are_fresh:
                    self.state[param]["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            buffers.extend(self.state[param].get("momentum_buffer") for param in params)
        if params and "updates" not in self._compiled_counts:
            self._compiled_counts["updates"] = torch.zeros((), dtype=torch.int64, device=params[0].device)
        every = list(self._parameters())
        if self.use_ema and any(p.grad is not None for p in every):  # the step updates: the EMA moves
            if "ema_fresh" not in self._compiled_counts:
                self._compiled_counts["ema_fresh"] = torch.zeros((), dtype=torch.bool, device=every[0].device)
            missing = [p for p in every if self.state[p].get("average") is None]
            for param in missing:
                self.state[param]["average"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if missing:
                self._compiled_counts["ema_fresh"].fill_(True)
                self._compiled_counts["ema_made"] = True  # until the compiled step takes them (see _count_compiled_steps)
        self._opt_called = True  # run, not traced: compiled code sets no attribute of an Optimizer
        return True

    def _locked_step(self, loss: Any) -> Any:
        if self._ema_swapped:  # swapped in by another thread meanwhile
            raise RuntimeError("The EMA weights are swapped in; call `swap_ema_weights()` again before stepping.")
        self._count_compiled_steps()
        if self._flat is not None:
            self._flat.sync()  # raises, changing nothing, if a model parameter left its buffer
            updates = self._updates
            try:
                return self._run_step(loss)
            finally:
                if self._updates != updates:
                    self._flat.wrote()
        return self._run_step(loss)

    def _run_step(self, loss: Any) -> Any:
        steps = self.gradient_accumulation_steps
        updating = not steps or (self._micro_steps + 1) % steps == 0
        if updating and (self.aggregate is not None or self.clip_group is not None or self._clips_shards()):
            self._communicating_update()
            return loss
        if self._holds_no_parameters():
            self._count_empty_step(updating)
            return loss
        if self._fast_step(updating) or self._multi_tensor_step(updating):
            return loss
        work = self._collect(include_accumulated=bool(steps) and updating)
        if not any(param.grad is not None for _, param, _ in work):
            # No parameter has a gradient: nothing changes, counters and accumulation cycle
            # included, as torch.optim.SGD does nothing then (the fast paths declined);
            # ranks that aggregate step together, so their micro-steps count regardless.
            if self.aggregate is not None and not updating:
                self._micro_steps += 1
            return loss
        if not updating:
            for group, param, grad in work:
                accumulator = self._accumulator(param)
                accumulator.copy_(pipeline.accumulate(accumulator, grad))
            self._micro_steps += 1
            return loss
        if steps:
            work = [(group, param, self._accumulated_mean(param, grad, steps)) for group, param, grad in work]
            for param in self._parameters():
                accumulator = self.state[param].get("gradient_accumulator") if param in self.state else None
                if accumulator is not None:
                    accumulator.zero_()
        self._reference_update(self._clip(work))
        return loss

    def _reference_update(self, work: list) -> None:
        """Update each ``(group, param, gradient)`` of ``work`` (gradients final: averaged and
        clipped), then the EMA of every parameter, and count the update."""
        settings = {id(group): self._hyperparameters(group) for group in self.param_groups}
        for group, param, grad in work:
            self._update_one(settings[id(group)], param, grad)
        if self.use_ema:
            self._update_ema()
        self._updates += 1
        self._micro_steps += 1

    def _communicating_update(self) -> None:
        """A real update whose gradients meet the other ranks': the accumulation mean, then
        ``aggregate``, then clipping (global_clipnorm's norm summed over ``clip_group``),
        then the update on the fast path or the reference path.

        Everything that can fail (the checks, the collectives, the aggregate's result) runs
        before the first change. A step in which no rank has a gradient changes nothing; a
        rank without gradients in a step where others have some still joins the collective
        and counts the update (its EMA advances, as one process' would)."""
        steps = self.gradient_accumulation_steps
        work = self._collect(include_accumulated=bool(steps))
        ops = _TORCH_OPS
        if steps:
            work = [
                (group, param, _like(pipeline.accumulated_mean(ops, _real(grad), _real(self._saved_accumulator(param, grad)), steps), grad))
                for group, param, grad in work
            ]
        if self.aggregate is not None and not self._holds_no_parameters():
            work = self._aggregated(work)
        clipped = self.clip_group is not None
        if clipped:
            grads, ranks_with_gradients = self._clip_across_ranks([grad for _, _, grad in work])
            work = [(group, param, grad) for (group, param, _), grad in zip(work, grads)]
        elif work and self._clips_shards():
            work, clipped, ranks_with_gradients = self._clip(work), True, len(work)  # one collective: the mesh's
        elif not work:
            if self._holds_no_parameters():
                self._count_empty_step(True)
            return  # no gradient, no collective waits on this rank: nothing changes, as torch.optim.SGD
        if clipped and ranks_with_gradients == 0:
            return
        if work and (self._fast_step(True, final=work, clip=not clipped) or self._multi_tensor_step(True, final=work, clip=not clipped)):
            return
        if steps:
            for param in self._parameters():
                accumulator = self.state[param].get("gradient_accumulator") if param in self.state else None
                if accumulator is not None:
                    accumulator.zero_()
        self._reference_update(work if clipped else self._clip(work))

    def _clips_shards(self) -> bool:
        """Whether this update clips by a norm and its gradients are shards (DTensor): the
        norms then meet across the mesh in one collective, before the kernel runs on the
        local shards (which could not sum them itself)."""
        if self.global_clipnorm is None and not any(_clips_by_norm(group["clipnorm"]) for group in self.param_groups):
            return False
        first = next((p.grad for group in self.param_groups for p in group["params"] if p.grad is not None), None)
        return first is not None and _TORCH_OPS.squares_reducer([first]) is not None

    def _holds_no_parameters(self) -> bool:
        return not any(group["params"] for group in self.param_groups)

    def _count_empty_step(self, updating: bool) -> None:
        """An optimizer without parameters (ZeroRedundancyOptimizer's empty shard, when a
        model has fewer parameters than there are ranks) counts every step, so that its
        counters, which consolidation may save, stay the other ranks'."""
        self._micro_steps += 1
        if updating:
            self._updates += 1

    def _saved_accumulator(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The param's gradient accumulator, or zeros (not stored: the step may yet fail)."""
        state = self.state.get(param)
        accumulator = state.get("gradient_accumulator") if state is not None else None
        return accumulator if accumulator is not None else torch.zeros_like(grad)

    def _aggregated(self, work: list) -> list:
        """``work`` as ``aggregate`` returns it: the stage gets one gradient per parameter of
        the optimizer, in order (zeros where this rank has none), then a presence vector
        (:func:`inertia.distributed.every_gradient`), so that every rank aggregates the same
        layout; a parameter no rank has a gradient for is skipped after it. Its answer is
        checked (one tensor per tensor given, of its shape, dtype and device): a ValueError /
        TypeError before any change."""
        ops = _TORCH_OPS
        every = [(group, param) for group in self.param_groups for param in group["params"]]
        given = {id(param): grad for _, param, grad in work}
        arrays = every_gradient(ops, [given.get(id(param)) for _, param in every], [param.detach() for _, param in every])
        returned = self.aggregate(list(arrays))
        returned = list(returned) if isinstance(returned, (list, tuple)) else returned
        if not isinstance(returned, list) or len(returned) != len(arrays):
            raise ValueError(
                f"`aggregate` must return a list of {len(arrays)} tensors, one per tensor it was given (a gradient per "
                f"parameter, then the presence vector). Received: {returned!r:.200}"
            )
        for position, (grad, new) in enumerate(zip(arrays, returned)):
            if not isinstance(new, torch.Tensor) or new.shape != grad.shape or new.dtype != grad.dtype or new.device != grad.device:
                got = f"a tensor of shape {tuple(new.shape)}, {new.dtype} on {new.device}" if isinstance(new, torch.Tensor) else repr(new)[:100]
                raise TypeError(
                    f"`aggregate` returned, for tensor {position}, {got}; expected a tensor of shape {tuple(grad.shape)}, "
                    f"{grad.dtype} on {grad.device}, as the one it aggregates."
                )
        present = present_after(ops, returned[-1])
        return [(group, param, new) for (group, param), new, kept in zip(every, returned[:-1], present) if kept]

    def _clip_across_ranks(self, grads: list) -> tuple[list, int]:
        """global_clipnorm over the shards of every rank in ``clip_group``: the squared norm
        of this rank's gradients and their count, summed in one all_reduce (which every
        rank joins, one without gradients too). Returns the clipped gradients and the
        number of gradients all ranks had."""
        device = self._reduction_device(grads)
        reduce, counted = squares_and_count_reducer(self.clip_group, len(grads), device)
        if not grads:
            reduce([torch.zeros((), dtype=torch.float64, device=device)])
            return [], counted()
        clipped = pipeline.clip_by_global_norm(_TORCH_OPS, [_real(g) for g in grads], self.global_clipnorm, reduce_squares=reduce)
        return [_like(new, g) for new, g in zip(clipped, grads)], counted()

    def _reduction_device(self, grads: list) -> torch.device:
        if grads:
            return grads[0].device
        first = next(iter(self._parameters()), None)
        return first.device if first is not None else default_device(self.clip_group)

    def _fast_step(self, updating: bool, final: Optional[list] = None, clip: bool = True) -> bool:
        """The whole step (an update, or an accumulation micro-step) in one call of inertia's
        host kernel (``inertia.engine.host``), with the reference path's numbers (clipping
        norms aside: summed in double); False, having changed nothing, where the kernel does
        not cover the step. The per-parameter reference path (``foreach=False``, as torch's
        for-loop implementation) runs then.

        ``final``: an update's ``(group, param, gradient)`` list whose gradients are already
        averaged over the accumulation cycle and aggregated (``_communicating_update``);
        the accumulators then restart. ``clip``: False when they are clipped already."""
        if not host.enabled():
            return False
        gradient_of = _GRAD
        if final is not None:
            given = {id(param): grad for _, param, grad in final}
            gradient_of = lambda param: given.get(id(param))  # noqa: E731
        groups = self.param_groups
        params: list = []
        grads: list = []
        group_of: list = []
        missing = False
        optimizer_wide = self._optimizer_wide()
        for index, group in enumerate(groups):
            if group["foreach"] is False or group["differentiable"]:
                return False
            _check_group({k: v for k, v in group.items() if k != "params"}, optimizer_wide)
            members = group["params"]
            found = list(map(gradient_of, members))
            if any(map(operator.is_, found, repeat(None))):
                missing = True
                pairs = [(p, g) for p, g in zip(members, found) if g is not None]
                members, found = [p for p, _ in pairs], [g for _, g in pairs]
            params += members
            grads += found
            group_of += [index] * len(members)
        if not params:
            return False
        state_of = self.state.get
        states = list(map(state_of, params))
        accumulating = bool(self.gradient_accumulation_steps) and final is None
        fresh: dict = {"gradient_accumulator": {}, "momentum_buffer": {}, "average": {}}
        accumulators = None
        if accumulating:
            if updating and missing and self._accumulated_without_gradient():
                return False  # a mean over earlier micro-steps for a param without a gradient now
            accumulators = self._slots(params, states, "gradient_accumulator", fresh, zeros=True)
            if not updating:
                return self._fast_accumulate(params, grads, accumulators, fresh)
        if self.use_ema and missing:
            return False  # the EMA covers every parameter: the reference path
        settings = [self._group_settings(group) for group in groups]
        if not clip:  # the gradients are clipped already
            settings = [dataclasses.replace(group, clipnorm=None, clipvalue=None) for group in settings]
        with_momentum = {settings[i].mode != MODE_NONE for i in set(group_of)}
        if len(with_momentum) != 1:
            return False  # groups with and without momentum: the reference path
        decays = bytes(host.FLAG_DECAY if group.weight_decay != 0 else 0 for group in settings)
        flags = bytearray(map(decays.__getitem__, group_of))
        # A fresh buffer takes the gradient where the step says so (torch); else it starts at zero.
        starts_with_gradient = TORCH_STEP.buffer_starts_with_gradient
        buffers = (
            self._slots(params, states, "momentum_buffer", fresh, zeros=not starts_with_gradient)
            if with_momentum.pop() else None
        )
        averages = self._slots(params, states, "average", fresh) if self.use_ema else None
        for position in fresh["momentum_buffer"] if starts_with_gradient else ():
            flags[position] |= host.FLAG_FRESH_BUFFER
        for position in fresh["average"]:
            flags[position] |= host.FLAG_FRESH_AVERAGE
        arguments = dict(
            weights=params, grads=grads, velocities=buffers, averages=averages, accumulators=accumulators,
            flags=bytes(flags), group_of=None if len(groups) == 1 else np.array(group_of, dtype=np.int64),
            global_clipnorm=self.global_clipnorm if clip else None, ema_momentum=self.ema_momentum,
            accumulation_steps=self.gradient_accumulation_steps or 1 if accumulating else 1,
        )
        run = lambda plan: host.run(plan, TORCH_STEP, settings, **arguments)  # noqa: E731
        if not self._run_planned(run, [params, buffers, averages, accumulators]):
            return False
        self._install(params, fresh)
        if self.gradient_accumulation_steps and (missing or not accumulating):
            # every accumulator restarts, those of params without a gradient (or outside the kernel's step) too
            in_step = set(map(id, accumulators or ()))
            for param in self._parameters():
                accumulator = self.state[param].get("gradient_accumulator") if param in self.state else None
                if accumulator is not None and id(accumulator) not in in_step:
                    accumulator.zero_()
        if self.use_ema:
            self._overwrite_with_ema_when_due()
        self._updates += 1
        self._micro_steps += 1
        return True

    def _multi_tensor_step(self, updating: bool, final: Optional[list] = None, clip: bool = True) -> bool:
        """The step as torch multi-tensor (``_foreach_*``) calls, for tensors off the CPU
        (CUDA), with the reference path's numbers (norms aside: torch sums them in its own
        order); False, having changed nothing, where it does not cover the step (CPU tensors,
        which the host kernel or the reference path serve; gradient accumulation; tensors of
        several devices or dtypes; ``foreach=False``). ``final`` and ``clip``: as ``_fast_step``'s."""
        if not updating or (self.gradient_accumulation_steps and final is None) or not host.enabled():
            return False
        groups = self.param_groups
        if final is not None:
            first = final[0][1] if final else None
        else:
            first = next((p for group in groups for p in group["params"] if p.grad is not None), None)
        if first is None or (first.device.type == "cpu" and not multi_tensor._ON_CPU_TOO):
            return False
        if any(group["foreach"] is False or group["differentiable"] for group in groups):
            return False
        work = self._collect() if final is None else final  # raises what the reference path raises, before any change
        device, dtype = first.device, first.dtype
        if dtype not in _DTYPE_NAMES:
            return False  # half types: torch's in-place multi-tensor ops round their scalars otherwise
        every = list(self._parameters()) if self.use_ema else [param for _, param, _ in work]
        if any(p.device != device or p.dtype != dtype for p in every) or any(
            g.device != device or g.dtype != dtype or g.is_sparse for _, _, g in work
        ):
            return False
        clips_by_norm = self.global_clipnorm is not None or any(group["clipnorm"] is not None for group in groups)
        if clips_by_norm and _TORCH_OPS.squares_reducer([g for _, _, g in work]) is not None:
            return False  # sharded (DTensor): torch's norms would meet the ranks' once per tensor, the reference path once
        by_group: dict[int, list] = {}
        for group, param, grad in work:
            by_group.setdefault(id(group), []).append((param, grad))
        own = False  # whether the gradients are this step's temporaries (then updated in place)
        if self.global_clipnorm is not None and clip:
            clipped, own = multi_tensor.clip_lists(torch, [g for _, _, g in work], None, None, self.global_clipnorm)
            replacement = iter(clipped)
            by_group = {key: [(p, next(replacement)) for p, _ in pairs] for key, pairs in by_group.items()}
        for group in groups:
            pairs = by_group.get(id(group))
            if not pairs:
                continue
            params, grads = [p for p, _ in pairs], [g for _, g in pairs]
            if self.global_clipnorm is None:
                grads, own = multi_tensor.clip_lists(torch, grads, group["clipnorm"], group["clipvalue"], None)
            settings = self._group_settings(group)
            momentum = settings.momentum != 0
            buffers = [self.state[p].get("momentum_buffer") for p in params] if momentum else [None] * len(params)
            made = multi_tensor.heavy_ball_group(torch, settings, params, grads, buffers, own)
            if momentum:
                self._keep_new_buffers(params, buffers, made)
        if self.use_ema:
            params = list(self._parameters())
            averages = [self.state[p].get("average") for p in params]
            kept = [k for k, average in enumerate(averages) if average is not None]
            multi_tensor.ema_lists(torch, [averages[k] for k in kept], [params[k] for k in kept], self.ema_momentum)
            for param, average in zip(params, averages):
                if average is None:
                    self.state[param]["average"] = param.detach().clone(memory_format=torch.preserve_format)
            self._overwrite_with_ema_when_due()
        if final is not None and self.gradient_accumulation_steps:
            for param in self._parameters():
                accumulator = self.state[param].get("gradient_accumulator") if param in self.state else None
                if accumulator is not None:
                    accumulator.zero_()
        self._updates += 1
        self._micro_steps += 1
        return True

    def _keep_new_buffers(self, params: list, buffers: list, made: list) -> None:
        """Store the momentum buffers a multi-tensor step made (None before it) in the state."""
        for param, before, buffer in zip(params, buffers, made):
            if before is None:
                self.state[param]["momentum_buffer"] = buffer

    def _fast_accumulate(self, params: list, grads: list, accumulators: list, fresh: dict) -> bool:
        if not self._run_planned(lambda plan: host.accumulate(plan, accumulators, grads), [accumulators]):
            return False
        self._install(params, fresh)
        self._micro_steps += 1
        return True

    def _accumulated_without_gradient(self) -> bool:
        for param in self._parameters():
            if param.grad is None and param in self.state:
                accumulator = self.state[param].get("gradient_accumulator")
                if accumulator is not None and bool(accumulator.any()):
                    return True
        return False

    @staticmethod
    def _slots(params: list, states: list, name: str, fresh: dict, zeros: bool = False) -> list:
        """Each param's slot ``name``; a missing one is made (not yet stored: ``fresh``)."""
        slots = [None if st is None else st.get(name) for st in states]
        make = torch.zeros_like if zeros else torch.empty_like
        for position, slot in enumerate(slots):
            if slot is None:
                slots[position] = fresh[name][position] = make(params[position], memory_format=torch.contiguous_format)
        return slots

    def _install(self, params: list, fresh: dict) -> None:
        for name, made in fresh.items():
            for position, slot in made.items():
                self.state[params[position]][name] = slot

    def _run_planned(self, run: Callable[[Any], int], lists: list) -> bool:
        """``run(plan)`` with the plan of ``lists`` (made again once if an address moved)."""
        plan = self._memory_plan(lists)
        answer = host.DECLINED if plan is None else run(plan)
        if answer == host.MOVED:
            self._fast_plans = None
            plan = self._memory_plan(lists)
            answer = host.DECLINED if plan is None else run(plan)
        return answer == host.DONE

    def _memory_plan(self, lists: list) -> Optional[host.MemoryPlan]:
        """The kernel's plan for these tensor lists: the last one while they are the same objects."""
        objects = list(chain.from_iterable(tensors for tensors in lists if tensors is not None))
        key = tuple(tensors is not None for tensors in lists)  # micro-steps and updates plan apart
        plans = getattr(self, "_fast_plans", None)
        if plans is None:
            plans = self._fast_plans = {}
        cached = plans.get(key)
        if cached is not None and len(cached[0]) == len(objects) and all(map(operator.is_, cached[0], objects)):
            return cached[1]
        dtype = _DTYPE_NAMES.get(lists[0][0].dtype)
        plan = host.plan_memory(_TORCH_OPS, dtype, lists) if dtype else None
        plans[key] = (objects, plan)
        return plan

    @staticmethod
    def _group_settings(group: dict) -> GroupSettings:
        momentum = _number(group["momentum"])
        return GroupSettings(
            learning_rate=_number(group["lr"]), momentum=momentum, weight_decay=_number(group["weight_decay"]),
            dampening=_number(group["dampening"]), nesterov=group["nesterov"], maximize=group["maximize"],
            clipnorm=None if group.get("clipnorm") is None else float(group["clipnorm"]),
            clipvalue=None if group.get("clipvalue") is None else float(group["clipvalue"]),
        )

    def _collect(self, include_accumulated: bool = False) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """``(group, param, grad)`` for the params that take part in this step, checked.

        On an accumulation update a param without a gradient now, but with gradients from
        earlier micro-steps, takes part with a zero gradient (so their mean is applied).
        """
        work = []
        optimizer_wide = self._optimizer_wide()
        for group in self.param_groups:
            _check_group({k: v for k, v in group.items() if k != "params"}, optimizer_wide)
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    accumulator = self.state[param].get("gradient_accumulator") if include_accumulated and param in self.state else None
                    if accumulator is not None and bool(accumulator.any()):
                        work.append((group, param, torch.zeros_like(param)))
                    continue
                if not (
                    (param.is_floating_point() and grad.is_floating_point())
                    or (param.is_complex() and grad.is_complex())
                ):
                    raise TypeError(
                        "Parameters and gradients must be floating-point tensors, or both complex; received a parameter "
                        f"of dtype {param.dtype} with a gradient of dtype {grad.dtype}."
                    )
                if grad.shape != param.shape:
                    raise ValueError(f"A gradient has shape {tuple(grad.shape)} but its parameter has shape {tuple(param.shape)}.")
                if group.get("fused") and not (param.device.type in _FUSED_DEVICES and param.is_floating_point()):
                    raise ConflictingOptionsError(
                        "`fused=True` requires all the params to be floating point Tensors of supported devices: "
                        f"{list(_FUSED_DEVICES)} but {param.dtype} and {param.device.type} (argument `fused`, as in "
                        "torch.optim.SGD; without it the step runs on any device)"
                    )
                if grad.is_sparse:
                    self._check_sparse_step(group, param)
                if param.is_complex() and group.get("clipvalue") is not None:
                    raise ValueError(
                        f"Argument `clipvalue` clips real numbers; a complex parameter (dtype {param.dtype}, shape "
                        f"{tuple(param.shape)}) has none to clip. Received: clipvalue={group['clipvalue']!r}; use "
                        "clipnorm or global_clipnorm, which clip by the complex modulus."
                    )
                work.append((group, param, grad))
        return work

    def _check_sparse_step(self, group: dict, param: torch.Tensor) -> None:
        """What a sparse gradient (``nn.Embedding(sparse=True)``) cannot take part in, refused
        before any change: L2 weight decay (torch.optim.SGD cannot add the dense weights to a
        sparse gradient either), and inertia's stages that need a dense gradient."""
        where = f"a sparse gradient (parameter of shape {tuple(param.shape)})"
        if _number(group["weight_decay"]) != 0:
            raise ConflictingOptionsError(
                f"weight_decay does not apply to {where}, as in torch.optim.SGD, whose L2 term would make it dense. "
                f"Received: weight_decay={group['weight_decay']!r}; put the embedding in a param group with weight_decay=0."
            )
        given = {
            "clipnorm": group.get("clipnorm"), "clipvalue": group.get("clipvalue"),
            "global_clipnorm": self.global_clipnorm, "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "aggregate": self.aggregate,
        }
        for key, value in given.items():
            if value is not None:
                raise ValueError(f"{key} does not support {where}: it works on dense gradients. Received: {key}={value!r}")

    def _accumulator(self, param: torch.Tensor) -> torch.Tensor:
        state = self.state[param]
        if "gradient_accumulator" not in state:
            state["gradient_accumulator"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["gradient_accumulator"]

    def _accumulated_mean(self, param: torch.Tensor, grad: torch.Tensor, steps: int) -> torch.Tensor:
        mean = pipeline.accumulated_mean(_TORCH_OPS, _real(grad), _real(self._accumulator(param)), steps)
        return _like(mean, grad)

    def _clip(self, work: list) -> list:
        """``work`` with clipped gradients; a complex gradient is clipped on its real view
        (its norm is the complex modulus', as ``torch.nn.utils.clip_grad_norm_`` takes it)."""
        if any(grad.is_complex() for _, _, grad in work):
            clipped = self._clip([(group, param, _real(grad)) for group, param, grad in work])
            return [(group, param, _like(new, grad)) for (group, param, new), (_, _, grad) in zip(clipped, work)]
        ops = _TORCH_OPS
        if self.global_clipnorm is not None and work:
            clipped = pipeline.clip_by_global_norm(ops, [grad for _, _, grad in work], self.global_clipnorm)
            return [(group, param, grad) for (group, param, _), grad in zip(work, clipped)]
        # Sharded gradients (DTensor): the norms of every clipnorm group summed across the
        # ranks in one collective, not one per gradient.
        by_norm = [k for k, (group, _, _) in enumerate(work) if _clips_by_norm(group["clipnorm"])]
        reduce_squares = ops.squares_reducer([work[k][2] for k in by_norm]) if by_norm else None
        squares = {}
        if reduce_squares is not None:
            squares = dict(zip(by_norm, pipeline.squared_norms(ops, [work[k][2] for k in by_norm], reduce_squares)))
        result = []
        for position, (group, param, grad) in enumerate(work):
            if position in squares:
                grad = pipeline.clip_by_norm(ops, grad, group["clipnorm"], squares[position])
            else:
                grad = pipeline.clip(ops, [grad], group["clipnorm"], None, group["clipvalue"])[0]
            result.append((group, param, grad))
        return result

    @staticmethod
    def _hyperparameters(group: dict) -> tuple:
        """A group's settings as Python numbers, read once per step (a tensor lr's ``.item()``
        would otherwise sync the device for every parameter); under ``differentiable=True``
        a tensor that requires grad stays a tensor, so that the step is differentiable in it
        (a learning rate learnt by gradient, as torch.optim.SGD allows)."""
        value = _number
        if group.get("differentiable"):
            value = lambda v: v if isinstance(v, torch.Tensor) and v.requires_grad else _number(v)  # noqa: E731
        momentum, weight_decay = value(group["momentum"]), value(group["weight_decay"])
        return (
            TORCH_STEP.rule(nesterov=group["nesterov"], maximize=group["maximize"]),
            value(group["lr"]),
            momentum if isinstance(momentum, torch.Tensor) or momentum != 0 else None,
            weight_decay if isinstance(weight_decay, torch.Tensor) or weight_decay != 0 else None,
            _number(group["dampening"]),
        )

    def _update_one(self, hyperparameters: tuple, param: torch.Tensor, grad: torch.Tensor) -> None:
        rule, lr, momentum, weight_decay, dampening = hyperparameters
        state = self.state[param] if momentum is not None else None  # as torch: no state entry without momentum
        buffer = state.get("momentum_buffer") if state is not None else None
        differentiable = torch.is_grad_enabled()  # only under differentiable=True (step runs under no_grad)
        new_param, new_buffer = sgd_update(
            rule,
            param,
            grad,
            # autograd saves the buffer for a momentum that requires grad; the step then writes it
            buffer.clone() if differentiable and buffer is not None else buffer,
            lr,
            momentum=momentum,
            l2_weight_decay=weight_decay,
            dampening=dampening,
            add_scaled=_torch_add_scaled,
            # torch's first buffer is a detached copy of the gradient: no gradient flows through it
            start_buffer=_detached_copy if differentiable else None,
        )
        if state is not None:
            if buffer is None:
                state["momentum_buffer"] = torch.clone(new_buffer).detach()
            else:
                buffer.copy_(new_buffer)
        param.copy_(new_param)

    # --- EMA ----------------------------------------------------------------------------------
    def _parameters(self) -> Iterator[torch.Tensor]:
        for group in self.param_groups:
            yield from group["params"]

    def _update_ema(self) -> None:
        ops = _TORCH_OPS
        for param in self._parameters():
            state = self.state[param]
            average = state.get("average")
            if average is None:
                state["average"] = param.detach().clone(memory_format=torch.preserve_format)
            else:
                _real(average).copy_(pipeline.ema_update(ops, _real(average), _real(param), self.ema_momentum, False))
        self._overwrite_with_ema_when_due()

    def _overwrite_with_ema_when_due(self) -> None:
        frequency = self.ema_overwrite_frequency
        if frequency and (self._updates + 1) % frequency == 0:
            for param in self._parameters():
                param.copy_(self.state[param]["average"])

    def swap_ema_weights(self) -> None:
        """Exchange every parameter with its EMA (call again to swap back)."""
        if not self.use_ema:
            raise ValueError("swap_ema_weights() needs an optimizer created with use_ema=True.")
        self._count_compiled_steps()  # drops averages a compiled step made but never ran
        with torch.no_grad():
            for param in self._parameters():
                average = self.state[param].get("average") if param in self.state else None
                if average is not None:
                    held = param.detach().clone()
                    param.copy_(average)
                    average.copy_(held)
        self._ema_swapped = not self._ema_swapped

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Evaluate with the averaged weights: ``with opt.ema_weights(): evaluate(model)``."""
        self.swap_ema_weights()
        try:
            yield
        finally:
            self.swap_ema_weights()

    def finalize_variable_values(self) -> None:
        """Copy the EMA into the parameters for good (Keras' name; a no-op without EMA)."""
        if not self.use_ema:
            return
        if self._ema_swapped:
            raise RuntimeError("The EMA weights are swapped in; call `swap_ema_weights()` again first.")
        self._count_compiled_steps()
        with torch.no_grad():
            for param in self._parameters():
                average = self.state[param].get("average") if param in self.state else None
                if average is not None:
                    param.copy_(average)

