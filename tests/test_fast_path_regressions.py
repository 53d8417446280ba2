"""Fast paths that once did not give the reference path's result (found in review, fixed).

Each test runs one scenario twice, on the fast path and inside ``host.disabled()`` (the
reference path), and compares the two: a plain callable learning rate called once per step
when the kernel declines or plans again; a constraint or overwrite_with_gradient set after
the first step; the MLX face's 0-d leaves, ``nesterov`` set later, and a learning rate of
another shape written into its state.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import inertia
import inertia.legacy
import inertia.mlx
from conftest import requires
from inertia import backend as backends
from inertia import kernels
from inertia.engine import host


@pytest.fixture(autouse=True)
def _kernel():
    if kernels.load() is None:
        reason = kernels.unavailable_reason()
        if backends.required():
            pytest.fail(f"the host kernel is unavailable: {reason}")
        pytest.skip(f"the host kernel is unavailable: {reason}")


def _both(scenario):
    """(fast path's result, reference path's result)."""
    fast = scenario()
    with host.disabled():
        reference = scenario()
    return fast, reference


# ----------------------------------------------------------------------------------------
# Keras and legacy faces: a plain callable learning rate
# ----------------------------------------------------------------------------------------
def _counting_rate():
    rates = itertools.count(1)
    return rates, (lambda: 0.1 * next(rates))


@pytest.mark.parametrize("face", ["keras", "legacy"])
def test_callable_learning_rate_is_called_once_when_the_kernel_declines(face):
    """A plain callable learning rate is evaluated by the fast path (``_engine_groups`` in
    ``engine/optimizer_host._run``) before the kernel checks its operands; when the kernel
    then declines (here: a transposed, non-contiguous gradient) the reference path calls it
    again. The reference path calls it once per step, the fast path twice: a rate that reads
    Python state (an iterator, a counter) advances twice and the weights differ."""

    def scenario():
        rates, rate = _counting_rate()
        w = np.ones((2, 3), np.float32)
        if face == "keras":
            opt = inertia.SGD(rate)
            for _ in range(3):
                opt.apply([np.ones((3, 2), np.float32).T], [w])
        else:
            opt = inertia.legacy.SGD(rate)
            for _ in range(3):
                opt.apply_gradients([(np.ones((3, 2), np.float32).T, w)])
        return w.copy(), next(rates)

    (fast_w, fast_calls), (ref_w, ref_calls) = _both(scenario)
    assert fast_calls == ref_calls  # fast: 7, reference: 4
    np.testing.assert_array_equal(fast_w, ref_w)


def test_callable_learning_rate_is_called_once_when_a_tensor_moved():
    """When a torch tensor is given new storage between steps (``p.data = ...``), the kernel
    answers MOVED and ``optimizer_host.apply`` runs ``_run`` again, which evaluates the
    callable learning rate a second time within the same step (both attempts on the fast
    path). The reference path calls it once per step."""
    torch = requires("torch")

    def scenario():
        rates, rate = _counting_rate()
        w = torch.nn.Parameter(torch.ones(3))
        opt = inertia.SGD(rate)
        for i in range(3):
            opt.apply([torch.ones(3)], [w])
            if i == 0:
                w.data = torch.ones(3)
        return w.detach().clone(), next(rates)

    (fast_w, fast_calls), (ref_w, ref_calls) = _both(scenario)
    assert fast_calls == ref_calls  # fast: 5, reference: 4
    assert torch.equal(fast_w, ref_w)


# ----------------------------------------------------------------------------------------
# Keras face: variable attributes changed between steps
# ----------------------------------------------------------------------------------------
def test_constraint_set_after_the_first_step_is_applied():
    """``Variable.constraint`` set between steps: the reference path applies it after the
    update; the fast path keeps the plan made on the first step (``_current_plan`` in
    ``engine/optimizer_host.py`` re-checks targets, exclusions and arrays, not constraints),
    so the kernel runs and the constraint is silently ignored."""

    def scenario():
        w = inertia.Variable(np.ones(4, np.float32))
        opt = inertia.SGD(0.1, momentum=0.9)
        for i in range(3):
            opt.apply([np.ones(4, np.float32)], [w])
            if i == 0:
                w.constraint = lambda v: v.value * 0
        return np.array(w.numpy(), copy=True)

    fast, reference = _both(scenario)
    np.testing.assert_array_equal(fast, reference)  # fast: 0.439, reference: -0.0


def test_overwrite_with_gradient_set_after_the_first_step_is_honoured():
    """``Variable.overwrite_with_gradient`` set between steps (Keras sets it on float8 scale
    variables): the reference path then writes the gradient into the variable and leaves
    its momentum alone; the fast path keeps its stale plan and applies an SGD update."""

    def scenario():
        a = inertia.Variable(np.ones(4, np.float32))
        b = inertia.Variable(np.ones(3, np.float32))
        opt = inertia.SGD(0.1, momentum=0.9)
        for i in range(3):
            opt.apply([np.full(4, 2.0, np.float32), np.full(3, 5.0, np.float32)], [a, b])
            if i == 0:
                b.overwrite_with_gradient = True
        return np.array(b.numpy(), copy=True), [np.array(v.numpy(), copy=True) for v in opt.variables]

    (fast_b, fast_vars), (ref_b, ref_vars) = _both(scenario)
    np.testing.assert_array_equal(fast_b, ref_b)  # reference: the gradient, 5.0
    for fast_v, ref_v in zip(fast_vars, ref_vars):
        np.testing.assert_array_equal(fast_v, ref_v)


# ----------------------------------------------------------------------------------------
# MLX face
# ----------------------------------------------------------------------------------------
def test_mlx_face_zero_d_numpy_leaf_keeps_the_reference_type():
    """A 0-d NumPy leaf: the reference path's arithmetic returns NumPy scalars
    (``np.float32``) for the new parameter and the velocity; the fast path returns 0-d
    ``np.ndarray`` outputs (``_outputs`` in ``mlx.py`` makes arrays of shape ``()``), so the
    results differ in type (and mutability) from the reference path's."""

    def scenario():
        params = {"w": np.array(1.5, np.float32), "b": np.ones(3, np.float32)}
        opt = inertia.mlx.SGD(0.1, momentum=0.9)
        params = opt.apply_gradients({"w": np.array(2.0, np.float32), "b": np.ones(3, np.float32)}, params)
        return type(params["w"]), type(opt.state["w"]["v"])

    fast, reference = _both(scenario)
    assert fast == reference  # fast: ndarray, ndarray; reference: float32, float32


