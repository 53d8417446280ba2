"""The demo's recipe on each face of inertia, and on the system each face reproduces.

The recipe is Keras-shaped: Nesterov momentum, a cosine decay of the learning rate over the
whole run, decoupled weight decay on the kernels (not the biases) and an exponential moving
average (EMA) of the weights that becomes the final model. Each face is configured as close
to it as its API allows, and says in the demo's header what it sets, what it derives and
what it lacks. A face's reference system (``keras.optimizers.SGD``, ``torch.optim.SGD``,
``tf_keras.optimizers.legacy.SGD``, ``mlx.optimizers.SGD``) gets exactly the face's options,
so that ``inertia demo --compare`` compares like with like.

Each optimizer runs as a :class:`Trajectory`: weights and the optimizer that steps them. A
reference system that keeps its weights in another array library (TensorFlow, MLX, or
Keras on a backend other than the demo's) gets the gradients, and gives its weights back,
as NumPy copies: float32 to float32 and back is exact, so the copies add no difference.

Frameworks are imported only inside the code that needs them.
"""

from __future__ import annotations

import abc
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from inertia.demo_model import Model, import_tensorflow

__all__ = ["FACES", "Face", "Recipe", "Trajectory", "face_for", "is_installed"]

# The weights, in the order the model takes them; biases are spared weight decay.
WEIGHT_NAMES = ("hidden_kernel", "hidden_bias", "output_kernel", "output_bias")
NO_DECAY_PATTERN = "bias"


def _decays(name: str) -> bool:
    return NO_DECAY_PATTERN not in name


