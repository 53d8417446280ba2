"""The TensorFlow backend: tf.Variables stepped in place with NumPy's numbers, steps inside
``tf.function`` (traced once, eager numbers, XLA), ``tf.GradientTape`` for ``minimize``,
IndexedSlices with tf.keras' numbers, state interchange with tf_keras' legacy SGD, and bad
input rejected before anything changes."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import inertia
import inertia.legacy
from conftest import load_backend, requires
from inertia import schedules

FEATURES = dict(
    momentum=0.9, nesterov=True, weight_decay=0.05, clipnorm=0.5, use_ema=True, ema_momentum=0.8,
    ema_overwrite_frequency=3, gradient_accumulation_steps=2,
)
DTYPES = ("float16", "bfloat16", "float32", "float64")


@pytest.fixture
def tf():
    load_backend("tensorflow")  # skips locally, fails in CI when missing
    import tensorflow as tf

    return tf


def _gradients(dtype: str, steps: int = 6, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(3, 2)), rng.normal(size=(2,))] for _ in range(steps)]


def _start() -> list:
    return [np.linspace(-1.0, 1.5, 6).reshape(3, 2), np.array([0.25, -0.5])]


def _as(dtype: str, value: np.ndarray) -> np.ndarray:
    return inertia.backend.get("numpy").asarray(value, dtype=dtype)


def _numpy_run(dtype: str, steps: list, **options) -> tuple[list, list]:
    weights = [_as(dtype, w) for w in _start()]
    opt = inertia.SGD(learning_rate=0.1, **options)
    for grads in steps:
        opt.apply([_as(dtype, g) for g in grads], weights)
    return weights, [v.numpy() for v in opt.variables]


def _same_bits(actual, expected) -> None:
    for a, e in zip(actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(a.astype(np.float64), e.astype(np.float64))


def _close(actual, expected, dtype) -> None:
    """Equal within a few units in the last place: a norm summed in another order."""
    eps = float(np.finfo(np.float32).eps) if dtype == "float32" else {"float64": 2.2e-16}.get(dtype, 1e-2)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("clip", [None, "clipnorm", "global_clipnorm", "clipvalue"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tf_variables_step_in_place_with_numpys_bits(tf, dtype, clip):
    """Bit for bit NumPy's step, except norms: TensorFlow sums the squares in its own order."""
    options = {k: v for k, v in FEATURES.items() if k != "clipnorm"}
    if clip is not None:
        options[clip] = 0.5
    steps = _gradients(dtype)
    variables = [tf.Variable(_as(dtype, w)) for w in _start()]
    originals = list(variables)
    opt = inertia.SGD(learning_rate=0.1, **options)
    for grads in steps:
        opt.apply([tf.constant(_as(dtype, g)) for g in grads], variables)
    expected_weights, expected_state = _numpy_run(dtype, steps, **options)
    assert all(v is o for v, o in zip(variables, originals))
    check = _same_bits if clip in (None, "clipvalue") else lambda a, e: _close(a, e, dtype)
    check([v.numpy() for v in variables], expected_weights)
    check([v.numpy() for v in opt.variables], expected_state)
    # The optimizer's state lives in tf.Variables of the variables' dtype, on their device.
    assert all(isinstance(v.value, tf.Variable) for v in opt.variables)
    assert {v.value.device for v in opt.variables} == {variables[0].device}
    assert opt.momentums[0].dtype == dtype and opt.iterations.dtype == "int32"


def _train(tf, opt, variables, steps, wrap=lambda f: f, dtype="float32"):
    @wrap
    def step(grads):
        opt.apply_gradients(zip(grads, variables))

    for grads in steps:
        step([tf.constant(_as(dtype, g)) for g in grads])
    return step


@pytest.fixture(params=[True, False], ids=["grappler", "no_arithmetic_rewrites"])
def arithmetic_rewrites(request, tf):
    """Grappler's arithmetic optimizer on (TensorFlow's default) or off, restored after."""
    before = tf.config.optimizer.get_experimental_options().get("arithmetic_optimization", True)
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": request.param})
    yield request.param
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": before})


