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
]