def _format(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Recipe:
    """The demo's optimizer settings, before any face adapts them.

    Attributes:
        learning_rate: the cosine decay's first rate.
        alpha: the decay's last rate, as a fraction of the first.
        total_steps: the decay's length: every step of the run.
        momentum: Nesterov momentum.
        weight_decay: Keras' decoupled decay (``w -= lr * weight_decay * w``), kernels only.
        ema_momentum: the moving average's momentum; None for a face that keeps no average.
    """

    learning_rate: float
    alpha: float
    total_steps: int
    momentum: float
    weight_decay: float
    ema_momentum: Optional[float]

    @property
    def l2_weight_decay(self) -> float:
        """The L2 coefficient (``g += wd * w``) with the pull of the decoupled decay.

        An L2 term goes through the momentum buffer, whose steady state is ``1/(1 -
        momentum)`` times its input, while decoupled decay acts once per step outside it;
        ``weight_decay * (1 - momentum)`` makes both shrink the weights alike."""
        return self.weight_decay * (1.0 - self.momentum)

    @property
    def final_rate(self) -> float:
        return self.learning_rate * self.alpha

    def schedule(self) -> Any:
        """inertia's ``CosineDecay`` of the recipe (Keras' formula, float32)."""
        from inertia import schedules

        return schedules.CosineDecay(self.learning_rate, decay_steps=self.total_steps, alpha=self.alpha)

    def schedule_text(self) -> str:
        return f"CosineDecay({_format(self.learning_rate)}, decay_steps={self.total_steps}, alpha={_format(self.alpha)})"


class Trajectory(abc.ABC):
    """One optimizer stepping one copy of the model's weights.

    Attributes:
        label: the optimizer's name, as the demo prints it (``inertia.SGD``, ``torch.optim.SGD``).
        averaged: whether :meth:`final_weights` is a moving average of the weights.
    """

    label: str = ""
    averaged: bool = False

    @abc.abstractmethod
    def weights(self) -> list:
        """The current weights as the demo backend's arrays, in :data:`WEIGHT_NAMES` order."""

    @abc.abstractmethod
    def apply(self, grads: list) -> float:
        """One optimizer step with ``grads`` (the demo backend's arrays); returns the learning
        rate the step used, as the optimizer reports it."""

    @abc.abstractmethod
    def snapshot(self) -> list[np.ndarray]:
        """NumPy copies of the current weights."""

    def final_weights(self) -> list[np.ndarray]:
        """The model kept at the end: the moving average where there is one, else the last
        weights (NumPy copies)."""
        return self.snapshot()


class Face(abc.ABC):
    """A face of inertia, configured to the recipe, and its reference system.

    Attributes:
        name: the ``--face`` value.
        optimizer: inertia's class, as printed.
        reference: the reference system's class, as printed.
        backends: the ``--backend`` values it runs on.
        has_ema: whether the face keeps a moving average of the weights.
    """

    name = ""
    optimizer = ""
    reference = ""
    backends: tuple[str, ...] = ("numpy", "torch", "jax", "tensorflow")
    has_ema = False

    @abc.abstractmethod
    def describe(self, recipe: Recipe) -> list[str]:
        """The header's lines for this face: its settings first, then what it derives or
        lacks and what the demo does instead."""

    def adjust_gradients(self, recipe: Recipe, grads: list, weights: list) -> list:
        """What the demo adds to the gradients itself, for a setting the face lacks (both
        trajectories of a comparison get the same treatment)."""
        return grads

    @abc.abstractmethod
    def missing_reference(self) -> Optional[str]:
        """What to install for ``--compare``, or None when the reference system is here."""

    @abc.abstractmethod
    def describe_reference(self, model: Model) -> str:
        """The header's line for ``--compare``: the reference, its version and arrays, and how
        arrays cross between it and the demo's backend."""

    @abc.abstractmethod
    def inertia_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        """The face's optimizer, configured to ``recipe``, stepping a copy of ``initial`` as
        ``model``'s arrays."""

    @abc.abstractmethod
    def reference_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        """The reference system with the face's options, stepping its own copy of ``initial``."""


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "version unknown"


_CROSSING = "weights and gradients cross as NumPy copies, which are exact"


# --- Keras 3 ---------------------------------------------------------------------------------
class KerasFace(Face):
    name, optimizer, reference = "keras", "inertia.SGD", "keras.optimizers.SGD"
    has_ema = True

    def _options(self, recipe: Recipe) -> dict:
        # One dict for both systems: the comparison's settings cannot drift apart.
        return {
            "momentum": recipe.momentum, "nesterov": True, "weight_decay": recipe.weight_decay,
            "use_ema": True, "ema_momentum": recipe.ema_momentum,
        }

    def describe(self, recipe: Recipe) -> list[str]:
        options = ", ".join(f"{key}={value}" for key, value in self._options(recipe).items() if key != "ema_momentum")
        return [
            f"optimizer: inertia.SGD(learning_rate={recipe.schedule_text()}, {options}, "
            f"ema_momentum={recipe.ema_momentum:.3f}), exclude_from_weight_decay(var_names=[{NO_DECAY_PATTERN!r}])"
        ]

    def missing_reference(self) -> Optional[str]:
        return None if is_installed("keras") else "keras (Keras 3): pip install keras"

    @staticmethod
    def _keras_backend(model: Model) -> tuple[str, str]:
        """Keras' backend, fixed when keras is first imported, and why it is that one.

        Keras defaults to TensorFlow; an unset KERAS_BACKEND is set to the demo's backend
        (Keras has a NumPy, a torch and a JAX backend), so that both run on one library."""
        if "keras" in sys.modules:  # importing TensorFlow imports Keras too
            import keras

            backend = keras.backend.backend()
            if os.environ.get("KERAS_BACKEND") == backend:
                return backend, "from KERAS_BACKEND"
            if backend == model.backend == "tensorflow" and not os.environ.get("KERAS_BACKEND"):
                return backend, "KERAS_BACKEND is unset: Keras' default, which is --backend's"
            return backend, "Keras was already imported"
        if os.environ.get("KERAS_BACKEND"):
            return os.environ["KERAS_BACKEND"], "from KERAS_BACKEND"
        os.environ["KERAS_BACKEND"] = model.backend
        return model.backend, "KERAS_BACKEND was unset: the demo set it to --backend's"

    def describe_reference(self, model: Model) -> str:
        backend, why = self._keras_backend(model)
        crossing = "" if backend == model.backend else f"; it runs on {backend}, not {model.backend}: {_CROSSING}"
        return (
            f"compare: keras.optimizers.SGD (Keras {_version('keras')}, on its {backend} backend: {why}) with the same "
            f"options and keras.optimizers.schedules.CosineDecay{crossing}"
        )

    def inertia_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import inertia

        optimizer = inertia.SGD(learning_rate=recipe.schedule(), **self._options(recipe))
        optimizer.exclude_from_weight_decay(var_names=[NO_DECAY_PATTERN])
        variables = [inertia.Variable(model.asarray(w), name=n) for w, n in zip(initial, WEIGHT_NAMES)]
        return _KerasStyleTrajectory(
            "inertia.SGD", optimizer, variables, read=lambda v: model.to_numpy(v.value),
            to_model=lambda v: v.value, to_optimizer=lambda g: g,
            rate=lambda: float(np.asarray(optimizer.learning_rate)), averaged=True,
            finalize=lambda: optimizer.finalize_variable_values(variables),
        )

    def reference_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        self._keras_backend(model)
        import keras

        schedule = keras.optimizers.schedules.CosineDecay(recipe.learning_rate, decay_steps=recipe.total_steps, alpha=recipe.alpha)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, **self._options(recipe))
        optimizer.exclude_from_weight_decay(var_names=[NO_DECAY_PATTERN])
        variables = [keras.Variable(w, name=n) for w, n in zip(initial, WEIGHT_NAMES)]
        numpy_of = keras.ops.convert_to_numpy
        if model.backend == "tensorflow" == keras.backend.backend():  # tf.Variables both sides: nothing crosses
            to_model, to_optimizer = (lambda v: v.value), (lambda g: g)
        else:
            to_model = lambda v: model.asarray(numpy_of(v.value))  # noqa: E731
            to_optimizer = lambda g: keras.ops.convert_to_tensor(model.to_numpy(g))  # noqa: E731
        return _KerasStyleTrajectory(
            "keras.optimizers.SGD", optimizer, variables, read=lambda v: np.array(numpy_of(v.value), copy=True),
            to_model=to_model, to_optimizer=to_optimizer,
            rate=lambda: float(numpy_of(optimizer.learning_rate)), averaged=True,
            finalize=lambda: optimizer.finalize_variable_values(variables),
        )


