"""``inertia demo``: train a small MLP on scikit-learn's digits with one of inertia's faces.

The whole loop is written out by hand (the model in the chosen array library, its own
gradients, one of inertia's optimizers for the updates) so that it reads as a template for
using the optimizer outside a framework's trainer:

* data: the 8x8 digits bundled with scikit-learn (no download), a stratified 75/25
  train/test split, features standardised with the training set's statistics;
* model: 64 -> 64 tanh -> 10, softmax cross-entropy, Glorot-uniform weights, on NumPy
  (autograd for the gradients), torch (torch.autograd), JAX (jax.grad) or TensorFlow
  (tf.GradientTape): ``backend``;
* optimizer: SGD with Nesterov momentum 0.9, a cosine learning-rate decay over the whole
  run, decoupled weight decay on the kernels only (not the biases) and an exponential
  moving average of the weights that becomes the final model, on the face chosen by
  ``face`` (each as close to that recipe as its API allows: ``inertia.demo_faces``);
* ``compare``: the same model, initial weights and batches stepped a second time by the
  system the face reproduces, with the same options, and the two trajectories compared.

Everything random draws from one seeded generator, so a seed gives the same numbers on
every run.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, TextIO

import numpy as np

import inertia
from inertia.demo_faces import FACES, Recipe, Trajectory, face_for, is_installed
from inertia.demo_model import BACKENDS, Model, numpy_logits, numpy_loss
from inertia.progress import FitProgress

__all__ = [
    "run", "format_summary", "option_problems", "missing_libraries", "MissingDependencyError", "OptionProblem",
    "DEFAULT_EPOCHS", "DEFAULT_SEED", "DEFAULT_BACKEND", "DEFAULT_FACE", "BACKENDS", "FACES",
]

DEFAULT_EPOCHS = 20
DEFAULT_SEED = 0
DEFAULT_BACKEND = "numpy"
DEFAULT_FACE = "keras"

BATCH_SIZE = 32
HIDDEN_UNITS = 64
CLASSES = 10
TEST_FRACTION = 0.25
LEARNING_RATE = 0.05
FINAL_RATE_FRACTION = 0.01  # the cosine decay ends at 1% of the first rate
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
# The moving average should forget the untrained start of the run however short the run
# is: it spans about the last tenth of the steps, capped at Keras' default momentum.
MAX_EMA_MOMENTUM = 0.99
MIN_EMA_MOMENTUM = 0.9

# What each backend needs, as (module, what to install).
_BACKEND_LIBRARIES = {
    "torch": ("torch", "PyTorch, which is not installed: pip install 'inertia[torch]'"),
    "jax": ("jax", "JAX, which is not installed: pip install 'inertia[jax]'"),
    "tensorflow": ("tensorflow", "TensorFlow, which is not installed: pip install 'inertia[tensorflow]'"),
}


class MissingDependencyError(ImportError):
    """An optional package the demo needs is not installed."""


@dataclass(frozen=True)
class OptionProblem:
    """A combination of the demo's options that cannot run, and why.

    Attributes:
        option: the argument's name (``face``; ``--face`` on the command line).
        value: the value it was given.
        reason: why it cannot run with the other options, and what to do instead.
    """

    option: str
    value: Any
    reason: str

    def for_command_line(self) -> str:
        """``--face torch: ...``, as ``inertia demo`` reports it."""
        return f"--{self.option.replace('_', '-')} {self.value}: {self.reason}"

    def for_call(self) -> str:
        """```face`='torch': ...``, as :func:`run` reports it."""
        return f"`{self.option}`={self.value!r}: {self.reason}"


def _and(names: list[str]) -> str:
    """``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def option_problems(backend: str, face: str, ema_momentum: Optional[float] = None) -> list[OptionProblem]:
    """What is wrong with this combination of backend, face and EMA momentum (empty when
    it can run)."""
    problems = []
    if backend not in BACKENDS:
        problems.append(OptionProblem("backend", backend, f"not a backend of the demo (choose from {', '.join(BACKENDS)})"))
    if face not in FACES:
        problems.append(OptionProblem("face", face, f"not a face of inertia (choose from {', '.join(FACES)})"))
        return problems
    chosen = FACES[face]
    if backend in BACKENDS and backend not in chosen.backends:
        problems.append(OptionProblem(
            "face", face, f"{chosen.optimizer} steps torch tensors only, so it needs the torch backend "
            f"(--backend torch), not {backend}",
        ))
    if ema_momentum is not None and not chosen.has_ema:
        problems.append(OptionProblem(
            "ema_momentum", ema_momentum, f"the {face} face keeps no moving average of the weights "
            f"({chosen.reference} has none); only the {_and([n for n, f in FACES.items() if f.has_ema])} faces do",
        ))
    return problems


