"""``inertia.mlx.SGD``: the MLX face, ``mlx.optimizers.SGD``'s API and numbers on any arrays.

MLX optimizers work on trees (nested dicts, lists and tuples) of arrays and return new
trees; state is plain data: ``{"step": ..., "learning_rate": ..., <a tree mirroring the
parameters with {"v": velocity} per leaf>}``. This face keeps that shape and runs on NumPy,
PyTorch, JAX and MLX arrays. The arithmetic is the shared heavy-ball rule (``rule.py``),
configured the MLX way: the velocity starts at zero, dampening applies from the first step,
L2 weight decay is added to the gradient, the learning rate stays outside the velocity.
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
import threading
from itertools import repeat
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from inertia import backend as backends
from inertia.backend.base import ArrayBackend
from inertia import multi_tensor
from inertia.engine import host
from inertia.engine.step import MLX as MLX_STEP
from inertia.engine.step import GroupSettings
from inertia.optimizer import _is_real_number, check_finite_number, locked
from inertia.rule import SGDRule, sgd_update

__all__ = ["SGD"]

_LEAF_CONTAINERS = (dict, list, tuple)


def _step_dtype(ops: ArrayBackend) -> str:
    """MLX counts steps in uint64; torch's uint64 lacks arithmetic and JAX has no 64-bit
    integers unless x64 is enabled."""
    if ops.name == "torch":
        return "int64"
    if ops.name == "jax":
        import jax

        return "uint64" if jax.config.read("jax_enable_x64") else "uint32"
    return "uint64"


def _leaves(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _leaves(value, path + (index,))
    else:
        yield path, tree


def _describe_path(path: tuple) -> str:
    return "".join(f"[{key!r}]" for key in path) or "the root"


class SGD:
    """Stochastic gradient descent, exactly as ``mlx.optimizers.SGD``.

    Update rule for a parameter ``w`` with gradient ``g`` (``v`` starts at zero)::

        g <- g + weight_decay*w                          (if weight_decay != 0)
        v <- momentum*v + (1 - dampening)*g              (if momentum > 0)
        w <- w - lr*(g + momentum*v)   (nesterov)   or   w <- w - lr*v

    and ``w <- w - lr*g`` without momentum. ``lr`` is cast to the gradient's dtype.

    Args:
        learning_rate: a float, or a callable receiving the step count (an array, before
            this step's increment) and returning the rate: ``schedule(0)`` drives step 1.
        momentum: momentum strength, >= 0 (0 is plain SGD).
        weight_decay: L2 penalty, >= 0, added to the gradient.
        dampening: dampening of the gradient in the velocity, >= 0.
        nesterov: Nesterov momentum (needs momentum > 0 and no dampening).

    Example:
        >>> import numpy as np
        >>> from inertia.mlx import SGD
        >>> opt = SGD(learning_rate=0.1, momentum=0.9)
        >>> params = {"w": np.array([1.0, 2.0], np.float32)}
        >>> params = opt.apply_gradients({"w": np.array([1.0, 1.0], np.float32)}, params)
        >>> params["w"], opt.state["w"]["v"], int(opt.step)
        (array([0.9, 1.9], dtype=float32), array([1., 1.], dtype=float32), 1)
    """

    def __init__(
        self,
        learning_rate: Union[float, Callable[[Any], Any]],
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        momentum = check_finite_number("momentum", momentum, minimum=0.0)
        weight_decay = check_finite_number("weight_decay", weight_decay, minimum=0.0)
        dampening = check_finite_number("dampening", dampening, minimum=0.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"Argument `nesterov` must be a bool. Received: nesterov={nesterov!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening. "
                f"Received: momentum={momentum}, dampening={dampening}"
            )
        scheduled = callable(learning_rate) and not _is_real_number(learning_rate)
        if not scheduled:
            _check_rate(learning_rate)
        self._lock = threading.RLock()
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.dampening = dampening
        self.nesterov = nesterov
        self._ops: ArrayBackend = backends.default()
        self._schedulers: dict[str, Callable[[Any], Any]] = {}
        self._plans: dict = {}  # the host kernel's plan, by dtype and shapes
        self._state: dict = {"step": self._ops.zeros((), _step_dtype(self._ops))}
        if scheduled:
            self._schedulers["learning_rate"] = learning_rate
            self._state["learning_rate"] = self._rate_array(learning_rate(self.step))
        else:
            self._state["learning_rate"] = self._rate_array(learning_rate)

    @property
    def _rule(self) -> SGDRule:
        # Read at every step, as MLX reads `nesterov`: setting it later takes effect on every path.
        return MLX_STEP.rule(nesterov=self.nesterov)

    # --- state ---------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """The whole state: ``"step"``, ``"learning_rate"`` and the per-parameter tree."""
        return self._state

    @state.setter
    @locked
    def state(self, state: dict) -> None:
        # As MLX, a dict without "step" or "learning_rate" is taken (the step then fails
        # until they are set); the entries it has must be in range.
        if not isinstance(state, dict):
            raise ValueError(f"Argument `state` must be a dict, as `optimizer.state` is. Received: state={state!r:.200}")
        ops = backends.of(state.get("step")) or backends.of(state.get("learning_rate")) or self._ops
        if "step" in state:
            _check_step(state["step"], _step_dtype(ops))
        if "learning_rate" in state:
            _check_state_rate(state["learning_rate"])
        self._state = state
        self._ops = ops

    @property
    def step(self) -> Any:
        """Updates applied so far (a 0-d integer array)."""
        return self._state["step"]

    @property
    def learning_rate(self) -> Any:
        """The learning rate of the current step (a 0-d float32 array)."""
        return self._state["learning_rate"]

    @learning_rate.setter
    @locked
    def learning_rate(self, learning_rate: Any) -> None:
        _check_rate(learning_rate)
        self._schedulers.pop("learning_rate", None)
        self._state["learning_rate"] = self._rate_array(learning_rate)

    def _rate_array(self, value: Any) -> Any:
        ops = self._ops
        if ops.is_array(value):
            return ops.copy(value)
        owner = backends.of(value)
        if owner is not None:  # a schedule answered in another library (NumPy formulas)
            value = owner.to_numpy(value)
        return ops.asarray(value, dtype="float32")

    def _adopt_backend(self, ops: ArrayBackend) -> None:
        """Move the counters onto the parameters' library (they start on the default one)."""
        if ops is self._ops:
            return
        old = self._ops
        for key, value in list(self._state.items()):
            if old.is_array(value) and old.shape(value) == ():
                dtype = _step_dtype(ops) if key == "step" else old.dtype_name(value)
                self._state[key] = ops.asarray(old.to_numpy(value), dtype=dtype)
        self._ops = ops

    # --- initialisation --------------------------------------------------------------------
    @locked
    def init(self, parameters: Any) -> None:
        """Create the state of every parameter in the tree that has none yet.

        Optional: ``apply_gradients`` initialises itself from the first gradients; call it
        to see ``state`` before the first update.
        """
        entries = list(_leaves(parameters))
        self._adopt_backend(self._backend_of(entries, "parameters"))
        self._complete_state(parameters, entries)

    def init_single(self, parameter: Any, state: dict) -> None:
        """Create one parameter's state: ``{"v": zeros_like(parameter)}``."""
        ops = backends.of(parameter)
        state["v"] = ops.zeros(ops.shape(parameter), ops.dtype_name(parameter), like=parameter)

    def _complete_state(self, tree: Any, entries: list) -> list:
        """Each entry's state node (``entries``: (path, leaf) in the tree's order), made where
        there is none yet."""
        nodes: list = []
        _mirror(tree, self._state, nodes)  # lists and tuples below the top stay lists and tuples, as in MLX
        for (_, leaf), node in zip(entries, nodes):
            if not node:
                self.init_single(leaf, node)
        return nodes

    # --- update ------------------------------------------------------------------------------
    def apply_single(self, gradient: Any, parameter: Any, state: dict) -> Any:
        """One parameter's update; stores the new velocity in ``state`` and returns the new
        parameter."""
        ops = backends.of(parameter)
        dtype = ops.dtype_name(gradient)
        lr = ops.cast(self._on(ops, self.learning_rate), dtype)
        with_momentum = self.momentum > 0

        def typed(value: Any) -> Any:
            """MLX's Python-float hyperparameters take the array's dtype; NumPy's bfloat16
            would promote them to float32 and torch's half types multiply in float32."""
            return value if ops.is_array(value) else ops.scalar(value, dtype, like=parameter)

        weight, velocity = sgd_update(
            self._rule,
            parameter,
            gradient,
            state.get("v") if with_momentum else None,
            lr,
            momentum=typed(self.momentum) if with_momentum else None,
            l2_weight_decay=self.weight_decay if self.weight_decay != 0 else None,
            dampening=self.dampening,
            add_scaled=lambda y, x, alpha: y + typed(alpha) * x,
        )
        if with_momentum:
            state["v"] = velocity
        return weight

    def _on(self, ops: ArrayBackend, value: Any) -> Any:
        if ops.is_array(value):
            return value
        owner = backends.of(value)  # None: a Python number written into `state`, as MLX allows
        return ops.asarray(owner.to_numpy(value) if owner is not None else value)

    @locked
    def apply_gradients(self, gradients: Any, parameters: Any) -> Any:
        """The updated parameters, as a tree shaped like ``gradients``.

        ``parameters`` may hold more than ``gradients`` (frozen parts are left out of the
        result). Everything is checked before the step count or any state changes.
        """
        pairs: list = []
        _paired_leaves(gradients, parameters, (), pairs)
        if not pairs:  # nothing to apply: a no-op, the step count included
            return _rebuild(gradients, iter(()))
        if not _all_plain_numpy_floats(pairs):  # the common case, checked in one pass
            ops = self._backend_of([(p, w) for p, _, w in pairs], "parameters")
            for path, gradient, parameter in pairs:
                _check_gradient(ops, path, gradient, parameter)
        else:
            ops = backends.get("numpy")
        self._check_state_complete()
        self._adopt_backend(ops)
        states = self._complete_state(gradients, [(path, g) for path, g, _ in pairs])
        for name, scheduler in self._schedulers.items():
            self._state[name] = self._rate_array(scheduler(self.step))
        updated = self._fast_apply(ops, pairs, states)
        self._state["step"] = self.step + 1
        if updated is None:
            updated = [self.apply_single(g, w, state) for (_, g, w), state in zip(pairs, states)]
        return _rebuild(gradients, iter(updated))

    def _fast_apply(self, ops: ArrayBackend, pairs: list, states: list) -> Optional[list]:
        """The step of every leaf in one call of inertia's host kernel, writing new arrays
        (weights and velocities; the given ones are only read, as MLX's arrays are
        immutable); None, having changed nothing, where the kernel does not cover it (the
        reference path runs, leaf by leaf). A subclass with its own ``apply_single`` keeps
        the reference path."""
        if type(self).apply_single is not SGD.apply_single or not host.enabled() or ops.name not in ("numpy", "torch"):
            return None
        params = _arrays([w for _, _, w in pairs])
        numpy_arrays = _all_ndarrays(params)
        if not numpy_arrays and any(getattr(t, "requires_grad", False) for t in params + [g for _, g, _ in pairs]):
            return None  # torch: the reference path's new tensors carry autograd history
        if not numpy_arrays and (params[0].device.type != "cpu" or multi_tensor._ON_CPU_TOO):
            return self._multi_tensor_apply(ops, pairs, states, params)
        dtype = ops.dtype_name(params[0])
        shapes = [w.shape for w in params] if numpy_arrays else [ops.shape(w) for w in params]
        plan = getattr(self, "_plans", {}).get(dtype, {}).get(tuple(shapes))
        if plan is None:
            plan = host.plan_shapes(ops, dtype, shapes)
            if plan is None:
                return None
            self._plans = {dtype: {tuple(shapes): plan}}
        momentum = self.momentum > 0
        velocities = None
        if momentum:
            velocities = _arrays([state.get("v") for state in states])
            if numpy_arrays:  # the kernel checks each array's dtype and shape itself
                if not _all_ndarrays(velocities):
                    return None
            elif any(v is None or not ops.is_array(v) or ops.shape(v) != shape for v, shape in zip(velocities, shapes)):
                return None
        rate = self._on(ops, self.learning_rate)
        if ops.shape(rate) != ():
            return None  # a learning rate of another shape, written into `state`: the reference broadcasts it
        learning_rate = float(ops.to_numpy(ops.cast(rate, dtype)))
        group = GroupSettings(
            learning_rate=learning_rate, momentum=self.momentum, weight_decay=self.weight_decay,
            dampening=self.dampening, nesterov=self.nesterov,
        )
        spare_weights, spare_velocities = getattr(self, "_spares", (None, None))
        weights_out = _outputs(ops, shapes, dtype, params, spare_weights)
        velocities_out = _outputs(ops, shapes, dtype, params, spare_velocities) if momentum else None
        answer = host.run(
            plan, MLX_STEP, [group], weights=params, grads=_arrays([g for _, g, _ in pairs]), velocities=velocities,
            weights_out=weights_out, velocities_out=velocities_out,
            flags=bytes([host.FLAG_DECAY if self.weight_decay != 0 else 0]) * len(params),
        )
        if answer != host.DONE:
            return None
        # This step's inputs may serve as the next step's outputs, once nobody else holds them.
        self._spares = (params, velocities) if ops.name == "numpy" else (None, None)
        if numpy_arrays:  # NumPy's arithmetic on 0-d arrays gives scalars: so does the reference path
            weights_out = [w[()] if w.ndim == 0 else w for w in weights_out]
            velocities_out = velocities_out and [v[()] if v.ndim == 0 else v for v in velocities_out]
        if momentum:
            for state, velocity in zip(states, velocities_out):
                state["v"] = velocity
        return weights_out

    def _multi_tensor_apply(self, ops: ArrayBackend, pairs: list, states: list, params: list) -> Optional[list]:
        """The step of every leaf as torch multi-tensor calls, for torch trees off the CPU
        (``inertia.multi_tensor``), new tensors as the reference path makes them; None where
        it does not cover the step (tensors of several devices or dtypes, a learning rate
        that is not a scalar)."""
        import torch

        grads = [g for _, g, _ in pairs]
        device, dtype = params[0].device, params[0].dtype
        momentum = self.momentum > 0
        velocities = [state.get("v") for state in states] if momentum else []
        tensors = params + grads + velocities
        if not all(isinstance(t, torch.Tensor) and t.device == device and t.dtype == dtype for t in tensors):
            return None
        if any(g.shape != w.shape for g, w in zip(grads, params)) or any(v.shape != w.shape for v, w in zip(velocities, params)):
            return None
        rate = self._on(ops, self.learning_rate)
        if ops.shape(rate) != ():
            return None
        group = GroupSettings(
            learning_rate=float(ops.to_numpy(ops.cast(rate, ops.dtype_name(params[0])))), momentum=self.momentum,
            weight_decay=self.weight_decay, dampening=self.dampening, nesterov=self.nesterov,
        )
        with torch.no_grad():
            weights, velocities = multi_tensor.heavy_ball_out_of_place(torch, group, params, grads, velocities)
        for state, velocity in zip(states, velocities or ()):
            state["v"] = velocity
        return weights

    @locked
    def update(self, model: Any, gradients: Any) -> None:
        """Apply ``gradients`` to ``model`` in place: an ``mlx.nn.Module`` (its own
        ``update``), or nested dicts / lists of arrays, whose leaves are replaced."""
        updated = self.apply_gradients(gradients, model)
        own_update = getattr(type(model), "update", None)
        if own_update is not None and own_update is not dict.update:
            model.update(updated)
        else:
            _merge_into(model, updated)

    def _check_state_complete(self) -> None:
        """A state set without "step" (or without "learning_rate", unless a schedule makes
        it) cannot step: MLX fails with a KeyError there; this says why, before any change."""
        missing = [key for key in ("step", "learning_rate") if key not in self._state and key not in self._schedulers]
        if missing:
            raise ValueError(
                f"Argument `state` (set with `optimizer.state = ...`) has no {missing[0]!r} entry, so the optimizer "
                f"cannot step; set `optimizer.state[{missing[0]!r}]` first. Received: a state with keys {list(self._state)[:10]}"
            )

    def _backend_of(self, entries: list, argument: str) -> ArrayBackend:
        found: Optional[ArrayBackend] = None
        first = None
        for path, leaf in entries:
            if not path:  # checked here, before the counters move to the parameters' library
                raise TypeError("Argument `parameters` must be a tree (dict, list or tuple) of arrays, not a bare array.")
            ops = backends.of(leaf)
            if ops is None or not ops.is_array(leaf):
                raise TypeError(
                    f"Argument `{argument}` must hold arrays (NumPy, PyTorch, JAX or MLX); "
                    f"{_describe_path(path)} is {type(leaf).__name__}: {leaf!r:.100}"
                )
            if found is None:
                found, first = ops, path
            elif ops is not found:
                raise ValueError(
                    f"All parameters of one optimizer must use one array library. Received "
                    f"{_describe_path(first)} on {found.name} and {_describe_path(path)} on {ops.name}."
                )
        return found or self._ops

    def __getstate__(self) -> dict:
        # The kernel's plans and the arrays kept for reuse are rebuilt on demand, not saved;
        # the lock is not state: each copy gets its own.
        state = dict(self.__dict__)
        state.pop("_plans", None)
        state.pop("_spares", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"inertia.mlx.SGD(momentum={self.momentum}, weight_decay={self.weight_decay}, "
            f"dampening={self.dampening}, nesterov={self.nesterov})"
        )


def _all_plain_numpy_floats(pairs: list) -> bool:
    """Whether every (gradient, parameter) pair is two NumPy arrays of one float32 / float64
    dtype and of one shape: then the per-leaf checks (``_check_gradient``) have nothing to say."""
    if not pairs or any(not path for path, _, _ in pairs):
        return False
    grads = [g for _, g, _ in pairs]
    params = [w for _, _, w in pairs]
    if not (_all_ndarrays(grads) and _all_ndarrays(params)):
        return False
    dtype = params[0].dtype
    if dtype not in _PLAIN_FLOATS:
        return False
    return (
        all(map(dtype.__eq__, map(_DTYPE_OF, grads)))
        and all(map(dtype.__eq__, map(_DTYPE_OF, params)))
        and list(map(_SHAPE_OF, grads)) == list(map(_SHAPE_OF, params))
    )


def _all_ndarrays(values: list) -> bool:
    """Whether every value is a NumPy array itself (no subclass), checked in one C-level pass."""
    return all(map(operator.is_, map(type, values), repeat(np.ndarray)))


def _arrays(values: list) -> list:
    """NumPy scalars (the reference path's results for 0-d leaves) as 0-d arrays, for the kernel."""
    if _all_ndarrays(values):
        return values
    return [np.asarray(v) if isinstance(v, np.generic) else v for v in values]


_PLAIN_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


_BASE_OF = operator.attrgetter("base")
_DTYPE_OF = operator.attrgetter("dtype")
_SHAPE_OF = operator.attrgetter("shape")

def _outputs(ops: ArrayBackend, shapes: list, dtype: str, params: list, spares: Optional[list]) -> list:
    """New arrays for a step's results. A NumPy array the previous step read and that only
    this optimizer still references (its Python reference count says so: a view or any other
    holder adds one) is reused: its memory is already mapped, where a new one would fault
    every page in again. Torch tensors are never reused (a view does not count as a holder)."""
    if spares is None or len(spares) != len(shapes):
        return [ops.empty(shape, dtype, like=w) for shape, w in zip(shapes, params)]
    target = np.dtype(dtype)
    if (  # the usual case, checked a list at a time: every spare is free (2: the list's reference and the call's)
        all(map(operator.is_, map(type, spares), repeat(np.ndarray)))
        and all(map((2).__eq__, map(sys.getrefcount, spares)))
        and all(map(operator.is_, map(_BASE_OF, spares), repeat(None)))
        and all(map(target.__eq__, map(_DTYPE_OF, spares)))
        and list(map(_SHAPE_OF, spares)) == shapes
    ):  # writability and contiguity: the kernel checks them, and a step it declines has used the spares up
        outputs = spares[:]
        spares[:] = [None] * len(spares)
        return outputs
    outputs = []
    for index, (shape, w) in enumerate(zip(shapes, params)):
        spare = spares[index]
        spares[index] = None  # the list's reference: gone, so the count below is the others'
        if (
            type(spare) is np.ndarray
            and sys.getrefcount(spare) == 2  # this local and getrefcount's argument: nobody else
            and spare.base is None
            and spare.shape == shape
            and spare.dtype == target
        ):
            flags = spare.flags
            if flags.writeable and flags.c_contiguous:
                outputs.append(spare)
                continue
        outputs.append(ops.empty(shape, dtype, like=w))
    return outputs


def _check_rate(learning_rate: Any) -> None:
    if not _is_real_number(learning_rate):
        ops = backends.of(learning_rate)
        if ops is None or not ops.is_array(learning_rate) or ops.shape(learning_rate) != ():
            raise TypeError(
                "Argument `learning_rate` must be a float, a 0-d array or a callable of the step. "
                f"Received: learning_rate={learning_rate!r}"
            )
        learning_rate = float(ops.to_numpy(learning_rate))
    value = float(learning_rate)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Argument `learning_rate` must be finite and >= 0. Received: learning_rate={learning_rate!r}")


def _concrete(value: Any) -> Optional[np.ndarray]:
    """``value`` as NumPy, or None where it cannot be read: traced inside ``jax.jit`` or
    ``mx.compile`` (a state passed through a compiled step; its values are checked eagerly)."""
    ops = backends.of(value)
    if ops is None:
        return np.asarray(value)
    if ops.is_traced(value):
        return None
    try:
        return np.asarray(ops.to_numpy(value))
    except ValueError:
        if ops.name == "mlx":  # "[eval] Attempting to eval an array during function transformations"
            return None
        raise


def _check_step(step: Any, dtype: str) -> None:
    """A step count loaded into ``state``: a whole number from 0 up to its dtype's maximum,
    excluded (the next increment must not wrap); ``dtype``: a Python int's counter dtype."""
    ops = backends.of(step)
    if ops is None:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"`state['step']` must be an integer array (or int), as the optimizer counts. Received: state['step']={step!r:.100}")
    else:
        if not ops.is_array(step) or ops.shape(step) != ():
            raise TypeError(f"`state['step']` must be a 0-d integer array. Received: state['step']={step!r:.100}")
        dtype = ops.dtype_name(step)
        if dtype not in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
            raise TypeError(f"`state['step']` must be a 0-d integer array, not of dtype {dtype}. Received: state['step']={step!r:.100}")
    value = _concrete(step)
    if value is None:
        return
    limit = int(np.iinfo(dtype).max)
    if not 0 <= int(value) < limit:
        raise ValueError(
            f"`state['step']` must be in [0, {limit}) for its dtype {dtype} (nothing is wrapped). Received: state['step']={step!r:.100}"
        )


