"""The multi-tensor fast paths for torch tensors off the CPU (CUDA): ``inertia.SGD``'s Keras
step and tf.keras legacy's (:func:`multi_tensor_apply`), the heavy-ball step of
``inertia.torch.SGD`` (:func:`heavy_ball_group`, :func:`clip_lists`, :func:`ema_lists`), as
torch.optim.SGD's own ``foreach`` implementation phrases it, and MLX's, with new tensors
(:func:`heavy_ball_out_of_place`).

The reference path launches about ten small kernels per tensor and step; this one runs the
whole Keras step as a few torch ``_foreach_*`` calls, each a handful of launches for every
tensor at once (torch's multi-tensor kernels on CUDA). The learning rate (a variable, or a
schedule's value) stays a 0-d tensor on the device, so changing it recompiles nothing and
needs no copy to the host; momentum, clip thresholds and the EMA momentum are the
configuration's Python numbers, as in the compiled JAX step.

Every operation of the reference path is kept, in its order and in the tensors' dtype
(unscale, clipnorm / global_clipnorm / clipvalue, decoupled decay, momentum or Nesterov, the
EMA), so the numbers are the reference's: bitwise, except the norms of clipnorm and
global_clipnorm, which torch sums in its own order. CPU tensors take the single-pass kernel
of :mod:`inertia.engine.host` instead; this path runs there only when a test forces it.

tf.keras legacy's step (``inertia.legacy.SGD``) takes the same path with its own description:
float32 hyperparameters cast to the dtype, its learning rate formed per dtype (schedule, then
``decay``), and its clipping order (clipvalue, then clipnorm or global_clipnorm with ``1/c``
formed in the dtype). Steps this path does not cover run the reference path: gradient
accumulation, constraints, missing gradients, float16/bfloat16, variables spread over devices
or dtypes, a subset of the variables while the EMA is on, a legacy slot not made yet, and
optimizers that describe no step (their own ``update_step``). Like the
reference, it allocates temporaries of the gradients' size (``g * lr``).

Example (on a CUDA machine; elsewhere the same call takes the CPU kernel):
    >>> import torch, inertia
    >>> device = "cuda" if torch.cuda.is_available() else "cpu"
    >>> w = inertia.Variable(torch.ones(3, device=device))
    >>> optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    >>> optimizer.apply([torch.full((3,), 2.0, device=device)], [w])
    >>> [round(x, 4) for x in w.numpy().tolist()]
    [0.8, 0.8, 0.8]
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import numpy as np

from inertia.engine import host
from inertia.engine.optimizer_host import stock_targets
from inertia.engine.step import KERAS, TF_KERAS_LEGACY, GroupSettings

__all__ = ["multi_tensor_apply", "heavy_ball_group", "heavy_ball_traced", "heavy_ball_out_of_place", "clip_lists", "ema_lists"]

# Tests set this to run the path on CPU tensors (where the fused kernel is the fast path).
_ON_CPU_TOO = False


def _eligible(optimizer: Any, grads: list, targets: list) -> Optional[tuple]:
    """(torch, wrappers, indices) when this path covers the step; None otherwise."""
    import torch

    found = stock_targets(optimizer, targets)
    if found is None:
        return None
    wrappers, indices = found
    first = wrappers[0].value
    if wrappers[0].backend.name != "torch" or wrappers[0].dtype not in ("float32", "float64"):
        return None
    device, dtype = first.device, first.dtype
    for wrapper, gradient in zip(wrappers, grads):
        value = wrapper.value
        if (
            value.device != device
            or not isinstance(gradient, torch.Tensor)
            or gradient.dtype != dtype
            or gradient.device != device
            or gradient.shape != value.shape
        ):
            return None
    return torch, wrappers, indices


def multi_tensor_apply(optimizer: Any, grads: list, trainable_variables: Optional[Sequence[Any]]) -> bool:
    """Run one ``optimizer.apply(grads, trainable_variables)`` step with torch's multi-tensor
    kernels. Returns False, having changed nothing, when the step is not one it covers."""
    description = optimizer.describe_step()
    if description not in (KERAS, TF_KERAS_LEGACY) or optimizer.gradient_accumulation_steps or not host.enabled():
        return False
    targets = optimizer._trainable_variables if trainable_variables is None else list(trainable_variables)
    # An unbuilt optimizer's first step takes the reference path, which checks and builds.
    if not optimizer.built or not targets or len(grads) != len(targets) or any(g is None for g in grads):
        return False
    # Every gradient must sit on the weights' device: a CPU one means a step the CPU kernel
    # declined (float16, say), which this path leaves to the reference path too.
    device = getattr(grads[0], "device", None)
    if getattr(device, "type", "cpu") == "cpu" and not _ON_CPU_TOO:
        return False
    found = _eligible(optimizer, grads, list(targets))
    if found is None:
        return False
    if (optimizer.clipnorm or optimizer.global_clipnorm) and _sharded(grads):
        return False  # torch's norms would meet the ranks' once per tensor, the reference path's once per step
    torch, wrappers, indices = found
    if optimizer.momentums and any(optimizer.momentums[i] is None for i in indices):
        return False  # a slot not made yet (tf.keras legacy makes them as gradients first arrive)
    with torch.no_grad():
        _step(optimizer, description, torch, wrappers, indices, list(grads))
    return True


def _step(optimizer: Any, description: Any, torch: Any, wrappers: list, indices: list, grads: list) -> None:
    ops = wrappers[0].backend
    dtype = wrappers[0].dtype
    rounded = np.dtype(dtype).type  # Python numbers are cast to the dtype first, as in Keras
    if description.hyperparameters_in_float32:  # tf.keras legacy: float32 values, cast to the dtype
        rounded = lambda value, in_dtype=rounded: in_dtype(np.float32(value))  # noqa: E731
    weights = [w.value for w in wrappers]
    own = False  # whether `grads` are temporaries of this step (then updated in place)

    if optimizer.loss_scale_factor is not None:
        grads, own = torch._foreach_div(grads, float(rounded(optimizer.loss_scale_factor))), True
    if description.value_clip_first:
        grads, own = _legacy_clip(optimizer, torch, grads, own, np.dtype(dtype).type)
    else:
        grads, own = _clip(optimizer, torch, grads, own, rounded)

    rate = optimizer._learning_rate_array()
    # tf.keras legacy forms its rate per dtype (the schedule on a float step, then `decay`)
    learning_rate = ops.cast(rate, dtype) if rate is not None else optimizer._decayed_lr(wrappers[0])
    if optimizer.weight_decay is not None:
        decaying = [v for v, w in zip(weights, wrappers) if optimizer._use_weight_decay(w)]
        if decaying:  # w - (w * wd) * lr
            decay = torch._foreach_mul(decaying, float(rounded(optimizer.weight_decay)))
            torch._foreach_mul_(decay, learning_rate)
            torch._foreach_sub_(decaying, decay)

    if own:
        torch._foreach_mul_(grads, learning_rate)
        scaled = grads
    else:
        scaled = torch._foreach_mul(grads, learning_rate)
    if optimizer.momentums:
        momentum = float(rounded(optimizer.momentum))
        velocities = [optimizer.momentums[i].value for i in indices]
        torch._foreach_mul_(velocities, momentum)  # v = v * m - g * lr
        torch._foreach_sub_(velocities, scaled)
        if optimizer.nesterov:  # w = w + (v * m - g * lr)
            ahead = torch._foreach_mul(velocities, momentum)
            torch._foreach_sub_(ahead, scaled)
            torch._foreach_add_(weights, ahead)
        else:
            torch._foreach_add_(weights, velocities)
    else:
        torch._foreach_sub_(weights, scaled)

    if optimizer.use_ema:
        steps_taken = int(optimizer._steps_taken())
        ema_momentum = rounded(0.0 if steps_taken == 0 else optimizer.ema_momentum)
        averages = [a.value for a in optimizer._model_variables_moving_average]
        model = [v.value for v in optimizer._trainable_variables]
        torch._foreach_mul_(averages, float(ema_momentum))  # E = m * E + (1 - m) * w
        torch._foreach_add_(averages, torch._foreach_mul(model, float(rounded(1) - ema_momentum)))
        frequency = optimizer.ema_overwrite_frequency
        if frequency and (steps_taken + 1) % frequency == 0:
            optimizer._overwrite_model_variables_with_average_value(optimizer._trainable_variables)
    iterations = optimizer._iterations
    iterations.assign(iterations.value + 1)


def _legacy_clip(optimizer: Any, torch: Any, grads: list, own: bool, rounded: Any) -> tuple[list, bool]:
    """tf.keras legacy's clipping: clipvalue, then clipnorm or global_clipnorm (``1/c`` formed
    in the dtype, as ``tf.clip_by_global_norm``)."""
    in_dtype = lambda value: float(rounded(value))  # noqa: E731
    if optimizer.clipvalue is not None:
        grads, own = _value_clip(torch, grads, optimizer.clipvalue, in_dtype), True
    if optimizer.clipnorm is not None:
        grads, own = _norm_clip(torch, grads, optimizer.clipnorm, in_dtype), True
    if optimizer.global_clipnorm is not None:
        grads, own = _global_clip(torch, grads, optimizer.global_clipnorm, in_dtype, reciprocal_in_dtype=True), True
    return grads, own


def _clip(optimizer: Any, torch: Any, grads: list, own: bool, rounded: Any) -> tuple[list, bool]:
    """Keras' clipping (the first of clipnorm, global_clipnorm, clipvalue that is > 0)."""
    in_dtype = lambda value: float(rounded(value))  # noqa: E731
    if optimizer.clipnorm and optimizer.clipnorm > 0:
        return _norm_clip(torch, grads, optimizer.clipnorm, in_dtype), True
    if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:
        return _global_clip(torch, grads, optimizer.global_clipnorm, in_dtype), True
    if optimizer.clipvalue and optimizer.clipvalue > 0:
        return _value_clip(torch, grads, optimizer.clipvalue, in_dtype), True
    return grads, own