def missing_libraries(backend: str, face: str, compare: bool = False) -> list[str]:
    """What is not installed that this run needs, each with what to install (empty when
    everything is here). scikit-learn, which every run needs, is checked when the data loads."""
    missing = []
    if backend in _BACKEND_LIBRARIES and not is_installed(_BACKEND_LIBRARIES[backend][0]):
        missing.append(f"the {backend} backend needs {_BACKEND_LIBRARIES[backend][1]}")
    if compare and face in FACES:
        reference = FACES[face].missing_reference()
        if reference:
            missing.append(f"comparing the {face} face with {FACES[face].reference} needs {reference}")
    return missing


def _check_number(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or int(value) != value or value < least:
        raise ValueError(f"`{name}` must be an integer >= {least}. Received: {name}={value!r}")
    return int(value)


def run(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
    stream: TextIO | None = None,
    ema_momentum: float | None = None,
    backend: str = DEFAULT_BACKEND,
    face: str = DEFAULT_FACE,
    compare: bool = False,
) -> dict[str, Any]:
    """Train the demo model and return what it reached.

    Args:
        epochs: passes over the training set (>= 1); the learning rate decays to its
            floor over exactly this many epochs, so fewer epochs still end annealed.
        seed: seeds the split, the initial weights and the shuffling.
        quiet: print nothing (the caller reports the returned numbers itself).
        stream: where to print; ``sys.stdout`` when ``None``.
        ema_momentum: the moving average's momentum; ``None`` derives it from the run's
            length (it spans about the last tenth of the steps, between 0.9 and 0.99), and
            the printed header says so. Only for the faces that keep an average (keras, torch).
        backend: the array library of the model, its weights and its gradients: ``"numpy"``
            (autograd), ``"torch"`` (torch.autograd), ``"jax"`` (jax.grad) or ``"tensorflow"``
            (tf.GradientTape; tf.Variable weights).
        face: the optimizer: ``"keras"`` (``inertia.SGD``), ``"torch"``
            (``inertia.torch.SGD``, torch backend only), ``"legacy"`` (``inertia.legacy.SGD``)
            or ``"mlx"`` (``inertia.mlx.SGD``).
        compare: also train the same model from the same initial weights on the same
            batches with the face's reference system (``keras.optimizers.SGD``,
            ``torch.optim.SGD``, ``tf_keras.optimizers.legacy.SGD``, ``mlx.optimizers.SGD``)
            and compare the two trajectories step by step.

    Returns:
        A dict with ``loss`` (mean cross-entropy of the final model on the training set),
        ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``history`` (the mean
        training loss over the steps of each epoch), ``metrics`` (per epoch: ``loss`` and
        ``accuracy`` over its steps, ``val_loss`` and ``val_accuracy`` of the weights at its
        end on the test split, and the learning rate ``lr`` reached), ``epochs``, ``seed``,
        ``backend``, ``face``, ``optimizer`` (its class, as printed), ``steps``,
        ``ema_momentum`` (None for a face without an average), ``step_losses`` and
        ``step_learning_rates`` (each step's), ``n_train``, ``n_test``, ``seconds`` (wall
        time of the training loop) and ``comparison`` (None without ``compare``; else a
        dict: ``reference``, ``description``, ``step_losses``, ``step_learning_rates``, per
        epoch ``epochs`` of ``{"weights", "loss"}`` maximum absolute differences over its
        steps, their maxima ``weights`` and ``loss``, ``learning_rates`` (the largest
        difference of the rates the two used), ``final_weights`` (the difference of the
        averaged weights, where both keep an average; else None), ``bit_identical`` and
        ``verdict``).

    Raises:
        MissingDependencyError: scikit-learn, the backend's library or (with ``compare``)
            the reference system is not installed; the message says what to install.
        ValueError: ``epochs`` < 1, ``seed`` < 0, ``ema_momentum`` outside [0, 1), an
            unknown backend or face, the torch face on another backend, or an EMA momentum
            for a face without an average.
    """
    epochs, seed = _check_number("epochs", epochs, 1), _check_number("seed", seed, 0)
    if ema_momentum is not None and (isinstance(ema_momentum, bool) or not 0.0 <= float(ema_momentum) < 1.0):
        raise ValueError(f"`ema_momentum` must be in [0, 1). Received: ema_momentum={ema_momentum!r}")
    if not isinstance(compare, bool):
        raise TypeError(f"`compare` must be a bool. Received: compare={compare!r}")
    problems = option_problems(backend, face, ema_momentum)
    if problems:
        raise ValueError("; ".join(problem.for_call() for problem in problems))
    missing = missing_libraries(backend, face, compare)
    if missing:
        raise MissingDependencyError("; ".join(missing))
    out = sys.stdout if stream is None else stream
    chosen = face_for(face)

    x_train, y_train, x_test, y_test = load_data(seed)
    rng = np.random.default_rng(seed)
    initial = _init_weights(rng, x_train.shape[1], CLASSES)
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    derived = ema_momentum is None and chosen.has_ema
    if derived:
        ema_momentum = min(MAX_EMA_MOMENTUM, max(MIN_EMA_MOMENTUM, 1.0 - 10.0 / total_steps))
    recipe = Recipe(
        learning_rate=LEARNING_RATE, alpha=FINAL_RATE_FRACTION, total_steps=total_steps, momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY, ema_momentum=float(ema_momentum) if chosen.has_ema else None,
    )
    model = Model(backend, x_train, y_train, CLASSES)
    header = [
        f"inertia {inertia.__version__} demo: MLP {x_train.shape[1]}-{HIDDEN_UNITS}-{CLASSES} (tanh, softmax) on "
        f"scikit-learn digits, {len(x_train)} train / {len(x_test)} test, seed {seed}, batch {BATCH_SIZE}",
        f"backend {backend} ({BACKENDS[backend]}), face {face} ({chosen.optimizer})",
        *chosen.describe(recipe),
    ]
    if derived:
        header.append(
            f"ema_momentum {recipe.ema_momentum:.3f} is derived from the run's {total_steps} steps (the average "
            "spans about the last tenth of them; --ema-momentum sets it)"
        )
    trained = chosen.inertia_trajectory(recipe, model, initial)
    reference: Optional[Trajectory] = None
    if compare:
        header.append(chosen.describe_reference(model))
        reference = chosen.reference_trajectory(recipe, model, initial)
    if not quiet:
        out.write("\n".join(header) + "\n")
        out.flush()

    progress = None if quiet else FitProgress(epochs, steps_per_epoch, stream=out)
    one_hot_train, one_hot_test = _one_hot(y_train, CLASSES), _one_hot(y_test, CLASSES)

    def step(side: Trajectory, rows: np.ndarray) -> tuple[float, int, float]:
        weights = side.weights()
        loss, grads, correct = model.loss_and_grads(weights, rows)
        rate = side.apply(chosen.adjust_gradients(recipe, grads, weights))
        return loss, correct, rate

    history: list[float] = []
    metrics: list[dict[str, float]] = []
    step_losses: list[float] = []
    step_rates: list[float] = []
    reference_losses: list[float] = []
    reference_rates: list[float] = []
    differences: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            if progress:
                progress.start_epoch(epoch)
            began = time.perf_counter()
            order = rng.permutation(len(x_train))
            total, correct, seen = 0.0, 0, 0
            weight_difference = loss_difference = 0.0
            for index in range(steps_per_epoch):
                rows = order[index * BATCH_SIZE : (index + 1) * BATCH_SIZE]
                # accuracy of the weights the step started from, as Keras' fit counts it
                loss, right, rate = step(trained, rows)
                correct += right
                seen += len(rows)
                total += loss
                step_losses.append(loss)
                step_rates.append(rate)
                if reference is not None:
                    other_loss, _, other_rate = step(reference, rows)
                    reference_losses.append(other_loss)
                    reference_rates.append(other_rate)
                    loss_difference = max(loss_difference, abs(loss - other_loss))
                    weight_difference = max(weight_difference, _max_difference(trained.snapshot(), reference.snapshot()))
                if progress:
                    progress.update(index + 1, {"loss": total / (index + 1), "accuracy": correct / seen})
            seconds_in_epoch = time.perf_counter() - began
            history.append(total / steps_per_epoch)
            if not math.isfinite(history[-1]):
                raise FloatingPointError(f"the training loss diverged in epoch {epoch}")
            weights = trained.snapshot()
            metrics.append({
                "loss": history[-1], "accuracy": correct / seen,
                "val_loss": float(numpy_loss(weights, x_test, one_hot_test)),
                "val_accuracy": _accuracy(weights, x_test, y_test),
                "lr": float(recipe.schedule()(epoch * steps_per_epoch)),
            })
            if progress:
                progress.end_epoch(metrics[-1], seconds=seconds_in_epoch)
            if reference is not None:
                differences.append({"weights": weight_difference, "loss": loss_difference})
                if progress:
                    progress.note(
                        f"  vs {reference.label}: max abs difference of the weights {_difference(weight_difference)}, "
                        f"of the step losses {_difference(loss_difference)}"
                    )
    finally:
        if progress:
            progress.close()
    seconds = time.perf_counter() - start

    # The moving average, where the face keeps one, is the model that gets evaluated and kept.
    weights = trained.final_weights()
    comparison = None
    if reference is not None:
        final_difference = (
            _max_difference(weights, reference.final_weights()) if trained.averaged and reference.averaged else None
        )
        rate_difference = max(abs(a - b) for a, b in zip(step_rates, reference_rates))
        comparison = _comparison(trained, reference, header[-1], differences, final_difference, rate_difference, total_steps)
        comparison.update(step_losses=reference_losses, step_learning_rates=reference_rates)
    result = {
        "epochs": epochs,
        "seed": seed,
        "backend": backend,
        "face": face,
        "optimizer": chosen.optimizer,
        "steps": total_steps,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "history": history,
        "metrics": metrics,
        "step_losses": step_losses,
        "step_learning_rates": step_rates,
        "ema_momentum": recipe.ema_momentum,
        "loss": float(numpy_loss(weights, x_train, one_hot_train)),
        "train_accuracy": _accuracy(weights, x_train, y_train),
        "test_loss": float(numpy_loss(weights, x_test, one_hot_test)),
        "test_accuracy": _accuracy(weights, x_test, y_test),
        "seconds": seconds,
        "comparison": comparison,
    }
    if not quiet:
        out.write(format_summary(result) + "\n")
        out.flush()
    return result


def _max_difference(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> float:
    """The largest absolute difference between two lists of like-shaped arrays."""
    return max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) for a, b in zip(first, second))


