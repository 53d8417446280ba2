"""The demo's MLP (64 -> 64 tanh -> 10, softmax cross-entropy) written in each array library
the demo trains on, with that library's own gradients: autograd on NumPy, torch.autograd on
torch tensors, ``jax.value_and_grad`` (compiled with ``jax.jit``) on JAX arrays.

Every model holds the training set as its own arrays and answers, for a batch of row
indices and a list of weights in its library, the mean loss, the gradients (in its library)
and how many rows the weights classify correctly. torch, jax and tensorflow are imported only
when a model of theirs is made, so that ``import inertia.demo`` stays light.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from inertia import backend as backends

__all__ = ["BACKENDS", "Model", "numpy_logits", "numpy_loss"]

# What each backend's weights are and where its gradients come from (the demo's header).
BACKENDS = {
    "numpy": "numpy.ndarray weights, gradients from autograd",
    "torch": "torch.Tensor weights (CPU), gradients from torch.autograd",
    "jax": "jax.Array weights, gradients from jax.value_and_grad under jax.jit",
    "tensorflow": "tf.Variable weights (tf.Tensor trees for the mlx face), gradients from tf.GradientTape under tf.function",
}


def numpy_logits(params: Sequence[Any], x: Any) -> Any:
    """``tanh(x @ W1 + b1) @ W2 + b2`` with autograd's NumPy (plain NumPy arrays work too)."""
    import autograd.numpy as anp

    hidden_kernel, hidden_bias, output_kernel, output_bias = params
    hidden = anp.tanh(anp.dot(x, hidden_kernel) + hidden_bias)
    return anp.dot(hidden, output_kernel) + output_bias


def numpy_loss(params: Sequence[Any], x: Any, one_hot: Any) -> Any:
    """Mean softmax cross-entropy; a pure function of ``params`` so autograd can differentiate it."""
    import autograd.numpy as anp
    from autograd.scipy.special import logsumexp

    logits = numpy_logits(params, x)
    log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
    return -anp.mean(anp.sum(one_hot * log_probs, axis=1))


