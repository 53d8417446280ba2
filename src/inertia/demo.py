"""``inertia demo``: train a small MLP on scikit-learn's digits with ``inertia.SGD``.

The whole loop is written out by hand (NumPy for the model, ``autograd`` for the
gradients, ``inertia.SGD`` for the updates) so that it reads as a template for using the
optimizer outside Keras:

* data: the 8x8 digits bundled with scikit-learn (no download), a stratified 75/25
  train/test split, features standardised with the training set's statistics;
* model: 64 -> 64 tanh -> 10, softmax cross-entropy, Glorot-uniform weights;
* optimizer: SGD with Nesterov momentum 0.9, a cosine learning-rate decay over the whole
  run, decoupled weight decay on the kernels only (not the biases) and an exponential
  moving average of the weights that becomes the final model.

Everything random draws from one seeded generator, so a seed gives the same numbers on
every run.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Sequence, TextIO

import numpy as np

import inertia
from inertia import schedules
from inertia.progress import FitProgress

__all__ = ["run", "format_summary", "MissingDependencyError", "DEFAULT_EPOCHS", "DEFAULT_SEED"]

DEFAULT_EPOCHS = 20
DEFAULT_SEED = 0

BATCH_SIZE = 32
HIDDEN_UNITS = 64
TEST_FRACTION = 0.25
LEARNING_RATE = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
# The moving average should forget the untrained start of the run however short the run
# is: it spans about the last tenth of the steps, capped at Keras' default momentum.
MAX_EMA_MOMENTUM = 0.99
MIN_EMA_MOMENTUM = 0.9

# Keras matches `var_names` as regular expressions searched in each variable's name.
_NO_DECAY = ["bias"]
_VARIABLE_NAMES = ("hidden_kernel", "hidden_bias", "output_kernel", "output_bias")


class MissingDependencyError(ImportError):
    """An optional package the demo needs is not installed."""


def run(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
    stream: TextIO | None = None,
    ema_momentum: float | None = None,
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
            the printed header says so.

    Returns:
        A dict with ``loss`` (mean cross-entropy of the final model on the training set),
        ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``history`` (the mean
        training loss over the steps of each epoch), ``metrics`` (per epoch: ``loss`` and
        ``accuracy`` over its steps, ``val_loss`` and ``val_accuracy`` of the weights at its
        end on the test split, and the learning rate ``lr`` reached), ``epochs``, ``seed``,
        ``steps``, ``ema_momentum``, ``step_losses`` and ``step_learning_rates`` (each
        step's), ``n_train``, ``n_test`` and ``seconds`` (wall time of the training loop).

    Raises:
        MissingDependencyError: scikit-learn is not installed.
        ValueError: ``epochs`` < 1 or ``seed`` < 0.
    """
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0. Received: seed={seed!r}")
    if ema_momentum is not None and (isinstance(ema_momentum, bool) or not 0.0 <= float(ema_momentum) < 1.0):
        raise ValueError(f"`ema_momentum` must be in [0, 1). Received: ema_momentum={ema_momentum!r}")
    epochs, seed = int(epochs), int(seed)
    out = sys.stdout if stream is None else stream

    x_train, y_train, x_test, y_test = load_data(seed)
    # Imported only to train, so that `inertia --help` (which imports this module) stays quick.
    from autograd import value_and_grad

    rng = np.random.default_rng(seed)
    variables = [
        inertia.Variable(value, name=name)
        for value, name in zip(_init_weights(rng, x_train.shape[1], 10), _VARIABLE_NAMES)
    ]

    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    derived = ema_momentum is None
    if derived:
        ema_momentum = min(MAX_EMA_MOMENTUM, max(MIN_EMA_MOMENTUM, 1.0 - 10.0 / total_steps))
    schedule = schedules.CosineDecay(LEARNING_RATE, decay_steps=total_steps, alpha=0.01)
    optimizer = inertia.SGD(
        learning_rate=schedule,
        momentum=MOMENTUM,
        nesterov=True,
        weight_decay=WEIGHT_DECAY,
        use_ema=True,
        ema_momentum=ema_momentum,
    )
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    loss_and_grads = value_and_grad(_loss)
    one_hot_train = _one_hot(y_train, 10)

    if not quiet:
        out.write(
            f"inertia {inertia.__version__} demo: MLP {x_train.shape[1]}-{HIDDEN_UNITS}-10 "
            f"(tanh, softmax) on scikit-learn digits, {len(x_train)} train / {len(x_test)} test, "
            f"seed {seed}\n"
            f"optimizer: SGD(learning_rate=CosineDecay({LEARNING_RATE:g}, {total_steps} steps), "
            f"momentum={MOMENTUM:g}, nesterov=True, weight_decay={WEIGHT_DECAY:g} on kernels, "
            f"use_ema=True, ema_momentum={ema_momentum:.3f}), batch {BATCH_SIZE}\n"
            + (
                f"ema_momentum {ema_momentum:.3f} is derived from the run's {total_steps} steps (the average "
                "spans about the last tenth of them; --ema-momentum sets it)\n"
                if derived else ""
            )
        )
        out.flush()
    progress = None if quiet else FitProgress(epochs, steps_per_epoch, stream=out)
    one_hot_test = _one_hot(y_test, 10)

    history: list[float] = []
    metrics: list[dict[str, float]] = []
    step_losses: list[float] = []
    step_rates: list[float] = []
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            if progress:
                progress.start_epoch(epoch)
            began = time.perf_counter()
            order = rng.permutation(len(x_train))
            total, correct, seen = 0.0, 0, 0
            for step in range(steps_per_epoch):
                batch = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
                weights = [v.value for v in variables]
                loss, grads = loss_and_grads(weights, x_train[batch], one_hot_train[batch])
                # accuracy of the weights the step started from, as Keras' fit counts it
                correct += int(np.sum(np.argmax(_logits(weights, x_train[batch]), axis=1) == y_train[batch]))
                seen += len(batch)
                optimizer.apply_gradients(
                    zip([np.asarray(g, dtype=np.float32) for g in grads], variables)
                )
                total += float(loss)
                step_losses.append(float(loss))
                step_rates.append(float(schedule(len(step_rates))))  # the rate this step used
                if progress:
                    progress.update(step + 1, {"loss": total / (step + 1), "accuracy": correct / seen})
            seconds_in_epoch = time.perf_counter() - began
            history.append(total / steps_per_epoch)
            if not math.isfinite(history[-1]):
                raise FloatingPointError(f"the training loss diverged in epoch {epoch}")
            weights = [v.numpy() for v in variables]
            metrics.append({
                "loss": history[-1], "accuracy": correct / seen,
                "val_loss": float(_loss(weights, x_test, one_hot_test)), "val_accuracy": _accuracy(weights, x_test, y_test),
                "lr": float(schedule(epoch * steps_per_epoch)),
            })
            if progress:
                progress.end_epoch(metrics[-1], seconds=seconds_in_epoch)
    finally:
        if progress:
            progress.close()
    seconds = time.perf_counter() - start

    # The moving average, not the last step, is the model that gets evaluated and kept.
    optimizer.finalize_variable_values(variables)
    weights = [v.numpy() for v in variables]
    result = {
        "epochs": epochs,
        "seed": seed,
        "steps": total_steps,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "history": history,
        "metrics": metrics,
        "step_losses": step_losses,
        "step_learning_rates": step_rates,
        "ema_momentum": ema_momentum,
        "loss": float(_loss(weights, x_train, one_hot_train)),
        "train_accuracy": _accuracy(weights, x_train, y_train),
        "test_loss": float(_loss(weights, x_test, _one_hot(y_test, 10))),
        "test_accuracy": _accuracy(weights, x_test, y_test),
        "seconds": seconds,
    }
    if not quiet:
        out.write(format_summary(result) + "\n")
        out.flush()
    return result