@pytest.mark.parametrize(
    "options",
    [
        dict(FEATURES),
        dict(momentum=0.5, global_clipnorm=0.3, learning_rate=schedules.CosineDecay(0.2, 5)),
        dict(momentum=0.9, weight_decay=0.3, learning_rate=schedules.ExponentialDecay(0.3, 3, 0.7)),
        dict(momentum=0.0, gradient_accumulation_steps=3, loss_scale_factor=3.0, clipvalue=0.4),
    ],
    ids=["every_feature", "global_clipnorm_cosine", "weight_decay_exponential", "accumulation_loss_scale"],
)
def test_apply_gradients_in_tf_function_traces_once_and_gives_eager_numbers(tf, options, arithmetic_rewrites):
    """Bit for bit the eager steps, except where Grappler's arithmetic optimizer regroups a
    chain of multiplications by scalars (`w*wd*lr` as `w*(wd*lr)`, `lr*(g*scale)`): then
    within a few units in the last place, and bit for bit with that optimizer off.
    Constants never fold (`x/3` stays a division; schedules keep their eager rates)."""
    options = dict(options)
    learning_rate = options.pop("learning_rate", 0.1)
    steps = _gradients("float32", steps=7)
    runs = []
    for wrap in (lambda f: f, tf.function):
        variables = [tf.Variable(_as("float32", w)) for w in _start()]
        opt = inertia.SGD(learning_rate=learning_rate, **options)
        opt.build(variables)
        traces = []

        def counted(f, wrap=wrap):
            def body(grads):
                traces.append(1)
                return f(grads)

            return wrap(body)

        step = _train(tf, opt, variables, steps[:4], counted)
        if not isinstance(learning_rate, schedules.LearningRateSchedule):
            opt.learning_rate = 0.05  # a variable: no new trace
        for grads in steps[4:]:
            step([tf.constant(g, dtype=tf.float32) for g in grads])
        runs.append(([v.numpy() for v in variables], [v.numpy() for v in opt.variables], len(traces)))
    (eager_weights, eager_state, _), (weights, state, traced) = runs
    assert traced == 1
    regrouped = arithmetic_rewrites and ("weight_decay" in options or "global_clipnorm" in options)
    check = (lambda a, e: _close(a, e, "float32")) if regrouped else _same_bits
    check(weights, eager_weights)
    check(state, eager_state)


def test_the_first_step_may_build_the_optimizer_inside_a_tf_function(tf):
    variables = [tf.Variable(_as("float32", w)) for w in _start()]
    opt = inertia.SGD(learning_rate=0.1, **FEATURES)
    steps = _gradients("float32", steps=5)
    _train(tf, opt, variables, steps, tf.function)
    expected_weights, expected_state = _numpy_run("float32", steps, **FEATURES)
    _same_bits([v.numpy() for v in variables], expected_weights)
    _same_bits([v.numpy() for v in opt.variables], expected_state)


def test_a_step_compiled_with_xla_equals_the_eager_step(tf):
    steps = _gradients("float32", steps=6)
    variables = [tf.Variable(_as("float32", w)) for w in _start()]
    opt = inertia.SGD(learning_rate=0.1, **FEATURES)
    opt.build(variables)
    step = _train(tf, opt, variables, steps, tf.function(jit_compile=True))
    assert "HloModule" in step.experimental_get_compiler_ir([tf.constant(g, dtype=tf.float32) for g in steps[0]])(stage="hlo")
    expected_weights, _ = _numpy_run("float32", steps, **FEATURES)
    # XLA may fuse a*b + c into one rounding: the last bit may differ, nothing more.
    for actual, expected in zip(variables, expected_weights):
        np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_loss_scale_optimizer_skips_a_non_finite_step_inside_tf_function(tf):
    w = tf.Variable([1.0, 2.0])
    opt = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.5), initial_scale=4.0, dynamic_growth_steps=2)

    @tf.function
    def step(g):
        opt.apply([g], [w])

    step(tf.constant([4.0, 24.0]))
    np.testing.assert_array_equal(w.numpy(), [0.5, -1.0])
    step(tf.constant([np.inf, 1.0], dtype=tf.float32))
    np.testing.assert_array_equal(w.numpy(), [0.5, -1.0])
    assert float(opt.dynamic_scale) == 2.0 and int(opt.iterations) == 1


