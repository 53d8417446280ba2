"""The JAX fused path of ``inertia.SGD`` (``xla_fused.py`` + the FFI handler in ``_xla_kernels.c``).

Inside inertia's own jitted step on the CPU, stock SGD's update runs as custom calls of the
NumPy backend's kernel. These tests check that:

* the custom call really runs (a spy counts the traced steps that took it, and the compiled
  step's HLO names it), and updates the donated buffers in place;
* it gives the NumPy fast path's numbers bit for bit on every case of the fused table, except
  where a norm is taken (the sums) or XLA prepares the kernel's gradients (a loss scale or an
  accumulation mean: XLA divides by a constant as a multiply by its reciprocal), and the JAX
  reference path's within rounding (XLA contracts multiply-adds there);
* whatever it does not cover falls back to the reference path: other classes, constraints,
  mixed dtypes, a global norm over more tensors than one call takes, ``jit_compile=False``,
  and any trace that is not inertia's own (a user's ``jax.jit`` / ``jax.grad`` of
  ``stateless_apply``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import inertia
from conftest import load_backend, requires
from inertia import backend as backends
from inertia import kernels
from test_fused import CASES, DTYPES, NORM_TOLERANCES, SHAPES, STEPS, _HeldRate, _python, gradient_stream, make_values, state

load_backend("jax")  # float64 enabled, as in the other JAX tests
jax = requires("jax")
jnp = jax.numpy
from inertia import xla_fused  # noqa: E402  (after jax: it imports jax)

ROUNDING = {"float64": {"rtol": 1e-12, "atol": 1e-14}, "float32": {"rtol": 2e-6, "atol": 2e-7}}


@pytest.fixture(autouse=True)
def _handler():
    if kernels.load_xla() is None:
        if backends.required():  # CI: a compiler and jaxlib's headers are part of the environment
            pytest.fail("the XLA kernel is unavailable")
        pytest.skip("the XLA kernel is unavailable")


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """The test tensors are small: every one takes the custom call, unless a test says otherwise."""
    monkeypatch.setattr(xla_fused, "SMALLEST_BYTES", 0)


@pytest.fixture
def traced(monkeypatch):
    """Counts traced steps that took the custom call (True) or declined it (False)."""
    outcomes: list[bool] = []
    original = xla_fused.fused_update

    def spy(*args, **kwargs):
        outcomes.append(original(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(xla_fused, "fused_update", spy)
    return outcomes


def jax_variables(values: dict) -> list:
    return [inertia.Variable(jnp.asarray(value), name=name) for name, value in values.items()]


def numpy_variables(values: dict) -> list:
    return [inertia.Variable(np.array(value, copy=True), name=name) for name, value in values.items()]


def run_three(case: str, dtype: str, shapes: dict, monkeypatch, steps: int = STEPS) -> tuple:
    """The case on NumPy (fused kernel), JAX compiled and JAX reference; states after each step."""
    factory, exclude, threads, _ = CASES[case]
    if threads is not None:
        monkeypatch.setenv("INERTIA_NUM_THREADS", threads)
    values = make_values(shapes, dtype, 0)
    runs = []
    for make, jit_compile in ((numpy_variables, True), (jax_variables, True), (jax_variables, False)):
        settings = factory()
        optimizer = inertia.SGD(jit_compile=jit_compile, **settings)
        if exclude:
            optimizer.exclude_from_weight_decay(var_names=exclude)
        runs.append((optimizer, make(values), settings, make is jax_variables))
    history = []
    for number, grads in enumerate(gradient_stream(shapes, dtype, 1, steps), start=1):
        states = []
        for optimizer, variables, settings, on_jax in runs:
            if isinstance(settings.get("learning_rate"), _HeldRate):
                settings["learning_rate"].value = 0.1 / number
            optimizer.apply([jnp.asarray(g) if on_jax else g for g in grads], variables)
            states.append(state(optimizer, variables))
        history.append(states)
    return runs, history


# ----------------------------------------------------------------------------------------
# 1. equality on the fused table
# ----------------------------------------------------------------------------------------
def _traits(settings: dict) -> tuple[bool, bool]:
    """(inexact, compiled): whether the kernel's numbers may differ from NumPy's in the last
    bit, and whether the case runs a compiled step at all."""
    norm = bool(settings.get("clipnorm") or settings.get("global_clipnorm"))
    # XLA forms the kernel's gradients there, and it divides by a constant as a multiply by
    # its (rounded) reciprocal: g / 96 and (g + A) / 3 differ from NumPy's in the last bit
    divided = bool(settings.get("loss_scale_factor") or settings.get("gradient_accumulation_steps"))
    # a plain callable learning rate runs eagerly (see Optimizer.apply): no compiled step
    compiled = not isinstance(settings.get("learning_rate"), _HeldRate)
    return norm or divided, compiled


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_jax_fused_equals_numpy_fused_and_jax_reference(traced, monkeypatch, dtype, case):
    runs, history = run_three(case, dtype, SHAPES, monkeypatch)
    inexact, compiled = _traits(runs[1][2])
    assert traced.count(True) == (1 if compiled else 0), traced  # traced once, then repeated
    for number, (numpy_fused, jax_fused, jax_reference) in enumerate(history, start=1):
        for (name, want), (name_j, got) in zip(numpy_fused, jax_fused):
            assert name == name_j and want.dtype == got.dtype, name
            if inexact or not compiled:
                np.testing.assert_allclose(got, want, err_msg=f"step {number}: {name}", **NORM_TOLERANCES[dtype])
            else:
                assert np.array_equal(got, want), f"step {number}: {name} differs by {np.max(np.abs(got - want))}"
        for (name, want), (_, got) in zip(jax_reference, jax_fused):
            np.testing.assert_allclose(got, want, err_msg=f"step {number}: {name} vs reference", **ROUNDING[dtype])


@pytest.mark.parametrize("case", list(CASES))
def test_small_tensors_keep_xla_fusions_beside_the_call(traced, monkeypatch, case):
    """Above SMALLEST_BYTES the custom call, under it the reference stages in the same step."""
    monkeypatch.setattr(xla_fused, "SMALLEST_BYTES", 4096)  # "big" alone is over it
    called_for: list = []
    original = xla_fused._custom_calls

    def spy(optimizer, grads, wrappers, *rest):
        called_for.append([tuple(w.shape) for w in wrappers])
        return original(optimizer, grads, wrappers, *rest)

    monkeypatch.setattr(xla_fused, "_custom_calls", spy)
    runs, history = run_three(case, "float32", SHAPES, monkeypatch)
    inexact, compiled = _traits(runs[1][2])
    taken = compiled and not runs[1][2].get("global_clipnorm")  # a global norm spans both sizes
    assert traced.count(True) == (1 if taken else 0), traced
    assert called_for == ([[SHAPES["big"]]] if taken else [])
    if taken:
        optimizer, variables = runs[1][0], runs[1][1]
        grads = [jnp.asarray(g) for g in gradient_stream(SHAPES, "float32", 1, 1)[0]]
        lowered = optimizer._compiled.last.step.lower(
            [v.value for v in optimizer._compiled.last.own], [v.value for v in variables], grads)
        assert lowered.as_text().count("inertia_sgd_step") == 1
    for number, (numpy_fused, jax_split, jax_reference) in enumerate(history, start=1):
        for (name, want), (_, got) in zip(jax_reference, jax_split):
            np.testing.assert_allclose(got, want, err_msg=f"step {number}: {name} vs reference", **ROUNDING["float32"])
        for (name, want), (_, got) in zip(numpy_fused, jax_split):
            if want.shape == SHAPES["big"] and taken and not inexact:
                assert np.array_equal(got, want), f"step {number}: {name} (the call's) differs from NumPy's kernel"
            else:
                np.testing.assert_allclose(got, want, err_msg=f"step {number}: {name}", **NORM_TOLERANCES["float32"])


def test_only_small_tensors_keep_the_reference_path(traced, monkeypatch):
    monkeypatch.setattr(xla_fused, "SMALLEST_BYTES", 4 * 12 + 1)  # one more than the larger holds
    variables = [inertia.Variable(jnp.ones((3, 4), jnp.float32)), inertia.Variable(jnp.ones((5,), jnp.float32))]
    _two_steps(inertia.SGD(learning_rate=0.1, momentum=0.9), variables)
    assert traced == [False]
    monkeypatch.setattr(xla_fused, "SMALLEST_BYTES", 4 * 12)
    _two_steps(inertia.SGD(learning_rate=0.1, momentum=0.9), variables)
    assert traced == [False, True]


def test_many_tensors_take_several_calls(traced, monkeypatch):
    count = 2 * xla_fused.GROUP + 5
    shapes = {f"t{i}": ((i % 7) + 1, 3) for i in range(count)}
    monkeypatch.setitem(CASES, "many", (lambda: dict(momentum=0.9, weight_decay=0.1, use_ema=True), ["t1"], "2", False))
    _, history = run_three("many", "float32", shapes, monkeypatch, steps=3)
    assert traced == [True]
    for numpy_fused, jax_fused, _ in history:
        for (name, want), (_, got) in zip(numpy_fused, jax_fused):
            assert np.array_equal(got, want), name


def test_the_compiled_step_calls_the_handler_and_updates_in_place(traced):
    values = make_values(SHAPES, "float32", 0)
    variables = jax_variables(values)
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
    grads = [jnp.asarray(g) for g in gradient_stream(SHAPES, "float32", 1, 1)[0]]
    optimizer.apply(grads, variables)
    step = optimizer._compiled.last.step
    own = [v.value for v in optimizer._compiled.last.own]
    lowered = step.lower(own, [v.value for v in variables], grads)
    assert lowered.as_text().count("inertia_sgd_step") == 1
    # results alias the donated operands: no tensor is copied (a scalar counter may be)
    assert not re.findall(r"= f(?:32|64)\[[^\]]+\]\S* copy\(", lowered.compile().as_text())
    buffers = [v.value.unsafe_buffer_pointer() for v in variables + optimizer.momentums]
    before = [v.numpy() for v in variables]
    optimizer.apply(grads, variables)
    assert [v.value.unsafe_buffer_pointer() for v in variables + optimizer.momentums] == buffers  # donated, aliased
    assert not any(np.array_equal(b, v.numpy()) for b, v in zip(before, variables))
    assert traced == [True]


# ----------------------------------------------------------------------------------------
# 2. what it does not cover keeps the reference path
# ----------------------------------------------------------------------------------------
class IdentityConstraint:
    def __call__(self, value):
        return value


def _two_steps(optimizer, variables, dtype="float32"):
    for grads in gradient_stream({str(i): v.shape for i, v in enumerate(variables)}, dtype, 3, 2):
        optimizer.apply([jnp.asarray(g, dtype=v.dtype) for g, v in zip(grads, variables)], variables)


def test_legacy_sgd_keeps_the_reference_path(traced):
    variables = jax_variables(make_values({"w": (3, 4)}, "float32", 0))
    _two_steps(inertia.legacy.SGD(learning_rate=0.1, momentum=0.9), variables)
    assert True not in traced


def test_a_constraint_keeps_the_reference_path(traced):
    variables = [inertia.Variable(jnp.ones((3, 4)), constraint=IdentityConstraint())]
    _two_steps(inertia.SGD(learning_rate=0.1, momentum=0.9), variables)
    assert traced == [False]


def test_mixed_dtypes_keep_the_reference_path(traced):
    variables = [inertia.Variable(jnp.ones((3,), jnp.float32)), inertia.Variable(jnp.ones((2,), jnp.float64))]
    _two_steps(inertia.SGD(learning_rate=0.1, momentum=0.9), variables)
    assert traced == [False]


def test_a_global_norm_over_more_than_one_call_keeps_the_reference_path(traced):
    variables = [inertia.Variable(jnp.full((2,), i, jnp.float32)) for i in range(xla_fused.GROUP + 1)]
    _two_steps(inertia.SGD(learning_rate=0.1, global_clipnorm=1.0), variables)
    assert traced == [False]
    few = [inertia.Variable(jnp.full((2,), i, jnp.float32)) for i in range(3)]
    _two_steps(inertia.SGD(learning_rate=0.1, global_clipnorm=1.0), few)
    assert traced == [False, True]


def test_jit_compile_false_keeps_the_reference_path(traced):
    variables = jax_variables(make_values({"w": (3, 4)}, "float32", 0))
    _two_steps(inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=False), variables)
    assert traced == []


def test_user_traces_of_stateless_apply_stay_differentiable(traced):
    """jax.grad through a step (meta-learning) needs traceable operations, not a custom call."""
    w = inertia.Variable(jnp.asarray([1.0, -2.0]))
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    optimizer.build([w])
    own = [v.value for v in optimizer.variables]

    def weight_after_step(rate_scale):
        grads = [jnp.asarray([0.5, 0.25]) * rate_scale]
        trainables, _ = optimizer.stateless_apply(own, grads, [w.value])
        return jnp.sum(trainables[0])

    value, derivative = jax.jit(jax.value_and_grad(weight_after_step))(2.0)
    assert float(value) == pytest.approx(-1.0 - 0.1 * 1.5)
    assert float(derivative) == pytest.approx(-0.1 * 0.75)
    assert True not in traced


# ----------------------------------------------------------------------------------------
# 3. the handler's build (its disk cache: test_fused.py)
# ----------------------------------------------------------------------------------------
def test_inertia_kernels_0_keeps_jax_on_the_reference_path():
    out = _python(
        """
        import jax.numpy as jnp, inertia
        import inertia.xla_fused as xla_fused
        from inertia import kernels
        n = xla_fused.SMALLEST_BYTES // 4  # float32 elements: large enough for the call
        w = inertia.Variable(jnp.ones(n, jnp.float32))
        inertia.SGD(learning_rate=0.5, momentum=0.9).apply([jnp.ones(n, jnp.float32)], [w])
        print(kernels.load_xla() is None, kernels.xla_unavailable_reason(), xla_fused._registered, w.numpy()[:3].tolist())
        """,
        INERTIA_KERNELS="0",
    )
    assert out == "True disabled by INERTIA_KERNELS False [0.5, 0.5, 0.5]"


def test_by_default_the_call_starts_at_64_kib():
    out = _python(
        """
        import jax.numpy as jnp, inertia
        import inertia.xla_fused as xla_fused
        for n in (16383, 16384):  # float32 elements: one short of 64 KiB, then 64 KiB
            w = inertia.Variable(jnp.ones(n, jnp.float32))
            inertia.SGD(learning_rate=0.5, momentum=0.9).apply([jnp.ones(n, jnp.float32)], [w])
            print(n, xla_fused._registered, float(w.numpy()[0]))
        """,
    )
    assert out.splitlines() == ["16383 None 0.5", "16384 True 0.5"]


def test_the_handler_allocates_nothing_and_refuses_a_short_workspace(monkeypatch):
    """A step of several custom calls is whole or not at all: each call's scratch memory is a
    workspace result that XLA allocates with the step's buffers, before any call runs, so a
    call cannot fail half-way for memory. Sized one byte short, the handler refuses before
    writing, with its own message."""

    sizes = [70_000, 5, 65_536, 3]  # chunked and grouped tensors
    assert xla_fused.workspace_bytes(sizes) >= 4 * 48 + 8 * (70_000 // 65_536 + 1 + 3 + 1) * 5

    def run(workspace):
        monkeypatch.setattr(xla_fused, "workspace_bytes", workspace)
        variables = [inertia.Variable(jnp.ones(size, jnp.float32)) for size in sizes]
        optimizer = inertia.SGD(0.5, momentum=0.9, clipnorm=1.0)
        optimizer.apply([jnp.full(size, 2.0, jnp.float32) for size in sizes], variables)
        return [np.asarray(v.value) for v in variables]

    exact = xla_fused.workspace_bytes
    done = run(exact)
    reference = np.float32(1) - np.float32(0.5) * ((np.float32(2) * np.float32(1)) / np.sqrt(np.float32(4) * np.float32(70_000)))
    assert done[0][0] == pytest.approx(reference, rel=1e-6)
    with pytest.raises(Exception, match="workspace is too small"):
        run(lambda s: exact(s) - 1)