def _difference(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def _comparison(trained: Trajectory, reference: Trajectory, description: str, differences: list[dict[str, float]],
                final_difference: Optional[float], rate_difference: float, steps: int) -> dict[str, Any]:
    """The comparison's figures and its one-line verdict."""
    weights = max(d["weights"] for d in differences)
    loss = max(d["loss"] for d in differences)
    identical = weights == 0 and loss == 0 and not final_difference and rate_difference == 0
    averaged = "" if final_difference is None else " and their moving averages at the end"
    if identical:
        verdict = (
            f"verdict: bit-identical: {trained.label} and {reference.label} gave the same weights after each of the "
            f"{steps} steps, the same loss at each{averaged}"
        )
    else:
        final = "" if final_difference is None else f", {_difference(final_difference)} (final averaged weights)"
        # Learning rates that differ (a schedule computed by another library) explain the rest.
        rates = f", {_difference(rate_difference)} (learning rates)" if rate_difference else ""
        verdict = (
            f"verdict: agree within {_difference(weights)} (weights) and {_difference(loss)} (step losses){final}{rates}: "
            f"{trained.label} and {reference.label}, largest absolute differences over {steps} steps"
        )
    return {
        "reference": reference.label, "description": description, "epochs": differences, "weights": weights,
        "loss": loss, "final_weights": final_difference, "learning_rates": rate_difference, "bit_identical": identical,
        "verdict": verdict,
    }


def format_summary(result: dict[str, Any]) -> str:
    """The closing lines of the demo: the training loss and the test accuracy reached, and
    the comparison's verdict when there was one."""
    correct = round(result["test_accuracy"] * result["n_test"])
    comparison = result.get("comparison")
    return (
        f"train loss {result['loss']:.4f} (train accuracy {result['train_accuracy']:.2%}) "
        f"after {_plural(result['epochs'], 'epoch')}, {result['steps']} steps, "
        f"{result['seconds']:.1f} s\n"
        f"test accuracy {result['test_accuracy']:.2%} ({correct}/{result['n_test']}), "
        f"test loss {result['test_loss']:.4f}"
        + (f"\n{comparison['verdict']}" if comparison else "")
    )


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits split into train and test, standardised, as ``(x_train, y_train, x_test, y_test)``.

    Features are float32 (the optimizer's dtype); labels are int64 class indices.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:
        missing = (
            isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "sklearn"
        )
        problem = "is not installed" if missing else f"failed to import ({error})"
        raise MissingDependencyError(
            f"the demo needs scikit-learn, which {problem}. "
            "Install it with: pip install 'inertia[demo]'"
        ) from error

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y
    )
    # The training set's statistics for both; pixels blank in every training image stay zero.
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train).astype(np.float32)
    x_test = scaler.transform(x_test).astype(np.float32)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def _init_weights(rng: np.random.Generator, n_in: int, n_out: int) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases, as Keras' ``Dense`` initialises them."""

    def glorot(fan_in: int, fan_out: int) -> np.ndarray:
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    return [
        glorot(n_in, HIDDEN_UNITS),
        np.zeros(HIDDEN_UNITS, dtype=np.float32),
        glorot(HIDDEN_UNITS, n_out),
        np.zeros(n_out, dtype=np.float32),
    ]


def _accuracy(params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(numpy_logits(params, x), axis=1) == y))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]
