"""TensorFlow's own fused training kernels as the fast path of the Keras-form update on
``tf.Variable``s.

The Keras form of the rule (:func:`inertia.rule.sgd_update` with the learning rate inside
the velocity) is, operation for operation, TensorFlow's ``ResourceApplyKerasMomentum``
(``accum = accum*momentum - grad*lr``, then ``var += accum``, or with Nesterov
``var += accum*momentum - grad*lr``) and, without momentum, ``ResourceApplyGradientDescent``
(``var -= grad*lr``). Each is one kernel call that updates the variables' buffers in place
(measured at 24-28 bytes a float32 parameter with momentum, against the ideal 20: it seems to
make two passes; ``benchmarks/tf_fast_path.md``), and safely: TensorFlow copies a
buffer first if a tensor read from the variable earlier still holds it, so that tensor keeps
its value (a host kernel writing through a DLPack pointer would change it). One kernel is
also one node in a ``tf.function``'s graph, which Grappler has no arithmetic in to regroup.

The step gives the reference path's bits: the same products and differences, each rounded
to the variable's dtype (TensorFlow's CPU kernels are built without FMA contraction);
``tests/backend/test_tensorflow.py`` checks it for every dtype, eagerly and traced. It
declines (returns False, nothing changed) for anything else: values that are not
``tf.Variable``s (``stateless_apply``'s tensors), a sparse gradient, or a step that is not
the Keras form.

Example:
    >>> import tensorflow as tf
    >>> w, v = tf.Variable([1.0]), tf.Variable([0.0])
    >>> keras_momentum_steps([w], [v], [tf.constant([1.0])], [tf.constant(0.1)], [tf.constant(0.9)], nesterov=False)
    True
    >>> float(w[0]), float(v[0])
    (0.8999999761581421, -0.10000000149011612)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import tensorflow as tf

__all__ = ["keras_momentum_steps"]


def _fits(weight: Any, velocity: Optional[Any], gradient: Any) -> bool:
    if not isinstance(weight, tf.Variable) or not isinstance(gradient, (tf.Tensor, tf.Variable)):
        return False  # a sparse gradient, or values that are not variables (stateless_apply)
    if gradient.dtype != weight.dtype or gradient.shape != weight.shape:
        return False
    return velocity is None or (isinstance(velocity, tf.Variable) and velocity.dtype == weight.dtype)


def keras_momentum_steps(
    weights: Sequence[Any], velocities: Optional[Sequence[Any]], gradients: Sequence[Any],
    rates: Sequence[Any], momenta: Optional[Sequence[Any]], nesterov: bool,
) -> bool:
    """One Keras-form step of every weight (and its velocity slot; ``velocities`` None
    without momentum) by TensorFlow's fused kernel, or of none (False, nothing changed):
    each one is checked before the first kernel runs. ``rates`` and ``momenta`` hold each
    weight's hyperparameters as scalars of its dtype. One kernel call per weight, eagerly: a
    ``tf.function`` around the loop would cost more to call, with thousands of arguments,
    than the calls it saves."""
    slots = velocities if velocities is not None else [None] * len(weights)
    if not all(map(_fits, weights, slots, gradients)):
        return False
    apply = tf.raw_ops.ResourceApplyKerasMomentum
    if velocities is None:
        descend = tf.raw_ops.ResourceApplyGradientDescent
        for weight, gradient, rate in zip(weights, gradients, rates):
            descend(var=weight.handle, alpha=rate, delta=gradient)
        return True
    nesterov = bool(nesterov)
    for weight, velocity, gradient, rate, momentum in zip(weights, velocities, gradients, rates, momenta):
        apply(var=weight.handle, accum=velocity.handle, lr=rate, grad=gradient, momentum=momentum,
              use_locking=False, use_nesterov=nesterov)
    return True
