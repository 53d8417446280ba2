"""The fused fast path of ``inertia.SGD`` (``engine/optimizer_host.py`` + ``engine/host.py`` + the C kernel in ``_kernels.c``).

With ``jit_compile=True`` (the default) a built ``inertia.SGD`` runs a step on NumPy arrays and
torch CPU tensors in one call of a compiled kernel; ``jit_compile=False`` runs the reference
path (``optimizer.py`` / ``pipeline.py`` / ``rule.py``). These tests check that:

* the kernel really runs (a spy on the kernel module counts its successful calls, so a silent
  fallback to the reference path fails the tests that expect the fast path);
* it gives the reference's numbers after every step, for every trainable variable and every
  optimizer variable: bit for bit, except where a gradient norm is taken (clipnorm /
  global_clipnorm: the kernel sums squares in double lanes, NumPy in pairwise float sums);
* whatever it does not cover (float16, constraints, missing / mistyped / non-contiguous
  gradients, other classes) falls back to the reference path without touching anything, and
  errors leave every variable as it was;
* its plan (addresses, decay flags) follows changes of exclusions, storage and state;
* the kernel module can be disabled, is cached on disk, and checks its own arguments.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import re
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import inertia
from conftest import requires
from inertia import backend as backends
from inertia import kernels, schedules
from inertia.engine import host
from inertia.variable import Variable

CHUNK = 65536  # the kernel's chunk (``_kernels.c``): bigger tensors are split, and threaded
BIG = (450, 600)  # 270_000 elements > 4 * CHUNK: chunked, and more than one thread may run
SHAPES = {"kernel": (3, 4), "bias": (4,), "scalar": (), "tiny": (1,), "big": BIG}
SMALL_SHAPES = {name: shape for name, shape in SHAPES.items() if name != "big"}
DTYPES = ("float32", "float64")
BACKENDS = ("numpy", "torch")
STEPS = 6
# torch's reference path is slow on big tensors: there the big one is in these cases only
TORCH_BIG_CASES = ("clipnorm", "global_clipnorm", "accumulation_3_clipnorm", "everything")
NORM_TOLERANCES = {"float64": {"rtol": 1e-12, "atol": 1e-15}, "float32": {"rtol": 1e-6, "atol": 1e-7}}


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _kernel_module():
    module = kernels.load()
    if module is None:
        reason = kernels.unavailable_reason()
        if backends.required():  # CI: a compiler is part of the test environment
            pytest.fail(f"the fused kernels are unavailable: {reason}")
        pytest.skip(f"the fused kernels are unavailable: {reason}")
    return module


class KernelSpy:
    """Stands in for the kernel module: counts calls of ``step`` / ``accumulate`` and
    the calls that did the step (answered ``host.DONE``)."""

    COUNTED = ("step", "accumulate")

    def __init__(self, module):
        self._module = module
        self.calls = dict.fromkeys(self.COUNTED, 0)
        self.done = dict.fromkeys(self.COUNTED, 0)

    def __getattr__(self, name):
        function = getattr(self._module, name)
        if name not in self.COUNTED:
            return function

        def counted(*args):
            self.calls[name] += 1
            result = function(*args)
            if result == host.DONE:
                self.done[name] += 1
            return result

        return counted

    @property
    def total(self) -> int:
        """Steps the kernel did."""
        return sum(self.done.values())

    def snapshot(self) -> tuple:
        return tuple(self.done.values())


@pytest.fixture
def spy(monkeypatch):
    first_step_is_fast()  # probed before the spy is in place
    spy = KernelSpy(_kernel_module())
    monkeypatch.setattr(kernels, "_loaded", spy)
    return spy


_first_step: dict = {}


def first_step_is_fast() -> bool:
    """Whether the first step of an unbuilt optimizer (which builds it) runs in the kernel
    too; every later step must."""
    if "fast" not in _first_step:
        module = _kernel_module()
        probe = KernelSpy(module._module if isinstance(module, KernelSpy) else module)
        saved = kernels._loaded
        kernels._loaded = probe
        try:
            inertia.SGD(learning_rate=0.1).apply([np.ones(2, np.float32)], [inertia.Variable(np.zeros(2, np.float32))])
        finally:
            kernels._loaded = saved
        _first_step["fast"] = probe.total == 1
    return _first_step["fast"]


def warm_calls(steps: int) -> int:
    """Kernel steps of ``steps`` plain steps from an unbuilt optimizer."""
    return steps if first_step_is_fast() else steps - 1


def _torch():
    return requires("torch")


def to_backend(array: np.ndarray, backend: str):
    """A fresh copy of ``array`` on ``backend``."""
    if backend == "numpy":
        return np.array(array, copy=True)
    return _torch().from_numpy(np.array(array, copy=True))


def to_numpy(value) -> np.ndarray:
    if isinstance(value, Variable):
        return np.array(value.numpy(), copy=True)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value.detach().cpu().numpy().copy()


def make_values(shapes: dict, dtype: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {name: np.asarray(rng.standard_normal(shape), dtype=dtype) for name, shape in shapes.items()}


def make_variables(values: dict, backend: str) -> list:
    return [inertia.Variable(to_backend(value, backend), name=name) for name, value in values.items()]


def gradient_stream(shapes: dict, dtype: str, seed: int, steps: int) -> list:
    """``steps`` lists of seeded random gradients (NumPy arrays, scaled 0.5 .. 2)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        scale = rng.uniform(0.5, 2.0)
        out.append([np.asarray(rng.standard_normal(shape) * scale, dtype=dtype) for shape in shapes.values()])
    return out