def test_minimize_differentiates_with_a_gradient_tape(tf):
    var = tf.Variable(1.0)
    opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
    opt.minimize(lambda: (var**2) / 2.0, [var])  # the tf.keras docs' example
    assert var.numpy() == np.float32(0.9)
    with tf.GradientTape() as tape:
        loss = (var**2) / 2.0
    opt.minimize(loss, [var], tape=tape)
    f32 = np.float32  # v2 = 0.9*v1 - 0.1*g2, with v1 = -0.1 and g2 = w1 = 0.9; w2 = w1 + v2 (0.72)
    assert var.numpy() == f32(0.9) + (f32(0.9) * f32(-0.1) - f32(0.1) * f32(0.9))
    with pytest.raises(ValueError, match="`tape` is required"):
        opt.minimize((var**2) / 2.0, [var])
    with pytest.raises(ValueError, match="tape"):
        inertia.SGD().minimize(lambda: 1.0, [np.zeros(2)], tape=tape)


def test_a_variable_the_loss_does_not_use_gets_no_gradient_and_is_skipped(tf):
    used, unused = tf.Variable([1.0, 2.0]), tf.Variable([3.0])
    opt = inertia.SGD(learning_rate=0.5)
    pairs = opt.compute_gradients(lambda: tf.reduce_sum(used * used), [used, unused])
    assert pairs[1][0] is None
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply_gradients(pairs)
    np.testing.assert_array_equal(used.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(unused.numpy(), [3.0])


def test_inertia_variables_hold_tf_variables_and_the_default_backend_may_be_tensorflow(tf, monkeypatch):
    monkeypatch.setenv("INERTIA_BACKEND", "tensorflow")
    w = inertia.Variable([1.0, 2.0], name="w")
    assert isinstance(w.value, tf.Variable) and w.dtype == "float32"
    opt = inertia.legacy.SGD(learning_rate=0.1, momentum=0.9)
    opt.minimize(lambda: tf.reduce_sum(w.value * w.value), [w])
    np.testing.assert_array_equal(w.numpy(), np.float32([0.8, 1.6]))
    assert [type(v.value) for v in opt.weights] == [type(w.value)] * 2
    assert opt.iterations.dtype == "int64"


def _snapshot(variables) -> list:
    return [v.numpy() for v in variables]


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ("int_variable", TypeError, "floating-point"),
        ("tensor_target", TypeError, "mutable arrays"),
        ("wrong_shape", ValueError, "shape"),
        ("numpy_gradient", TypeError, "tensorflow"),
        ("int_gradient", TypeError, "int32"),
        ("mixed_backends", ValueError, "one backend"),
    ],
)
def test_bad_input_is_rejected_before_anything_changes(tf, bad, error, message):
    w = tf.Variable([1.0, 2.0])
    opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply([tf.constant([1.0, 1.0])], [w])
    before = _snapshot([w, *opt.variables])
    grads, targets = [tf.constant([1.0, 1.0])], [w]
    if bad == "int_variable":
        targets = [tf.Variable([1, 2])]
        grads = [tf.constant([1, 1])]
    elif bad == "tensor_target":
        targets = [tf.constant([1.0, 2.0])]
    elif bad == "wrong_shape":
        grads = [tf.constant([1.0, 1.0, 1.0])]
    elif bad == "numpy_gradient":
        grads = [np.ones(2, np.float32)]
    elif bad == "int_gradient":
        grads = [tf.constant([1, 1])]
    elif bad == "mixed_backends":
        grads, targets = [tf.constant([1.0, 1.0]), np.ones(2, np.float32)], [w, np.zeros(2, np.float32)]
    with pytest.raises(error, match=message):
        opt.apply(grads, targets)
    _same_bits(_snapshot([w, *opt.variables]), before)


