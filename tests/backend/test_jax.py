"""The JAX backend: pure ``stateless_apply`` inside ``jax.jit`` (donated buffers, no
recompilation), the eager apply that runs one compiled step, the errors for raw JAX arrays
and for mixed backends, ``minimize`` through ``jax.grad``, and dynamic loss scaling under
``jax.jit``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import inertia
from conftest import load_backend, tensor
from inertia import schedules

FEATURES = dict(
    momentum=0.9, nesterov=True, weight_decay=0.05, clipnorm=0.5, use_ema=True, ema_momentum=0.8,
    ema_overwrite_frequency=3, gradient_accumulation_steps=2,
)
F64 = {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture
def jax():
    load_backend("jax")  # skips locally, fails in CI when missing; float64 enabled
    import jax

    return jax


@pytest.fixture
def jnp(jax):
    import jax.numpy as jnp

    return jnp


def regression_data(jnp, dtype="float64"):
    rng = np.random.default_rng(0)
    x = tensor(rng.normal(size=(8, 3)), dtype, backend_name="jax")
    y = tensor(rng.normal(size=(8,)), dtype, backend_name="jax")
    init = [rng.normal(size=(3,)), np.asarray(rng.normal())]
    return x, y, init


def mse(values, x, y):
    import jax.numpy as jnp

    kernel, bias = values
    return jnp.mean((x @ kernel + bias - y) ** 2)


def named_variables(init, dtype="float64"):
    return [
        inertia.Variable(tensor(init[0], dtype, backend_name="jax"), name="kernel"),
        inertia.Variable(tensor(init[1], dtype, backend_name="jax"), name="bias"),
    ]


def featured_sgd(learning_rate, **overrides):
    optimizer = inertia.SGD(learning_rate=learning_rate, **{**FEATURES, **overrides})
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def copies(jnp, arrays):
    return [jnp.array(a, copy=True) for a in arrays]


# --- (a) a whole training step under jax.jit equals the eager path -------------------------
@pytest.mark.parametrize("dtype, tolerance", [("float64", F64), ("float32", {"rtol": 1e-6, "atol": 1e-7})])
def test_jitted_training_step_with_donation_equals_eager_apply(jax, jnp, dtype, tolerance):
    x, y, init = regression_data(jnp, dtype)
    initial_rate = np.float64(0.1) if dtype == "float64" else 0.1

    def schedule():
        return schedules.CosineDecay(initial_rate, decay_steps=6, alpha=0.1, warmup_target=initial_rate * 2, warmup_steps=2)

    # Stateless: the optimizer only lends its structure; the state lives in the arrays.
    variables = named_variables(init, dtype)
    stateless = featured_sgd(schedule())
    stateless.build(variables)
    pristine = [v.numpy() for v in stateless.variables]

    def train_step(optimizer_values, trainable_values, x, y):
        grads = jax.grad(mse)(trainable_values, x, y)
        new_trainables, new_optimizer_values = stateless.stateless_apply(optimizer_values, grads, trainable_values)
        return new_optimizer_values, new_trainables

    step = jax.jit(train_step, donate_argnums=(0, 1))
    # Copies: donated buffers are deleted, and these must not be the optimizer's own.
    optimizer_values = copies(jnp, [v.value for v in stateless.variables])
    trainable_values = copies(jnp, [v.value for v in variables])

    # Eager: the same settings on inertia.Variables with opt.apply.
    eager_variables = named_variables(init, dtype)
    eager = featured_sgd(schedule())

    for number in range(8):
        donated = list(optimizer_values)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "donated buffers were not usable"
            optimizer_values, trainable_values = step(optimizer_values, trainable_values, x, y)
        assert all(a.is_deleted() for a in donated)
        eager.apply(jax.grad(mse)([v.value for v in eager_variables], x, y), eager_variables)

        assert [v.name for v in eager.variables] == [v.name for v in stateless.variables]
        for name, got, want in zip(["kernel", "bias"], trainable_values, eager_variables):
            assert got.dtype == want.value.dtype == dtype
            np.testing.assert_allclose(np.asarray(got), want.numpy(), err_msg=f"step {number}: {name}", **tolerance)
        for got, want in zip(optimizer_values, eager.variables):
            assert got.dtype == want.value.dtype and got.shape == want.shape
            np.testing.assert_allclose(np.asarray(got), want.numpy(), err_msg=f"step {number}: {want.name}", **tolerance)
    assert int(eager.iterations) == 4 and int(optimizer_values[0]) == 8  # 8 micro-steps, 4 updates
    # The stateless optimizer's own variables never moved, and the weights were updated.
    for variable, before in zip(stateless.variables, pristine):
        np.testing.assert_array_equal(variable.numpy(), before)
    np.testing.assert_array_equal(variables[0].numpy(), tensor(init[0], dtype, backend_name="numpy"))
    assert not np.allclose(np.asarray(trainable_values[0]), variables[0].numpy())


# --- (b) no recompilation: second call, new learning rate ------------------------------
def test_stateless_step_compiles_once_even_when_the_learning_rate_changes(jax, jnp):
    w = inertia.Variable(jnp.asarray([1.0, -2.0, 3.0]), name="w")
    optimizer = inertia.SGD(learning_rate=0.1)
    optimizer.build([w])
    names = [v.name for v in optimizer.variables]
    assert names[:2] == ["iteration", "learning_rate"]
    traces = []

    def step(optimizer_values, trainable_values, grads):
        traces.append(1)  # a Python side effect: runs only when JAX traces
        new_trainables, new_optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable_values)
        return new_optimizer_values, new_trainables

    jitted = jax.jit(step, donate_argnums=(0, 1))
    grads = [jnp.asarray([1.0, 1.0, 1.0])]
    optimizer_values = copies(jnp, [v.value for v in optimizer.variables])
    trainable_values = copies(jnp, [w.value])

    optimizer_values, trainable_values = jitted(optimizer_values, trainable_values, grads)
    optimizer_values, trainable_values = jitted(optimizer_values, trainable_values, grads)
    assert len(traces) == 1 and jitted._cache_size() == 1
    np.testing.assert_allclose(np.asarray(trainable_values[0]), [0.8, -2.2, 2.8], rtol=1e-6)

    # The learning rate is an array of the state: a new one is data, not a new program.
    lr = optimizer_values[1]
    optimizer_values[1] = jnp.asarray(0.5, dtype=lr.dtype)
    before = np.asarray(trainable_values[0])
    optimizer_values, trainable_values = jitted(optimizer_values, trainable_values, grads)
    assert len(traces) == 1 and jitted._cache_size() == 1
    np.testing.assert_allclose(np.asarray(trainable_values[0]), before - np.float32(0.5), rtol=1e-6)
    assert float(optimizer_values[1]) == 0.5 and int(optimizer_values[0]) == 3
    assert float(optimizer.learning_rate) == np.float32(0.1)  # the optimizer's own rate is untouched


# --- (c) the eager apply compiles one step and reuses it ----------------------------------
class CountingSGD(inertia.SGD):
    """Counts ``update_step`` calls: once per variable per trace when compiled, once per
    variable per update step when eager."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.update_calls = 0

    def update_step(self, gradient, variable, learning_rate):
        self.update_calls += 1
        super().update_step(gradient, variable, learning_rate)