def state(optimizer, variables) -> list:
    """Every trainable variable and every optimizer variable (with its name), as NumPy."""
    own = optimizer.variables
    own = own() if callable(own) else own  # inertia.legacy.SGD: a method, as in tf.keras
    return [("trainable", to_numpy(v)) for v in variables] + [(v.name, to_numpy(v)) for v in own]


def assert_states_equal(reference: list, fused: list, where: str, tolerances=None) -> None:
    assert len(reference) == len(fused), where
    for (name_r, r), (name_f, f) in zip(reference, fused):
        assert name_r == name_f, where
        assert r.dtype == f.dtype and r.shape == f.shape, f"{where}: {name_r}"
        if tolerances is None:
            assert np.array_equal(r, f), f"{where}: {name_r} differs (max |diff| {np.max(np.abs(r - f), initial=0)})"
        else:
            np.testing.assert_allclose(f, r, err_msg=f"{where}: {name_r}", **tolerances)


def assert_bitwise(left: list, right: list, where: str) -> None:
    assert_states_equal(left, right, where)


# ----------------------------------------------------------------------------------------
# 1. the fast path is taken
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_steps_after_the_first_run_in_the_kernel(spy, backend, dtype):
    if backend == "torch":
        _torch()
    shapes = SMALL_SHAPES
    variables = make_variables(make_values(shapes, dtype, 0), backend)
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    for number, grads in enumerate(gradient_stream(shapes, dtype, 1, 5), start=1):
        before = variables[0].numpy()
        optimizer.apply([to_backend(g, backend) for g in grads], variables)
        assert spy.calls["step"] == warm_calls(number)  # the first step builds, maybe on the reference path
        assert spy.done["step"] == warm_calls(number)
        assert not np.array_equal(before, variables[0].numpy())
    assert int(optimizer.iterations.numpy()) == 5
    assert spy.calls["accumulate"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_micro_steps_run_the_accumulate_kernel(spy, backend):
    if backend == "torch":
        _torch()
    shapes = SMALL_SHAPES
    variables = make_variables(make_values(shapes, "float32", 0), backend)
    optimizer = inertia.SGD(learning_rate=0.1, gradient_accumulation_steps=3)
    for grads in gradient_stream(shapes, "float32", 1, 7):
        optimizer.apply([to_backend(g, backend) for g in grads], variables)
    # micro-steps 1, 2, 4, 5, 7 accumulate; steps 3 and 6 update (the first: maybe the reference)
    assert spy.done == {"step": 2, "accumulate": 4 + first_step_is_fast()}
    assert int(optimizer._iterations.numpy()) == 7


def test_jit_compile_false_never_calls_the_kernel(spy):
    variables = make_variables(make_values(SMALL_SHAPES, "float32", 0), "numpy")
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=False)
    for grads in gradient_stream(SMALL_SHAPES, "float32", 1, 3):
        optimizer.apply(grads, variables)
    assert spy.calls == {"step": 0, "accumulate": 0}


# ----------------------------------------------------------------------------------------
# 2. fast == reference on every feature combination
# ----------------------------------------------------------------------------------------
class _HeldRate:
    """A plain callable learning rate reading Python state that the test changes."""

    def __init__(self):
        self.value = 0.1

    def __call__(self):
        return self.value


# id -> (constructor arguments (a factory: schedules and callables are per optimizer),
#        weight-decay exclusions by name, INERTIA_NUM_THREADS or None, with the big tensor)
CASES = {
    "plain": (lambda: dict(learning_rate=0.05), None, None, True),
    "momentum": (lambda: dict(momentum=0.9), None, "1", True),
    "nesterov": (lambda: dict(momentum=0.9, nesterov=True), None, "2", True),
    "nesterov_without_momentum": (lambda: dict(nesterov=True, learning_rate=0.2), None, None, False),
    "weight_decay": (lambda: dict(momentum=0.9, weight_decay=0.1), None, None, True),
    "weight_decay_excluded": (lambda: dict(weight_decay=0.2, learning_rate=0.1), ["bias", "scal"], "2", True),
    "clipnorm": (lambda: dict(momentum=0.9, clipnorm=1.0), None, "2", True),
    "clipnorm_one_thread": (lambda: dict(clipnorm=2.0), None, "1", True),
    "global_clipnorm": (lambda: dict(global_clipnorm=1.5, momentum=0.5), None, "2", True),
    "clipvalue": (lambda: dict(momentum=0.5, clipvalue=0.3), None, None, True),
    "ema": (lambda: dict(use_ema=True, ema_momentum=0.9), None, None, True),
    "ema_overwrite": (
        lambda: dict(momentum=0.9, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3), None, "2", True),
    "loss_scale": (lambda: dict(momentum=0.9, loss_scale_factor=96.0), None, None, True),
    "accumulation": (lambda: dict(momentum=0.9, gradient_accumulation_steps=2), None, "2", True),
    "accumulation_3_clipnorm": (
        lambda: dict(gradient_accumulation_steps=3, clipnorm=0.5, weight_decay=0.05), ["tiny"], "2", True),
    "accumulation_global_ema": (
        lambda: dict(gradient_accumulation_steps=2, global_clipnorm=2.0, use_ema=True, momentum=0.8), None, "1", True),
    "accumulation_loss_scale": (
        lambda: dict(gradient_accumulation_steps=3, loss_scale_factor=6.0, clipvalue=0.2), None, None, False),
    "accumulation_clipvalue": (lambda: dict(gradient_accumulation_steps=3, clipvalue=0.25, momentum=0.9), None, "2", True),
    "schedule": (lambda: dict(learning_rate=schedules.ExponentialDecay(0.1, 3, 0.5), momentum=0.9), None, None, True),
    "cosine_schedule": (
        lambda: dict(learning_rate=schedules.CosineDecay(0.2, 10), weight_decay=0.1, nesterov=True, momentum=0.7),
        None, None, False),
    "callable": (lambda: dict(learning_rate=_HeldRate(), momentum=0.9, use_ema=True), None, None, True),
    "everything": (
        lambda: dict(momentum=0.9, nesterov=True, weight_decay=0.05, clipnorm=1.0, use_ema=True, ema_momentum=0.7,
                     ema_overwrite_frequency=4, learning_rate=0.07),
        ["bias"], "2", True),
}