def _check_state_rate(learning_rate: Any) -> None:
    """A learning rate loaded into ``state``: real, finite and >= 0 (an array of any shape, as MLX allows)."""
    ops = backends.of(learning_rate)
    if ops is None:
        if not _is_real_number(learning_rate):
            raise TypeError(f"`state['learning_rate']` must be a real number or array. Received: state['learning_rate']={learning_rate!r:.100}")
    elif not ops.is_array(learning_rate) or not (
        ops.is_floating(ops.dtype_name(learning_rate)) or ops.dtype_name(learning_rate).startswith(("int", "uint"))
    ):
        raise TypeError(f"`state['learning_rate']` must be a real number or array. Received: state['learning_rate']={learning_rate!r:.100}")
    value = _concrete(learning_rate)
    if value is None:
        return
    value = value.astype(np.float64)
    if not (np.all(np.isfinite(value)) and np.all(value >= 0)):
        raise ValueError(
            f"`state['learning_rate']` must be finite and >= 0. Received: state['learning_rate']={learning_rate!r:.100}"
        )


def _check_gradient(ops: ArrayBackend, path: tuple, gradient: Any, parameter: Any) -> None:
    where = _describe_path(path)
    grad_ops = backends.of(gradient)
    if grad_ops is None or not grad_ops.is_array(gradient):
        raise TypeError(f"The gradient at {where} must be an array. Received: {type(gradient).__name__}: {gradient!r:.100}")
    if grad_ops is not ops:
        raise TypeError(f"The gradient at {where} is a {grad_ops.name} array but the parameter is on {ops.name}; convert it first.")
    dtype = ops.dtype_name(gradient)
    if not ops.is_floating(dtype):
        raise TypeError(
            f"Gradients must be floating-point arrays; the gradient at {where} has dtype {dtype} "
            "(int, bool and complex gradients are rejected, not cast)."
        )
    if not ops.is_floating(ops.dtype_name(parameter)):
        raise TypeError(f"The parameter at {where} must be floating-point; it has dtype {ops.dtype_name(parameter)}.")
    if ops.shape(gradient) != ops.shape(parameter):
        raise ValueError(
            f"The gradient at {where} has shape {ops.shape(gradient)} but the parameter has shape {ops.shape(parameter)}."
        )