class _KerasStyleTrajectory(Trajectory):
    """Variables stepped by ``apply_gradients(zip(grads, variables))`` (inertia's Keras and
    legacy faces, Keras, tf_keras)."""

    def __init__(self, label: str, optimizer: Any, variables: list, *, read: Callable, to_model: Callable,
                 to_optimizer: Callable, rate: Callable[[], float], averaged: bool = False,
                 finalize: Optional[Callable[[], None]] = None) -> None:
        self.label, self.averaged = label, averaged
        self._optimizer, self._variables = optimizer, variables
        self._read, self._to_model, self._to_optimizer, self._rate = read, to_model, to_optimizer, rate
        self._finalize = finalize

    def weights(self) -> list:
        return [self._to_model(v) for v in self._variables]

    def apply(self, grads: list) -> float:
        rate = self._rate()  # before the step: the rate it uses
        self._optimizer.apply_gradients(zip([self._to_optimizer(g) for g in grads], self._variables))
        return rate

    def snapshot(self) -> list[np.ndarray]:
        return [self._read(v) for v in self._variables]

    def final_weights(self) -> list[np.ndarray]:
        if self._finalize is not None:
            self._finalize()
        return self.snapshot()


# --- torch.optim -----------------------------------------------------------------------------
class TorchFace(Face):
    name, optimizer, reference = "torch", "inertia.torch.SGD", "torch.optim.SGD"
    backends = ("torch",)
    has_ema = True

    def describe(self, recipe: Recipe) -> list[str]:
        l2 = recipe.l2_weight_decay
        return [
            f"optimizer: inertia.torch.SGD([{{kernels, weight_decay={_format(l2)}}}, {{biases, weight_decay=0}}], "
            f"lr={_format(recipe.learning_rate)}, momentum={_format(recipe.momentum)}, nesterov=True, use_ema=True, "
            f"ema_momentum={recipe.ema_momentum:.3f}), CosineAnnealingLR(T_max={recipe.total_steps}, "
            f"eta_min={_format(recipe.final_rate)}) stepped after every batch",
            _l2_note(recipe, "torch's weight decay is L2 (added to the gradient)"),
            f"eta_min {_format(recipe.final_rate)} is derived: the recipe's {recipe.schedule_text()} ends at "
            f"{_format(recipe.learning_rate)} x {_format(recipe.alpha)}",
        ]

    def missing_reference(self) -> Optional[str]:
        return None  # torch.optim comes with torch, which the torch backend already needs

    def describe_reference(self, model: Model) -> str:
        return (
            f"compare: torch.optim.SGD (torch {_version('torch')}) with the same param groups, options and "
            "CosineAnnealingLR; it has no EMA, so the comparison covers the trained weights, not inertia's average"
        )

    def _trajectory(self, label: str, optimizer_class: Any, recipe: Recipe, model: Model,
                    initial: Sequence[np.ndarray], **extras: Any) -> "_TorchTrajectory":
        import torch

        params = [model.asarray(w) for w in initial]
        kernels = [p for p, n in zip(params, WEIGHT_NAMES) if _decays(n)]
        biases = [p for p, n in zip(params, WEIGHT_NAMES) if not _decays(n)]
        optimizer = optimizer_class(
            [{"params": kernels, "weight_decay": recipe.l2_weight_decay}, {"params": biases, "weight_decay": 0.0}],
            lr=recipe.learning_rate, momentum=recipe.momentum, nesterov=True, **extras,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.total_steps, eta_min=recipe.final_rate)
        return _TorchTrajectory(label, optimizer, scheduler, params, model, averaged=bool(extras.get("use_ema")))

    def inertia_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import inertia.torch

        return self._trajectory("inertia.torch.SGD", inertia.torch.SGD, recipe, model, initial,
                                use_ema=True, ema_momentum=recipe.ema_momentum)

    def reference_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import torch

        return self._trajectory("torch.optim.SGD", torch.optim.SGD, recipe, model, initial)


