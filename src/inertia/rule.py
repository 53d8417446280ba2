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

      g <- -g                          (maximize: torch)
      g <- g + wd*w                    (coupled L2 weight decay)
      b <- g                           (first step, when ``buffer_starts_with_gradient``: torch)
      b <- m*b + (1-d)*g               (otherwise; MLX starts from b = 0)
      w <- w - lr*(g + m*b)            (Nesterov)   or   w <- w - lr*b

  Every ``y + a*x`` of the heavy-ball form goes through ``add_scaled(y, x, a)``. The default
  rounds twice (``a*x``, then the sum), as MLX does; the torch face passes ``torch.add(y, x,
  alpha=a)``, which rounds once (a fused multiply-add on CPU and CUDA), so its numbers are
  torch.optim.SGD's to the bit.

With a constant learning rate the two forms give the same weights (``v = -lr*b``); they
diverge when the learning rate changes, because Keras' velocity remembers past rates.
Decoupled weight decay (Keras) is not part of the rule: the base optimizer applies it to
every optimizer before the update step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

__all__ = ["SGDRule", "KERAS", "sgd_update"]


@dataclass(frozen=True)
class SGDRule:
    """The structural settings that distinguish the SGD variants (hyperparameters such as
    momentum and dampening are arguments of :func:`sgd_update`).

    Attributes:
        nesterov: Nesterov momentum.
        lr_in_velocity: True for the Keras form, False for the heavy-ball form.
        buffer_starts_with_gradient: heavy-ball only: the first step sets the buffer to the
            gradient (torch) instead of decaying a zero buffer (MLX).
        maximize: heavy-ball only: ascend instead of descend (torch).
    """

    nesterov: bool = False
    lr_in_velocity: bool = True
    buffer_starts_with_gradient: bool = False
    maximize: bool = False


KERAS = SGDRule()


def _add_scaled(y: Any, x: Any, alpha: Any) -> Any:
    return y + alpha * x


def _add(y: Any, x: Any) -> Any:
    return y + x


def sgd_update(
    rule: SGDRule,
    weight: Any,
    gradient: Any,
    buffer: Optional[Any],
    learning_rate: Any,
    momentum: Any = None,
    l2_weight_decay: Any = None,
    dampening: float = 0.0,
    add_scaled: Optional[Callable[[Any, Any, Any], Any]] = None,
    add: Optional[Callable[[Any, Any], Any]] = None,
    start_buffer: Optional[Callable[[Any], Any]] = None,
) -> Tuple[Any, Optional[Any]]:
    """One SGD step for one parameter: returns ``(new_weight, new_buffer)``.

    ``momentum`` is None when no buffer is kept (no momentum). In the heavy-ball form with
    ``buffer_starts_with_gradient``, ``buffer=None`` marks the first step; otherwise a
    missing buffer counts as zeros. Hyperparameters are scalars the caller has typed: arrays
    of the weight's dtype (Keras, MLX's learning rate) or Python floats (torch's, which its
    kernels take as ``alpha``). ``dampening`` is a Python float; ``1 - dampening`` is formed
    in double precision, as torch and MLX form it. ``add(y, x)``, when given, forms the Keras
    form's ``w + v`` (a backend's bitwise-equal phrasing; see ``ArrayBackend.add``).
    ``start_buffer(g)``, when given, forms the first buffer from the gradient (torch's
    differentiable step: a detached copy, through which autograd sees no dependence).

    Example (Keras form, lr 0.1, momentum 0.9, from w=1 with g=w):
        >>> import numpy as np
        >>> w, v = np.float32(1.0), np.float32(0.0)
        >>> w, v = sgd_update(KERAS, w, w, v, np.float32(0.1), np.float32(0.9))
        >>> float(w), float(v)
        (0.8999999761581421, -0.10000000149011612)

    Example (heavy-ball, torch's first step: the buffer becomes the gradient):
        >>> torch_rule = SGDRule(lr_in_velocity=False, buffer_starts_with_gradient=True)
        >>> w, b = sgd_update(torch_rule, 1.0, 0.5, None, 0.1, momentum=0.9, dampening=0.3)
        >>> w, b
        (0.95, 0.5)
    """
    if rule.lr_in_velocity:
        if momentum is None:
            return weight - gradient * learning_rate, None
        velocity = buffer * momentum - gradient * learning_rate
        if rule.nesterov:
            return weight + (velocity * momentum - gradient * learning_rate), velocity
        return (add or _add)(weight, velocity), velocity

    axpy = add_scaled or _add_scaled
    if rule.maximize:
        gradient = -gradient
    if l2_weight_decay is not None:
        gradient = axpy(gradient, weight, l2_weight_decay)
    if momentum is None:
        return axpy(weight, gradient, -learning_rate), None
    if buffer is None:
        if rule.buffer_starts_with_gradient:
            buffer = gradient if start_buffer is None else start_buffer(gradient)
        else:
            buffer = gradient * (1.0 - dampening)
    else:
        buffer = axpy(buffer * momentum, gradient, 1.0 - dampening)
    direction = axpy(gradient, buffer, momentum) if rule.nesterov else buffer
    return axpy(weight, direction, -learning_rate), buffer