def format_summary(result: dict[str, Any]) -> str:
    """The two closing lines of the demo: the training loss and the test accuracy reached."""
    correct = round(result["test_accuracy"] * result["n_test"])
    return (
        f"train loss {result['loss']:.4f} (train accuracy {result['train_accuracy']:.2%}) "
        f"after {_plural(result['epochs'], 'epoch')}, {result['steps']} steps, "
        f"{result['seconds']:.1f} s\n"
        f"test accuracy {result['test_accuracy']:.2%} ({correct}/{result['n_test']}), "
        f"test loss {result['test_loss']:.4f}"
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


def _logits(params: Sequence[Any], x: Any) -> Any:
    import autograd.numpy as anp

    hidden_kernel, hidden_bias, output_kernel, output_bias = params
    hidden = anp.tanh(anp.dot(x, hidden_kernel) + hidden_bias)
    return anp.dot(hidden, output_kernel) + output_bias


def _loss(params: Sequence[Any], x: Any, one_hot: Any) -> Any:
    """Mean softmax cross-entropy; a pure function of ``params`` so autograd can differentiate it."""
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    logits = _logits(params, x)
    log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
    return -anp.mean(anp.sum(one_hot * log_probs, axis=1))


def _accuracy(params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(_logits(params, x), axis=1) == y))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]
