"""The mutants of the mutation check (``tools/mutation_check.py``).

Each is a realistic mistake in one place of the source: ``find`` must occur exactly once in
``path``, ``replace`` is what a careless edit would leave, ``breaks`` says what goes wrong
for a user, and ``tests`` are the test files (or node ids) expected to notice; the whole
suite runs when they do not. ``equivalent`` holds the reason when a change is known to alter
no behaviour (such mutants are listed, not run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    find: str
    replace: str
    breaks: str
    tests: tuple[str, ...]
    equivalent: str = ""


MUTANTS: list[Mutant] = [
    # --- the six changes the 2026-12-04 audit found no test for ---------------------------
    Mutant(
        "torch-buffer-aliases-gradient",
        "src/inertia/torch.py",
        'state["momentum_buffer"] = torch.clone(new_buffer).detach()',
        'state["momentum_buffer"] = new_buffer.detach()',
        "the first momentum buffer is the .grad tensor itself: zero_grad(set_to_none=False) or "
        "accumulating backward calls rewrites it",
        ("tests/test_torch_face_driving.py",),
    ),
    Mutant(
        "exclude-by-name-anchored",
        "src/inertia/optimizer.py",
        "pattern.search(variable.name)",
        "pattern.match(variable.name)",
        'var_names=["bias"] no longer excludes "dense_bias" from weight decay (Keras searches)',
        ("tests/test_keras_parity.py", "tests/test_optimizer.py"),
    ),
    Mutant(
        "iterations-only-with-gradients",
        "src/inertia/optimizer.py",
        "                    variable.assign(variable.constraint(variable))\n"
        "        self._iterations.assign(self._iterations.value + 1)",
        "                    variable.assign(variable.constraint(variable))\n"
        "            self._iterations.assign(self._iterations.value + 1)",
        "a step whose only gradients go to overwrite_with_gradient variables does not count "
        "(Keras counts it)",
        ("tests/test_keras_parity.py", "tests/test_optimizer.py"),
    ),
    Mutant(
        "clipnorm-reassociated",
        "src/inertia/pipeline.py",
        "return (gradient * c) / ops.maximum(norm, c)",
        "return (gradient / ops.maximum(norm, c)) * c",
        "clipnorm 1 ulp off Keras in about a third of the elements when c is not a power of two",
        ("tests/test_keras_parity.py", "tests/test_pipeline.py"),
    ),
    Mutant(
        "global-norm-narrowest-dtype",
        "src/inertia/pipeline.py",
        "return max(names, key=lambda n: order.index(n) if n in order else len(order))",
        "return min(names, key=lambda n: order.index(n) if n in order else len(order))",
        "global_clipnorm over float32 and float64 variables rounds the float64 update through float32",
        ("tests/test_keras_parity.py", "tests/test_pipeline.py"),
    ),
    Mutant(
        "cosine-warmup-boundary",
        "src/inertia/schedules.py",
        "xp.where(s < warmup_steps, ramp, decayed)",
        "xp.where(s <= warmup_steps, ramp, decayed)",
        "CosineDecay at step == warmup_steps gives the ramp's 0.09999999 instead of the target 0.1",
        ("tests/test_schedules.py",),
    ),
    # --- the rule (rule.py): Keras form and heavy-ball form ----------------------------------
    Mutant(
        "rule-keras-nesterov-old-velocity",
        "src/inertia/rule.py",
        "return weight + (velocity * momentum - gradient * learning_rate), velocity",
        "return weight + (buffer * momentum - gradient * learning_rate), velocity",
        "Keras Nesterov looks ahead with the previous velocity instead of the new one: from the "
        "second step on the weights differ from keras.optimizers.SGD(nesterov=True)",
        ("tests/test_rule.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "rule-torch-first-buffer-dampened",
        "src/inertia/rule.py",
        "            buffer = gradient if start_buffer is None else start_buffer(gradient)\n",
        "            buffer = gradient * (1.0 - dampening)\n",
        "torch's first momentum buffer is dampened (torch.optim.SGD sets it to the raw gradient), "
        "so dampening > 0 gives a smaller first step than torch",
        ("tests/test_rule.py", "tests/test_torch_face.py"),
    ),
    Mutant(
        "rule-dampening-dropped-after-first-step",
        "src/inertia/rule.py",
        "buffer = axpy(buffer * momentum, gradient, 1.0 - dampening)",
        "buffer = axpy(buffer * momentum, gradient, 1.0)",
        "dampening is ignored once the buffer exists: torch and MLX faces take too-large steps from "
        "step 2 with dampening > 0",
        ("tests/test_rule.py", "tests/test_mlx.py", "tests/test_torch_face.py"),
    ),
    Mutant(
        "rule-maximize-after-l2",
        "src/inertia/rule.py",
        "    if rule.maximize:\n"
        "        gradient = -gradient\n"
        "    if l2_weight_decay is not None:\n"
        "        gradient = axpy(gradient, weight, l2_weight_decay)\n",
        "    if l2_weight_decay is not None:\n"
        "        gradient = axpy(gradient, weight, l2_weight_decay)\n"
        "    if rule.maximize:\n"
        "        gradient = -gradient\n",
        "maximize=True with weight_decay flips the decay term too, so the weights grow instead of "
        "decaying (torch negates the gradient before adding wd*w)",
        ("tests/test_rule.py", "tests/test_torch_face.py"),
    ),
    Mutant(
        "rule-l2-axpy-arguments-swapped",
        "src/inertia/rule.py",
        "gradient = axpy(gradient, weight, l2_weight_decay)",
        "gradient = axpy(weight, gradient, l2_weight_decay)",
        "coupled L2 decay forms w + wd*g instead of g + wd*w: any weight_decay on the torch or MLX "
        "face gives wrong weights",
        ("tests/test_rule.py", "tests/test_mlx.py", "tests/test_torch_face.py"),
    ),
    Mutant(
        "rule-heavy-ball-nesterov-arguments-swapped",
        "src/inertia/rule.py",
        "direction = axpy(gradient, buffer, momentum) if rule.nesterov else buffer",
        "direction = axpy(buffer, gradient, momentum) if rule.nesterov else buffer",
        "heavy-ball Nesterov steps along b + m*g instead of g + m*b: torch/MLX nesterov=True "
        "trajectories differ from step 2",
        ("tests/test_rule.py", "tests/test_mlx.py", "tests/test_torch_face.py"),
    ),
    # --- the pipeline stages (pipeline.py) -----------------------------------------------------
    Mutant(
        "pipeline-unscale-by-reciprocal",
        "src/inertia/pipeline.py",
        "return gradient / _scalar(ops, factor, gradient)",
        "return gradient * _scalar(ops, 1.0 / factor, gradient)",
        "loss_scale_factor that is not a power of two unscales 1 ulp off Keras (multiplying by "
        "the rounded reciprocal instead of dividing)",
        ("tests/test_pipeline.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "pipeline-accumulated-mean-drops-last-micro-step",
        "src/inertia/pipeline.py",
        "return (gradient + accumulator) / _scalar(ops, steps, gradient)",
        "return accumulator / _scalar(ops, steps, gradient)",
        "under gradient_accumulation_steps the update step's own gradient is left out of the mean",
        ("tests/test_pipeline.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "pipeline-clipvalue-upper-bound-only",
        "src/inertia/pipeline.py",
        "return ops.clip(gradient, -v, v)",
        "return ops.minimum(gradient, v)",
        "clipvalue no longer clips large negative gradients to -clipvalue",
        ("tests/test_pipeline.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "pipeline-global-scale-without-nan-term",
        "src/inertia/pipeline.py",
        "scale = c * ops.minimum(one / norm, inverse_c) + (norm - norm)",
        "scale = c * ops.minimum(one / norm, inverse_c)",
        "global_clipnorm with an infinite gradient gives 0 for the finite elements instead of "
        "Keras' NaN everywhere (the non-finite step no longer shows)",
        ("tests/test_pipeline.py", "tests/test_keras_cases.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "pipeline-decay-without-learning-rate",
        "src/inertia/pipeline.py",
        "return weight - weight * wd * ops.cast(learning_rate, ops.dtype_name(weight))",
        "return weight - weight * wd",
        "decoupled weight decay shrinks the weights by wd per step instead of wd*lr",
        ("tests/test_pipeline.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "pipeline-ema-first-step-not-copied",
        "src/inertia/pipeline.py",
        "m = _scalar(ops, 0.0 if first else ema_momentum, weight)",
        "m = _scalar(ops, ema_momentum, weight)",
        "the EMA starts from zeros instead of the first step's weights (eager path)",
        ("tests/test_pipeline.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "pipeline-ema-weights-swapped",
        "src/inertia/pipeline.py",
        "return m * average + (1 - m) * weight",
        "return m * weight + (1 - m) * average",
        "the EMA keeps 1 - ema_momentum of the old average instead of ema_momentum",
        ("tests/test_pipeline.py", "tests/test_keras_parity.py"),
    ),
    # --- the base class (optimizer.py) ---------------------------------------------------------
    Mutant(
        "optimizer-decay-after-update",
        "src/inertia/optimizer.py",
        "            grads = self._clip_gradients(grads, variables)\n"
        "            self._apply_weight_decay(variables, learning_rate)\n"
        "            self._backend_update_step(grads, variables, learning_rate)\n",
        "            grads = self._clip_gradients(grads, variables)\n"
        "            self._backend_update_step(grads, variables, learning_rate)\n"
        "            self._apply_weight_decay(variables, learning_rate)\n",
        "decoupled weight decay shrinks the post-update weights instead of the pre-update ones",
        ("tests/test_keras_parity.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "optimizer-ema-overwrite-off-by-one",
        "src/inertia/optimizer.py",
        "self._flag((steps_taken + 1) % frequency == 0),",
        "self._flag(steps_taken % frequency == 0),",
        "ema_overwrite_frequency=N copies the averages into the weights on steps 1, N+1, ... "
        "instead of N, 2N, ...",
        ("tests/test_keras_parity.py", "tests/test_optimizer.py"),
    ),
    Mutant(
        "optimizer-accumulation-update-off-by-one",
        "src/inertia/optimizer.py",
        "self._branch(self._flag((self._iterations.value + 1) % steps == 0), update, accumulate)",
        "self._branch(self._flag(self._iterations.value % steps == 0), update, accumulate)",
        "gradient_accumulation_steps=N updates on the 1st, N+1-th... call instead of the N-th, 2N-th",
        ("tests/test_keras_parity.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "optimizer-accumulators-not-reset",
        "src/inertia/optimizer.py",
        "            self._update(means, variables)\n"
        "            for accumulator in self._accumulated_gradients:\n"
        "                if accumulator is not None:\n"
        "                    _reset(accumulator)\n",
        "            self._update(means, variables)\n",
        "gradient accumulators keep every past cycle's gradients, so later updates use a growing sum",
        ("tests/test_keras_parity.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "optimizer-none-gradients-misaligned",
        "src/inertia/optimizer.py",
        "return [g for g, _ in pairs], [v for _, v in pairs]",
        "return [g for g, _ in pairs], variables",
        "with a None gradient, the following gradients are applied to the wrong variables",
        ("tests/test_keras_cases.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "optimizer-schedule-sees-next-step",
        "src/inertia/optimizer.py",
        "return self._learning_rate(self._iterations.value)",
        "return self._learning_rate(self._iterations.value + 1)",
        "a learning-rate schedule's first update uses schedule(1) instead of schedule(0)",
        ("tests/test_optimizer.py", "tests/test_schedules.py"),
    ),
    Mutant(
        "optimizer-schedule-sees-update-count",
        "src/inertia/optimizer.py",
        "return self._learning_rate(self._iterations.value)",
        "return self._learning_rate(self.iterations)",
        "under gradient accumulation the schedule is called with raw // N instead of Keras' raw "
        "counter, so the rate decays N times slower",
        ("tests/test_optimizer.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "optimizer-iterations-ignores-accumulation",
        "src/inertia/optimizer.py",
        "return self._iterations.value // self.gradient_accumulation_steps",
        "return self._iterations.value",
        "optimizer.iterations counts micro-steps under gradient accumulation (Keras: raw // N)",
        ("tests/test_keras_cases.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "optimizer-exclusions-accumulate-across-calls",
        "src/inertia/optimizer.py",
        "self._exclude_from_weight_decay_variables = list(var_list or [])",
        "self._exclude_from_weight_decay_variables += list(var_list or [])",
        "a second exclude_from_weight_decay(var_list=...) call keeps the first call's variables "
        "excluded (and the fused plan, comparing the same set object, misses the change)",
        ("tests/test_optimizer.py", "tests/test_fused.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "optimizer-exclusion-misses-native-arrays",
        "src/inertia/optimizer.py",
        "if id(variable) in excluded or (variable._aliases_native and id(variable.value) in excluded):",
        "if id(variable) in excluded:",
        "exclude_from_weight_decay(var_list=[ndarray or tensor]) no longer exempts native arrays",
        ("tests/test_optimizer.py",),
    ),
    Mutant(
        "optimizer-config-drops-accumulation",
        "src/inertia/optimizer.py",
        '            "gradient_accumulation_steps": self.gradient_accumulation_steps,\n',
        "",
        "from_config(get_config()) gives an optimizer without gradient accumulation",
        ("tests/test_optimizer.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "optimizer-load-index-keys-sorted-as-strings",
        "src/inertia/optimizer.py",
        "values = [store[str(i)] for i in range(len(entries))]",
        "values = [store[k] for k in sorted(keys)]",
        'a Keras index-keyed store with 11+ variables loads "10" before "2": values land in the '
        "wrong variables",
        ("tests/test_optimizer.py",),
    ),
    Mutant(
        "checkpoint-save-without-the-lock",
        "src/inertia/checkpoint/__init__.py",
        "            lock = getattr(owner, \"_lock\", None)",
        "            lock = None",
        "a save from one thread while another steps writes half a step; a load changes state mid-step",
        ("tests/test_checkpoint.py",),
    ),
    # --- copies of an optimizer ---------------------------------------------------------------
    Mutant(
        "optimizer-copy-forgets-exclusions",
        "src/inertia/optimizer.py",
        "        self._exclude_from_weight_decay_ids = {id(v) for v in getattr(self, \"_exclude_from_weight_decay_variables\", [])}",
        "        self._exclude_from_weight_decay_ids = set()",
        "a deep-copied or unpickled optimizer decays the variables the user excluded from weight decay",
        ("tests/test_optimizer.py",),
    ),
    # --- kernel builds and the private cache (inertia/kernels.py) -------------------------------
    Mutant(
        "cache-build-hash-unchecked",
        "src/inertia/kernels.py",
        "if match and owned and hashlib.sha256(path.read_bytes()).hexdigest() == match.group(1):",
        "if match and owned:",
        "a truncated or replaced handler in the cache is loaded: SIGBUS, or someone else's code runs",
        ("tests/test_kernel_builds.py",),
    ),
    Mutant(
        "cache-owner-unchecked",
        "src/inertia/kernels.py",
        "if geteuid is not None and info.st_uid != geteuid():",
        "if False:",
        "a cache folder owned by another user is used: a library they planted runs as this user",
        ("tests/test_kernel_builds.py",),
    ),
    Mutant(
        "cache-mode-unchecked",
        "src/inertia/kernels.py",
        "if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):\n        return f\"other users",
        "if info.st_mode & stat.S_IWOTH and False:\n        return f\"other users",
        "a cache folder other users can write to is used",
        ("tests/test_kernel_builds.py",),
    ),
    Mutant(
        "stale-extension-loaded",
        "src/inertia/kernels.py",
        "    if built_from != installed:",
        "    if built_from != installed and not built_from:",
        "an extension built from older sources runs: its numbers or arguments no longer match the Python side",
        ("tests/test_kernel_builds.py",),
    ),
    Mutant(
        "slow-path-warning-silent",
        "src/inertia/kernels.py",
        "            if _reason is not None and _reason != _DISABLED:\n                _warn_slow(",
        "            if False:\n                _warn_slow(",
        "without the compiled kernel every step is 6-16x slower, and nothing says so",
        ("tests/test_kernel_builds.py",),
    ),
    # --- the C kernel (_sgd_core.h; each `find` lies inside one macro line) ---------------------
    Mutant(
        "kernel-decay-without-lr",
        "src/inertia/_sgd_core.h",
        "if (decay) w = w - (w * wd) * lr;",
        "if (decay) w = w - w * wd;",
        "the fused kernel's decoupled decay ignores the learning rate",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "kernel-nesterov-reassociated",
        "src/inertia/_sgd_core.h",
        "w = mode == MODE_NESTEROV ? w + (v * m - g * lr) : w + v;",
        "w = mode == MODE_NESTEROV ? (w + v * m) - g * lr : w + v;",
        "Nesterov in the fused kernel rounds differently from Keras and the reference path",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "kernel-ema-weights-swapped",
        "src/inertia/_sgd_core.h",
        "if (ema) E[i] = fresh_average ? w : em * E[i] + one_minus_em * w;",
        "if (ema) E[i] = fresh_average ? w : em * w + one_minus_em * E[i];",
        "the fused kernel's EMA weighs the new weights by ema_momentum",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "kernel-clip-divisor-ignores-nan",
        "src/inertia/_sgd_core.h",
        "return (double)((norm > c || norm != norm) ? norm : c);",
        "return (double)(norm > c ? norm : c);",
        "clipnorm on a tensor with a NaN lets its finite elements through unchanged in the kernel "
        "(Keras: the whole tensor becomes NaN)",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "kernel-global-scale-without-nan-term",
        "src/inertia/_sgd_core.h",
        "return (double)(c * smaller + (norm - norm));",
        "return (double)(c * smaller);",
        "global_clipnorm with an infinite gradient zeroes the finite elements in the kernel instead "
        "of making every gradient NaN as Keras does",
        ("tests/test_fused.py", "tests/test_keras_cases.py"),
    ),
    Mutant(
        "kernel-accumulator-not-reset",
        "src/inertia/_sgd_core.h",
        "A[i] = 0;",
        "(void)0;",
        "the fused kernel leaves the accumulators full after an update step, so the next cycle "
        "adds the old gradients again",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    # --- fused.py: eligibility and plan re-checks ------------------------------------------------
    Mutant(
        "fused-exclusions-not-rechecked",
        "src/inertia/engine/optimizer_host.py",
        "        or plan.exclusions != _exclusions(optimizer)\n",
        "",
        "exclude_from_weight_decay (or a new weight_decay) after the first fused step is ignored "
        "by the kernel",
        ("tests/test_fused.py",),
    ),
    Mutant(
        "fused-replaced-array-not-rechecked",
        "src/inertia/engine/optimizer_host.py",
        "        or (plan.memory is not None and not all(map(operator.is_, map(_VALUE_OF, plan.variables), plan.values)))\n",
        "",
        "after a variable's or slot's array is replaced (set_weights, load_own_variables, assign "
        "of another array), the kernel keeps writing into the old array",
        ("tests/test_fused.py", "tests/backend/test_torch.py", "tests/test_optimizer.py"),
        equivalent="the plan hands the kernel each variable's current array, and the kernel compares "
        "its address with the plan's and answers MOVED (a new plan, then the step), so a replaced "
        "array is never missed; this check only saves that round trip",
    ),
    Mutant(
        "fused-subset-with-ema-taken",
        "src/inertia/engine/optimizer_host.py",
        "if (optimizer.use_ema or optimizer.gradient_accumulation_steps) and indices != list(",
        "if optimizer.gradient_accumulation_steps and indices != list(",
        "apply() on a subset of the variables with use_ema updates only that subset's averages "
        "(the reference advances every trainable variable's EMA)",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    Mutant(
        "fused-ignores-an-own-update-step",
        "src/inertia/sgd.py",
        "return self.step_description if type(self).update_step is SGD.update_step else None",
        "return self.step_description",
        "a subclass of SGD overriding update_step silently runs the stock kernel instead of its "
        "own update",
        ("tests/test_fused.py",),
    ),
    Mutant(
        "fused-micro-steps-store-scaled-gradients",
        "src/inertia/engine/optimizer_host.py",
        "        if unscale is not None or plan.accumulator_memory is None:\n"
        "            return host.DECLINED  # micro-steps then store unscaled gradients: the reference path does\n",
        "        if plan.accumulator_memory is None:\n"
        "            return host.DECLINED\n",
        "loss_scale_factor with gradient_accumulation_steps accumulates the scaled gradients on "
        "micro-steps, so the update's mean is off by the scale",
        ("tests/test_fused.py", "tests/test_keras_parity.py"),
    ),
    # --- multi_tensor.py -----------------------------------------------------------------------
    Mutant(
        "multi-tensor-ema-first-step-not-copied",
        "src/inertia/multi_tensor.py",
        "ema_momentum = rounded(0.0 if steps_taken == 0 else optimizer.ema_momentum)",
        "ema_momentum = rounded(optimizer.ema_momentum)",
        "on CUDA the EMA starts from zeros instead of the first step's weights",
        ("tests/test_multi_tensor.py",),
    ),
    Mutant(
        "multi-tensor-scales-callers-gradients",
        "src/inertia/multi_tensor.py",
        "    if own:\n"
        "        torch._foreach_mul_(grads, learning_rate)\n"
        "        scaled = grads\n"
        "    else:\n"
        "        scaled = torch._foreach_mul(grads, learning_rate)\n",
        "    torch._foreach_mul_(grads, learning_rate)\n"
        "    scaled = grads\n",
        "on CUDA, apply() multiplies the caller's gradient tensors by the learning rate in place",
        ("tests/test_multi_tensor.py",),
    ),
    Mutant(
        "multi-tensor-decay-without-lr",
        "src/inertia/multi_tensor.py",
        "            torch._foreach_mul_(decay, learning_rate)\n",
        "",
        "on CUDA decoupled weight decay ignores the learning rate",
        ("tests/test_multi_tensor.py",),
    ),
    # --- xla_fused.py --------------------------------------------------------------------------
    Mutant(
        "xla-ema-first-step-not-copied",
        "src/inertia/xla_fused.py",
        "ema_momentum = jnp.where(first, jnp.zeros((), dtype), jnp.asarray(optimizer.ema_momentum, dtype))",
        "ema_momentum = jnp.asarray(optimizer.ema_momentum, dtype)",
        "on JAX the large tensors' EMA starts from zeros instead of the first step's weights",
        ("tests/test_xla_fused.py",),
    ),
    Mutant(
        "xla-global-norm-split-between-paths",
        "src/inertia/xla_fused.py",
        "if not large or (clip == _CLIP_GLOBAL and (len(large) < len(wrappers) or len(large) > GROUP)):",
        "if not large or (clip == _CLIP_GLOBAL and len(large) > GROUP):",
        "on JAX, global_clipnorm over large and small tensors takes two separate norms",
        ("tests/test_xla_fused.py",),
    ),
    Mutant(
        "xla-gradients-unscaled-twice",
        "src/inertia/xla_fused.py",
        "unscale=np.float64(1.0),",
        "unscale=np.float64(optimizer.loss_scale_factor or 1.0),",
        "on JAX with loss_scale_factor, the large tensors' gradients are divided by the scale twice",
        ("tests/test_xla_fused.py",),
    ),
    # --- the tf.keras legacy face (legacy.py) --------------------------------------------------
    Mutant(
        "legacy-clipnorm-before-clipvalue",
        "src/inertia/legacy.py",
        "        if self.clipvalue is not None:\n"
        "            grads = [each(g, lambda x: pipeline.clip_by_value(ops, x, self.clipvalue)) for g in grads]\n"
        "        if self.clipnorm is not None:\n"
        "            # Sharded gradients (DTensor): their norms summed across the ranks in one collective.\n"
        "            squares = pipeline.squared_norms(ops, grads, None) if ops.squares_reducer(grads) is not None else [None] * len(grads)\n"
        "            grads = [\n"
        "                each(g, lambda x, squared=squared: pipeline.clip_by_norm(ops, x, self.clipnorm, squared))\n"
        "                for g, squared in zip(grads, squares)\n"
        "            ]\n",
        "        if self.clipnorm is not None:\n"
        "            # Sharded gradients (DTensor): their norms summed across the ranks in one collective.\n"
        "            squares = pipeline.squared_norms(ops, grads, None) if ops.squares_reducer(grads) is not None else [None] * len(grads)\n"
        "            grads = [\n"
        "                each(g, lambda x, squared=squared: pipeline.clip_by_norm(ops, x, self.clipnorm, squared))\n"
        "                for g, squared in zip(grads, squares)\n"
        "            ]\n"
        "        if self.clipvalue is not None:\n"
        "            grads = [each(g, lambda x: pipeline.clip_by_value(ops, x, self.clipvalue)) for g in grads]\n",
        "legacy SGD with clipvalue and clipnorm clips the norm first (OptimizerV2 clips values first)",
        ("tests/test_legacy.py",),
    ),
    Mutant(
        "legacy-time-decay-off-by-one",
        "src/inertia/legacy.py",
        "lr_t = lr_t / (1 + self._hyper(self._initial_decay, variable) * step)",
        "lr_t = lr_t / (1 + self._hyper(self._initial_decay, variable) * (step + 1))",
        "legacy decay > 0 already decays the first step's rate (OptimizerV2: lr / (1 + decay*iterations))",
        ("tests/test_legacy.py",),
    ),
    Mutant(
        "legacy-hyperparameters-not-float32",
        "src/inertia/legacy.py",
        'return ops.cast(ops.scalar(value, "float32", like=variable.value), variable.dtype)',
        "return ops.scalar(value, variable.dtype, like=variable.value)",
        "float64 variables see float64 momentum/decay instead of tf.keras' float32-rounded ones",
        ("tests/test_legacy.py",),
    ),
    Mutant(
        "legacy-weights-include-learning-rate",
        "src/inertia/legacy.py",
        "return [v for v in self._variables if v is not self._learning_rate and id(v) not in self._not_weights]",
        "return [v for v in self._variables if id(v) not in self._not_weights]",
        "legacy get_weights()/set_weights() include the learning rate: tf.keras weight lists no "
        "longer load (wrong length)",
        ("tests/test_legacy.py",),
    ),
    Mutant(
        "legacy-slot-named-with-underscore",
        "src/inertia/legacy.py",
        'self._new_variable_name(f"{reference.name}/{slot_name}")',
        'self._new_variable_name(f"{reference.name}_{slot_name}")',
        'legacy slots are named "kernel_momentum" instead of tf.keras\' "kernel/momentum"',
        ("tests/test_legacy.py",),
    ),
    # --- the MLX face (mlx.py) -----------------------------------------------------------------
    Mutant(
        "mlx-rule-starts-with-gradient",
        "src/inertia/engine/step.py",
        'MLX = StepDescription(form="heavy_ball")',
        'MLX = StepDescription(form="heavy_ball", buffer_starts_with_gradient=True)',
        "MLX's velocity would start as the first gradient (torch's way) instead of zero",
        ("tests/test_mlx.py",),
        equivalent="init_single stores a zero 'v' for every leaf before its first update, so the rule "
        "never receives buffer=None from the MLX face and the flag is never read (only "
        "tests/test_faces.py::test_every_face_calls_the_one_rule notices: it reads the flag itself)",
    ),
    Mutant(
        "mlx-state-key-renamed",
        "src/inertia/mlx.py",
        'state["v"] = ops.zeros(ops.shape(parameter), ops.dtype_name(parameter), like=parameter)',
        'state["velocity"] = ops.zeros(ops.shape(parameter), ops.dtype_name(parameter), like=parameter)',
        "the MLX state holds a 'velocity' entry instead of MLX's 'v' (and gains 'v' only after a "
        "step): states no longer interchange with mlx.optimizers.SGD",
        ("tests/test_mlx.py",),
    ),
    Mutant(
        "mlx-dampening-not-passed",
        "src/inertia/mlx.py",
        "            dampening=self.dampening,\n",
        "",
        "the MLX face ignores dampening",
        ("tests/test_mlx.py",),
    ),
    Mutant(
        "mlx-weight-decay-only-with-momentum",
        "src/inertia/mlx.py",
        "l2_weight_decay=self.weight_decay if self.weight_decay != 0 else None,",
        "l2_weight_decay=self.weight_decay if with_momentum and self.weight_decay != 0 else None,",
        "MLX SGD without momentum ignores weight_decay",
        ("tests/test_mlx.py",),
    ),
    Mutant(
        "mlx-schedule-after-step-increment",
        "src/inertia/mlx.py",
        "            self._state[name] = self._rate_array(scheduler(self.step))\n",
        "            self._state[name] = self._rate_array(scheduler(self.step + 1))\n",
        "a callable learning rate drives step 1 with schedule(1) instead of MLX's schedule(0)",
        ("tests/test_mlx.py",),
    ),
    # --- the torch.optim face (torch.py) -------------------------------------------------------
    Mutant(
        "torch-maximize-read-from-nesterov",
        "src/inertia/torch.py",
        'TORCH_STEP.rule(nesterov=group["nesterov"], maximize=group["maximize"]),',
        'TORCH_STEP.rule(nesterov=group["nesterov"], maximize=group["nesterov"]),',
        "maximize=True is ignored without Nesterov, and nesterov=True always maximizes",
        ("tests/test_torch_face.py",),
    ),
    Mutant(
        "torch-dampening-from-step-one",
        "src/inertia/engine/step.py",
        'TORCH = StepDescription(form="heavy_ball", fused_multiply_add=True, buffer_starts_with_gradient=True)',
        'TORCH = StepDescription(form="heavy_ball", fused_multiply_add=True, buffer_starts_with_gradient=False)',
        "the torch face dampens the first momentum buffer (torch.optim.SGD applies dampening from step 2)",
        ("tests/test_torch_face.py",),
    ),
    Mutant(
        "torch-first-group-settings-for-all",
        "src/inertia/torch.py",
        "settings = {id(group): self._hyperparameters(group) for group in self.param_groups}",
        "settings = {id(group): self._hyperparameters(self.param_groups[0]) for group in self.param_groups}",
        "every param group steps with the first group's lr, momentum and weight decay",
        ("tests/test_torch_face.py",),
    ),
    Mutant(
        "torch-state-dict-counters-not-restored",
        "src/inertia/torch.py",
        '        self._micro_steps, self._updates = counters["micro_steps"], counters["updates"]\n',
        "",
        "load_state_dict of inertia 0.1's layout (counters under a top-level 'inertia' key) keeps the "
        "loading optimizer's own step counters: accumulation cycles and EMA overwrites resume out of phase",
        ("tests/test_torch_face.py",),
    ),
    Mutant(
        "torch-ema-overwrite-off-by-one",
        "src/inertia/torch.py",
        "if frequency and (self._updates + 1) % frequency == 0:",
        "if frequency and self._updates % frequency == 0:",
        "the torch face copies the EMA into the weights on updates 1, N+1, ... instead of N, 2N, ...",
        ("tests/test_torch_face.py",),
    ),
    # --- the torch face beyond dense real parameters: sparse, complex, differentiable, compiled ---
    Mutant(
        "torch-sparse-weight-decay-unchecked",
        "src/inertia/torch.py",
        'if _number(group["weight_decay"]) != 0:',
        "if False:",
        "a sparse gradient with L2 weight decay fails inside the step with torch's internal error, after "
        "other parameters were updated, instead of being refused before any change",
        ("tests/test_torch_dropin.py",),
    ),
    Mutant(
        "torch-complex-clipped-as-complex",
        "src/inertia/torch.py",
        "if any(grad.is_complex() for _, _, grad in work):",
        "if False:",
        "a complex gradient's norm is taken from z*z (not |z|**2): clipping scales it by a complex "
        "number instead of its modulus",
        ("tests/test_torch_dropin.py",),
    ),
    Mutant(
        "torch-differentiable-saves-the-written-tensor",
        "src/inertia/torch.py",
        "return torch.addcmul(y, x.clone(), alpha)",
        "return torch.addcmul(y, x, alpha)",
        "differentiable=True with a weight decay that requires grad: backward fails, the weights it saved "
        "having been written by the step",
        ("tests/test_torch_dropin.py",),
    ),
    Mutant(
        "torch-compiled-zero-buffers-with-dampening",
        "src/inertia/torch.py",
        'zeros_are_fresh = _number(group["dampening"]) == 0',
        "zeros_are_fresh = True",
        "a compiled step with dampening starts the momentum buffer at (1 - dampening)*g instead of torch's g",
        ("tests/test_torch_dropin.py",),
    ),
    Mutant(
        "torch-compiled-steps-not-counted",
        "src/inertia/torch.py",
        'compiled["updates"].add_(1)',
        'compiled["updates"].add_(0)',
        "compiled steps do not count: `updates` and the state dict's counters stay where eager steps left them",
        ("tests/test_torch_dropin.py",),
    ),
    Mutant(
        "torch-compiled-ema-stays-fresh",
        "src/inertia/torch.py",
        "        fresh.fill_(False)\n",
        "",
        "under torch.compile the EMA copies the weights on every update instead of averaging them",
        ("tests/test_torch_dropin.py",),
    ),
    # --- schedules.py --------------------------------------------------------------------------
    Mutant(
        "schedule-staircase-rounds",
        "src/inertia/schedules.py",
        "p = xp.floor(p)",
        "p = xp.round(p)",
        "staircase=True ExponentialDecay / InverseTimeDecay drop halfway through each interval "
        "instead of at its end",
        ("tests/test_schedules.py",),
    ),
    Mutant(
        "schedule-inverse-time-drops-rate",
        "src/inertia/schedules.py",
        "denominator = _cast(1, dtype, xp) + decay_rate * p",
        "denominator = _cast(1, dtype, xp) + p",
        "InverseTimeDecay ignores decay_rate",
        ("tests/test_schedules.py",),
    ),
    Mutant(
        "schedule-piecewise-first-boundary-open",
        "src/inertia/schedules.py",
        "result = result + term(step <= bounds[0], values[0])",
        "result = result + term(step < bounds[0], values[0])",
        "PiecewiseConstantDecay gives 0 at step == boundaries[0] (Keras: values[0])",
        ("tests/test_schedules.py",),
    ),
    Mutant(
        "schedule-polynomial-cycle-step-zero",
        "src/inertia/schedules.py",
        "multiplier = xp.where(s == 0, _cast(1.0, dtype, xp), xp.ceil(s / decay_steps))",
        "multiplier = xp.ceil(s / decay_steps)",
        "PolynomialDecay(cycle=True) gives NaN at step 0 (0/0)",
        ("tests/test_schedules.py",),
    ),
    Mutant(
        "schedule-polynomial-step-not-clamped",
        "src/inertia/schedules.py",
        "            s = xp.minimum(s, decay_steps)\n        p = s / decay_steps\n",
        "            pass\n        p = s / decay_steps\n",
        "PolynomialDecay past decay_steps would decay below end_learning_rate",
        ("tests/test_schedules.py",),
        equivalent="past decay_steps 1 - p is negative and xp.maximum(1 - p, 0) clamps it to the "
        "same 0 that s = decay_steps gives (0 ** power, inf for power < 0, NaN for a NaN step, "
        "all as before)",
    ),
    Mutant(
        "schedule-cosine-step-not-clamped",
        "src/inertia/schedules.py",
        "            s = xp.minimum(s, decay_steps)\n            return _result(self._decay(",
        "            return _result(self._decay(",
        "CosineDecay past decay_steps follows the cosine back up instead of staying at alpha*lr",
        ("tests/test_schedules.py",),
    ),
    Mutant(
        "schedule-restarts-fraction-not-reduced",
        "src/inertia/schedules.py",
        "            fraction = fraction - restart\n",
        "",
        "CosineDecayRestarts(t_mul=1) runs the cosine on the whole step/first_decay_steps: odd "
        "periods restart at alpha instead of the top",
        ("tests/test_schedules.py",),
    ),
    Mutant(
        "schedule-cosine-one-minus-alpha-in-dtype",
        "src/inertia/schedules.py",
        "decayed = _cast(1 - self.alpha, dtype, xp) * cosine + _cast(self.alpha, dtype, xp)",
        "decayed = (1 - _cast(self.alpha, dtype, xp)) * cosine + _cast(self.alpha, dtype, xp)",
        "CosineDecay with an alpha whose 1 - alpha rounds differently in float32 is 1 ulp off Keras",
        ("tests/test_schedules.py", "tests/test_keras_parity.py"),
    ),
    # --- the engine: every face on the host kernel (issue 14) ---------------------------------
    Mutant(
        "kernel-heavy-ball-weight-rounded-twice",
        "src/inertia/_sgd_core.h",
        "w = fused ? FMA(negative_lr, d, w) : w + negative_lr * d;",
        "w = w + negative_lr * d;",
        "the torch face's weight update rounds twice on the fast path, where torch's add(alpha=) "
        "rounds once: not torch.optim.SGD's numbers",
        ("tests/test_fast_paths.py", "tests/test_torch_face.py"),
    ),
    Mutant(
        "kernel-fresh-buffer-decays-garbage",
        "src/inertia/_sgd_core.h",
        "        if (form == FORM_HEAVY_BALL && fused && mode != MODE_NONE && (job->flags[t] & FLAG_FRESH_BUFFER)) \\\n",
        "        if (0)   \\\n",
        "the torch face's first momentum buffer is decayed from uninitialised memory instead of "
        "taking the gradient",
        ("tests/test_fast_paths.py", "tests/test_torch_face.py"),
    ),
    Mutant(
        "kernel-legacy-value-clip-after-norm",
        "src/inertia/_sgd_core.h",
        "            g = g < lo ? lo : (g > hi ? hi : g);                                                   \\\n"
        "            g = (g * mul) / div;                                                                   \\\n",
        "            g = (g * mul) / div;                                                                   \\\n"
        "            g = g < lo ? lo : (g > hi ? hi : g);                                                   \\\n",
        "tf.keras legacy's clipvalue with clipnorm clips by value after the norm on the fast path",
        ("tests/test_fast_paths.py", "tests/test_legacy_parity.py"),
    ),
    Mutant(
        "kernel-written-shapes-unchecked",
        "src/inertia/_kernels.c",
        "const int64_t *shape = shapes + offsets[t]; /* every array: a NumPy one reshaped in place declines */",
        "const int64_t *shape = k == LIST_G ? shapes + offsets[t] : NULL;",
        "a NumPy target reshaped in place between steps is updated with a gradient of the old "
        "shape (the reference path rejects it)",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "host-overlap-not-checked",
        "src/inertia/engine/host.py",
        "    if len(starts) > 1 and bool(np.any(starts[1:] < ends[:-1])):\n"
        "        return None  # two written arrays share memory: the reference path writes them one by one\n",
        "",
        "two variables sharing memory (b and b[:]) are updated together in the kernel, with other "
        "numbers than the reference path's",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "torch-backend-negative-bit-ignored",
        "src/inertia/backend/torch.py",
        "            and not any(map(tensor.is_neg, arrays))\n",
        "",
        "a gradient with torch's negative bit set reaches the kernel, which reads the memory "
        "without the sign",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "torch-backend-version-not-bumped",
        "src/inertia/backend/torch.py",
        "        torch._C._increment_version(list(arrays))",
        "        pass",
        "parameters written by the kernel keep their autograd version: backward through a stale "
        "graph silently uses the new values",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "legacy-fast-momentum-not-float32",
        "src/inertia/engine/step.py",
        "momentum = float(np.float32(self.momentum)) if description.hyperparameters_in_float32 else self.momentum",
        "momentum = self.momentum",
        "the legacy face's float64 variables use the momentum rounded once from double on the "
        "fast path (tf.keras holds it in float32)",
        ("tests/test_fast_paths.py", "tests/test_legacy_parity.py"),
    ),
    Mutant(
        "legacy-new-variable-gets-no-slot",
        "src/inertia/legacy.py",
        "        if self.momentums:\n            self.momentums = self.momentums + self.add_optimizer_variables(wrappers, \"momentum\")",
        "        pass",
        "a variable first seen after the first step has no momentum slot",
        ("tests/test_legacy_parity.py",),
    ),
    Mutant(
        "mlx-fast-reuses-held-outputs",
        "src/inertia/mlx.py",
        "            and sys.getrefcount(spare) == 2  # this local and getrefcount's argument: nobody else\n",
        "",
        "the MLX face writes a step's results into arrays the caller still holds (an earlier "
        "params tree)",
        ("tests/test_fast_paths.py", "tests/test_mlx.py"),
    ),
    Mutant(
        "xla-workspace-one-task-short",
        "src/inertia/xla_fused.py",
        "    tasks = sum(-(-size // _CHUNK) if size > _CHUNK else 1 for size in sizes)\n",
        "    tasks = sum(-(-size // _CHUNK) if size > _CHUNK else 1 for size in sizes) - 1\n",
        "the JAX custom call's workspace is too small for its tasks: every step with it fails",
        ("tests/test_xla_fused.py",),
    ),
    Mutant(
        "kernel-stream-drops-tail",
        "src/inertia/_sgd_core.h",
        "        for (; k + 4 <= n; k += 4) _mm_stream_ps(dst + k, _mm_loadu_ps(src + k));\n#endif\n    for (; k < n; k++) dst[k] = src[k];\n",
        "        for (; k + 4 <= n; k += 4) _mm_stream_ps(dst + k, _mm_loadu_ps(src + k));\n#endif\n",
        "the MLX face's big float32 outputs lose the last elements of a block that is not a whole "
        "number of vectors (left uninitialised)",
        ("tests/test_fast_paths.py",),
    ),
    # --- torch_flat.py ---------------------------------------------------------------------------
    Mutant(
        "flat-stray-gradient-dropped",
        "src/inertia/torch_flat.py",
        "fresh.copy_(grad.detach().clone())",
        "pass",
        "a gradient put outside the buffer (model.zero_grad() then backward, an assigned .grad) "
        "is never copied in: the step applies the buffer's stale values",
        ("tests/test_torch_flat.py",),
    ),
    Mutant(
        "flat-moved-parameter-unchecked",
        "src/inertia/torch_flat.py",
        "        if self._holds(self.members, self.addresses):\n            return\n",
        "        return\n",
        "after model.to(), model.half() or p.data = ..., the optimizer keeps stepping the buffer the "
        "model no longer reads: training silently stops",
        ("tests/test_torch_flat.py",),
    ),
    Mutant(
        "flat-gradient-view-trusted",
        "src/inertia/torch_flat.py",
        " and self._holds(self.views, self.view_addresses, ours=True)",
        "",
        "a gradient view transposed or resized in place is applied in memory order, not as torch "
        "applies it",
        ("tests/test_torch_flat.py",),
    ),
    Mutant(
        "flat-zero-grad-keeps-values",
        "src/inertia/torch_flat.py",
        "        if zero:\n            self.grad.zero_()\n",
        "",
        "zero_grad leaves the gradient buffer as it was: the next backward adds to the old gradients",
        ("tests/test_torch_flat.py",),
    ),
    Mutant(
        "flat-backward-gradients-not-gathered",
        "src/inertia/torch_flat.py",
        "        if grad is None or grad is self.views[index]:\n            return\n",
        "        return\n",
        "after model.zero_grad(), backward's new gradients reach the buffer only at the step: "
        "GradScaler unscales and clip_grad_norm_ measures stale gradients",
        ("tests/test_torch_flat.py",),
    ),
    Mutant(
        "flat-versions-not-bumped",
        "src/inertia/torch.py",
        "                    self._flat.wrote()\n",
        "                    pass\n",
        "a backward through a graph saved before a flat step uses the new weights silently "
        "instead of raising as torch does",
        ("tests/test_torch_flat.py",),
    ),
    # --- multi_tensor.py: the torch face's heavy-ball step -----------------------------------------
    Mutant(
        "multi-tensor-buffer-aliases-gradient",
        "src/inertia/multi_tensor.py",
        "buffers[k] = torch.clone(grads[k]).detach()",
        "buffers[k] = grads[k]",
        "on CUDA the torch face's first momentum buffer is the user's .grad itself: the next step "
        "scales the gradient tensor in place",
        ("tests/test_multi_tensor.py",),
    ),
    Mutant(
        "multi-tensor-dampening-ignored",
        "src/inertia/multi_tensor.py",
        "alpha=1 - settings.dampening",
        "alpha=1",
        "on CUDA the torch face ignores dampening",
        ("tests/test_multi_tensor.py",),
    ),
    Mutant(
        "multi-tensor-legacy-reciprocal-from-double",
        "src/inertia/multi_tensor.py",
        "in_dtype, reciprocal_in_dtype=True)",
        "in_dtype, reciprocal_in_dtype=False)",
        "on CUDA tf.keras legacy's global_clipnorm rounds 1/c once from double, where "
        "tf.clip_by_global_norm forms it in the dtype (a last-bit difference for c = 1.7)",
        ("tests/test_multi_tensor.py",),
    ),
    Mutant(
        "multi-tensor-legacy-clip-order",
        "src/inertia/multi_tensor.py",
        "    if description.value_clip_first:\n",
        "    if False:\n",
        "on CUDA tf.keras legacy clips by norm only, dropping the clipvalue it applies first",
        ("tests/test_multi_tensor.py",),
    ),
    Mutant(
        "multi-tensor-mlx-fused-decay",
        "src/inertia/multi_tensor.py",
        "grads = torch._foreach_add(grads, torch._foreach_mul(params, rounded(settings.weight_decay)))",
        "grads = torch._foreach_add(grads, params, alpha=settings.weight_decay)",
        "on CUDA the MLX face's weight decay rounds once (torch's add(alpha=)), where MLX rounds the "
        "product and the sum",
        ("tests/test_multi_tensor.py",),
    ),
    # --- loss_scale.py -------------------------------------------------------------------------
    Mutant(
        "loss-scale-growth-off-by-one",
        "src/inertia/loss_scale.py",
        "self.step_counter.value == self.dynamic_growth_steps - 1",
        "self.step_counter.value == self.dynamic_growth_steps",
        "the dynamic loss scale doubles after dynamic_growth_steps + 1 finite steps instead of "
        "dynamic_growth_steps",
        ("tests/test_keras_cases.py", "tests/test_optimizer.py"),
    ),
    Mutant(
        "loss-scale-halving-keeps-counter",
        "src/inertia/loss_scale.py",
        "            _reset(self.step_counter)\n            scale = self.dynamic_scale.value\n",
        "            if factor > 1:\n                _reset(self.step_counter)\n            scale = self.dynamic_scale.value\n",
        "a non-finite step halves the scale but keeps counting the earlier finite steps, so the "
        "scale doubles again too early",
        ("tests/test_keras_cases.py", "tests/test_optimizer.py"),
    ),
    Mutant(
        "loss-scale-unscales-overwrite-variables",
        "src/inertia/loss_scale.py",
        "g if g is None or v.overwrite_with_gradient else g / ops.cast(scale, ops.dtype_name(g))",
        "g if g is None else g / ops.cast(scale, ops.dtype_name(g))",
        "overwrite_with_gradient variables (float8 scales) under LossScaleOptimizer get the gradient "
        "divided by the loss scale",
        ("tests/test_keras_parity.py", "tests/test_keras_cases.py"),
    ),
    # --- checkpoint/: inertia.save / inertia.load (issue 15) ---------------------------------
    Mutant(
        "checkpoint-written-in-place",
        "src/inertia/checkpoint/file.py",
        "temporary = os.path.join(directory, f\".{base}.{host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}\")",
        "temporary = target",
        "a checkpoint is written under its own name (then the O_EXCL open fails on an existing file; with O_TRUNC a kill mid-write leaves a truncated checkpoint)",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-not-synced-before-rename",
        "src/inertia/checkpoint/file.py",
        "            os.fsync(handle.fileno())  # the bytes",
        "            pass  # the bytes",
        "the rename can reach the disk before the data: a power cut leaves an empty or partial checkpoint under the name",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-live-temporaries-removed",
        "src/inertia/checkpoint/file.py",
        "or process_exists(int(match[\"pid\"]))",
        "",
        "a save removes the temporary file another live process is writing, whose rename then fails",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-counter-range-unchecked",
        "src/inertia/checkpoint/checks.py",
        "if value < 0 or (high is not None and value >= high) or (limit is not None and value >= limit):",
        "if False:",
        "a negative or overflowing counter (or a loss-scale step counter past dynamic_growth_steps) is loaded",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-dtype-unchecked",
        "src/inertia/checkpoint/checks.py",
        "    if stored.dtype != dtype:\n        problems.append",
        "    if False:\n        problems.append",
        "a float64 momentum loads into a float32 slot (cast silently), or a torch buffer of another dtype is taken",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-structural-options-allowed",
        "src/inertia/checkpoint/checks.py",
        "(structural if key.rsplit(\".\", 1)[-1] in STRUCTURAL else changed)",
        "changed",
        "use_ema, accumulation, nesterov or momentum on/off may differ from the checkpoint when the user accepts changes",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-built-before-checks",
        "src/inertia/checkpoint/keras.py",
        "            target.build(var_list)",
        "            target = optimizer\n            target.build(var_list)",
        "a load refused after building leaves the optimizer built (not as it was)",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-torch-groups-not-restored",
        "src/inertia/checkpoint/torch.py",
        "        restored.append({key: decoded(value, group.get(key)) for key, value in saved.items() if key != \"params\"})",
        "        restored.append({key: value for key, value in group.items() if key != \"params\"})",
        "the torch face keeps the fresh optimizer's lr: a resumed run with an LR scheduler takes other steps",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-torch-ema-dropped",
        "src/inertia/checkpoint/torch.py",
        "        state.setdefault(index, {})[key] = name",
        "        if key != \"average\":\n            state.setdefault(index, {})[key] = name",
        "the torch face's EMA averages are not restored: the EMA restarts from the weights after resuming",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-live-state-written",
        "src/inertia/checkpoint/arrays.py",
        "array = np.array(value, copy=True)  # NumPy state",
        "array = np.asarray(value)  # NumPy state",
        "a save writes the live NumPy arrays: a step in another thread before the bytes are made leaves a file whose counters disagree with their tensors (refused at load)",
        ("tests/test_checkpoint.py",),
    ),
    Mutant(
        "checkpoint-symlink-replaced",
        "src/inertia/checkpoint/file.py",
        "target = os.path.realpath(path)",
        "target = os.path.abspath(path)",
        "a save to a symbolic link replaces the link with a file (the file it pointed to keeps the old state)",
        ("tests/test_checkpoint.py",),
    ),
    # --- scale-out (issue 16) ----------------------------------------------------------
    Mutant(
        "keras-stage-on-micro-steps",
        "src/inertia/optimizer.py",
        "        if aggregating and self._is_update_step():\n",
        "        if aggregating:\n",
        "the aggregation stage runs on accumulation micro-steps too: every micro-step communicates, and "
        "the stage sees single gradients instead of the cycle's mean",
        ("tests/test_aggregation.py",),
    ),
    Mutant(
        "torch-clip-group-ignored",
        "src/inertia/torch.py",
        "        clipped = self.clip_group is not None\n",
        "        clipped = False\n",
        "under ZeroRedundancyOptimizer global_clipnorm's norm covers only the rank's own shard: "
        "each rank clips by another factor, silently",
        ("tests/test_scale_out_torch.py",),
    ),
    Mutant(
        "torch-empty-shard-stops-counting",
        "src/inertia/torch.py",
        "        self._micro_steps += 1\n        if updating:\n            self._updates += 1\n",
        "        pass\n",
        "a ZeRO rank with an empty shard never counts its steps: it skips the collective of the next "
        "update (the others wait forever), and a consolidated state dict from it restarts the counters",
        ("tests/test_scale_out_torch.py",),
    ),
    Mutant(
        "all-reduce-sum-not-mean",
        "src/inertia/distributed/torch.py",
        "            flat.div_(size)\n",
        "",
        "all_reduce_mean returns the sum over the ranks: the update is world-size times too large",
        ("tests/test_scale_out_torch.py",),
    ),
    # --- DTensor / FSDP2 (distributed/dtensor.py and its call sites) -------------------------
    Mutant(
        "dtensor-norms-over-replicated-dims",
        "src/inertia/distributed/dtensor.py",
        "            for dim in partial:",
        "            for dim in range(mesh.ndim):",
        "under HSDP the squared norms are summed over the replicated mesh dimension too: clipping by a norm sqrt(replicas) too large",
        ("tests/test_fsdp2.py",),
    ),
    Mutant(
        "dtensor-no-batched-reducer",
        "src/inertia/backend/torch.py",
        "return None if dtensor is None else dtensor.squares_reducer(arrays)",
        "return None",
        "clipping DTensor gradients leaves the norms to DTensor: three all_reduces per parameter instead of one per step",
        ("tests/test_fsdp2.py",),
    ),
    Mutant(
        "dtensor-kernel-clips-by-local-norms",
        "src/inertia/engine/host.py",
        "        return DECLINED  # the kernel's norms would be this rank's shards' only",
        "        pass",
        "the kernel clips sharded gradients by the norms of each rank's shards: the ranks' weights diverge",
        ("tests/test_fsdp2.py",),
    ),
    Mutant(
        "dtensor-slots-plain-tensors",
        "src/inertia/backend/torch.py",
        "        if _placed_like(like, shape):\n            return torch.zeros_like",
        "        if False:\n            return torch.zeros_like",
        "the Keras face's slots of DTensor parameters are whole plain tensors: its first step raises 'mixed torch.Tensor and DTensor'",
        ("tests/test_fsdp2.py",),
    ),
    Mutant(
        "dtensor-shards-unchecked",
        "src/inertia/distributed/dtensor.py",
        "            if not isinstance(array, DTensor) or layout_of(array) != layout:",
        "            if not isinstance(array, DTensor):",
        "the kernel steps a weight's shard with a gradient's shard holding other elements (another mesh order)",
        ("tests/test_fsdp2.py",),
    ),
    Mutant(
        "dtensor-multi-tensor-ema-copy",
        "src/inertia/multi_tensor.py",
        "    if _sharded(averages):  # DTensor has no sharding rule for _foreach_copy_",
        "    if False:",
        "the multi-tensor path (CUDA) raises NotImplementedError in the EMA of DTensor parameters, after the weights were updated",
        ("tests/test_fsdp2.py",),
    ),
    # --- JAX sharding (engine/compiled.py) -----------------------------------------------
    Mutant(
        "jax-custom-call-across-devices",
        "src/inertia/engine/compiled.py",
        "            fused_allowed = not ops.spans_devices(placements)\n",
        "            fused_allowed = True\n",
        "an eager step on sharded JAX variables all-gathers every array into the CPU custom call and "
        "returns weights and momentum replicated on every device",
        ("tests/test_jax_sharding.py",),
    ),
    Mutant(
        "jax-repeat-ignores-placements",
        "src/inertia/engine/compiled.py",
        "            or ops.placements(list(map(_value_of, last.own + last.trainables))) != last.placements\n",
        "",
        "a variable re-sharded between steps repeats the step compiled for the old layout (an error, "
        "or a silent relayout of the state)",
        ("tests/test_jax_sharding.py",),
    ),
    Mutant(
        "loss-scale-skips-alone",
        "src/inertia/loss_scale.py",
        "        if aggregating:\n            finite = self._finite_on_every_replica(finite, variables[0])\n",
        "",
        "under a LossScaleOptimizer with an aggregation stage, a replica whose gradients overflow skips the step "
        "alone: the others wait for it in the next collective (a hang or a crash)",
        ("tests/test_scale_out_torch.py",),
    ),
    Mutant(
        "keras-stage-kernel-despite-jit-compile-false",
        "src/inertia/optimizer.py",
        "            if final and self.jit_compile and optimizer_host.apply_final(",
        "            if final and optimizer_host.apply_final(",
        "with an aggregation stage, jit_compile=False still runs the kernel: the numbers move by an ulp from the "
        "reference path the user asked for",
        ("tests/test_aggregation.py",),
    ),
    Mutant(
        "torch-stage-sees-present-gradients-only",
        "src/inertia/torch.py",
        "        arrays = every_gradient(ops, [given.get(id(param)) for _, param in every], [param.detach() for _, param in every])\n",
        "        arrays = every_gradient(ops, [given[id(p)] for _, p, _ in work], [p.detach() for _, p, _ in work])\n        every = [(g, p) for g, p, _ in work]\n",
        "the torch face's stage gets only the gradients this rank has: ranks whose batches reached other "
        "parameters average one parameter's gradient into another's, silently",
        ("tests/test_aggregation.py",),
    ),
    # --- the TensorFlow backend (issue 17) -----------------------------------------------------
    Mutant(
        "tf-fused-kernel-ignores-nesterov",
        "src/inertia/engine/tf_training_ops.py",
        "              use_locking=False, use_nesterov=nesterov)",
        "              use_locking=False, use_nesterov=False)",
        "inertia.SGD(nesterov=True) on tf.Variables steps plain momentum on the fast path",
        ("tests/backend/test_tensorflow.py",),
    ),
    Mutant(
        "tf-traced-branch-by-value",
        "src/inertia/optimizer.py",
        "        if ops.holds_state_in_place and all(ops.is_mutable_native(v._value) for v in variables):",
        "        if False:",
        "inside a tf.function both branches of a step assign the variables (an accumulation micro-step also "
        "updates the weights, an EMA overwrite happens every step)",
        ("tests/backend/test_tensorflow.py", "tests/test_cross_backend.py"),
    ),
    Mutant(
        "tf-sparse-rows-not-summed",
        "src/inertia/backend/tensorflow.py",
        "        return tf.math.unsorted_segment_sum(value.values, positions, tf.shape(indices)[0]), indices",
        "        return value.values, value.indices",
        "an embedding row looked up twice in a batch gets one of its two gradients, not their sum (legacy face)",
        ("tests/backend/test_tensorflow.py",),
    ),
    Mutant(
        "tf-constants-left-to-grappler",
        "src/inertia/backend/tensorflow.py",
        "    if tf.executing_eagerly():\n        return tensor\n",
        "    if True:\n        return tensor\n",
        "inside a tf.function Grappler folds constants (x/3 as x*(1/3)): schedules and steps no longer give the "
        "eager numbers",
        ("tests/backend/test_tensorflow.py",),
    ),
    # --- the tf.keras 2.11+ face (issue 17) ---------------------------------------------------
    Mutant(
        "tf-keras-ema-complement-in-dtype",
        "src/inertia/tf_keras.py",
        "False, complement_rounded_once=True)",
        "False, complement_rounded_once=False)",
        "inertia.tf_keras.SGD's moving average forms 1 - m in the dtype (Keras 3) instead of rounding tf.keras' "
        "Python 1 - m: averages move by an ulp from tf_keras'",
        ("tests/test_tf_keras.py",),
    ),
    Mutant(
        "tf-keras-momentum-not-through-float32",
        "src/inertia/tf_keras.py",
        "        return variable.backend.scalar(_float32(self.momentum), variable.dtype, like=variable.value)",
        "        return variable.backend.scalar(self.momentum, variable.dtype, like=variable.value)",
        "float64 variables take momentum 0.9 exactly where tf_keras takes float32's 0.9: every float64 step differs",
        ("tests/test_tf_keras.py",),
    ),
    Mutant(
        "tf-keras-overwrite-every-variable",
        "src/inertia/tf_keras.py",
        "    def _moving_average_targets(self, variables: list[Variable]) -> list:\n        return list(variables)\n",
        "    def _moving_average_targets(self, variables: list[Variable]) -> list:\n        return self._trainable_variables\n",
        "an EMA overwrite also replaces the variables that had no gradient this step (tf_keras leaves them)",
        ("tests/test_tf_keras.py",),
    ),
]