def test_eager_apply_compiles_once_and_equals_the_uncompiled_path(jax, jnp):
    x, y, init = regression_data(jnp)
    runs = {}
    for jit_compile in (True, False):
        variables = named_variables(init)
        optimizer = CountingSGD(learning_rate=0.1, jit_compile=jit_compile, **FEATURES)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        history = []
        for number in range(10):
            if number == 6:
                optimizer.learning_rate = 0.05  # a new rate is state, not a new program
            optimizer.apply(jax.grad(mse)([v.value for v in variables], x, y), variables)
            history.append([v.numpy() for v in variables] + [v.numpy() for v in optimizer.variables])
        runs[jit_compile] = (optimizer, history)

    compiled, compiled_history = runs[True]
    assert len(compiled._compiled.steps) == 1
    (step,) = compiled._compiled.steps.values()
    assert step._cache_size() == 1
    assert compiled.update_calls == 2  # traced once: one call per variable
    eager, eager_history = runs[False]
    assert eager._compiled.steps == {} and eager.update_calls == 2 * 5  # 5 update steps of 10
    for number, (got, want) in enumerate(zip(compiled_history, eager_history)):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, err_msg=f"step {number}", **F64)

    # A subset of the variables is another program, compiled once too.
    variables = compiled._trainable_variables
    for _ in range(2):
        compiled.apply([jnp.ones(3)], [variables[0]])
    assert len(compiled._compiled.steps) == 2 and compiled.update_calls == 3