class _TorchTrajectory(Trajectory):
    """``opt.step()`` over ``.grad``, then ``scheduler.step()``, once per batch."""

    def __init__(self, label: str, optimizer: Any, scheduler: Any, params: list, model: Model, averaged: bool) -> None:
        self.label, self.averaged = label, averaged
        self._optimizer, self._scheduler, self._params, self._model = optimizer, scheduler, params, model

    def weights(self) -> list:
        return self._params

    def apply(self, grads: list) -> float:
        rate = float(self._optimizer.param_groups[0]["lr"])
        for param, grad in zip(self._params, grads):
            param.grad = grad
        self._optimizer.step()
        self._scheduler.step()
        return rate

    def snapshot(self) -> list[np.ndarray]:
        return [self._model.to_numpy(p) for p in self._params]

    def final_weights(self) -> list[np.ndarray]:
        if self.averaged:
            self._optimizer.finalize_variable_values()
        return self.snapshot()


# --- tf.keras (legacy and 2.11+): the reference is tf_keras on tf.Variables ------------------------
def _describe_tf_keras_reference(reference: str, model: Model) -> str:
    crossing = "the demo's own arrays, nothing crosses" if model.backend == "tensorflow" else _CROSSING
    return (
        f"compare: {reference} (tf_keras {_version('tf-keras')}, TensorFlow {_version('tensorflow')}) "
        f"with the same options and tf_keras' CosineDecay, on tf.Variables: {crossing}"
    )


def _tf_keras_reference(recipe: Recipe, model: Model) -> tuple[Any, Any, Any, dict]:
    """TensorFlow and tf_keras (imported without TensorFlow's start-up notices, which are not
    the demo's output), tf_keras' CosineDecay of the recipe, and how the reference's
    tf.Variables meet the model: directly on TensorFlow (the model reads the variables
    themselves), as NumPy copies otherwise."""
    tf = import_tensorflow()
    import tf_keras

    schedule = tf_keras.optimizers.schedules.CosineDecay(recipe.learning_rate, decay_steps=recipe.total_steps, alpha=recipe.alpha)
    if model.backend == "tensorflow":
        to_model, to_optimizer = (lambda v: v), (lambda g: g)
    else:
        to_model, to_optimizer = (lambda v: model.asarray(v.numpy())), (lambda g: tf.constant(model.to_numpy(g)))
    crossing = dict(read=lambda v: np.array(v.numpy(), copy=True), to_model=to_model, to_optimizer=to_optimizer)
    return tf, tf_keras, schedule, crossing