def test_stateless_apply_on_tf_values_changes_nothing(tf):
    w = tf.Variable([1.0, 2.0])
    opt = inertia.SGD(learning_rate=0.5, momentum=0.9)
    opt.build([w])
    state = [tf.identity(v.value) for v in opt.variables]
    new_weights, new_state = opt.stateless_apply(state, [tf.constant([1.0, 6.0])], [tf.constant([1.0, 2.0])])
    np.testing.assert_array_equal(new_weights[0].numpy(), [0.5, -1.0])
    assert int(new_state[0].numpy()) == 1
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    assert int(opt.iterations) == 0 and int(state[0].numpy()) == 0


# --- IndexedSlices ---------------------------------------------------------------------------
LOOKUPS = ([0, 2, 2], [1], [3, 0], [2, 2, 2])


def _embedding_run(tf, opt, wrap=lambda f: f) -> np.ndarray:
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 7)

    @wrap
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids) ** 2) * 1.7
        (gradient,) = tape.gradient(loss, [table])
        assert isinstance(gradient, tf.IndexedSlices)
        opt.apply_gradients([(gradient, table)])

    for ids in LOOKUPS:
        step(tf.constant(ids))
    return table.numpy()


CLIPS = [{}, {"clipnorm": 0.5}, {"clipvalue": 0.3}, {"global_clipnorm": 0.7}, {"clipvalue": 0.4, "clipnorm": 0.5}]


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: "-".join(c) or "none")
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.5, False), (0.5, True)])
def test_legacy_sparse_steps_equal_tf_keras_legacy_bit_for_bit(tf, clip, momentum, nesterov):
    tf_keras = requires("tf_keras")
    options = dict(learning_rate=0.3, momentum=momentum, nesterov=nesterov, **clip)
    expected = _embedding_run(tf, tf_keras.optimizers.legacy.SGD(**options))
    np.testing.assert_array_equal(_embedding_run(tf, inertia.legacy.SGD(**options)), expected)
    np.testing.assert_array_equal(_embedding_run(tf, inertia.legacy.SGD(**options), tf.function), expected)


def test_legacy_sparse_momentum_is_lazy(tf):
    """research/keras_semantics.md case 46: rows 0 then 1, m=0.5, lr=1."""
    table = tf.Variable(np.zeros((2, 1), np.float32))
    opt = inertia.legacy.SGD(learning_rate=1.0, momentum=0.5)
    for row in (0, 1):
        opt.apply_gradients([(tf.IndexedSlices(tf.constant([[1.0]]), tf.constant([row]), tf.constant([2, 1])), table)])
    np.testing.assert_array_equal(table.numpy(), [[-1.0], [-1.0]])
    np.testing.assert_array_equal(opt.get_slot(table, "momentum").numpy(), [[-1.0], [-1.0]])


def test_keras_face_steps_an_indexed_slices_as_its_dense_sum(tf):
    sparse = tf.IndexedSlices(tf.constant([[1.0, 2.0], [0.5, 0.5], [3.0, 1.0]]), tf.constant([2, 0, 2]), tf.constant([3, 2]))
    runs = []
    for gradient in (sparse, tf.convert_to_tensor(sparse)):
        table = tf.Variable(np.ones((3, 2), np.float32))
        opt = inertia.SGD(learning_rate=0.1, momentum=0.9, clipnorm=2.0)
        for _ in range(3):
            opt.apply([gradient], [table])
        runs.append(table.numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[1][1], [1.0, 1.0])  # a row no index names does not move