def _snapshot(optimizer, variables):
    return [np.array(v.numpy(), copy=True) for v in list(variables) + list(optimizer.variables)]


def _float32_pair(jnp):
    variables = [inertia.Variable(jnp.asarray([1.0, -2.0, 3.0], "float32"), name="w"),
                 inertia.Variable(jnp.asarray([[0.5, 0.25]], "float32"), name="b")]
    grads = [jnp.asarray([0.1, 0.2, -0.3], "float32"), jnp.asarray([[1.0, -1.0]], "float32")]
    return variables, grads


@pytest.mark.parametrize(
    "bad_grads, error",
    [
        (lambda jnp, g: [jnp.ones(4, "float32"), g[1]], ValueError),  # another shape
        (lambda jnp, g: [g[0]], ValueError),  # a gradient missing
        (lambda jnp, g: [np.asarray(g[0]), g[1]], TypeError),  # a NumPy array for a JAX variable
        (lambda jnp, g: [g[0].astype("float64"), g[1]], None),  # another dtype: whatever the full path does
        (lambda jnp, g: [g[0].reshape(1, 3), g[1]], ValueError),  # same size, another shape
    ],
    ids=["shape", "count", "numpy", "dtype", "reshaped"],
)
def test_a_repeated_compiled_step_sends_other_gradients_through_the_full_path(jax, jnp, bad_grads, error):
    """After the first step, a step repeats the compiled program checking only the gradients'
    type; other shapes, dtypes or counts would make it trace again, which it refuses before
    anything runs. Such a step then behaves exactly as with ``jit_compile=False``: the same
    error with nothing changed, or the same numbers."""
    outcomes = {}
    for jit_compile in (True, False):
        variables, grads = _float32_pair(jnp)
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit_compile)
        for _ in range(2):
            optimizer.apply(grads, variables)
        before = _snapshot(optimizer, variables)
        try:
            optimizer.apply(bad_grads(jnp, grads), variables)
            outcomes[jit_compile] = ("done", _snapshot(optimizer, variables))
        except (TypeError, ValueError) as caught:
            for got, want in zip(_snapshot(optimizer, variables), before):
                np.testing.assert_array_equal(got, want)  # nothing changed
            outcomes[jit_compile] = (type(caught), str(caught))
        if jit_compile:
            (step,) = optimizer._compiled.steps.values()
            traced = step._cache_size()
            optimizer.apply(grads, variables)  # the usual gradients still repeat the step
            assert step._cache_size() == traced and optimizer._compiled.last is not None
    if error is not None:
        assert outcomes[True][0] is error
        assert outcomes[True] == outcomes[False]
    else:
        assert outcomes[True][0] == outcomes[False][0]
        if outcomes[True][0] == "done":
            for got, want in zip(outcomes[True][1], outcomes[False][1]):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_repeated_compiled_step_runs_without_tracing_again(jax, jnp, monkeypatch):
    variables, grads = _float32_pair(jnp)
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    optimizer.apply(grads, variables)
    full_path = []
    monkeypatch.setattr(optimizer, "_prepare", lambda *a: full_path.append(a) or inertia.SGD._prepare(optimizer, *a))
    for _ in range(3):
        optimizer.apply([g * 2 for g in grads], variables)
    assert full_path == [] and int(optimizer.iterations.numpy()) == 4
    (step,) = optimizer._compiled.steps.values()
    assert step._cache_size() == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_jax_backend_add_is_bitwise_plus(jax, jnp, dtype):
    """``w + v`` is phrased ``w - v * -1`` for XLA:CPU's sake; the bits must not change
    (compared with JAX's own ``+``, eager and jitted: XLA flushes subnormals either way)."""
    from inertia.backend import jax as jax_backend

    info = np.finfo(dtype)
    special = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, info.tiny, -info.tiny, info.smallest_subnormal,
               info.max, -info.max, 1e-3, 3.0, 2.5e-3]
    y = jnp.asarray([a for a in special for _ in special], dtype)
    x = jnp.asarray([b for _ in special for b in special], dtype)
    add, plus = jax_backend.BACKEND.add, lambda a, b: a + b
    for got, want in ((add(y, x), plus(y, x)), (jax.jit(add)(y, x), jax.jit(plus)(y, x))):
        got, want = np.asarray(got), np.asarray(want)
        assert got.dtype == want.dtype
        assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want).sum() > 0
        finite = ~np.isnan(want)
        assert np.array_equal(got[finite].view(f"u{got.itemsize}"), want[finite].view(f"u{want.itemsize}"))