class LegacyFace(Face):
    name, optimizer, reference = "legacy", "inertia.legacy.SGD", "tf_keras.optimizers.legacy.SGD"

    def describe(self, recipe: Recipe) -> list[str]:
        return [
            f"optimizer: inertia.legacy.SGD(learning_rate={recipe.schedule_text()}, momentum={_format(recipe.momentum)}, "
            "nesterov=True)",
            f"weight decay: tf.keras' legacy SGD has none; the demo adds {_format(recipe.l2_weight_decay)} x w to the "
            "kernels' gradients (L2, as a kernel_regularizer would)",
            _l2_note(recipe, "an L2 term is added to the gradient"),
            "EMA: tf.keras' legacy SGD has none; the demo keeps the last weights",
        ]

    def adjust_gradients(self, recipe: Recipe, grads: list, weights: list) -> list:
        l2 = recipe.l2_weight_decay
        return [g + l2 * w if _decays(n) else g for g, w, n in zip(grads, weights, WEIGHT_NAMES)]

    def missing_reference(self) -> Optional[str]:
        return None if is_installed("tf_keras") else "tf_keras (tf.keras' legacy optimizers, on TensorFlow): pip install tf-keras"

    def describe_reference(self, model: Model) -> str:
        return _describe_tf_keras_reference(self.reference, model)

    def inertia_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import inertia
        import inertia.legacy

        schedule = recipe.schedule()
        optimizer = inertia.legacy.SGD(learning_rate=schedule, momentum=recipe.momentum, nesterov=True)
        variables = [inertia.Variable(model.asarray(w), name=n) for w, n in zip(initial, WEIGHT_NAMES)]
        optimizer.build(variables)
        # OptimizerV2 calls a schedule with the step as a float of the variable's dtype; on
        # TensorFlow a TF float, so that the schedule runs TensorFlow's cos, as the step does.
        if model.backend == "tensorflow":
            step = lambda: model.asarray(np.float32(int(optimizer.iterations)))  # noqa: E731
        else:
            step = lambda: np.float32(int(optimizer.iterations))  # noqa: E731
        return _KerasStyleTrajectory(
            "inertia.legacy.SGD", optimizer, variables, read=lambda v: model.to_numpy(v.value),
            to_model=lambda v: v.value, to_optimizer=lambda g: g,
            rate=lambda: float(np.asarray(schedule(step()))),
        )

    def reference_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        # TensorFlow's start-up notices (oneDNN, probing for CUDA on a CPU-only machine) are not the
        # demo's output; its real failures still raise Python exceptions.
        tf, tf_keras, schedule, crossing = _tf_keras_reference(recipe, model)
        optimizer = tf_keras.optimizers.legacy.SGD(learning_rate=schedule, momentum=recipe.momentum, nesterov=True)
        return _KerasStyleTrajectory(
            "tf_keras.optimizers.legacy.SGD", optimizer, [tf.Variable(w, name=n) for w, n in zip(initial, WEIGHT_NAMES)],
            rate=lambda: float(schedule(tf.cast(optimizer.iterations, tf.float32))), **crossing,
        )