@pytest.mark.parametrize("face", ["legacy", "tf_keras", "keras"])
@pytest.mark.parametrize(
    "bad, message",
    [
        ("row_out_of_range", "names rows 7 to 7, outside 0 to 3"),
        ("negative_row", "names rows -1 to -1, outside 0 to 3"),
        ("values_for_other_indices", "has values of shape (2,) for (1,) indices"),
        ("float_indices", "not integers"),
    ],
)
def test_a_bad_sparse_gradient_changes_nothing_on_any_face(tf, face, bad, message):
    import inertia.tf_keras

    make = {"legacy": inertia.legacy.SGD, "tf_keras": inertia.tf_keras.SGD, "keras": inertia.SGD}[face]
    values, indices = tf.ones((1,)), tf.constant([1])
    if bad == "row_out_of_range":
        indices = tf.constant([7])
    elif bad == "negative_row":
        indices = tf.constant([-1])
    elif bad == "values_for_other_indices":
        values = tf.ones((2,))
    else:
        indices = tf.constant([1.0])
    dense, table = tf.Variable([1.0, 2.0, 3.0]), tf.Variable([1.0, 2.0, 3.0, 4.0])
    opt = make(learning_rate=0.1, momentum=0.9)
    opt.apply_gradients([(tf.ones(3), dense), (tf.ones(4), table)])  # built: slots exist
    state = opt.variables() if callable(opt.variables) else opt.variables
    before = _snapshot([dense, table, *state])
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.apply_gradients([(tf.IndexedSlices(values, indices, tf.constant([4])), table), (tf.ones(3), dense)])
    _same_bits(_snapshot([dense, table, *state]), before)


def test_a_sparse_gradient_of_the_wrong_shape_is_rejected(tf):
    table = tf.Variable(np.ones((3, 2), np.float32))
    bad = tf.IndexedSlices(tf.constant([[1.0, 2.0, 3.0]]), tf.constant([0]), tf.constant([3, 3]))
    with pytest.raises(ValueError, match="shape"):
        inertia.legacy.SGD().apply_gradients([(bad, table)])
    np.testing.assert_array_equal(table.numpy(), np.ones((3, 2)))


# --- the legacy face against tf_keras' legacy SGD, on tf.Variables ---------------------------------
def test_legacy_face_equals_tf_keras_legacy_on_tf_variables_and_shares_its_weights(tf):
    tf_keras = requires("tf_keras")
    options = dict(learning_rate=0.2, momentum=0.7, nesterov=True, clipvalue=0.6, clipnorm=0.9, decay=0.1)
    steps = _gradients("float32", steps=5)
    variables = {}
    optimizers = {"ours": inertia.legacy.SGD(**options), "theirs": tf_keras.optimizers.legacy.SGD(**options)}
    for key, opt in optimizers.items():
        variables[key] = [tf.Variable(_as("float32", w)) for w in _start()]
        _train(tf, opt, variables[key], steps)
    for ours, theirs in zip(variables["ours"], variables["theirs"]):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    _same_bits(optimizers["ours"].get_weights(), optimizers["theirs"].get_weights())
    # State moves both ways, and both continue identically.
    fresh = {key: [tf.Variable(v.numpy()) for v in variables["theirs"]] for key in ("ours", "theirs")}
    continued = {"ours": inertia.legacy.SGD(**options), "theirs": tf_keras.optimizers.legacy.SGD(**options)}
    for key, opt in continued.items():
        opt.build(fresh[key]) if key == "ours" else opt._create_all_weights(fresh[key])
    continued["ours"].set_weights(optimizers["theirs"].get_weights())
    continued["theirs"].set_weights(optimizers["ours"].get_weights())
    more = _gradients("float32", steps=3, seed=1)
    for key, opt in continued.items():
        _train(tf, opt, fresh[key], more)
    for ours, theirs in zip(fresh["ours"], fresh["theirs"]):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    _same_bits(continued["ours"].get_weights(), continued["theirs"].get_weights())


def test_a_schedule_inside_tf_function_gives_the_eager_rates(tf):
    schedule = schedules.CosineDecayRestarts(0.5, 3, t_mul=1.5, m_mul=0.8, alpha=0.1)
    eager = [schedule(tf.constant(step, tf.int64)).numpy() for step in range(12)]
    traced = tf.function(schedule)
    assert [traced(tf.constant(step, tf.int64)).numpy() for step in range(12)] == eager
    np.testing.assert_allclose(eager, [schedule(np.int64(step)) for step in range(12)], rtol=1e-6)