def test_callable_learning_rate_is_called_every_eager_step(jax, jnp):
    """A plain callable may read Python state: it must not be frozen into a compiled step."""
    results = {}
    for jit_compile in (True, False):
        rate = [0.1]
        w = inertia.Variable(jnp.asarray([1.0, 2.0]), name="w")
        optimizer = inertia.SGD(learning_rate=lambda: rate[0], momentum=0.5, jit_compile=jit_compile)
        for value in (0.1, 1.0, 0.25):
            rate[0] = value
            optimizer.apply([jnp.asarray([1.0, 1.0])], [w])
        results[jit_compile] = w.numpy()
    np.testing.assert_array_equal(results[True], results[False])
    # v1 = -0.1; v2 = -0.05 - 1.0 = -1.05; v3 = -0.525 - 0.25 = -0.775
    np.testing.assert_allclose(results[True], np.asarray([1.0, 2.0], "float32") - np.float32(0.1 + 1.05 + 0.775), rtol=1e-6)


def test_polynomial_decay_with_fractional_power_stays_finite_in_a_compiled_step(jax, jnp):
    """XLA computes ``1 - step/decay_steps`` as a fused multiply-add, which can give a tiny
    negative number at the end of the decay; to a fractional power that was NaN."""
    schedule = schedules.PolynomialDecay(0.1, decay_steps=5, end_learning_rate=0.01, power=1.5)
    compiled = jax.jit(schedule)
    for step in range(9):
        np.testing.assert_allclose(np.asarray(compiled(jnp.int32(step))), schedule(step), rtol=1e-6)
    w = inertia.Variable(jnp.asarray([1.0, 2.0]), name="w")
    optimizer = inertia.SGD(learning_rate=schedule)
    for _ in range(8):
        optimizer.apply([jnp.asarray([1.0, 1.0])], [w])
    assert np.isfinite(w.numpy()).all()


# --- (d) stateless_apply mutates nothing ----------------------------------------------------
def test_stateless_apply_mutates_neither_its_inputs_nor_the_optimizer(jax, jnp):
    x, y, init = regression_data(jnp)
    variables = named_variables(init)
    optimizer = featured_sgd(0.1)
    for _ in range(3):  # a state with non-zero slots, mid-accumulation
        optimizer.apply(jax.grad(mse)([v.value for v in variables], x, y), variables)
    grads = jax.grad(mse)([v.value for v in variables], x, y)

    own_arrays = [v.value for v in optimizer.variables]
    own_numbers = [v.numpy() for v in optimizer.variables]
    weight_arrays = [v.value for v in variables]
    weight_numbers = [v.numpy() for v in variables]
    # The optimizer's and the variables' own arrays are the inputs: the hardest case.
    optimizer_values, trainable_values, grad_values = list(own_arrays), list(weight_arrays), list(grads)
    grad_numbers = [np.asarray(g) for g in grads]

    def unchanged():
        assert all(a is b for a, b in zip(optimizer_values, own_arrays))
        assert all(a is b for a, b in zip(trainable_values, weight_arrays))
        assert all(a is b for a, b in zip(grad_values, grads))
        for variable, array, numbers in zip(optimizer.variables, own_arrays, own_numbers):
            assert variable.value is array
            np.testing.assert_array_equal(variable.numpy(), numbers)
        for variable, array, numbers in zip(variables, weight_arrays, weight_numbers):
            assert variable.value is array
            np.testing.assert_array_equal(variable.numpy(), numbers)
        for array, numbers in zip(grad_values, grad_numbers):
            np.testing.assert_array_equal(np.asarray(array), numbers)

    eager_trainables, eager_state = optimizer.stateless_apply(optimizer_values, grad_values, trainable_values)
    unchanged()
    jitted = jax.jit(lambda o, g, t: optimizer.stateless_apply(o, g, t))
    jit_trainables, jit_state = jitted(optimizer_values, grad_values, trainable_values)
    unchanged()
    # It did take a step (the 4th call: an update step), the same both ways.
    assert int(eager_state[0]) == int(jit_state[0]) == 4
    assert not np.allclose(np.asarray(eager_trainables[0]), weight_numbers[0])
    for a, b in zip(eager_trainables + eager_state, jit_trainables + jit_state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **F64)