# --- the heavy-ball step (inertia.torch.SGD), as torch.optim.SGD(foreach=True) runs it ---------
def heavy_ball_group(torch: Any, settings: GroupSettings, params: list, grads: list, buffers: list, own: bool) -> list:
    """One param group's step with ``_foreach_*`` calls, in the reference path's order of
    operations (``inertia.rule.sgd_update`` in the heavy-ball form, each ``y + a*x`` a
    ``torch.add(alpha=)``): maximize, L2 decay, the buffer (the gradient on a fresh one),
    Nesterov, the weights. ``buffers``: the group's momentum buffers, None where a param has
    none yet (ignored without momentum); ``own``: ``grads`` are this step's temporaries (then
    written in place). Returns the buffers, fresh ones made (``clone`` of the gradient, as
    torch makes them)."""
    if settings.maximize:
        grads, own = torch._foreach_neg(grads), True
    if settings.weight_decay != 0:
        if own:
            torch._foreach_add_(grads, params, alpha=settings.weight_decay)
        else:
            grads, own = torch._foreach_add(grads, params, alpha=settings.weight_decay), True
    if settings.momentum == 0:
        torch._foreach_add_(params, grads, alpha=-settings.learning_rate)
        return buffers
    kept = [k for k, buffer in enumerate(buffers) if buffer is not None]
    buffers = list(buffers)
    if kept:
        held = [buffers[k] for k in kept]
        torch._foreach_mul_(held, settings.momentum)
        torch._foreach_add_(held, [grads[k] for k in kept], alpha=1 - settings.dampening)
    _start_buffers(torch, buffers, grads)
    if settings.nesterov:
        if own:
            torch._foreach_add_(grads, buffers, alpha=settings.momentum)
            direction = grads
        else:
            direction = torch._foreach_add(grads, buffers, alpha=settings.momentum)
    else:
        direction = buffers
    torch._foreach_add_(params, direction, alpha=-settings.learning_rate)
    return buffers