def expected_kernel_steps(settings: dict, number: int) -> tuple:
    """(sgd_step, accumulate) calls that step ``number`` (1-based) makes in the kernel."""
    if number == 1 and not first_step_is_fast():
        return (0, 0)
    steps = settings.get("gradient_accumulation_steps")
    if steps and number % steps:
        return (0, 0) if settings.get("loss_scale_factor") else (0, 1)
    return (1, 0)


def run_pair(backend, dtype, factory, exclude, spy, *, shapes, seed=0, steps=STEPS):
    """Two identical optimizers, reference and fused; compares them after every step."""
    values = make_values(shapes, dtype, seed)
    pair = []
    for jit_compile in (False, True):
        settings = factory()
        optimizer = inertia.SGD(jit_compile=jit_compile, **settings)
        if exclude:
            optimizer.exclude_from_weight_decay(var_names=exclude)
        pair.append((optimizer, make_variables(values, backend), settings))
    (reference, ref_vars, ref_settings), (fused, fused_vars, settings) = pair
    norm = bool(settings.get("clipnorm") or settings.get("global_clipnorm"))
    tolerances = NORM_TOLERANCES[dtype] if norm else None
    for number, grads in enumerate(gradient_stream(shapes, dtype, seed + 1, steps), start=1):
        for held in (ref_settings, settings):  # a callable learning rate reads changing state
            if isinstance(held.get("learning_rate"), _HeldRate):
                held["learning_rate"].value = 0.1 / number
        before = spy.snapshot()
        reference.apply([to_backend(g, backend) for g in grads], ref_vars)
        assert spy.snapshot() == before, "the reference optimizer called the kernel"
        fused.apply([to_backend(g, backend) for g in grads], fused_vars)
        made = tuple(after - b for after, b in zip(spy.snapshot(), before))  # no silent fallback
        assert made == expected_kernel_steps(settings, number), f"step {number}: kernel calls {made}"
        assert_states_equal(state(reference, ref_vars), state(fused, fused_vars), f"step {number}", tolerances)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_equals_reference(spy, monkeypatch, backend, dtype, case):
    if backend == "torch":
        _torch()
    factory, exclude, threads, big = CASES[case]
    if threads is not None:
        monkeypatch.setenv("INERTIA_NUM_THREADS", threads)
    big = big and (backend == "numpy" or case in TORCH_BIG_CASES)
    run_pair(backend, dtype, factory, exclude, spy, shapes=SHAPES if big else SMALL_SHAPES)


def test_equality_runs_clip_and_decay_for_real(spy):
    """The table's settings do change the numbers (so equality above means something)."""
    values = make_values(SHAPES, "float32", 0)
    grads = gradient_stream(SHAPES, "float32", 1, 3)
    results = {}
    for key, settings, exclude in (
        ("plain", {}, None),
        ("clipnorm", dict(clipnorm=1.0), None),
        ("global_clipnorm", dict(global_clipnorm=1.5), None),
        ("clipvalue", dict(clipvalue=0.3), None),
        ("weight_decay", dict(weight_decay=0.2), None),
        ("weight_decay_excluded", dict(weight_decay=0.2), ["bias"]),
    ):
        optimizer = inertia.SGD(learning_rate=0.1, **settings)
        if exclude:
            optimizer.exclude_from_weight_decay(var_names=exclude)
        variables = make_variables(values, "numpy")
        for step in grads:
            optimizer.apply(step, variables)
        results[key] = [v.numpy() for v in variables]
    assert spy.done["step"] == 6 * warm_calls(3)
    names = list(SHAPES)
    for key in ("clipnorm", "global_clipnorm", "clipvalue", "weight_decay"):
        assert not np.array_equal(results[key][names.index("big")], results["plain"][names.index("big")]), key
    bias = names.index("bias")
    assert np.array_equal(results["weight_decay_excluded"][bias], results["plain"][bias])
    assert not np.array_equal(results["weight_decay"][bias], results["plain"][bias])


# Small tensors are grouped into tasks of up to CHUNK elements; a task never mixes them with a
# chunk of a large tensor. These shapes make several groups, a tensor of exactly CHUNK
# elements (one task, unchunked), a group cut by a chunked tensor, and tiny tails.
GROUPED_SHAPES = {
    **{f"a{k}": (3000 + k,) for k in range(45)},
    "exact": (CHUNK,),
    "after_exact": (7, 11),
    "big": (CHUNK * 2 + 5,),
    **{f"b{k}": (50, 61) for k in range(30)},
    "tail": (1,),
}
GROUPED_CASES = ("plain", "clipnorm", "global_clipnorm", "accumulation_global_ema", "everything")