# --- (e) raw JAX arrays as variables ------------------------------------------------------
@pytest.mark.parametrize("call", ["apply", "apply_gradients", "build", "minimize"])
def test_raw_jax_array_as_variable_is_a_type_error_pointing_to_variable_or_stateless_apply(jnp, call):
    target = jnp.asarray([1.0, 2.0])
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    actions = {
        "apply": lambda: optimizer.apply([jnp.ones(2)], [target]),
        "apply_gradients": lambda: optimizer.apply_gradients([(jnp.ones(2), target)]),
        "build": lambda: optimizer.build([target]),
        "minimize": lambda: optimizer.minimize(lambda t: jnp.sum(t**2), [target]),
    }
    with pytest.raises(TypeError, match=r"immutable.*inertia\.Variable.*stateless_apply") as error:
        actions[call]()
    assert "jax" in str(error.value)
    assert not optimizer.built and int(optimizer.iterations) == 0
    np.testing.assert_array_equal(np.asarray(target), [1.0, 2.0])


# --- (f) mixed backends ---------------------------------------------------------------------
def test_numpy_gradient_for_jax_variable_names_both_backends(jnp):
    w = inertia.Variable(jnp.asarray([1.0, 2.0]), name="w")
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"gradient for variable 'w' is a numpy array but the variable is on jax"):
        optimizer.apply([np.ones(2, "float32")], [w])
    assert not optimizer.built and int(optimizer.iterations) == 0
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])


def test_jax_gradient_for_numpy_variable_names_both_backends(jnp):
    w = inertia.Variable(np.asarray([1.0, 2.0], "float32"), name="w")
    optimizer = inertia.SGD(learning_rate=0.1)
    optimizer.build([w])
    with pytest.raises(TypeError, match=r"gradient for variable 'w' is a jax array but the variable is on numpy"):
        optimizer.apply_gradients([(jnp.ones(2, dtype="float32"), w)])
    assert int(optimizer.iterations) == 0
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    # A native ndarray target too.
    array = np.asarray([1.0, 2.0], "float32")
    with pytest.raises(TypeError, match=r"is a jax array but the variable is on numpy"):
        inertia.SGD(learning_rate=0.1).apply([jnp.ones(2, dtype="float32")], [array])
    np.testing.assert_array_equal(array, [1.0, 2.0])


@pytest.mark.parametrize("call", ["apply", "build"])
def test_numpy_and_jax_variables_in_one_optimizer_is_a_value_error_naming_both(jnp, call):
    on_numpy = inertia.Variable(np.asarray([1.0, 2.0], "float32"), name="a")
    on_jax = inertia.Variable(jnp.asarray([3.0, 4.0]), name="b")
    optimizer = inertia.SGD(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"one backend.*'a' on numpy.*'b' on jax"):
        if call == "apply":
            optimizer.apply([np.ones(2, "float32"), jnp.ones(2)], [on_numpy, on_jax])
        else:
            optimizer.build([on_numpy, on_jax])
    assert not optimizer.built
    np.testing.assert_array_equal(on_numpy.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(on_jax.numpy(), [3.0, 4.0])


# --- (g) minimize through jax.grad --------------------------------------------------------
def test_minimize_a_zero_argument_loss_on_variables_through_jax_grad(jax, jnp):
    x, y, init = regression_data(jnp)
    kernel, bias = named_variables(init)
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)

    def loss():  # reads the Variables: their values are traced by jax.grad
        return jnp.mean((x @ kernel.value + bias - y) ** 2) + 0.01 * (kernel * kernel).sum()

    reference = named_variables(init)
    manual = inertia.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)

    def manual_loss(values):
        return mse(values, x, y) + 0.01 * (values[0] * values[0]).sum()

    losses = []
    for _ in range(4):
        losses.append(float(loss()))
        iterations = optimizer.minimize(loss, [kernel, bias])
        manual.apply(jax.grad(manual_loss)([v.value for v in reference]), reference)
        assert iterations is optimizer._iterations
        for got, want in zip((kernel, bias), reference):
            assert isinstance(got.value, jax.Array) and got.dtype == "float64"
            np.testing.assert_allclose(got.numpy(), want.numpy(), **F64)
    assert int(optimizer.iterations) == 4
    assert losses[-1] < losses[0]
    # Gradients come from jax.grad: one value_and_grad step equals the explicit gradient.
    ((gradient, variable),) = optimizer.compute_gradients(lambda: (kernel * kernel).sum(), [kernel])
    assert variable is kernel
    np.testing.assert_allclose(np.asarray(gradient), 2 * kernel.numpy(), **F64)