class Model:
    """The MLP on one backend's arrays, over one training set.

    Args:
        backend: ``"numpy"``, ``"torch"``, ``"jax"`` or ``"tensorflow"``.
        x: the training features, float32, one row per example.
        labels: the training labels, int64 class indices.
        classes: the number of classes (the width of the one-hot targets).
    """

    def __init__(self, backend: str, x: np.ndarray, labels: np.ndarray, classes: int) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {', '.join(BACKENDS)}. Received: backend={backend!r}")
        self.backend = backend
        one_hot = np.eye(classes, dtype=np.float32)[labels]
        # int32 labels: JAX has no int64 unless x64 is enabled (and would warn as it truncates).
        if backend == "tensorflow":
            import_tensorflow()  # before the backend's module imports it: quietly
        self.ops = backends.get(backend)
        self._x, self._one_hot, self._labels = (self.ops.asarray(a) for a in (x, one_hot, labels.astype(np.int32)))
        self._loss_and_grads = getattr(self, f"_make_{backend}")()

    def asarray(self, value: np.ndarray) -> Any:
        """A copy of a NumPy array as this backend's array."""
        return self.ops.asarray(value)

    def to_numpy(self, value: Any) -> np.ndarray:
        """A NumPy copy of one of this backend's arrays (never a view: JAX may reuse the buffer)."""
        return np.array(self.ops.to_numpy(value), copy=True)

    def loss_and_grads(self, weights: Sequence[Any], rows: np.ndarray) -> tuple[float, list, int]:
        """The mean loss of the batch ``rows`` at ``weights``, the gradients (this backend's
        arrays, float32) and the number of those rows the weights classify correctly."""
        return self._loss_and_grads(list(weights), rows)

    # -- one maker per backend: each returns loss_and_grads(weights, rows) -------------------
    def _make_numpy(self):
        from autograd import value_and_grad

        loss_and_grads = value_and_grad(numpy_loss)

        def run(weights: list, rows: np.ndarray) -> tuple[float, list, int]:
            x = self._x[rows]
            loss, grads = loss_and_grads(weights, x, self._one_hot[rows])
            correct = int(np.sum(np.argmax(numpy_logits(weights, x), axis=1) == self._labels[rows]))
            return float(loss), [np.asarray(g, dtype=np.float32) for g in grads], correct

        return run

    def _make_torch(self):
        import torch

        def run(weights: list, rows: np.ndarray) -> tuple[float, list, int]:
            index = torch.from_numpy(rows)
            x, one_hot = self._x[index], self._one_hot[index]
            # Fresh leaves over the same storage: the optimizer updates the weights in place
            # (outside autograd) and the graph is dropped once the gradients are taken.
            leaves = [w.detach().requires_grad_(True) for w in weights]
            hidden_kernel, hidden_bias, output_kernel, output_bias = leaves
            logits = torch.tanh(x @ hidden_kernel + hidden_bias) @ output_kernel + output_bias
            log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            loss = -(one_hot * log_probs).sum(dim=1).mean()
            grads = torch.autograd.grad(loss, leaves)
            correct = int((logits.detach().argmax(dim=1) == self._labels[index]).sum())
            return float(loss.detach()), list(grads), correct

        return run

    def _make_jax(self):
        import jax
        import jax.numpy as jnp

        def loss_of(weights: list, x: Any, one_hot: Any) -> tuple[Any, Any]:
            hidden_kernel, hidden_bias, output_kernel, output_bias = weights
            logits = jnp.tanh(x @ hidden_kernel + hidden_bias) @ output_kernel + output_bias
            log_probs = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
            return -jnp.mean(jnp.sum(one_hot * log_probs, axis=1)), logits

        # Compiled once per batch size (the last batch of an epoch is smaller).
        loss_and_grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))

        def run(weights: list, rows: np.ndarray) -> tuple[float, list, int]:
            (loss, logits), grads = loss_and_grads(weights, self._x[rows], self._one_hot[rows])
            correct = int(jnp.sum(jnp.argmax(logits, axis=1) == self._labels[rows]))
            return float(loss), list(grads), correct

        return run

    def _make_tensorflow(self):
        tf = import_tensorflow()

        @tf.function  # traced once per batch size (the last batch of an epoch is smaller)
        def loss_and_grads(weights: list, rows: Any) -> tuple[Any, list, Any]:
            x, one_hot = tf.gather(self._x, rows), tf.gather(self._one_hot, rows)
            with tf.GradientTape() as tape:
                tape.watch(weights)
                hidden_kernel, hidden_bias, output_kernel, output_bias = weights
                logits = tf.tanh(x @ hidden_kernel + hidden_bias) @ output_kernel + output_bias
                log_probs = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
                loss = -tf.reduce_mean(tf.reduce_sum(one_hot * log_probs, axis=1))
            grads = tape.gradient(loss, weights)
            labels = tf.gather(self._labels, rows)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels), tf.int32))
            return loss, grads, correct

        def run(weights: list, rows: np.ndarray) -> tuple[float, list, int]:
            # The values the weights hold now (tf.Variables are read, tensors kept), so that
            # one trace serves every optimizer's weights, variables or not.
            values = [tf.convert_to_tensor(w) for w in weights]
            loss, grads, correct = loss_and_grads(values, tf.constant(rows.astype(np.int32)))
            return float(loss), list(grads), int(correct)

        return run


# TensorFlow's start-up notices (oneDNN, probing for CUDA on a CPU-only machine), which its
# C++ logging writes to the process's stderr before TF_CPP_MIN_LOG_LEVEL is read.
_TENSORFLOW_NOTICES = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cuda_executor|cpu_feature_guard)\.cc:\d+\] .*)$"
)


def import_tensorflow() -> Any:
    """``tensorflow``, imported without its start-up notices on stderr: they are not the
    demo's output. Anything else it writes there while importing is passed on, and a
    failure to import still raises."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        stderr = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no file descriptor (a captured stream)
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(stderr)
    with tempfile.TemporaryFile(mode="w+b") as written:
        os.dup2(written.fileno(), stderr)
        try:
            import tensorflow
        finally:
            os.dup2(saved, stderr)
            os.close(saved)
            written.seek(0)
            text = written.read().decode(errors="replace")
    rest = [line for line in text.splitlines() if line and not _TENSORFLOW_NOTICES.match(line)]
    if rest:
        sys.stderr.write("\n".join(rest) + "\n")
    return tensorflow
