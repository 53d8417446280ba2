"""The one engine every face runs on.

A face describes its step as data (:mod:`inertia.engine.step`: the rule's form and precision,
its clipping order, its param groups' settings); the engine runs that description on the
readable reference path (the rule in :mod:`inertia.rule` and the stages in
:mod:`inertia.pipeline`, with the backend's array operations) or on a fast path:

- :mod:`inertia.engine.host`: the C kernel (``_sgd_core.h``) on host memory, NumPy arrays
  and CPU torch tensors, for every face; it re-checks every step what a user can change
  between steps and declines (changing nothing) where it would not give the reference
  path's numbers;
- :mod:`inertia.xla_fused`: the same kernel as an XLA custom call inside JAX's jitted step;
- :mod:`inertia.multi_tensor`: torch's multi-tensor kernels for tensors off the CPU.

Nothing here imports a face, torch or jax at module level.
"""