# --- (h) dynamic loss scaling under jax.jit ----------------------------------------------
def test_loss_scale_optimizer_in_jit_skips_inf_steps_and_halves_the_scale(jax, jnp):
    w = inertia.Variable(jnp.asarray([1.0, -1.0], dtype="float32"), name="w")
    optimizer = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.5, momentum=0.5), initial_scale=8.0, dynamic_growth_steps=2)
    optimizer.build([w])
    names = [v.name for v in optimizer.variables]
    scale_at, counter_at = names.index("dynamic_scale"), names.index("step_counter")
    inner_iteration_at = names.index("iteration", 1)
    momentum_at = names.index("w_momentum")
    traces = []

    def step(optimizer_values, trainable_values, grads):
        traces.append(1)
        new_trainables, new_optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable_values)
        return new_optimizer_values, new_trainables

    jitted = jax.jit(step, donate_argnums=(0, 1))
    state = copies(jnp, [v.value for v in optimizer.variables])
    weights = copies(jnp, [w.value])

    def run(gradient):
        nonlocal state, weights
        before = [np.asarray(a) for a in state], np.asarray(weights[0])
        state, weights = jitted(state, weights, [jnp.asarray(gradient, dtype="float32")])
        return before

    # Finite: the unscaled gradient (16/8 = 2, 8/8 = 1) is applied.
    run([16.0, 8.0])
    np.testing.assert_allclose(np.asarray(weights[0]), [1.0 - 0.5 * 2.0, -1.0 - 0.5 * 1.0])
    assert float(state[scale_at]) == 8.0 and int(state[counter_at]) == 1 and int(state[inner_iteration_at]) == 1

    # Inf: nothing moves but the scale (halved) and the growth counter (reset).
    (old_state, old_weights) = run([np.inf, 1.0])
    np.testing.assert_array_equal(np.asarray(weights[0]), old_weights)
    np.testing.assert_array_equal(np.asarray(state[momentum_at]), old_state[momentum_at])
    assert float(state[scale_at]) == 4.0 and int(state[counter_at]) == 0 and int(state[inner_iteration_at]) == 1
    run([-np.inf, np.nan])
    assert float(state[scale_at]) == 2.0 and int(state[inner_iteration_at]) == 1

    # Finite again, twice: applied with the current scale, and the scale grows back.
    old_state, old_weights = run([2.0, 2.0])
    velocity = 0.5 * old_state[momentum_at] - np.float32(0.5) * np.float32(1.0)
    np.testing.assert_allclose(np.asarray(weights[0]), old_weights + velocity, rtol=1e-6)
    assert int(state[inner_iteration_at]) == 2 and int(state[counter_at]) == 1
    run([2.0, 2.0])
    assert float(state[scale_at]) == 4.0 and int(state[counter_at]) == 0 and int(state[inner_iteration_at]) == 3
    assert np.isfinite(np.asarray(weights[0])).all()

    assert len(traces) == 1 and jitted._cache_size() == 1  # inf and finite: one program
    # The optimizer's own state never moved.
    assert float(optimizer.dynamic_scale) == 8.0 and int(optimizer.iterations) == 0
    np.testing.assert_array_equal(w.numpy(), [1.0, -1.0])


def test_a_64_bit_counter_without_x64_is_32_bit_and_says_nothing():
    load_backend("jax")
    import jax

    with jax.enable_x64(False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # JAX's "Explicitly requested dtype int64" would fail this
            w = inertia.Variable(jax.numpy.ones(3, jax.numpy.float32))
            opt = inertia.legacy.SGD(0.1, momentum=0.9)
            opt.apply_gradients([(jax.numpy.ones(3, jax.numpy.float32), w)])
        assert opt.iterations.value.dtype.name == "int32" and int(opt.iterations.value) == 1