@pytest.mark.parametrize("case", GROUPED_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_small_tensors_equal_reference(spy, monkeypatch, dtype, case):
    factory, exclude, _, _ = CASES[case]
    monkeypatch.setenv("INERTIA_NUM_THREADS", "2")
    exclude = ["b1", "a3", "exact"] if exclude else None
    run_pair("numpy", dtype, factory, exclude, spy, shapes=GROUPED_SHAPES, steps=4)


@pytest.mark.parametrize("layout", ["chunked", "grouped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip", [dict(clipnorm=0.5), dict(global_clipnorm=2.0)])
def test_norms_do_not_depend_on_the_thread_count(spy, monkeypatch, layout, dtype, clip):
    """Norm sums are per chunk, added in chunk order: 1, 2 and 5 threads agree bit for bit,
    for large tensors cut into chunks and for small ones grouped into tasks."""
    shapes = GROUPED_SHAPES if layout == "grouped" else {"big": BIG, "other": (CHUNK + 17,), "small": (5,)}
    values = make_values(shapes, dtype, 3)
    grads = gradient_stream(shapes, dtype, 4, 3)
    results = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("INERTIA_NUM_THREADS", threads)
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True, **clip)
        variables = make_variables(values, "numpy")
        for step in grads:
            optimizer.apply(step, variables)
        results.append(state(optimizer, variables))
    assert spy.done["step"] == 3 * warm_calls(3)
    assert_bitwise(results[0], results[1], "1 vs 2 threads")
    assert_bitwise(results[0], results[2], "1 vs 5 threads")


# ----------------------------------------------------------------------------------------
# 3. torch CPU == NumPy on the fast path
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_fast_path_equals_numpy_fast_path(spy, dtype):
    _torch()
    values = make_values(SHAPES, dtype, 5)
    grads = gradient_stream(SHAPES, dtype, 6, 5)
    results = []
    for backend in BACKENDS:
        optimizer = inertia.SGD(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.01,
                                use_ema=True, clipvalue=1.0)
        variables = make_variables(values, backend)
        for step in grads:
            optimizer.apply([to_backend(g, backend) for g in step], variables)
        results.append(state(optimizer, variables))
    assert spy.done["step"] == 2 * warm_calls(5)
    assert_bitwise(results[0], results[1], "numpy vs torch")


# ----------------------------------------------------------------------------------------
# 4. what the kernel does not cover falls back, with the reference's numbers
# ----------------------------------------------------------------------------------------
def _fallback_pair(spy, make_optimizer, make_vars, grads_of, steps=4, expect_warning=None):
    """Runs a reference optimizer and a default one; the kernel must never do a step."""
    reference, fused = make_optimizer(False), make_optimizer(True)
    ref_vars, fused_vars = make_vars(), make_vars()
    for number in range(1, steps + 1):
        outcomes = []
        for optimizer, variables in ((reference, ref_vars), (fused, fused_vars)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                optimizer.apply(grads_of(number), variables)
            if expect_warning:
                assert any(expect_warning in str(w.message) for w in caught), f"step {number}: no warning"
            outcomes.append(state(optimizer, variables))
        assert spy.total == 0, f"step {number}: the kernel ran"
        assert_bitwise(outcomes[0], outcomes[1], f"step {number}")
    assert int(fused.iterations.numpy()) == steps
    return fused_vars


def _numpy_grads(shapes, dtype, seed=1, steps=4, transform=lambda g: g):
    stream = gradient_stream(shapes, dtype, seed, steps)
    return lambda number: [transform(g) for g in stream[number - 1]]


def test_float16_variables_fall_back(spy):
    shapes = {"kernel": (3, 4), "bias": (4,)}
    values = make_values(shapes, "float16", 0)
    _fallback_pair(
        spy,
        lambda jit: inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit),
        lambda: make_variables(values, "numpy"),
        _numpy_grads(shapes, "float16"),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_fall_back(spy, backend):
    if backend == "torch":
        _torch()
    shapes = {"kernel": (3, 4), "bias": (4,)}
    stream = gradient_stream(shapes, "float64", 1, 4)

    def make_vars():
        values = make_values(shapes, "float64", 0)
        return [inertia.Variable(to_backend(values["kernel"].astype(np.float32), backend), name="kernel"),
                inertia.Variable(to_backend(values["bias"], backend), name="bias")]

    _fallback_pair(
        spy,
        lambda jit: inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit),
        make_vars,
        lambda number: [to_backend(stream[number - 1][0].astype(np.float32), backend),
                        to_backend(stream[number - 1][1], backend)],
    )


def test_a_constraint_falls_back(spy):
    shapes = {"kernel": (3, 4), "bias": (4,)}
    values = make_values(shapes, "float32", 0)

    def make_vars():
        variables = make_variables(values, "numpy")
        variables[0].constraint = lambda v: np.clip(np.asarray(v), -0.5, 0.5)
        return variables

    fused_vars = _fallback_pair(
        spy,
        lambda jit: inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit),
        make_vars,
        _numpy_grads(shapes, "float32"),
    )
    assert np.max(np.abs(fused_vars[0].numpy())) <= 0.5


