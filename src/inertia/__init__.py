"""inertia: SGD with momentum, number for number like Keras 3, on NumPy, PyTorch, JAX and TensorFlow.

    >>> import inertia
    >>> opt = inertia.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    >>> w = inertia.Variable([1.0, 2.0], name="w")
    >>> _ = opt.minimize(lambda: (w * w).sum() / 2.0, [w])

The other faces are submodules, imported on first use: ``inertia.legacy`` (tf.keras'
OptimizerV2 SGD), ``inertia.tf_keras`` (tf.keras 2.11+'s SGD and Optimizer), ``inertia.mlx`` (mlx.optimizers.SGD) and ``inertia.torch``
(a torch.optim.Optimizer; importing it imports torch). So is ``inertia.distributed``
(scale-out: ``inertia.distributed.jax.pmean``, ...).

``inertia.save(optimizer, path)`` / ``inertia.load(optimizer, path)`` write and read one
checkpoint file of any face's state (``inertia.checkpoint``).
"""

import importlib as _importlib

from inertia import checkpoint, optimizers, schedules
from inertia.checkpoint import load, save
from inertia.loss_scale import LossScaleOptimizer
from inertia.optimizer import Optimizer
from inertia.sgd import SGD
from inertia.variable import Variable

__version__ = "0.1.0"
_FACES = ("legacy", "tf_keras", "mlx", "torch")
# Imported on first use too: its backend parts import their array library.
_LAZY_SUBMODULES = _FACES + ("distributed",)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"inertia.{name}")
    raise AttributeError(f"module 'inertia' has no attribute {name!r}")


__all__ = [
    "Variable", "Optimizer", "SGD", "LossScaleOptimizer", "save", "load", "checkpoint", "optimizers", "schedules",
    "__version__",
]
