"""The fused fast path of ``inertia.SGD`` for JAX on the CPU.

Inside inertia's own jitted step (:mod:`inertia.engine.compiled`), a real update step of stock
SGD becomes one XLA custom call per group of tensors, running the NumPy backend's kernel
(``_sgd_core.h``, through the FFI handler in ``_xla_kernels.c``): clipnorm / clipvalue /
global_clipnorm, decoupled weight decay, momentum or Nesterov and the EMA in one read and one
write of each array. Its results alias its operands, so with the step's donated buffers it
updates them in place. XLA:CPU otherwise runs each tensor's update as separate fused loops.
Tensors under ``SMALLEST_BYTES`` keep those loops (the reference stages, traced as usual):
for them a custom call's cost per operand outweighs what it saves.

Numbers: the kernel follows the reference path's order of operations in the variables' dtype
without fusing multiply-adds, so from the same gradients it gives the NumPy backend's numbers
(the norms aside, whose sums are kept in double; a loss scale or an accumulation mean is
applied by XLA before the call, as a multiply by the rounded reciprocal); XLA's own lowering of the reference contracts ``v*m - g*lr`` into a fused
multiply-add, so the two JAX paths agree within rounding, not bit for bit.

The path is taken only where it is safe: an optimizer that describes Keras 3's step, every array on the CPU, float32 or
float64 variables and gradients of their shapes, and only in inertia's own compiled step (a
user's ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` of ``stateless_apply`` keeps traceable
reference operations). Anything else takes the reference path, unchanged.

Example:
    >>> import jax.numpy as jnp, inertia
    >>> w = inertia.Variable(jnp.ones(3))
    >>> opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
    >>> opt.apply([jnp.ones(3)], [w])            # compiled; the custom call where available
    >>> [round(float(x), 6) for x in w.value]
    [0.9, 0.9, 0.9]
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np

from inertia import kernels
from inertia.engine import host
from inertia.engine.optimizer_host import stock_targets
from inertia.engine.step import KERAS, MODE_NESTEROV, MODE_NONE, MODE_PLAIN

# The handler's clip modes (``update_job`` in ``_sgd_core.h``).
_CLIP_NONE, _CLIP_NORM, _CLIP_GLOBAL, _CLIP_VALUE = 0, 1, 2, 3


def _clip_setting(optimizer: Any) -> tuple[int, float, float]:
    """Keras' clipping: the first of clipnorm, global_clipnorm, clipvalue that is > 0."""
    if optimizer.clipnorm and optimizer.clipnorm > 0:
        return _CLIP_NORM, float(optimizer.clipnorm), 0.0
    if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:
        return _CLIP_GLOBAL, float(optimizer.global_clipnorm), 0.0
    if optimizer.clipvalue and optimizer.clipvalue > 0:
        return _CLIP_VALUE, 1.0, float(optimizer.clipvalue)
    return _CLIP_NONE, 1.0, 0.0

__all__ = ["fused_update"]

_TARGET = "inertia_sgd_step"
# Tensors per custom call: XLA's compile time grows faster than linearly with one call's
# operand count (2000 tensors in one call: minutes), and splitting costs nothing at run time.
GROUP = 64
# Tensors under this many bytes keep XLA's own fusions: for lists of many small tensors a
# custom call costs more per operand than it saves (2000 x 4096 float32: 28.7 ms a step
# against optax's 23.1, and 23.8 against 23.8 without it; 500 x 8192: 1.30x optax against
# 0.99x), while from 16384 float32 elements up it is level or ahead (0.86-0.98x optax
# against 0.99-1.08x). Each figure: inertia and optax interleaved in one process, 2 cores.
SMALLEST_BYTES = 64 * 1024

_lock = threading.Lock()
_registered: Optional[bool] = None


def _register() -> bool:
    """Register the handler with XLA once per process; False where it cannot be built."""
    global _registered
    if _registered is None:
        with _lock:
            if _registered is None:
                library = kernels.load_xla()
                if library is None:
                    _registered = False
                else:
                    import jax

                    try:
                        handler = library.inertia_sgd_step
                        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handler), platform="cpu")
                        _registered = True
                    except Exception:  # a library without the symbol, a jax whose FFI differs: the reference path serves
                        _registered = False
    return _registered