def test_a_missing_gradient_falls_back_with_a_warning(spy):
    shapes = {"kernel": (3, 4), "bias": (4,), "scalar": ()}
    values = make_values(shapes, "float32", 0)
    stream = _numpy_grads(shapes, "float32")
    fused_vars = _fallback_pair(
        spy,
        lambda jit: inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit),
        lambda: make_variables(values, "numpy"),
        lambda number: [stream(number)[0], None, stream(number)[2]],
        expect_warning="Gradients do not exist",
    )
    assert np.array_equal(fused_vars[1].numpy(), values["bias"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradients_for_float32_variables_fall_back(spy, backend):
    if backend == "torch":
        _torch()
    shapes = {"kernel": (3, 4), "bias": (4,)}
    values = make_values(shapes, "float32", 0)
    stream = _numpy_grads(shapes, "float64")
    _fallback_pair(
        spy,
        lambda jit: inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01, jit_compile=jit),
        lambda: make_variables(values, backend),
        lambda number: [to_backend(g, backend) for g in stream(number)],
    )
    assert spy.calls["step"] == (warm_calls(4) if backend == "numpy" else 0)  # NumPy: the kernel said no


@pytest.mark.parametrize("layout", ["fortran", "strided"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_gradients_fall_back(spy, backend, layout):
    if backend == "torch":
        _torch()
    shapes = {"kernel": (3, 4), "bias": (4,)}
    values = make_values(shapes, "float64", 0)
    stream = _numpy_grads(shapes, "float64")

    def bend(grads):
        kernel, bias = (to_backend(g, backend) for g in grads)
        if layout == "fortran":
            kernel = np.asfortranarray(kernel) if backend == "numpy" else kernel.t().contiguous().t()
        else:  # every other element of a twice-as-long array
            doubled = np.repeat(grads[1], 2)
            bias = doubled[::2] if backend == "numpy" else to_backend(doubled, backend)[::2]
        if backend == "numpy":
            assert not (kernel.flags.c_contiguous and bias.flags.c_contiguous)
        else:
            assert not (kernel.is_contiguous() and bias.is_contiguous())
        return [kernel, bias]

    _fallback_pair(
        spy,
        lambda jit: inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit),
        lambda: make_variables(values, backend),
        lambda number: bend(stream(number)),
    )


class DoubledGradientSGD(inertia.SGD):
    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient * 2, variable, learning_rate)


def test_a_subclass_overriding_update_step_keeps_its_update(spy):
    shapes = {"kernel": (3, 4), "bias": (4,)}
    values = make_values(shapes, "float32", 0)
    stream = _numpy_grads(shapes, "float32")
    fused_vars = _fallback_pair(
        spy,
        lambda jit: DoubledGradientSGD(learning_rate=0.1, jit_compile=jit),
        lambda: make_variables(values, "numpy"),
        stream,
    )
    expected = values["bias"].copy()
    for number in range(1, 5):
        expected = expected - (stream(number)[1] * np.float32(2)) * np.float32(0.1)
    assert np.array_equal(fused_vars[1].numpy(), expected)


@pytest.mark.parametrize("use_ema", [False, True])
def test_a_subset_of_the_variables(spy, use_ema):
    """Steps on part of the variables use the kernel, except with the EMA (which covers every
    variable: the reference path does that)."""
    shapes = SMALL_SHAPES
    values = make_values(shapes, "float64", 0)
    stream = gradient_stream(shapes, "float64", 1, 5)
    pair = []
    for jit in (False, True):
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1, use_ema=use_ema, jit_compile=jit)
        pair.append((optimizer, make_variables(values, "numpy")))
    for number, grads in enumerate(stream, start=1):
        before = spy.total
        for optimizer, variables in pair:
            if number == 1:
                optimizer.build(variables)
                optimizer.apply(grads, variables)
            else:  # the last two variables, in reverse order
                optimizer.apply([grads[-1], grads[-2]], [variables[-1], variables[-2]])
        if number > 1:
            assert spy.total - before == (0 if use_ema else 1), f"step {number}"
        assert_bitwise(state(*pair[0]), state(*pair[1]), f"step {number}")


# ----------------------------------------------------------------------------------------
# 5. errors on a warm fast path: the reference's error, nothing changed
# ----------------------------------------------------------------------------------------
def _bad_gradient(kind, good):
    if kind == "shape":
        return np.zeros((4, 3), good.dtype), ValueError, re.escape("has shape (4, 3) but the variable has shape (3, 4)")
    if kind == "int":
        return np.ones((3, 4), np.int32), TypeError, "Gradients must be floating-point arrays"
    jnp = requires("jax.numpy")
    return jnp.asarray(good), TypeError, "is a jax array but the variable is on numpy"


@pytest.mark.parametrize("kind", ["shape", "int", "jax"])
def test_errors_on_a_warm_fast_path_are_atomic(spy, kind):
    shapes = {"kernel": (3, 4), "bias": (4,), "big": BIG}
    values = make_values(shapes, "float32", 0)
    stream = gradient_stream(shapes, "float32", 1, 3)
    pair = []
    for jit in (False, True):
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True, weight_decay=0.01, jit_compile=jit)
        variables = make_variables(values, "numpy")
        for grads in stream[:2]:
            optimizer.apply(grads, variables)
        pair.append((optimizer, variables))
    warm = spy.done["step"]
    assert warm == warm_calls(2)
    messages = []
    for optimizer, variables in pair:
        before = state(optimizer, variables)
        grads = list(stream[2])
        grads[0], error, fragment = _bad_gradient(kind, grads[0])
        with pytest.raises(error, match=fragment) as caught:
            optimizer.apply(grads, variables)
        messages.append(str(caught.value))
        assert_bitwise(before, state(optimizer, variables), "after the error")
    assert messages[0] == messages[1]
    assert spy.done["step"] == warm
    # the fast path is still warm and still right
    for optimizer, variables in pair:
        optimizer.apply(stream[2], variables)
    assert spy.done["step"] == warm + 1
    assert_bitwise(state(*pair[0]), state(*pair[1]), "after recovering")


# ----------------------------------------------------------------------------------------
# 6. the plan follows changes
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_exclusions_reach_the_kernel(spy, backend):
    if backend == "torch":
        _torch()
    shapes = SMALL_SHAPES
    values = make_values(shapes, "float64", 0)
    stream = gradient_stream(shapes, "float64", 1, 8)
    pair = []
    for jit in (False, True):
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.3, jit_compile=jit)
        pair.append((optimizer, make_variables(values, backend)))
    untouched = None
    for number, grads in enumerate(stream, start=1):
        if number == 4:
            for optimizer, _ in pair:
                optimizer.exclude_from_weight_decay(var_names=["bias", "tiny"])
        if number == 6:
            for optimizer, variables in pair:
                optimizer.exclude_from_weight_decay(var_list=[variables[0]])  # replaces the names
        if number == 7:
            for optimizer, _ in pair:
                optimizer.weight_decay = 0.05
        for optimizer, variables in pair:
            optimizer.apply([to_backend(g, backend) for g in grads], variables)
        assert spy.done["step"] == warm_calls(number)
        assert_bitwise(state(*pair[0]), state(*pair[1]), f"step {number}")
        if number == 4:
            untouched = state(*pair[1])
    # the exclusions did change the numbers: a run without them differs
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.3)
    variables = make_variables(values, backend)
    for grads in stream[:4]:
        optimizer.apply([to_backend(g, backend) for g in grads], variables)
    bias = list(shapes).index("bias")
    assert not np.array_equal(to_numpy(variables[bias]), untouched[bias][1])