def _start_buffers(torch: Any, buffers: list, grads: list) -> None:
    """A fresh buffer (None) becomes a copy of its gradient, as torch.optim.SGD starts it."""
    for k, buffer in enumerate(buffers):
        if buffer is None:
            buffers[k] = torch.clone(grads[k]).detach()


def heavy_ball_traced(torch: Any, settings: GroupSettings, params: list, grads: list, buffers: list, own: bool) -> list:
    """:func:`heavy_ball_group` as ``torch.compile`` traces it: the learning rate, momentum,
    dampening and weight decay enter as 0-d tensors, so that a scheduler that changes them
    changes an input of the graph, not the graph. A tensor hyperparameter is used as it is
    (and counts as nonzero: its value is not read); a Python number becomes a float64
    tensor through a product (``ones() * x``), the form in which torch.compile takes a
    float that changes between calls as an input after one more trace (``torch.tensor(x)``
    or a number given to a ``_foreach_*`` call would be traced again for every new value).
    Each ``y + a*x`` is a product then a sum, which inductor fuses and rounds its own way
    (the eager paths' ``add(alpha=)`` rounds once)."""
    device = params[0].device
    value = lambda v: v if isinstance(v, torch.Tensor) else torch.ones((), dtype=torch.float64, device=device) * v  # noqa: E731
    nonzero = lambda v: isinstance(v, torch.Tensor) or v != 0  # noqa: E731
    if settings.maximize:
        grads, own = torch._foreach_neg(grads), True
    if nonzero(settings.weight_decay):
        grads, own = torch._foreach_add(grads, torch._foreach_mul(params, value(settings.weight_decay))), True
    direction = grads
    if nonzero(settings.momentum):
        momentum = value(settings.momentum)
        kept = [k for k, buffer in enumerate(buffers) if buffer is not None]
        buffers = list(buffers)
        if kept:
            held = [buffers[k] for k in kept]
            torch._foreach_mul_(held, momentum)
            torch._foreach_add_(held, torch._foreach_mul([grads[k] for k in kept], value(1 - settings.dampening)))
        _start_buffers(torch, buffers, grads)
        direction = torch._foreach_add(grads, torch._foreach_mul(buffers, momentum)) if settings.nesterov else buffers
    torch._foreach_add_(params, torch._foreach_mul(direction, -value(settings.learning_rate)))
    return buffers