# --- tf.keras 2.11+ ---------------------------------------------------------------------------
class TfKerasFace(KerasFace):
    name, optimizer, reference = "tf_keras", "inertia.tf_keras.SGD", "tf_keras.optimizers.SGD"
    backends = ("numpy", "torch", "jax", "tensorflow")

    def describe(self, recipe: Recipe) -> list[str]:
        options = ", ".join(f"{key}={value}" for key, value in self._options(recipe).items() if key != "ema_momentum")
        return [
            f"optimizer: inertia.tf_keras.SGD(learning_rate={recipe.schedule_text()}, {options}, "
            f"ema_momentum={recipe.ema_momentum:.3f}), exclude_from_weight_decay(var_names=[{NO_DECAY_PATTERN!r}])",
            "EMA: tf.keras 2.11+'s, which starts from the initial weights (Keras 3's starts from the first step's)",
        ]

    def missing_reference(self) -> Optional[str]:
        return None if is_installed("tf_keras") else "tf_keras (tf.keras 2.11+'s optimizers, on TensorFlow): pip install tf-keras"

    def describe_reference(self, model: Model) -> str:
        return _describe_tf_keras_reference(self.reference, model)

    def inertia_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import inertia
        import inertia.tf_keras

        schedule = recipe.schedule()
        optimizer = inertia.tf_keras.SGD(learning_rate=schedule, **self._options(recipe))
        optimizer.exclude_from_weight_decay(var_names=[NO_DECAY_PATTERN])
        variables = [inertia.Variable(model.asarray(w), name=n) for w, n in zip(initial, WEIGHT_NAMES)]
        # The rate of the coming step: the schedule at the step count (on TF values on TensorFlow).
        step = (lambda: model.asarray(np.int64(int(optimizer.iterations)))) if model.backend == "tensorflow" else (
            lambda: np.int64(int(optimizer.iterations)))
        return _KerasStyleTrajectory(
            "inertia.tf_keras.SGD", optimizer, variables, read=lambda v: model.to_numpy(v.value),
            to_model=lambda v: v.value, to_optimizer=lambda g: g,
            rate=lambda: float(np.asarray(schedule(step()))), averaged=True,
            finalize=lambda: optimizer.finalize_variable_values(variables),
        )

    def reference_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        tf, tf_keras, schedule, crossing = _tf_keras_reference(recipe, model)
        optimizer = tf_keras.optimizers.SGD(learning_rate=schedule, **self._options(recipe))
        optimizer.exclude_from_weight_decay(var_names=[NO_DECAY_PATTERN])
        variables = [tf.Variable(w, name=n) for w, n in zip(initial, WEIGHT_NAMES)]
        return _KerasStyleTrajectory(
            "tf_keras.optimizers.SGD", optimizer, variables, rate=lambda: float(schedule(optimizer.iterations)),
            averaged=True, finalize=lambda: optimizer.finalize_variable_values(variables), **crossing,
        )