def test_torch_parameters_whose_storage_is_replaced(spy):
    torch = _torch()
    shapes = {"kernel": (3, 4), "bias": (4,), "big": BIG}
    values = make_values(shapes, "float32", 0)
    stream = gradient_stream(shapes, "float32", 1, 7)
    pair = []
    for jit in (False, True):
        params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values.values()]
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True, jit_compile=jit)
        pair.append((optimizer, params))
    for number, grads in enumerate(stream, start=1):
        if number in (3, 5):
            for _, params in pair:
                params[0].data = params[0].data.clone()
                params[2].data = params[2].data.clone() + 0.25
        if number == 6:  # set_ moves the storage of a tensor too
            for _, params in pair:
                with torch.no_grad():
                    params[1].set_(params[1].detach().clone() * 0.5)
        for optimizer, params in pair:
            optimizer.apply([torch.from_numpy(g.copy()) for g in grads], params)
        assert spy.done["step"] == warm_calls(number)
        assert_bitwise(state(*pair[0]), state(*pair[1]), f"step {number}")
    assert not np.array_equal(to_numpy(pair[1][1][2]), values["big"])


@pytest.mark.parametrize("start, then", [(0.9, 0.0), (0.0, 0.9), (0.9, 0.5)])
def test_momentum_changed_mid_run(spy, start, then):
    """``momentum`` is read at every step. The reference keeps updating the velocity slots
    that were built (with momentum 0 they become ``-lr*g``) and has none to update when it
    was built without momentum; the kernel must do the same, also when its plan is rebuilt."""
    shapes = SHAPES
    values = make_values(shapes, "float32", 0)
    stream = gradient_stream(shapes, "float32", 1, 6)
    pair = []
    for jit in (False, True):
        optimizer = inertia.SGD(learning_rate=0.1, momentum=start, weight_decay=0.1, jit_compile=jit)
        pair.append((optimizer, make_variables(values, "numpy")))
    for number, grads in enumerate(stream, start=1):
        for optimizer, _ in pair:
            if number == 3:
                optimizer.momentum = then
            if number == 5:  # the fused plan is rebuilt
                optimizer.exclude_from_weight_decay(var_names=["bias"])
        for optimizer, variables in pair:
            optimizer.apply(grads, variables)
        assert spy.done["step"] == warm_calls(number)
        assert_bitwise(state(*pair[0]), state(*pair[1]), f"step {number}")


@pytest.mark.parametrize("how", ["set_weights", "load_own_variables"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_restored_mid_run(spy, backend, how):
    if backend == "torch":
        _torch()
    shapes = SHAPES
    values = make_values(shapes, "float32", 0)
    stream = gradient_stream(shapes, "float32", 1, 6)
    pair = []
    for jit in (False, True):
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True, gradient_accumulation_steps=2,
                                jit_compile=jit)
        pair.append((optimizer, make_variables(values, backend)))
    for number, grads in enumerate(stream, start=1):
        if number == 4:
            # Both take the reference optimizer's state of step 2, with the slots halved.
            saved = {}
            pair[0][0].save_own_variables(saved)
            for key in saved:
                if saved[key].dtype.kind == "f" and saved[key].ndim:
                    saved[key] = saved[key] * 0.5
            for optimizer, _ in pair:
                if how == "set_weights":
                    optimizer.set_weights([saved[v.name] for v in optimizer.variables])
                else:
                    optimizer.load_own_variables(dict(saved))
        for optimizer, variables in pair:
            optimizer.apply([to_backend(g, backend) for g in grads], variables)
        assert_bitwise(state(*pair[0]), state(*pair[1]), f"step {number}")
    assert spy.done == {"step": 3, "accumulate": 2 + first_step_is_fast()}


# ----------------------------------------------------------------------------------------
# 7. without the kernel
# ----------------------------------------------------------------------------------------
def test_unavailable_kernels_keep_the_reference_path(monkeypatch):
    monkeypatch.setattr(kernels, "_tried", True)
    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setattr(kernels, "_reason", "test")
    assert kernels.load() is None
    assert kernels.unavailable_reason() == "test"
    values = make_values(SHAPES, "float32", 0)
    stream = gradient_stream(SHAPES, "float32", 1, 4)
    pair = []
    for jit in (False, True):
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, clipnorm=1.0, use_ema=True, jit_compile=jit)
        variables = make_variables(values, "numpy")
        for grads in stream:
            optimizer.apply(grads, variables)
        pair.append((optimizer, variables))
    assert kernels.load() is None  # asked for, and still missing: every step took the reference path
    assert_bitwise(state(*pair[0]), state(*pair[1]), "without kernels")


def _python(code: str, **env) -> str:
    environment = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_inertia_kernels_0_disables_the_kernels(tmp_path):
    out = _python(
        """
        import numpy as np, inertia
        from inertia import kernels
        w = inertia.Variable(np.ones(3, np.float32))
        opt = inertia.SGD(learning_rate=0.5)
        for _ in range(3):
            opt.apply([np.ones(3, np.float32)], [w])
        print(kernels.load() is None, kernels.unavailable_reason(), opt._fused_plan is None, w.numpy().tolist())
        """,
        INERTIA_KERNELS="0",
        INERTIA_CACHE_DIR=str(tmp_path),
    )
    assert out == "True disabled by INERTIA_KERNELS True [-0.5, -0.5, -0.5]"
    assert list(tmp_path.iterdir()) == []


