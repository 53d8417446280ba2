"""The SGD rule, written once and parameterised.

Every face of inertia (Keras 3, tf.keras legacy, MLX, torch.optim) configures this one rule;
none holds update math of its own. The rule is pure: it takes arrays and typed scalars and
returns new arrays, using only arithmetic operators, so it runs unchanged on NumPy, PyTorch
and JAX arrays (and under ``jax.jit``).

Two forms:

* **Keras** (``lr_in_velocity=True``; Sutskever form, TF's ``ApplyKerasMomentum``)::

      v <- m*v - lr*g
      w <- w + v                      (plain)
      w <- w + (m*v - lr*g)           (Nesterov, with the new v)

* **Heavy-ball** (``lr_in_velocity=False``; torch.optim and MLX)::

      g <- -g                          (maximize)
      g <- g + wd*w                    (coupled L2 weight decay)
      b <- g                           (first step, when ``buffer_starts_with_gradient``: torch)
      b <- m*b + (1-d)*g               (otherwise; MLX starts from b = 0)
      w <- w - lr*(g + m*b)            (Nesterov)   or   w <- w - lr*b

With a constant learning rate the two forms give the same weights (``v = -lr*b``); they
diverge when the learning rate changes, because Keras' velocity remembers past rates.
Decoupled weight decay (Keras) is not part of the rule: the base optimizer applies it to
every optimizer before the update step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

__all__ = ["SGDRule", "KERAS", "sgd_update"]


@dataclass(frozen=True)
class SGDRule:
    """The settings that distinguish the SGD variants.

    Attributes:
        nesterov: Nesterov momentum.
        lr_in_velocity: True for the Keras form, False for the heavy-ball form.
        buffer_starts_with_gradient: heavy-ball only: the first step sets the buffer to the
            gradient (torch) instead of decaying a zero buffer (MLX).
        dampening: heavy-ball only: ``b <- m*b + (1-dampening)*g``.
        maximize: heavy-ball only: ascend instead of descend (torch).
    """

    nesterov: bool = False
    lr_in_velocity: bool = True
    buffer_starts_with_gradient: bool = False
    dampening: float = 0.0
    maximize: bool = False


KERAS = SGDRule()


def sgd_update(
    rule: SGDRule,
    weight: Any,
    gradient: Any,
    buffer: Optional[Any],
    learning_rate: Any,
    momentum: Any = None,
    l2_weight_decay: Any = None,
    dampening: Any = None,
    first_step: bool = False,
) -> Tuple[Any, Optional[Any]]:
    """One SGD step for one parameter: returns ``(new_weight, new_buffer)``.

    ``buffer`` is None when there is no momentum (no buffer is kept then). Hyperparameters
    are scalars already cast to the weight's dtype by the caller; ``dampening`` is the
    scalar ``1 - rule.dampening`` factor's input, given separately so that it is cast too.

    Example (Keras form, lr 0.1, momentum 0.9, from w=1 with g=w):
        >>> import numpy as np
        >>> w, v = np.float32(1.0), np.float32(0.0)
        >>> w, v = sgd_update(KERAS, w, w, v, np.float32(0.1), np.float32(0.9))
        >>> float(w), float(v)
        (0.8999999761581421, -0.10000000149011612)
    """
    if rule.lr_in_velocity:
        if buffer is None:
            return weight - gradient * learning_rate, None
        velocity = buffer * momentum - gradient * learning_rate
        if rule.nesterov:
            return weight + (velocity * momentum - gradient * learning_rate), velocity
        return weight + velocity, velocity

    if rule.maximize:
        gradient = -gradient
    if l2_weight_decay is not None:
        gradient = gradient + l2_weight_decay * weight
    if buffer is None:
        return weight - learning_rate * gradient, None
    if first_step and rule.buffer_starts_with_gradient:
        buffer = gradient
    elif dampening is None:
        buffer = momentum * buffer + gradient
    else:
        buffer = momentum * buffer + (1 - dampening) * gradient
    direction = gradient + momentum * buffer if rule.nesterov else buffer
    return weight - learning_rate * direction, buffer