def heavy_ball_out_of_place(torch: Any, settings: GroupSettings, params: list, grads: list,
                            velocities: list) -> tuple[list, Optional[list]]:
    """MLX's heavy-ball step (``inertia.mlx.SGD``) with new tensors, as its reference path
    forms it: every ``y + a*x`` a product then a sum (two roundings), every Python number
    rounded to the dtype first, the buffer decaying from zeros (no fresh-buffer rule).
    Returns (new weights, new velocities or None without momentum)."""
    rounded = _rounding(torch, params[0].dtype)
    if settings.weight_decay != 0:
        grads = torch._foreach_add(grads, torch._foreach_mul(params, rounded(settings.weight_decay)))
    step = -settings.learning_rate  # already in the dtype: its negation is exact
    if settings.momentum == 0:
        return torch._foreach_add(params, torch._foreach_mul(grads, step)), None
    momentum = rounded(settings.momentum)
    velocities = torch._foreach_add(
        torch._foreach_mul(velocities, momentum), torch._foreach_mul(grads, rounded(1.0 - settings.dampening))
    )
    direction = (
        torch._foreach_add(grads, torch._foreach_mul(velocities, momentum)) if settings.nesterov else velocities
    )
    return torch._foreach_add(params, torch._foreach_mul(direction, step)), velocities


def clip_lists(torch: Any, grads: list, clipnorm: Optional[float], clipvalue: Optional[float],
               global_clipnorm: Optional[float]) -> tuple[list, bool]:
    """The torch face's clipping (one of a group's clipnorm / clipvalue, or the optimizer's
    global_clipnorm), as :mod:`inertia.pipeline` forms it, with the norms summed by torch.
    Returns (gradients, whether they are new tensors)."""
    if not grads:
        return grads, False
    rounded = _rounding(torch, grads[0].dtype)
    if global_clipnorm is not None:
        return _global_clip(torch, grads, global_clipnorm, rounded), True
    if clipnorm is not None:
        return _norm_clip(torch, grads, clipnorm, rounded), True
    if clipvalue is not None:
        return _value_clip(torch, grads, clipvalue, rounded), True
    return grads, False


def ema_lists(torch: Any, averages: list, params: list, ema_momentum: float) -> None:
    """``avg = m*avg + (1-m)*w`` in place, with ``m`` and ``1 - m`` formed in the dtype (as
    :func:`inertia.pipeline.ema_update` forms them)."""
    if not averages:
        return
    m = torch.tensor(ema_momentum, dtype=averages[0].dtype)
    kept = torch._foreach_mul(averages, float(m))
    torch._foreach_add_(kept, torch._foreach_mul(params, float(1 - m)))
    if _sharded(averages):  # DTensor has no sharding rule for _foreach_copy_
        for average, value in zip(averages, kept):
            average.copy_(value)
    else:
        torch._foreach_copy_(averages, kept)


def _sharded(tensors: Sequence[Any]) -> bool:
    """Whether any of ``tensors`` is a DTensor (FSDP2's parameters, gradients and state)."""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor exists before it is imported
        return False
    from inertia.distributed.dtensor import is_dtensor

    return any(map(is_dtensor, tensors))


def _rounding(torch: Any, dtype: Any) -> Any:
    """Python numbers rounded to ``dtype`` first, as a 0-d tensor of it rounds them."""
    return lambda value: float(torch.tensor(value, dtype=dtype))


def _norm_clip(torch: Any, grads: list, clipnorm: float, rounded: Any) -> list:
    c = rounded(clipnorm)  # (g * c) / max(|g|, c)
    denominators = torch._foreach_clamp_min(torch._foreach_norm(grads), c)
    grads = torch._foreach_mul(grads, c)
    torch._foreach_div_(grads, denominators)
    return grads


def _global_clip(torch: Any, grads: list, clipnorm: float, rounded: Any, reciprocal_in_dtype: bool = False) -> list:
    norms = torch._foreach_norm(grads)  # g * (c * min(1/|G|, 1/c) + (|G| - |G|))
    norm = torch.sqrt(torch.stack(norms).square().sum())
    c = rounded(clipnorm)
    inverse_c = float(1 / torch.tensor(c, dtype=norm.dtype)) if reciprocal_in_dtype else rounded(1.0 / clipnorm)
    scale = torch.clamp_max(1 / norm, inverse_c) * c + (norm - norm)
    return torch._foreach_mul(grads, scale)


def _value_clip(torch: Any, grads: list, clipvalue: float, rounded: Any) -> list:
    v = rounded(clipvalue)
    grads = torch._foreach_clamp_min(grads, -v)
    torch._foreach_clamp_max_(grads, v)
    return grads