def test_the_extension_is_built_with_the_package_and_nothing_is_compiled_at_run_time(tmp_path):
    _kernel_module()  # skip / fail as for the other kernel tests
    cache = tmp_path / "cache"
    out = _python(
        """
        import numpy as np, inertia
        from inertia import kernels, kernel_build
        w = inertia.Variable(np.ones(3, np.float32))
        opt = inertia.SGD(learning_rate=0.5, momentum=0.9)
        for _ in range(2):
            opt.apply([np.ones(3, np.float32)], [w])
        module = kernels.load()
        print(module.__file__)
        print(module.source_digest == kernel_build.source_digest("_kernels.c"), opt._fused_plan is not None)
        """,
        INERTIA_CACHE_DIR=str(cache), INERTIA_KERNELS="1",
    )
    path, checks = out.splitlines()
    assert Path(path).parent == Path(inertia.__file__).parent
    assert Path(path).name.endswith(importlib.machinery.EXTENSION_SUFFIXES[0])
    assert checks == "True True"
    assert not cache.exists()  # a NumPy step compiles nothing and writes no cache


def test_the_xla_handler_is_compiled_into_the_cache_once(tmp_path):
    _kernel_module()
    requires("jax")
    cache = tmp_path / "cache"
    code = "from inertia import kernels\nlibrary = kernels.load_xla()\nprint(library._name if library else kernels.xla_unavailable_reason())"
    first = _python(code, INERTIA_CACHE_DIR=str(cache), INERTIA_KERNELS="1")
    built = [p for p in cache.rglob("*") if p.is_file()]
    assert len(built) == 1 and Path(first) == built[0], (first, built)
    digest = hashlib.sha256(built[0].read_bytes()).hexdigest()
    assert built[0].name == f"_xla_kernels.{digest}.so"  # its name records its bytes' digest
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and stat.S_IMODE(built[0].parent.stat().st_mode) == 0o700
    before = built[0].stat()
    second = _python(code, INERTIA_CACHE_DIR=str(cache), INERTIA_KERNELS="1")
    assert second == first
    again = built[0].stat()
    assert (again.st_mtime_ns, again.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert [p for p in cache.rglob("*") if p.is_file()] == built


# ----------------------------------------------------------------------------------------
# 8. the stream kernel
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 3])
def test_stream_kernel(threads):
    module = _kernel_module()
    rng = np.random.default_rng(7)
    a, b, c = (rng.standard_normal(1001).astype(np.float32) for _ in range(3))
    expected_c = c * np.float32(0.5) + b
    expected_a = a + expected_c
    b_before = b.copy()
    assert module.stream(a, b, c, threads) is None
    assert np.array_equal(c, expected_c) and np.array_equal(a, expected_a)
    assert np.array_equal(b, b_before)
    with pytest.raises(ValueError, match="one length"):
        module.stream(a, b[:-1].copy(), c, threads)
    with pytest.raises(ValueError, match="one length"):
        module.stream(a, b, c[:10].copy(), threads)


# ----------------------------------------------------------------------------------------
# 9. the raw kernel contract
# ----------------------------------------------------------------------------------------
def _raw_step(module, weights, grads, velocities=None, *, is_double=0, mode=0, lr=0.5, momentum=0.0, shapes=None):
    shapes = shapes or [w.shape for w in weights]
    packed, offsets = [], []
    for shape in shapes:
        offsets.append(len(packed))
        packed.extend((len(shape), *shape))
    sizes = np.array([w.size for w in weights], np.int64)
    group = np.array([[lr, momentum, 0.0, 1.0, 0.0, 0.0, 0, mode, 0, 0, 0]], np.float64)
    return module.step(
        (weights, grads, velocities, None, None, None, None), sizes, np.array(packed, np.int64),
        np.array(offsets, np.int64), bytes(len(weights)), group, None, None, None, is_double, 0, 1, 1.0, 1.0, 0.0, 0.0,
    )


@pytest.mark.parametrize("problem", ["dtype", "shape", "non_contiguous", "size", "no_velocity", "byteswapped", "unaligned"])
def test_raw_step_rejects_what_does_not_fit(problem):
    module = _kernel_module()
    rng = np.random.default_rng(8)
    good_w = rng.standard_normal(5).astype(np.float32)
    w = [good_w.copy(), rng.standard_normal((2, 3)).astype(np.float32)]
    g = [rng.standard_normal(5).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)]
    # a fitting call does the step (on copies)
    w_ok = [x.copy() for x in w]
    assert _raw_step(module, w_ok, g) == host.DONE
    assert np.array_equal(w_ok[0], w[0] - g[0] * np.float32(0.5))
    assert np.array_equal(w_ok[1], w[1] - g[1] * np.float32(0.5))
    before = [x.copy() for x in w]
    kwargs = {}
    if problem == "dtype":
        g[1] = g[1].astype(np.float64)
    elif problem == "shape":
        g[1] = g[1].reshape(3, 2).copy()
    elif problem == "non_contiguous":
        g[1] = np.asfortranarray(g[1])
    elif problem == "size":
        g[1] = g[1].ravel()[:5].copy().reshape(5)
    elif problem == "byteswapped":
        g[1] = g[1].astype(">f4")
    elif problem == "unaligned":
        raw = np.frombuffer(bytearray(4 * 6 + 1), dtype=np.uint8)[1:]
        g[1] = raw.view(np.float32).reshape(2, 3)
        assert not g[1].flags.aligned
    else:  # a group with momentum and no velocities: a malformed call
        with pytest.raises(TypeError, match="needs velocities"):
            _raw_step(module, w, g, mode=1, momentum=0.9)
    if problem != "no_velocity":
        assert _raw_step(module, w, g, **kwargs) == host.DECLINED
    assert_bitwise([("w", x) for x in before], [("w", x) for x in w], problem)  # not even the first tensor