def test_mlx_face_nesterov_changed_after_construction():
    """``opt.nesterov`` is a plain attribute. The reference path's rule is built once in
    ``__init__`` (``self._rule``) and ignores a later change; the fast path builds its group
    settings from ``self.nesterov`` every step (``_fast_apply``), so the two paths give
    different weights once ``nesterov`` is set after construction."""

    def scenario():
        params = {"a": np.ones(4, np.float32)}
        opt = inertia.mlx.SGD(0.1, momentum=0.9)
        for i in range(3):
            params = opt.apply_gradients({"a": np.full(4, 0.5, np.float32)}, params)
            if i == 0:
                opt.nesterov = True
        return params["a"].copy(), np.array(opt.state["a"]["v"], copy=True)

    (fast_w, fast_v), (ref_w, ref_v) = _both(scenario)
    np.testing.assert_array_equal(fast_w, ref_w)
    np.testing.assert_array_equal(fast_v, ref_v)


def test_mlx_face_learning_rate_of_one_element_in_state_does_not_raise():
    """A learning rate stored in ``opt.state`` as a 1-element array (state is plain data the
    user may set): the reference path broadcasts it and steps; the fast path raises
    ``TypeError: only 0-dimensional arrays can be converted to Python scalars`` from
    ``float(ops.to_numpy(...))`` in ``_fast_apply`` instead of declining."""

    def scenario():
        params = {"a": np.ones(4, np.float32)}
        opt = inertia.mlx.SGD(0.1, momentum=0.9)
        params = opt.apply_gradients({"a": np.ones(4, np.float32)}, params)
        opt.state["learning_rate"] = np.array([0.05], np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = opt.apply_gradients({"a": np.ones(4, np.float32)}, params)
        return params["a"].copy(), int(opt.step)

    (fast_w, fast_step), (ref_w, ref_step) = _both(scenario)
    np.testing.assert_array_equal(fast_w, ref_w)
    assert fast_step == ref_step