def fused_update(optimizer: Any, grads: list, variables: list, learning_rate: Any) -> bool:
    """Trace one real update step (clip, decay, update, EMA) of ``variables``: custom calls
    for the tensors of at least ``SMALLEST_BYTES``, the reference stages for the others.

    Called by ``Optimizer._update`` while inertia's own compiled step is being traced; returns
    False, having traced nothing that changes a variable, when the step is not one it covers
    (or every tensor is small: then the reference stages run as usual).
    """
    if optimizer.describe_step() != KERAS or not host.enabled():  # the handler runs the Keras 3 step only
        return False
    import jax

    if jax.default_backend() != "cpu":
        return False
    found = stock_targets(optimizer, variables)
    if found is None:
        return False
    wrappers, indices = found
    dtype = wrappers[0].dtype
    for gradient, wrapper in zip(grads, wrappers):
        if str(getattr(gradient, "dtype", "")) != dtype or tuple(gradient.shape) != tuple(wrapper.shape):
            return False
    itemsize = np.dtype(dtype).itemsize
    large = [k for k, w in enumerate(wrappers) if int(np.prod(w.shape, dtype=np.int64)) * itemsize >= SMALLEST_BYTES]
    clip, clipnorm, clipvalue = _clip_setting(optimizer)
    if not large or (clip == _CLIP_GLOBAL and (len(large) < len(wrappers) or len(large) > GROUP)):
        return False  # a global norm spans every tensor: one call or the reference stages
    if not _register():
        return False

    velocities = [optimizer.momentums[i] for i in indices] if optimizer.momentums else None
    averages = [optimizer._model_variables_moving_average[i] for i in indices] if optimizer.use_ema else None
    _custom_calls(
        optimizer, [grads[k] for k in large], [wrappers[k] for k in large],
        None if velocities is None else [velocities[k] for k in large],
        None if averages is None else [averages[k] for k in large],
        learning_rate, clip, clipnorm, clipvalue,
    )
    chosen = set(large)
    small = [k for k in range(len(wrappers)) if k not in chosen]
    if small:  # the reference stages, per tensor as in Optimizer._update
        small_wrappers = [wrappers[k] for k in small]
        small_grads = optimizer._clip_gradients([grads[k] for k in small], small_wrappers)
        optimizer._apply_weight_decay(small_wrappers, learning_rate)
        optimizer._backend_update_step(small_grads, small_wrappers, learning_rate)
        if averages is not None:
            first = optimizer._flag(optimizer._steps_taken() == 0)
            optimizer._update_model_variables_moving_average(small_wrappers, first, [averages[k] for k in small])
    return True


def _custom_calls(
    optimizer: Any, grads: list, wrappers: list, velocities: Optional[list], averages: Optional[list],
    learning_rate: Any, clip: int, clipnorm: float, clipvalue: float,
) -> None:
    """The whole update of ``wrappers`` (and their slots) as one custom call per ``GROUP``."""
    import jax
    import jax.numpy as jnp

    dtype = wrappers[0].dtype
    mode = MODE_NONE if velocities is None else (MODE_NESTEROV if optimizer.nesterov else MODE_PLAIN)
    lr = wrappers[0].backend.cast(learning_rate, dtype)
    if averages is None:
        ema_momentum = jnp.zeros((), dtype)
    else:  # 0 on the first step, so the average starts at the weights
        first = optimizer._steps_taken() == 0
        ema_momentum = jnp.where(first, jnp.zeros((), dtype), jnp.asarray(optimizer.ema_momentum, dtype))
    scalars = jnp.stack([jnp.reshape(lr, ()), ema_momentum])
    decays = optimizer.weight_decay is not None
    decay = np.array([1 if decays and optimizer._use_weight_decay(w) else 0 for w in wrappers], dtype=np.uint8)
    settings = dict(
        mode=np.int64(mode), clip=np.int64(clip), ema=np.int64(averages is not None),
        threads=np.int64(kernels.thread_count()), momentum=np.float64(optimizer.momentum),
        wd=np.float64(optimizer.weight_decay or 0.0), clipnorm=np.float64(clipnorm),
        clipvalue=np.float64(clipvalue), unscale=np.float64(1.0),  # gradients arrive unscaled
    )
    for start in range(0, len(wrappers), GROUP):
        group = slice(start, start + GROUP)
        updated = [wrappers[group]] + [slots[group] for slots in (velocities, averages) if slots is not None]
        count = len(updated[0])
        operands = [w.value for w in wrappers[group]] + list(grads[group])
        operands += [v.value for slots in updated[1:] for v in slots]
        # results: weights, slots, EMAs; each aliases its operand (gradients come in between)
        aliases = {1 + k: k for k in range(count)}
        aliases.update({1 + count + k: k for k in range(count, len(updated) * count)})
        sizes = [int(np.prod(w.shape, dtype=np.int64)) for w in wrappers[group]]
        call = jax.ffi.ffi_call(
            _TARGET,
            [jax.ShapeDtypeStruct(v.value.shape, v.value.dtype) for slots in updated for v in slots]
            + [jax.ShapeDtypeStruct((workspace_bytes(sizes),), jnp.uint8)],
            input_output_aliases=aliases,
        )
        results = call(scalars, *operands, count=np.int64(count), decay=decay[group], **settings)
        for variable, value in zip((v for slots in updated for v in slots), results[:-1]):
            variable.assign(value)


# The kernel's constants (``_sgd_core.h``): keep in step with CHUNK, Task and the handler's arrays.
_CHUNK, _TASK_BYTES = 65536, 32


def workspace_bytes(sizes: list[int]) -> int:
    """Bytes of the handler's workspace for tensors of ``sizes`` elements: its own arrays
    (sizes and 5 pointers per tensor) and ``arena_bytes`` of the kernel (tasks, clip
    factors, norm sums). XLA allocates it with the step's buffers, before anything runs, so
    no call of a step can fail half-way for memory."""
    count = len(sizes)
    tasks = sum(-(-size // _CHUNK) if size > _CHUNK else 1 for size in sizes)
    return count * (8 + 5 * 8) + (tasks + 1) * _TASK_BYTES + (2 * count + 1) * 8 + (tasks + 1) * 8 + (count + 1) * 8