# --- MLX -------------------------------------------------------------------------------------
class MlxFace(Face):
    name, optimizer, reference = "mlx", "inertia.mlx.SGD", "mlx.optimizers.SGD"

    def describe(self, recipe: Recipe) -> list[str]:
        l2 = _format(recipe.l2_weight_decay)
        return [
            f"optimizer: inertia.mlx.SGD(learning_rate=<{recipe.schedule_text()} of the step>, "
            f"momentum={_format(recipe.momentum)}, weight_decay={l2}, nesterov=True) for the kernels, the same with "
            "weight_decay=0 for the biases (MLX's SGD decays every parameter it steps)",
            _l2_note(recipe, "MLX's weight decay is L2 (added to the gradient)"),
            "EMA: MLX's SGD has none; the demo keeps the last weights",
        ]

    def missing_reference(self) -> Optional[str]:
        if is_installed("mlx.optimizers"):
            return None
        return "mlx (MLX; on Linux its CPU build): pip install mlx (Linux: pip install 'mlx[cpu]')"

    def describe_reference(self, model: Model) -> str:
        return (
            f"compare: mlx.optimizers.SGD (MLX {_version('mlx')}), two of them as above, with the same options and "
            f"schedule values, on mlx.core arrays: {_CROSSING}"
        )

    @staticmethod
    def _rate_of(recipe: Recipe) -> Callable[[int], np.float32]:
        schedule = recipe.schedule()
        return lambda step: np.float32(schedule(step))

    def inertia_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import inertia.mlx

        rate = self._rate_of(recipe)
        schedule = lambda step: rate(int(step))  # noqa: E731 - MLX passes the step count as an array
        optimizers = (
            inertia.mlx.SGD(schedule, momentum=recipe.momentum, weight_decay=recipe.l2_weight_decay, nesterov=True),
            inertia.mlx.SGD(schedule, momentum=recipe.momentum, nesterov=True),
        )
        params = {n: model.asarray(w) for w, n in zip(initial, WEIGHT_NAMES)}
        return _TreeTrajectory(
            "inertia.mlx.SGD", optimizers, params, to_model=lambda w: w, to_optimizer=lambda g: g,
            read=model.to_numpy, rate=lambda: float(np.asarray(model.to_numpy(optimizers[0].learning_rate))),
        )

    def reference_trajectory(self, recipe: Recipe, model: Model, initial: Sequence[np.ndarray]) -> Trajectory:
        import mlx.core as mx
        import mlx.optimizers

        rate = self._rate_of(recipe)
        schedule = lambda step: mx.array(rate(int(step.item())), dtype=mx.float32)  # noqa: E731
        optimizers = (
            mlx.optimizers.SGD(schedule, momentum=recipe.momentum, weight_decay=recipe.l2_weight_decay, nesterov=True),
            mlx.optimizers.SGD(schedule, momentum=recipe.momentum, nesterov=True),
        )
        params = {n: mx.array(w) for w, n in zip(initial, WEIGHT_NAMES)}
        return _TreeTrajectory(
            "mlx.optimizers.SGD", optimizers, params, to_model=lambda w: model.asarray(np.array(w)),
            to_optimizer=lambda g: mx.array(model.to_numpy(g)), read=lambda w: np.array(w, copy=True),
            rate=lambda: float(optimizers[0].learning_rate.item()),
            evaluate=lambda: mx.eval(params, [o.state for o in optimizers]),
        )


class _TreeTrajectory(Trajectory):
    """A dict of weights that MLX-style optimizers replace (new arrays each step): one
    optimizer for the kernels, one for the biases."""

    def __init__(self, label: str, optimizers: tuple, params: dict, *, to_model: Callable, to_optimizer: Callable,
                 read: Callable, rate: Callable[[], float], evaluate: Callable[[], None] = lambda: None) -> None:
        self.label = label
        self._optimizers, self._params = optimizers, params
        self._to_model, self._to_optimizer, self._read, self._rate, self._evaluate = to_model, to_optimizer, read, rate, evaluate

    def weights(self) -> list:
        return [self._to_model(self._params[n]) for n in WEIGHT_NAMES]

    def apply(self, grads: list) -> float:
        grads_by_name = dict(zip(WEIGHT_NAMES, grads))
        for optimizer, decays in zip(self._optimizers, (True, False)):
            grads = {n: self._to_optimizer(g) for n, g in grads_by_name.items() if _decays(n) == decays}
            self._params.update(optimizer.apply_gradients(grads, self._params))
        self._evaluate()  # MLX is lazy: compute each step, so the graph does not grow
        return self._rate()  # MLX sets the step's rate as the step starts

    def snapshot(self) -> list[np.ndarray]:
        return [self._read(self._params[n]) for n in WEIGHT_NAMES]


def _l2_note(recipe: Recipe, why: str) -> str:
    return (
        f"weight_decay {_format(recipe.l2_weight_decay)} is derived: {why}, so it passes through the momentum buffer "
        f"and pulls 1/(1 - momentum) = {1 / (1 - recipe.momentum):g}x harder than the recipe's decoupled "
        f"{_format(recipe.weight_decay)}; {_format(recipe.weight_decay)} x (1 - {_format(recipe.momentum)}) pulls alike"
    )


FACES: dict[str, Face] = {face.name: face for face in (KerasFace(), TorchFace(), LegacyFace(), TfKerasFace(), MlxFace())}


def face_for(name: str) -> Face:
    """The face called ``name`` (``keras``, ``torch``, ``legacy`` or ``mlx``)."""
    try:
        return FACES[name]
    except KeyError:
        raise ValueError(f"`face` must be one of {', '.join(FACES)}. Received: face={name!r}") from None
