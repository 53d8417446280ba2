"""The one engine every face runs on.

A face describes its step as data (:mod:`inertia.engine.step`: the rule's form and precision,
its clipping order, its param groups' settings); the engine runs that description on the
readable reference path (the rule in :mod:`inertia.rule` and the stages in
:mod:`inertia.pipeline`, with the backend's array operations, in the order the base class
keeps) or on a fast path:

- :mod:`inertia.engine.host`: the C kernel (``_sgd_core.h``) on host memory, NumPy arrays
  and CPU torch tensors, for every face; it re-checks every step what a user can change
  between steps and declines (changing nothing) where it would not give the reference
  path's numbers. :mod:`inertia.engine.optimizer_host` hands it the Keras-style optimizers'
  variables and slots; the torch and MLX faces hand it their own state;
- :mod:`inertia.engine.compiled`: inertia's own compiled step on JAX (traced once, donated
  state), inside which :mod:`inertia.xla_fused` runs the same kernel as an XLA custom call;
- :mod:`inertia.multi_tensor`: torch's multi-tensor kernels for tensors off the CPU;
- :mod:`inertia.engine.tf_training_ops`: TensorFlow's own fused training kernels for the
  Keras-form update on ``tf.Variable``s (in place, copy-on-write safe).

Nothing here imports a face, or torch or jax at module level; ``tf_training_ops`` imports
tensorflow and is imported only by a step on TensorFlow values (``tests/test_layout.py``).
"""