def test_raw_step_takes_arrays_and_buffers_and_releases_them():
    """NumPy arrays are read through NumPy's C API and held only during the call; other
    buffers (a memoryview here) through the buffer protocol."""
    module = _kernel_module()
    w = [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]
    g = [np.ones(3, np.float32), np.full((2, 2), 2.0, np.float32)]
    counts = [sys.getrefcount(x) for x in w + g]
    assert _raw_step(module, w, [g[0], memoryview(g[1])], lr=0.5) == host.DONE
    assert _raw_step(module, w, [g[0], g[1].reshape(4)], lr=0.5, shapes=[(3,), (2, 2)]) == host.DECLINED
    assert [sys.getrefcount(x) for x in w + g] == counts
    assert np.array_equal(w[0], np.full(3, -0.5, np.float32)) and np.array_equal(w[1], np.full((2, 2), -1.0, np.float32))


def test_raw_step_float64_and_read_only_weights():
    module = _kernel_module()
    w = np.arange(4, dtype=np.float64)
    g = np.ones(4, np.float64)
    assert _raw_step(module, [w], [g], is_double=1, lr=0.25) == host.DONE
    assert np.array_equal(w, np.arange(4) - 0.25)
    assert _raw_step(module, [w], [g], is_double=0) == host.DECLINED  # a float64 buffer is not float32
    frozen = np.arange(4, dtype=np.float64)
    frozen.flags.writeable = False
    assert _raw_step(module, [frozen], [g], is_double=1) == host.DECLINED
    assert np.array_equal(frozen, np.arange(4))


def test_raw_accumulate_rejects_what_does_not_fit():
    module = _kernel_module()
    acc = np.zeros((2, 3), np.float32)
    grad = np.arange(6, dtype=np.float32).reshape(2, 3)
    shapes, offsets, sizes = np.array([2, 2, 3], np.int64), np.array([0], np.int64), np.array([6], np.int64)
    assert module.accumulate([acc], [grad], sizes, shapes, offsets, None, None, 0, 1) == host.DONE
    assert np.array_equal(acc, grad)
    for bad in (grad.astype(np.float64), grad.reshape(3, 2).copy(), np.asfortranarray(grad)):
        assert module.accumulate([acc], [bad], sizes, shapes, offsets, None, None, 0, 1) == host.DECLINED
        assert np.array_equal(acc, grad)
    flat = np.zeros(6, np.float32)  # an accumulator of the right size but another shape
    assert module.accumulate([flat], [grad], sizes, shapes, offsets, None, None, 0, 1) == host.DECLINED
    assert not flat.any()


@pytest.mark.parametrize("size", [2, 70_000], ids=["small", "chunked"])
def test_a_nan_norm_makes_the_clipped_tensor_nan_as_keras_does(spy, size):
    # clipnorm divides by max(norm, c); Keras' max of a NaN norm is NaN, so every element of
    # that tensor becomes NaN, finite ones included. Tensors over 64K elements take the
    # kernel's chunked route (norm sums first), smaller ones its grouped route.
    results = {}
    for jit_compile in (True, False):
        weight = np.ones(size, np.float32)
        gradient = np.full(size, 2.0, np.float32)
        gradient[0] = np.nan
        optimizer = inertia.SGD(learning_rate=0.1, clipnorm=1.0, jit_compile=jit_compile)
        optimizer.apply([np.zeros(size, np.float32)], [weight])  # builds; later steps are fused
        calls = spy.total
        optimizer.apply([gradient], [weight])
        assert spy.total == calls + int(jit_compile)
        results[jit_compile] = weight
    assert np.isnan(results[False]).all()
    assert np.isnan(results[True]).all()


def test_raw_step_outputs_need_the_heavy_ball_form_and_both_lists():
    """Outputs of their own (the MLX face) are written only by heavy-ball groups, weights and
    velocities both: a Keras group would write its inputs, which are only read then."""
    module = _kernel_module()
    w, g, v = np.ones(4, np.float32), np.full(4, 2.0, np.float32), np.zeros(4, np.float32)
    w_out, v_out = np.empty(4, np.float32), np.empty(4, np.float32)
    sizes, shapes, offsets = np.array([4], np.int64), np.array([1, 4], np.int64), np.array([0], np.int64)

    def call(form, lists):
        group = np.array([[0.5, 0.9, 0.0, 1.0, 0.0, 0.0, form, 1, 0, 0, 0]], np.float64)
        return module.step(lists, sizes, shapes, offsets, bytes(1), group, None, None, None, 0, 0, 1, 1.0, 1.0, 0.0, 0.0)

    e = np.zeros(4, np.float32)
    for form, lists in ((0, (w, g, v, None, None, w_out, v_out)), (1, (w, g, v, None, None, w_out, None)),
                        (1, (w, g, v, None, None, None, v_out)), (1, (w, g, v, e, None, w_out, v_out))):
        with pytest.raises(TypeError, match="outputs need"):
            call(form, tuple(None if x is None else [x] for x in lists))
    assert call(1, ([w], [g], [v], None, None, [w_out], [v_out])) == host.DONE
    assert np.array_equal(w, np.ones(4, np.float32)) and not v.any()  # the inputs are only read
    assert np.array_equal(v_out, g) and np.array_equal(w_out, np.ones(4, np.float32) - np.float32(0.5) * g)