def _mirror(tree: Any, state: Any, leaves: list) -> Any:
    """``state`` completed to mirror ``tree``'s containers (``None``: none yet); a leaf's
    state is a dict, ``{}`` until ``init_single`` fills it. A dict state node (the top one)
    is keyed by list indices where ``tree`` has a list. Each leaf's state node is appended to
    ``leaves``, in the tree's order."""
    if isinstance(tree, (list, tuple)) and not isinstance(state, dict):
        items = list(state) if isinstance(state, (list, tuple)) else []
        for index, value in enumerate(tree):
            if index < len(items):
                items[index] = _mirror(value, items[index], leaves)
            else:
                items.append(_mirror(value, None, leaves))
        return items if isinstance(tree, list) else _like_tuple(tree, items)
    if isinstance(tree, _LEAF_CONTAINERS):
        state = {} if state is None else state
        for key, value in (tree.items() if isinstance(tree, dict) else enumerate(tree)):
            if isinstance(value, _LEAF_CONTAINERS):
                state[key] = _mirror(value, state.get(key), leaves)
            else:  # a leaf, handled here: a call saved per leaf of the usual dict of arrays
                node = state.get(key)
                if node is None:
                    node = state[key] = {}
                leaves.append(node)
        return state
    node = {} if state is None else state
    leaves.append(node)
    return node