def test_no_autograph_warning_when_a_step_is_traced(tf, caplog):
    w = tf.Variable([1.0])
    opt = inertia.SGD(learning_rate=0.1, momentum=0.5, gradient_accumulation_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tf.function(lambda g: opt.apply([g], [w]))(tf.constant([1.0]))
    assert "AutoGraph could not transform" not in caplog.text


# --- the fast path: TensorFlow's fused training kernels ------------------------------------------
@pytest.mark.parametrize("wrap", ["eager", "tf.function"])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_fused_kernel_gives_the_reference_paths_bits(tf, dtype, momentum, nesterov, wrap, monkeypatch):
    from inertia.engine import tf_training_ops

    calls = []
    fused = tf_training_ops.keras_momentum_steps

    def counted(*args, **kwargs):
        ran = fused(*args, **kwargs)
        calls.append(ran)
        return ran

    monkeypatch.setattr(tf_training_ops, "keras_momentum_steps", counted)
    steps = _gradients(dtype, steps=4)
    results = []
    for jit_compile in (True, False):
        for make in (inertia.SGD, inertia.legacy.SGD):
            variables = [tf.Variable(_as(dtype, w)) for w in _start()]
            opt = make(learning_rate=0.1, momentum=momentum, nesterov=nesterov)
            opt.jit_compile = jit_compile
            opt.build(variables)
            _train(tf, opt, variables, steps, tf.function if wrap == "tf.function" else (lambda f: f), dtype)
            state = opt.variables() if callable(opt.variables) else opt.variables  # a method on the legacy face
            results.append([v.numpy() for v in variables] + [v.numpy() for v in state])
    assert calls and all(calls), "the fused kernels ran at every step with jit_compile=True"
    fused_keras, fused_legacy, reference_keras, reference_legacy = results
    _same_bits(fused_keras, reference_keras)
    _same_bits(fused_legacy, reference_legacy)


def test_a_tensor_read_before_a_step_keeps_its_value(tf):
    """The tf.keras docs' example reads `var.value()` before and after a step: the fused
    kernel writes in place, yet copy-on-write leaves the earlier tensor as it was."""
    opt = inertia.SGD(0.1, momentum=0.9)
    var = tf.Variable(1.0)
    val0 = var.value()
    opt.minimize(lambda: (var**2) / 2.0, [var])
    val1 = var.value()
    np.testing.assert_allclose((val0 - val1).numpy(), 0.1, rtol=1e-6)
    opt.minimize(lambda: (var**2) / 2.0, [var])
    val2 = var.value()
    np.testing.assert_allclose((val1 - val2).numpy(), 0.18, rtol=1e-6)
    assert val0.numpy() == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_checkpoint_of_tf_state_resumes_bit_for_bit(tf, dtype, tmp_path):
    steps = _gradients(dtype, steps=6)
    options = dict(FEATURES, learning_rate=0.1)
    variables = [tf.Variable(_as(dtype, w)) for w in _start()]
    opt = inertia.SGD(**options)
    _train(tf, opt, variables, steps[:3], dtype=dtype)
    inertia.save(opt, tmp_path / "opt.safetensors")
    assert inertia.checkpoint.read_metadata(tmp_path / "opt.safetensors")["backend"] == "tensorflow"
    resumed_variables = [tf.Variable(v.numpy()) for v in variables]
    resumed = inertia.SGD(**options)
    resumed.build(resumed_variables)
    inertia.load(resumed, tmp_path / "opt.safetensors")
    assert all(isinstance(v.value, tf.Variable) for v in resumed.variables)
    _train(tf, opt, variables, steps[3:], dtype=dtype)
    _train(tf, resumed, resumed_variables, steps[3:], dtype=dtype)
    _same_bits([v.numpy() for v in resumed_variables + resumed.variables], [v.numpy() for v in variables + opt.variables])
