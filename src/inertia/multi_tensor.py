"""The multi-tensor fast path of ``inertia.SGD`` for torch tensors off the CPU (CUDA).

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

Steps this path does not cover run the reference path: gradient accumulation, constraints,
missing gradients, float16/bfloat16, variables spread over devices or dtypes, a subset of the
variables while the EMA is on, and optimizers that do not describe Keras 3's step. Like the
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

from typing import Any, Optional, Sequence

import numpy as np

from inertia.engine import host
from inertia.engine.optimizer_host import stock_targets
from inertia.engine.step import KERAS

__all__ = ["multi_tensor_apply"]

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
    if optimizer.describe_step() != KERAS or optimizer.gradient_accumulation_steps or not host.enabled():
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
    torch, wrappers, indices = found
    with torch.no_grad():
        _step(optimizer, torch, wrappers, indices, list(grads))
    return True


def _step(optimizer: Any, torch: Any, wrappers: list, indices: list, grads: list) -> None:
    ops = wrappers[0].backend
    dtype = wrappers[0].dtype
    rounded = np.dtype(dtype).type  # Python numbers are cast to the dtype first, as in Keras
    weights = [w.value for w in wrappers]
    own = False  # whether `grads` are temporaries of this step (then updated in place)

    if optimizer.loss_scale_factor is not None:
        grads, own = torch._foreach_div(grads, float(rounded(optimizer.loss_scale_factor))), True
    grads, own = _clip(optimizer, torch, grads, own, rounded)

    learning_rate = ops.cast(optimizer._learning_rate_array(), dtype)
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


def _clip(optimizer: Any, torch: Any, grads: list, own: bool, rounded: Any) -> tuple[list, bool]:
    """Keras' clipping (the first of clipnorm, global_clipnorm, clipvalue that is > 0)."""
    if optimizer.clipnorm and optimizer.clipnorm > 0:  # (g * c) / max(|g|, c)
        c = float(rounded(optimizer.clipnorm))
        denominators = torch._foreach_clamp_min(torch._foreach_norm(grads), c)
        grads = torch._foreach_mul(grads, c)
        torch._foreach_div_(grads, denominators)
        return grads, True
    if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:  # g * (c * min(1/|G|, 1/c) + (|G| - |G|))
        norms = torch._foreach_norm(grads)
        norm = torch.sqrt(torch.stack(norms).square().sum())
        c, inverse_c = float(rounded(optimizer.global_clipnorm)), float(rounded(1.0 / optimizer.global_clipnorm))
        scale = torch.clamp_max(1 / norm, inverse_c) * c + (norm - norm)
        return torch._foreach_mul(grads, scale), True
    if optimizer.clipvalue and optimizer.clipvalue > 0:
        v = float(rounded(optimizer.clipvalue))
        grads = torch._foreach_clamp_min(grads, -v)
        torch._foreach_clamp_max_(grads, v)
        return grads, True
    return grads, own