def _like_tuple(tree: tuple, items: list) -> tuple:
    """``items`` as a tuple of ``tree``'s type (named tuples take fields, as in ``mlx.utils.tree_map``)."""
    return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)


class _Missing:
    """Where ``parameters`` has no entry on a gradient's path: the path down to the missing key."""

    __slots__ = ("path",)

    def __init__(self, path: tuple) -> None:
        self.path = path


def _child(node: Any, key: Any, path: tuple) -> Any:
    if type(node) is _Missing:
        return node
    try:
        return node[key]
    except (KeyError, IndexError, TypeError):
        return _Missing(path)


def _paired_leaves(gradients: Any, parameters: Any, path: tuple, pairs: list) -> None:
    """Append (path, gradient, parameter) for each leaf of ``gradients``, in the tree's order,
    the parameter found along the same path in ``parameters`` (which may hold more)."""
    if isinstance(gradients, dict):
        for key, value in gradients.items():
            inner = path + (key,)
            parameter = _child(parameters, key, inner)
            if isinstance(value, _LEAF_CONTAINERS) or type(parameter) is _Missing:
                _paired_leaves(value, parameter, inner, pairs)
            else:  # a leaf: appended here, saving a call per leaf of the usual dict of arrays
                pairs.append((inner, value, parameter))
    elif isinstance(gradients, (list, tuple)):
        for index, value in enumerate(gradients):
            inner = path + (index,)
            _paired_leaves(value, _child(parameters, index, inner), inner, pairs)
    elif type(parameters) is _Missing:
        raise ValueError(
            f"Argument `parameters` has no entry at {_describe_path(parameters.path)}, where "
            "`gradients` has one: the parameters must contain every gradient's path."
        )
    else:
        pairs.append((path, gradients, parameters))


def _rebuild(tree: Any, leaves: Iterator) -> Any:
    """``tree``'s containers with its leaves replaced, in order, by those of ``leaves``."""
    if isinstance(tree, dict):
        return {
            key: _rebuild(value, leaves) if isinstance(value, _LEAF_CONTAINERS) else next(leaves)
            for key, value in tree.items()
        }
    if isinstance(tree, (list, tuple)):
        items = [_rebuild(value, leaves) for value in tree]
        return items if isinstance(tree, list) else _like_tuple(tree, items)
    return next(leaves)


def _merge_into(target: Any, updates: Any) -> None:
    items = updates.items() if isinstance(updates, dict) else enumerate(updates)
    for key, value in items:
        if isinstance(value, _LEAF_CONTAINERS) and isinstance(target[key], (dict, list)):
            _merge_into(target[key], value)
        else:
            target[key] = value
