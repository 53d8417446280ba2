"""``inertia.legacy.SGD`` against tf.keras' legacy (OptimizerV2) SGD: worked examples.

The cases here are small, readable worked examples of OptimizerV2's rules, with the numbers
derived by hand next to each test; the ones named after a row or a doctest were checked once
against tf_keras itself (tf_keras 2.21.0 on TensorFlow 2.21.0: the command and its result
are in the test's comment). tests/test_legacy_parity.py checks inertia against the real
``tf_keras.optimizers.legacy.SGD`` live, step by step, in randomized scenarios. The rules:

* hyperparameters (learning_rate, decay, momentum) are float32 values cast to each
  variable's dtype; ``lr_t = lr / (1 + decay*iterations)`` (iterations before the
  increment), after the schedule, which sees ``iterations`` as a float of that dtype;
* gradients are clipped by value, then by norm, then by global norm;
* the state is ``[iter (int64), slots and weights in creation order]``; the learning-rate
  hyperparameter is not one of the weights.

Numeric cases run on every backend (numpy, torch, jax) through the ``backend`` fixture.
The legacy-versus-Keras-3 differences are pinned next to the legacy behaviour.
"""

import warnings

import numpy as np
import pytest

import inertia
import inertia.legacy
from conftest import requires, tensor, total
from inertia import schedules

LegacySGD = inertia.legacy.SGD


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def close(actual, expected, rtol=1e-6, atol=1e-7):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


def variable(value, dtype="float32", name=None):
    """An inertia.Variable holding an array of the backend under test."""
    return inertia.Variable(tensor(value, dtype), name=name)


def apply(optimizer, pairs, dtype="float32"):
    """One ``apply_gradients`` call; gradients are given as Python lists."""
    return optimizer.apply_gradients([(tensor(g, dtype), v) for g, v in pairs])


def trajectory(optimizer, var, grads, dtype="float32"):
    """The variable's value after each of the steps with ``grads``."""
    values = []
    for g in grads:
        apply(optimizer, [(g, var)], dtype)
        values.append(var.numpy())
    return values


def snapshot(optimizer, variables):
    """Copies of every trained variable and optimizer weight (for "nothing changed")."""
    return [v.numpy() for v in variables] + [np.array(w) for w in optimizer.get_weights()]


def assert_same_arrays(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a, b)


def f32_then(value, dtype):
    """A Python float the legacy way: rounded to float32, then cast to ``dtype``."""
    return np.asarray(np.float32(value)).astype(dtype)[()]


class RecordingSchedule(schedules.LearningRateSchedule):
    """``initial / (1 + step)``, remembering the dtype of each step it was called with."""

    def __init__(self, initial_learning_rate):
        self.initial_learning_rate = initial_learning_rate
        self.step_dtypes = []

    def __call__(self, step):
        self.step_dtypes.append(getattr(step.dtype, "name", None) or str(step.dtype).removeprefix("torch."))
        return self.initial_learning_rate / (1 + step)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate}


# ----------------------------------------------------------------------------------------
# the legacy worked cases
# ----------------------------------------------------------------------------------------
# tf_keras 2.21.0: tf_keras.optimizers.legacy.SGD(learning_rate=3.0, decay=0.5), and the same
# with learning_rate=tf_keras.optimizers.schedules.InverseTimeDecay(3.0, 1, 0.5), applied to a
# float32 tf.Variable([1, 2]) with gradient [0.1, 0.1] three times, give [0.7, 1.7],
# [0.5, 1.5], [0.35, 1.35] (as float32: 0.699999988, 1.70000005, ...).
ROW_37 = [[0.7, 1.7], [0.5, 1.5], [0.35, 1.35]]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: LegacySGD(learning_rate=3.0, decay=0.5), id="decay=0.5"),
        pytest.param(lambda: LegacySGD(learning_rate=schedules.InverseTimeDecay(3.0, 1, 0.5)), id="InverseTimeDecay"),
    ],
)
def test_row_37_time_decay_three_steps(backend, make):
    # lr_t = 3 / (1 + 0.5*k) with k = iterations before the step: 3, 2, 1.5 times g = 0.1.
    optimizer = make()
    v0 = variable([1.0, 2.0])
    values = trajectory(optimizer, v0, [[0.1, 0.1]] * 3)
    for value, expected in zip(values, ROW_37):
        close(value, expected)
    assert int(optimizer.iterations.numpy()) == 3


def test_decay_assigned_after_construction_changes_no_update(backend):
    # tf_keras 2.21.0: OptimizerV2._decayed_lr divides by `_initial_decay`, the constructor's
    # value; `opt.decay = ...` sets a hyperparameter that no update reads (on every backend,
    # compiled JAX too). Second step: lr 1 / (1 + 0.5*1), so w = -1 - 1/1.5.
    decayed = LegacySGD(learning_rate=1.0, decay=0.5)
    w = variable([0.0])
    apply(decayed, [([1.0], w)])
    decayed.decay = 0.25
    apply(decayed, [([1.0], w)])
    assert w.numpy().tolist() == [np.float32(-1.0) - np.float32(1.0) / np.float32(1.5)]
    plain = LegacySGD(learning_rate=1.0)
    w = variable([0.0])
    apply(plain, [([1.0], w)])
    plain.decay = 0.5
    apply(plain, [([1.0], w)])
    assert w.numpy().tolist() == [-2.0]
    assert decayed.get_config()["decay"] == 0.5 and plain.get_config()["decay"] == 0.0


def test_decay_divides_the_scheduled_rate(backend):
    # Schedule first, then the division, both at k = 0, 1, 2:
    # (3 / (1 + 0.5k)) / (1 + 0.5k) = 3, 4/3, 0.75; times g = 0.1 from [1, 2].
    optimizer = LegacySGD(learning_rate=schedules.InverseTimeDecay(3.0, 1, 0.5), decay=0.5)
    v0 = variable([1.0, 2.0])
    values = trajectory(optimizer, v0, [[0.1, 0.1]] * 3)
    rates = [3.0, 4.0 / 3.0, 0.75]
    expected = np.array([1.0, 2.0]) - 0.1 * np.cumsum(rates)[:, None]
    close(values, expected)
    # tf_keras 2.21.0 with learning_rate=InverseTimeDecay(3.0, 1, 0.5) and decay=0.5 gives
    # [0.56666666, 1.5666667] after the second step and [0.49166667, 1.4916667] after the third.
    close(values[1], [0.56666666, 1.56666666])  # not row 37's 0.5: the two decays compound


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_schedule_sees_iterations_as_a_float_of_the_variable_dtype(backend, dtype):
    schedule = RecordingSchedule(1.0)
    optimizer = LegacySGD(learning_rate=schedule)
    w = variable([0.0], dtype)
    values = trajectory(optimizer, w, [[1.0]] * 3, dtype)
    close(values[-1], [-(1.0 + 1.0 / 2 + 1.0 / 3)])  # rates 1/(1+k) for k = 0, 1, 2
    assert schedule.step_dtypes and set(schedule.step_dtypes) == {dtype}
    assert w.dtype == dtype


def test_row_45_config_and_weight_paths_after_one_step(backend):
    # tf_keras 2.21.0: SGD(0.1, momentum=0.9, nesterov=True, clipnorm=1.0) on tf.Variable([[1, 2]],
    # name="kernel") and tf.Variable([0.5], name="bias") with gradients [[3, 4]] and [1]:
    # apply_gradients returns 1; weights ['SGD/iter:0', 'SGD/kernel/momentum:0',
    # 'SGD/bias/momentum:0'] (inertia's paths without ':0'); slots [[-0.06, -0.08]] and [-0.1];
    # kernel [[0.886, 1.848]], bias [0.31]. Its config has these keys and values, except that,
    # built, it reads learning_rate and momentum back as np.float32(0.1) and np.float32(0.9)
    # where inertia keeps the Python floats (see tests/test_legacy_parity.py).
    optimizer = LegacySGD(0.1, momentum=0.9, nesterov=True, clipnorm=1.0)
    kernel = variable([[1.0, 2.0]], name="kernel")
    bias = variable([0.5], name="bias")
    iterations = apply(optimizer, [([[3.0, 4.0]], kernel), ([1.0], bias)])
    assert iterations is optimizer.iterations
    assert (iterations.name, iterations.path, iterations.dtype) == ("iter", "SGD/iter", "int64")
    assert int(iterations.numpy()) == 1
    config = optimizer.get_config()
    assert config == {"name": "SGD", "clipnorm": 1.0, "learning_rate": 0.1, "decay": 0.0, "momentum": 0.9, "nesterov": True}
    assert list(config) == ["name", "clipnorm", "learning_rate", "decay", "momentum", "nesterov"]
    assert [w.path for w in optimizer.weights] == ["SGD/iter", "SGD/kernel/momentum", "SGD/bias/momentum"]
    assert [w.path for w in optimizer.variables()] == ["SGD/iter", "SGD/kernel/momentum", "SGD/bias/momentum"]
    # kernel g=[3,4] clipped to [.6,.8]; v = -0.1*g; nesterov w += 0.9*v - 0.1*g.
    close(optimizer.get_slot(kernel, "momentum").numpy(), [[-0.06, -0.08]])
    close(kernel.numpy(), [[1.0 - 0.114, 2.0 - 0.152]])
    close(optimizer.get_slot(bias, "momentum").numpy(), [-0.1])
    close(bias.numpy(), [0.31])


def test_row_46_dense_rows_hit_in_turn(backend):
    # Row 46's dense numbers: rows 0 then 1 get gradient 1, m=0.5, lr=1, from zeros. tf_keras
    # 2.21.0 (SGD(learning_rate=1.0, momentum=0.5), dense tf.constant gradients) gives table
    # [[-1.5], [-1.0]] and slot [[-0.5], [-1.0]].
    # step 1: m=[-1,0], v=[-1,0]; step 2: m=0.5*[-1,0]-[0,1]=[-0.5,-1], v=[-1.5,-1].
    # (TF's lazy sparse kernel would give v=[-1,-1]; inertia has no sparse gradients.)
    optimizer = LegacySGD(learning_rate=1.0, momentum=0.5)
    table = variable([[0.0], [0.0]], name="table")
    apply(optimizer, [([[1.0], [0.0]], table)])
    apply(optimizer, [([[0.0], [1.0]], table)])
    np.testing.assert_array_equal(table.numpy(), [[-1.5], [-1.0]])
    np.testing.assert_array_equal(optimizer.get_slot(table, "momentum").numpy(), [[-0.5], [-1.0]])


def test_doctest_first_step_is_0_9(backend):
    # tf_keras 2.21.0: SGD(learning_rate=0.1).minimize(lambda: (var**2) / 2.0, [var]) on
    # tf.Variable(1.0) returns step 1 and leaves var = 0.8999999761581421.
    optimizer = LegacySGD(learning_rate=0.1)
    var = inertia.Variable(1.0)
    step_count = optimizer.minimize(lambda: (var**2) / 2.0, [var]).numpy()
    assert int(step_count) == 1
    close(var.numpy(), 0.9)
    if backend.name == "numpy":
        assert float(var.numpy()) == 0.8999999761581421  # float32(1 - float32(0.1))


def test_doctest_momentum_steps_are_0_1_then_0_18(backend):
    # tf_keras 2.21.0: SGD(learning_rate=0.1, momentum=0.9), the same loss twice from 1.0:
    # the steps are 0.10000002384185791 and 0.18000000715255737.
    optimizer = LegacySGD(learning_rate=0.1, momentum=0.9)
    var = inertia.Variable(1.0)
    val0 = float(var.numpy())
    optimizer.minimize(lambda: (var**2) / 2.0, [var])
    val1 = float(var.numpy())
    optimizer.minimize(lambda: (var**2) / 2.0, [var])
    val2 = float(var.numpy())
    close(val0 - val1, 0.1)
    close(val1 - val2, 0.18, rtol=1e-5)


def test_clipvalue_then_clipnorm(backend):
    # [3,4] -> clipvalue 2 -> [2,2] -> clipnorm 1 -> [.7071,.7071]. The other order would
    # give [.6,.8] (norm first, then values already below 2).
    optimizer = LegacySGD(learning_rate=1.0, clipvalue=2.0, clipnorm=1.0)
    w = variable([0.0, 0.0])
    apply(optimizer, [([3.0, 4.0], w)])
    close(w.numpy(), [-0.70710677, -0.70710677])


def test_clipvalue_then_global_clipnorm(backend):
    # a: [3] -> [2], b: [4] -> [2]; global norm 2*sqrt(2) -> each 1/sqrt(2).
    optimizer = LegacySGD(learning_rate=1.0, clipvalue=2.0, global_clipnorm=1.0)
    a, b = variable([0.0]), variable([0.0])
    apply(optimizer, [([3.0], a), ([4.0], b)])
    close([a.numpy()[0], b.numpy()[0]], [-0.70710677, -0.70710677])


def test_float64_variables_see_float32_rounded_hyperparameters(backend):
    # lr=0.1, momentum=0.9, decay=0.1 are float32 values cast to float64:
    # step k: lr_k = lr32 / (1 + d32*k); v = m32*v - lr_k*g; w += v.
    lr, m, d = (f32_then(x, "float64") for x in (0.1, 0.9, 0.1))
    assert lr != 0.1 and m != 0.9 and d != 0.1  # the rounding is visible in float64
    optimizer = LegacySGD(learning_rate=0.1, momentum=0.9, decay=0.1)
    w = variable([1.0, -2.0], "float64")
    grads = [[1.0, 0.5], [-2.0, 0.25], [0.75, 1.0]]
    values = trajectory(optimizer, w, grads, "float64")
    expected_w, velocity = np.array([1.0, -2.0]), np.zeros(2)
    for k, g in enumerate(grads):
        velocity = m * velocity - (lr / (1.0 + d * k)) * np.array(g)
        expected_w = expected_w + velocity
        np.testing.assert_allclose(values[k], expected_w, rtol=1e-14, atol=0)
    assert w.dtype == "float64" and optimizer.get_slot(w, "momentum").dtype == "float64"
    # The exact Python hyperparameters would be ~1e-9 away: far outside that tolerance.
    exact_w, exact_v = np.array([1.0, -2.0]), np.zeros(2)
    for k, g in enumerate(grads):
        exact_v = 0.9 * exact_v - (0.1 / (1.0 + 0.1 * k)) * np.array(g)
        exact_w = exact_w + exact_v
    assert np.max(np.abs(values[-1] - exact_w)) > 1e-9


def test_float32_and_float64_variables_in_one_step(backend):
    # One lr_t per dtype: the float32 variable sees float32(0.1), the float64 one the same
    # value widened (1 - 0.10000000149011612), not 0.9 exactly.
    optimizer = LegacySGD(learning_rate=0.1)
    w32, w64 = variable([1.0], "float32"), variable([1.0], "float64")
    optimizer.apply_gradients([(tensor([1.0], "float32"), w32), (tensor([1.0], "float64"), w64)])
    assert w32.numpy().dtype == np.float32 and w64.numpy().dtype == np.float64
    np.testing.assert_allclose(w64.numpy(), [1.0 - f32_then(0.1, "float64")], rtol=1e-15, atol=0)
    close(w32.numpy(), [0.9])


def test_float16_variable_row_42(backend):
    # fp16 [1,2], lr 0.1, m 0.9, g=1, 2 steps (row 42: the same on the legacy face, whose
    # float32 hypers round to the same float16 values). tf_keras 2.21.0: SGD(learning_rate=0.1,
    # momentum=0.9) on a float16 tf.Variable([1, 2]) with float16 gradients [1, 1] twice gives
    # [0.70996094, 1.7109375] and slot [-0.18994141, -0.18994141], all float16.
    optimizer = LegacySGD(learning_rate=0.1, momentum=0.9)
    w = variable([1.0, 2.0], "float16")
    apply(optimizer, [([1.0, 1.0], w)], "float16")
    apply(optimizer, [([1.0, 1.0], w)], "float16")
    value, slot = w.numpy(), optimizer.get_slot(w, "momentum").numpy()
    assert value.dtype == np.float16 and slot.dtype == np.float16
    np.testing.assert_array_equal(value, np.array([0.70996094, 1.7109375], np.float16))
    np.testing.assert_array_equal(slot, np.array([-0.18994141, -0.18994141], np.float16))


# ----------------------------------------------------------------------------------------
# legacy versus Keras 3 (inertia.SGD)
# ----------------------------------------------------------------------------------------
def test_decay_applies_on_legacy_and_is_ignored_with_a_warning_by_keras3(backend):
    legacy = LegacySGD(learning_rate=3.0, decay=0.5)
    with pytest.warns(UserWarning, match=r"Argument `decay` is no longer supported and will be ignored\."):
        keras3 = inertia.SGD(learning_rate=3.0, decay=0.5)
    legacy_values = trajectory(legacy, variable([1.0, 2.0]), [[0.1, 0.1]] * 3)
    keras3_values = trajectory(keras3, variable([1.0, 2.0]), [[0.1, 0.1]] * 3)
    close(legacy_values, ROW_37)
    close(keras3_values, [[0.7, 1.7], [0.4, 1.4], [0.1, 1.1]])  # constant lr 3


def test_clipvalue_with_clipnorm_is_legacy_only():
    with pytest.raises(ValueError, match=r"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set"):
        inertia.SGD(clipvalue=2.0, clipnorm=1.0)
    optimizer = LegacySGD(clipvalue=2.0, clipnorm=1.0)
    assert (optimizer.clipvalue, optimizer.clipnorm, optimizer.global_clipnorm) == (2.0, 1.0, None)
    assert list(optimizer.get_config())[:3] == ["name", "clipnorm", "clipvalue"]


def test_weights_exclude_the_learning_rate_variable():
    keras3, legacy = inertia.SGD(momentum=0.9), LegacySGD(momentum=0.9)
    wk, wl = inertia.Variable([1.0], name="w"), inertia.Variable([1.0], name="w")
    keras3.apply_gradients([(np.array([1.0], "float32"), wk)])
    legacy.apply_gradients([(np.array([1.0], "float32"), wl)])
    assert "learning_rate" in [v.name for v in keras3.variables]
    assert [v.name for v in legacy.variables()] == ["iter", "w/momentum"]
    assert [v.name for v in legacy.weights] == ["iter", "w/momentum"]
    assert len(legacy.get_weights()) == 2
    # ... yet the hyperparameter is still a float32 variable.
    assert isinstance(legacy.learning_rate, inertia.Variable) and legacy.learning_rate.dtype == "float32"
    assert all(v is not legacy.learning_rate for v in legacy.weights)


@pytest.mark.parametrize(
    "learning_rate, momentum, nesterov",
    [(0.01, 0.0, False), (0.05, 0.9, False), (0.3, 0.5, True)],
)
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_bit_identical_to_keras3_with_constant_rate_and_no_clipping(backend, keras, learning_rate, momentum, nesterov):
    # On the reference systems themselves: tf_keras' legacy SGD (TensorFlow's
    # ResourceApplyKerasMomentum / ResourceApplyGradientDescent kernels) and Keras 3's SGD (on
    # its NumPy backend) compute the same float32 numbers when the rate is constant and
    # nothing is clipped; inertia's legacy face gives them too, on every backend.
    tf, tf_keras = requires("tensorflow"), requires("tf_keras")
    rng = np.random.default_rng(1234)
    init = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    grads = [[rng.normal(size=a.shape).astype(np.float32) for a in init] for _ in range(6)]
    config = dict(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)
    legacy_vars = [tf.Variable(a.copy(), name=f"w{i}") for i, a in enumerate(init)]
    keras3_vars = [keras.Variable(a.copy(), name=f"w{i}") for i, a in enumerate(init)]
    inertia_vars = [variable(a, name=f"w{i}") for i, a in enumerate(init)]
    legacy, keras3, ours = tf_keras.optimizers.legacy.SGD(**config), keras.optimizers.SGD(**config), LegacySGD(**config)
    if backend.name == "jax":
        # Compiled, XLA contracts `v*m - g*lr` into a fused multiply-add (one rounding
        # fewer), which TensorFlow's kernels do not; the eager path compares the rule.
        ours.jit_compile = False
    for step in grads:
        legacy.apply_gradients([(tf.constant(g), v) for g, v in zip(step, legacy_vars)])
        keras3.apply([g.copy() for g in step], keras3_vars)
        ours.apply_gradients([(tensor(g), v) for g, v in zip(step, inertia_vars)])
    legacy_values = [v.numpy() for v in legacy_vars]
    assert_same_arrays([np.asarray(v.numpy()) for v in keras3_vars], legacy_values)
    assert_same_arrays([v.numpy() for v in inertia_vars], legacy_values)
    if momentum:
        legacy_slots = [legacy.get_slot(v, "momentum").numpy() for v in legacy_vars]
        keras3_slots = [np.asarray(v.numpy()) for v in keras3.variables if v.name.endswith("_momentum")]
        assert_same_arrays(keras3_slots, legacy_slots)
        assert_same_arrays([ours.get_slot(v, "momentum").numpy() for v in inertia_vars], legacy_slots)
    assert all(a.dtype == np.float32 for a in legacy_values)
    assert not np.array_equal(legacy_values[0], init[0])  # it did train


# ----------------------------------------------------------------------------------------
# API surface
# ----------------------------------------------------------------------------------------
def test_slots_exist_only_with_momentum():
    plain = LegacySGD(learning_rate=0.1)
    w = inertia.Variable([1.0, 2.0], name="kernel")
    plain.apply_gradients([(np.array([1.0, 1.0], "float32"), w)])
    assert plain.get_slot_names() == []
    assert [v.name for v in plain.weights] == ["iter"]
    with pytest.raises(KeyError, match="No slot 'momentum'"):
        plain.get_slot(w, "momentum")

    heavy = LegacySGD(learning_rate=0.1, momentum=0.9)
    k = inertia.Variable([1.0, 2.0], name="kernel")
    heavy.apply_gradients([(np.array([1.0, 1.0], "float32"), k)])
    slot = heavy.get_slot(k, "momentum")
    assert heavy.get_slot_names() == ["momentum"]
    assert (slot.name, slot.path, slot.trainable) == ("kernel/momentum", "SGD/kernel/momentum", False)
    close(slot.numpy(), [-0.1, -0.1])


def test_add_slot_joins_the_weights_in_creation_order_and_add_weight_does_not():
    optimizer = LegacySGD(learning_rate=0.1, momentum=0.9)
    k = inertia.Variable([1.0, 2.0], name="kernel")
    optimizer.apply_gradients([(np.array([1.0, 1.0], "float32"), k)])
    extra = optimizer.add_slot(k, "extra", initializer="ones")
    assert optimizer.add_slot(k, "extra") is extra  # existing slots are returned
    shaped = optimizer.add_slot(k, "shaped", shape=(3,))
    counter = optimizer.add_weight("counter", (2,), dtype="int64")
    # As in OptimizerV2, add_weight's variables are not weights (only iter and the slots are).
    assert [w.path for w in optimizer.weights] == [
        "SGD/iter", "SGD/kernel/momentum", "SGD/kernel/extra", "SGD/kernel/shaped",
    ]
    assert counter.path == "SGD/counter" and counter.trainable is True
    assert optimizer.add_weight("scale", ()).dtype == "float32"
    assert optimizer.get_slot_names() == ["momentum", "extra", "shaped"]
    assert optimizer.get_slot(k, "extra") is extra
    np.testing.assert_array_equal(extra.numpy(), [1.0, 1.0])
    assert shaped.shape == (3,) and shaped.dtype == "float32"
    assert counter.dtype == "int64"
    assert [w.shape for w in optimizer.get_weights()] == [(), (2,), (2,), (3,)]


def test_add_slot_before_the_first_step_is_the_slot_used():
    # OptimizerV2's _create_slots goes through add_slot, which returns an existing slot.
    optimizer = LegacySGD(learning_rate=1.0, momentum=0.5)
    k = inertia.Variable([1.0, 2.0], name="kernel")
    preset = optimizer.add_slot(k, "momentum", initializer="ones")
    optimizer.apply_gradients([(np.array([1.0, 1.0], "float32"), k)])
    assert optimizer.get_slot(k, "momentum") is preset
    assert [w.path for w in optimizer.weights] == ["SGD/iter", "SGD/kernel/momentum"]
    np.testing.assert_array_equal(preset.numpy(), [-0.5, -0.5])  # 0.5*1 - 1*1
    np.testing.assert_array_equal(k.numpy(), [0.5, 1.5])


def test_get_set_weights_onto_a_fresh_optimizer_continues_bit_for_bit(backend):
    config = dict(learning_rate=0.2, momentum=0.9, nesterov=True, decay=0.25)
    rng = np.random.default_rng(7)
    init = rng.normal(size=(2, 3))
    grads = [rng.normal(size=(2, 3)) for _ in range(6)]
    first = LegacySGD(**config)
    w = variable(init, name="kernel")
    for g in grads[:3]:
        apply(first, [(g, w)])
    weights = first.get_weights()
    assert [a.dtype for a in weights] == [np.int64, np.float32]
    assert int(weights[0]) == 3 and all(isinstance(a, np.ndarray) for a in weights)

    second = LegacySGD(**config)
    w2 = variable(w.numpy(), name="kernel")
    second.build([w2])
    second.set_weights(weights)
    for g in grads[3:]:
        apply(first, [(g, w)])
        apply(second, [(g, w2)])
    np.testing.assert_array_equal(w2.numpy(), w.numpy())
    assert_same_arrays(second.get_weights(), first.get_weights())
    assert int(second.iterations.numpy()) == 6  # decay read the restored counter


def test_set_weights_checks_length_and_shapes_before_changing_anything():
    optimizer = LegacySGD(learning_rate=0.1, momentum=0.9)
    a, b = inertia.Variable([1.0, 2.0], name="a"), inertia.Variable([3.0], name="b")
    optimizer.apply_gradients([(np.array([1.0, 1.0], "float32"), a), (np.array([1.0], "float32"), b)])
    before = optimizer.get_weights()
    with pytest.raises(ValueError) as info:
        optimizer.set_weights([np.array(5)])
    assert str(info.value) == (
        "You called `set_weights(weights)` on optimizer SGD with a  weight list of length 1, "
        "but the optimizer was expecting 3 weights. Provided weights: [array(5)]..."
    )
    with pytest.raises(ValueError, match=r"SGD/b/momentum has shape \(1,\) not compatible with provided weight shape \(2,\)"):
        optimizer.set_weights([np.array(9), np.zeros(2, "float32"), np.zeros(2, "float32")])
    assert_same_arrays(optimizer.get_weights(), before)  # the valid first entries were not applied


def test_minimize_with_grad_loss_weights_a_vector_loss(backend):
    # loss = w*w (a vector), output gradient [2, 3]: d/dw sum(gl * w^2) = 2*gl*w = [4, 12].
    optimizer = LegacySGD(learning_rate=0.1)
    w = variable([1.0, 2.0])
    optimizer.minimize(lambda: w * w, [w], grad_loss=tensor([2.0, 3.0]))
    close(w.numpy(), [1.0 - 0.4, 2.0 - 1.2])
    # without grad_loss a scalar loss goes the ordinary way
    optimizer.minimize(lambda: total(w * w), [w])
    close(w.numpy(), [0.6 - 0.12, 0.8 - 0.16])
    assert int(optimizer.iterations.numpy()) == 2


def test_minimize_takes_a_callable_var_list(backend):
    optimizer = LegacySGD(learning_rate=0.5, momentum=0.5)
    a, b = variable([2.0]), variable([4.0])
    for _ in range(2):
        optimizer.minimize(lambda: total(a * b), lambda: [a, b])
    # step 1: g=(4, 2) -> v=(-2,-1), a=0, b=3; step 2: g=(3, 0) -> v=(-2.5,-0.5), a=-2.5, b=2.5
    close([a.numpy()[0], b.numpy()[0]], [-2.5, 2.5])


def test_get_gradients_is_unclipped_and_get_updates_applies_a_clipped_step(backend):
    optimizer = LegacySGD(learning_rate=1.0, clipnorm=1.0)
    w = variable([3.0, 4.0])
    loss = lambda: total(w * w)  # noqa: E731
    (gradient,) = optimizer.get_gradients(loss, [w])
    close(np.asarray(gradient), [6.0, 8.0])
    assert int(optimizer.iterations.numpy()) == 0 and np.array_equal(w.numpy(), np.array([3.0, 4.0], np.float32))
    updates = optimizer.get_updates(loss, [w])
    assert updates == [optimizer.iterations] and int(updates[0].numpy()) == 1
    close(w.numpy(), [3.0 - 0.6, 4.0 - 0.8])  # [6, 8] clipped to norm 1


def test_learning_rate_setter_float_then_schedule_then_float(backend):
    optimizer = LegacySGD(learning_rate=0.5)
    hyper = optimizer.learning_rate
    assert isinstance(hyper, inertia.Variable) and optimizer.lr is hyper
    optimizer.learning_rate = 0.25  # a float is assigned into the same float32 variable
    assert optimizer.learning_rate is hyper and float(hyper.numpy()) == 0.25
    w = variable([0.0])
    apply(optimizer, [([1.0], w)])
    close(w.numpy(), [-0.25])
    optimizer.lr = schedules.ExponentialDecay(1.0, 1, 0.5)  # a schedule replaces it (Keras 3 refuses)
    assert isinstance(optimizer.learning_rate, schedules.ExponentialDecay)
    apply(optimizer, [([1.0], w)])  # iterations=1: 0.5
    apply(optimizer, [([1.0], w)])  # iterations=2: 0.25
    close(w.numpy(), [-1.0])
    assert optimizer.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"
    optimizer.learning_rate = 2.0  # and a float replaces the schedule again
    apply(optimizer, [([1.0], w)])
    close(w.numpy(), [-3.0])
    assert optimizer.get_config()["learning_rate"] == 2.0
    assert [v.name for v in optimizer.weights] == ["iter"]


def test_learning_rate_property_of_a_callable_is_its_current_value(backend):
    rate = {"value": 0.5}
    optimizer = LegacySGD(learning_rate=lambda: rate["value"])
    assert optimizer.learning_rate == 0.5
    w = variable([0.0])
    apply(optimizer, [([1.0], w)])
    rate["value"] = 0.25
    assert optimizer.learning_rate == 0.25 and optimizer.get_config()["learning_rate"] == 0.25
    apply(optimizer, [([1.0], w)])
    close(w.numpy(), [-0.75])


def test_config_before_build_is_the_legacy_layout():
    config = LegacySGD().get_config()
    assert config == {"name": "SGD", "learning_rate": 0.01, "decay": 0.0, "momentum": 0.0, "nesterov": False}
    assert list(config) == ["name", "learning_rate", "decay", "momentum", "nesterov"]
    # the clip options appear, in name order, only when set
    clipped = LegacySGD(global_clipnorm=2.0, clipvalue=0.5, decay=0.1).get_config()
    assert list(clipped) == ["name", "clipvalue", "global_clipnorm", "learning_rate", "decay", "momentum", "nesterov"]
    assert (clipped["clipvalue"], clipped["global_clipnorm"], clipped["decay"]) == (0.5, 2.0, 0.1)


def test_config_round_trip_trains_identically(backend):
    original = LegacySGD(
        learning_rate=schedules.PolynomialDecay(0.5, 4, 0.1), momentum=0.75, nesterov=True,
        clipvalue=1.5, clipnorm=2.0, decay=0.2, name="legacy_sgd",
    )
    clone = LegacySGD.from_config(original.get_config())
    assert clone.get_config() == original.get_config()
    assert isinstance(clone.learning_rate, schedules.PolynomialDecay)
    rng = np.random.default_rng(3)
    init, grads = rng.normal(size=4), [rng.normal(size=4) * 3 for _ in range(5)]
    w1, w2 = variable(init), variable(init)
    for g in grads:
        apply(original, [(g, w1)])
        apply(clone, [(g, w2)])
    np.testing.assert_array_equal(w1.numpy(), w2.numpy())
    assert [w.path for w in clone.weights] == ["legacy_sgd/iter", f"legacy_sgd/{w2.name}/momentum"]


def test_from_config_reads_lr_and_deserializes_a_schedule():
    from_lr = LegacySGD.from_config({"name": "SGD", "lr": 0.3, "decay": 0.1, "momentum": 0.5, "nesterov": False})
    assert from_lr.get_config() == {"name": "SGD", "learning_rate": 0.3, "decay": 0.1, "momentum": 0.5, "nesterov": False}
    schedule = schedules.ExponentialDecay(1.0, 10, 0.5)
    config = {"name": "SGD", "learning_rate": schedules.serialize(schedule), "decay": 0.0, "momentum": 0.0, "nesterov": False}
    restored = LegacySGD.from_config(config)
    assert isinstance(restored.learning_rate, schedules.ExponentialDecay)
    assert restored.learning_rate.get_config() == schedule.get_config()


def test_lr_keyword_is_deprecated_and_wins_over_learning_rate():
    with pytest.warns(UserWarning, match=r"The `lr` argument is deprecated, use `learning_rate` instead\."):
        optimizer = LegacySGD(learning_rate=0.1, lr=0.7)
    assert float(optimizer.learning_rate.numpy()) == float(np.float32(0.7))
    assert optimizer.get_config()["learning_rate"] == 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LegacySGD(learning_rate=0.1)  # no warning without `lr`


def test_numpy_arrays_are_updated_in_place():
    weights = np.array([1.0, 2.0], np.float32)
    optimizer = LegacySGD(learning_rate=0.5, momentum=0.5)
    optimizer.apply_gradients([(np.array([1.0, 1.0], np.float32), weights)])
    optimizer.apply_gradients([(np.array([1.0, 1.0], np.float32), weights)])
    np.testing.assert_array_equal(weights, [1.0 - 0.5 - 0.75, 2.0 - 0.5 - 0.75])
    np.testing.assert_array_equal(optimizer.get_slot(weights, "momentum").numpy(), [-0.75, -0.75])


def test_torch_tensors_are_updated_in_place():
    torch = requires("torch")
    parameter = torch.tensor([1.0, 2.0])
    optimizer = LegacySGD(learning_rate=0.5, decay=1.0)
    optimizer.apply_gradients([(torch.ones(2), parameter)])
    optimizer.apply_gradients([(torch.ones(2), parameter)])
    assert parameter.tolist() == [1.0 - 0.5 - 0.25, 2.0 - 0.5 - 0.25]  # lr 0.5, then 0.5/2


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"foo": 1},
            TypeError,
            "Unexpected keyword argument passed to optimizer: foo. Allowed kwargs are "
            "['clipnorm', 'clipvalue', 'decay', 'global_clipnorm', 'lr'].",
        ),
        ({"weight_decay": 0.1}, TypeError, "Unexpected keyword argument passed to optimizer: weight_decay."),
        ({"clipnorm": -1.0}, ValueError, "Expected clipnorm >= 0, received: -1.0"),
        ({"clipvalue": -0.5}, ValueError, "Expected clipvalue >= 0, received: -0.5"),
        ({"global_clipnorm": -2.0}, ValueError, "Expected global_clipnorm >= 0, received: -2.0"),
        ({"decay": -0.1}, ValueError, "Expected decay >= 0, received: -0.1"),
        ({"clipnorm": 0.0}, ValueError, "Expected clipnorm > 0, received: 0.0"),
        ({"global_clipnorm": 0}, ValueError, "Expected global_clipnorm > 0, received: 0"),
        (
            {"clipnorm": 1.0, "global_clipnorm": 2.0},
            ValueError,
            "Cannot accept both `clipnorm` and `global_clipnorm`. Received: `clipnorm`=1.0, `global_clipnorm`=2.0.",
        ),
        (
            {"momentum": -0.5},
            ValueError,
            "`momentum` must be between [0, 1]. Received: momentum=-0.5 (of type <class 'float'>).",
        ),
        ({"momentum": 2}, ValueError, "`momentum` must be between [0, 1]. Received: momentum=2 (of type <class 'int'>)."),
        ({"decay": float("nan")}, ValueError, "Argument `decay` must be a finite number. Received: decay=nan"),
        ({"clipvalue": "1"}, TypeError, "Argument `clipvalue` must be a real number. Received: clipvalue='1'"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error) as info:
        LegacySGD(**kwargs)
    assert message in str(info.value)


def test_int_momentum_and_zero_clipvalue_are_accepted():
    assert LegacySGD(momentum=1).momentum == 1
    assert LegacySGD(momentum=0).get_slot_names() == []
    assert LegacySGD(clipvalue=0.0).clipvalue == 0.0  # only the norms reject 0


def test_minimize_rejects_a_tape_off_tensorflow():
    optimizer = LegacySGD()
    w = inertia.Variable(np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="Argument `tape` .* is only meaningful for TensorFlow variables; on the numpy backend"):
        optimizer.minimize(lambda: total(w * w), [w], tape=object())
    assert int(optimizer.iterations.numpy()) == 0


def test_a_rejected_apply_changes_nothing(backend):
    optimizer = LegacySGD(learning_rate=0.5, momentum=0.9, decay=0.1, clipvalue=1.0)
    a, b = variable([1.0, 2.0], name="a"), variable([3.0], name="b")
    apply(optimizer, [([1.0, -1.0], a), ([2.0], b)])
    before = snapshot(optimizer, [a, b])
    with pytest.raises(ValueError, match=r"The gradient for variable 'b' has shape \(2,\) but the variable has shape \(1,\)"):
        apply(optimizer, [([1.0, 1.0], a), ([1.0, 1.0], b)])
    assert_same_arrays(snapshot(optimizer, [a, b]), before)
    with pytest.raises(TypeError, match="Gradients must be floating-point arrays"):
        optimizer.apply_gradients([(tensor([1.0, 1.0]), a), (tensor([1], "int32"), b)])
    assert_same_arrays(snapshot(optimizer, [a, b]), before)
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        optimizer.apply_gradients([(None, a), (None, b)])
    assert_same_arrays(snapshot(optimizer, [a, b]), before)
    apply(optimizer, [([1.0, 1.0], a), ([1.0], b)])  # and the optimizer still works
    assert int(optimizer.iterations.numpy()) == 2


# --- strict inputs: what the user wrote is named; loads and pairs are checked whole ---------
@pytest.mark.parametrize(
    "value, error, message",
    [
        (-1, ValueError, "Argument `lr` must be >= 0.0. Received: lr=-1"),
        (float("nan"), ValueError, "Argument `lr` must be a finite number. Received: lr=nan"),
        (float("inf"), ValueError, "Argument `lr` must be a finite number. Received: lr=inf"),
        ("0.1", ValueError, "Argument `lr` should be float"),
    ],
)
def test_lr_errors_name_lr_where_the_user_wrote_lr(value, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lr's deprecation warning
        with pytest.raises(error) as info:
            LegacySGD(lr=value)
    assert message in str(info.value) and "learning_rate" not in str(info.value)
    with pytest.raises(error) as info:
        LegacySGD.from_config({**LegacySGD().get_config(), "lr": value})
    assert message in str(info.value) and "learning_rate" not in str(info.value)
    optimizer = LegacySGD(learning_rate=0.25)
    with pytest.raises(error) as info:
        optimizer.lr = value
    assert message in str(info.value) and "learning_rate" not in str(info.value)
    assert float(optimizer.lr.numpy()) == float(optimizer.learning_rate.numpy()) == 0.25
    with pytest.raises(ValueError, match="Argument `learning_rate` must be >= 0.0. Received: learning_rate=-1"):
        LegacySGD(learning_rate=-1)  # and `learning_rate` where the user wrote that
    optimizer.lr = 0.5  # the alias still sets the rate
    assert float(optimizer.learning_rate.numpy()) == 0.5


def _trained_legacy():
    optimizer = LegacySGD(learning_rate=0.5, momentum=0.9, decay=0.1)
    a, b = inertia.Variable([1.0, 2.0], name="a"), inertia.Variable([3.0], name="b")
    for _ in range(2):
        optimizer.apply_gradients([(np.array([1.0, -1.0], "float32"), a), (np.array([2.0], "float32"), b)])
    return optimizer, [a, b]


def _store_of(optimizer, **changes):
    store = {}
    optimizer.save_own_variables(store)
    return {**store, **changes}


def _weights_of(optimizer, index, value):
    weights = optimizer.get_weights()
    weights[index] = value
    return weights


LEGACY_REJECTED = {
    "apply_gradients(None)": (lambda o, v: o.apply_gradients(None), TypeError, "`grads_and_vars` must be an iterable", "grads_and_vars=None"),
    "(variable, gradient)": (
        lambda o, v: o.apply_gradients([(v[0], np.ones(2, "float32"))]),  # the array would be taken as a new variable
        TypeError, "not (variable, gradient)", "variable 'a'",
    ),
    "set_weights(None)": (lambda o, v: o.set_weights(None), TypeError, "`weights` must be a list", "weights=None"),
    "set_weights iter at int64 max": (
        lambda o, v: o.set_weights(_weights_of(o, 0, np.array(2**63 - 1))),
        ValueError, "SGD/iter is a step counter of dtype int64", "weights[0]=array(9223372036854775807)",
    ),
    "set_weights iter negative": (lambda o, v: o.set_weights(_weights_of(o, 0, np.array(-1))), ValueError, "[0, 9223372036854775807)", "weights[0]=array(-1)"),
    "set_weights iter fractional": (lambda o, v: o.set_weights(_weights_of(o, 0, np.array(2.5))), ValueError, "whole number", "weights[0]=array(2.5)"),
    "set_weights None slot": (lambda o, v: o.set_weights(_weights_of(o, 2, None)), TypeError, "SGD/b/momentum cannot take None", "weights[2]=None"),
    "load_own_variables(None)": (lambda o, v: o.load_own_variables(None), TypeError, "`store` must be a mapping", "store=None"),
    "load iter 2**63": (
        lambda o, v: o.load_own_variables(_store_of(o, iter=np.array(2**63, dtype=np.uint64))),
        ValueError, "SGD/iter is a step counter", "store['iter']=array(9223372036854775808, dtype=uint64)",
    ),
    "load learning_rate nan": (
        lambda o, v: o.load_own_variables(_store_of(o, learning_rate=np.array(np.nan))),
        ValueError, "SGD/learning_rate takes a finite number >= 0", "store['learning_rate']=array(nan)",
    ),
    "load None slot": (
        lambda o, v: o.load_own_variables(_store_of(o, **{"a/momentum": None})),
        TypeError, "SGD/a/momentum cannot take None", "store['a/momentum']=None",
    ),
}


@pytest.mark.parametrize("case", list(LEGACY_REJECTED))
def test_rejected_inputs_name_the_argument_and_change_nothing(case):
    trigger, error, *fragments = LEGACY_REJECTED[case]
    optimizer, variables = _trained_legacy()
    twin, twin_variables = _trained_legacy()
    before = snapshot(optimizer, variables) + [np.array(optimizer.learning_rate.numpy())]
    with pytest.raises(error) as info:
        trigger(optimizer, variables)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert_same_arrays(snapshot(optimizer, variables) + [np.array(optimizer.learning_rate.numpy())], before)
    assert len(optimizer._trainable_variables) == 2 and optimizer.get_slot_names() == ["momentum"]
    for optimizer_, variables_ in ((optimizer, variables), (twin, twin_variables)):  # and it goes on as its twin
        optimizer_.apply_gradients([(np.array([0.5, 0.5], "float32"), variables_[0]), (np.array([1.0], "float32"), variables_[1])])
    assert_same_arrays(snapshot(optimizer, variables), snapshot(twin, twin_variables))


def test_a_bad_gradient_for_a_new_variable_registers_nothing():
    """tf.keras' legacy optimizers take new variables at any step; a bad gradient for one
    (wrong shape, integer) raises before the variable is registered or gets slots."""
    w = inertia.Variable(np.ones(2, np.float32), name="w")
    v = inertia.Variable(np.ones(3, np.float32), name="v")
    opt = inertia.legacy.SGD(0.1, momentum=0.9)
    opt.apply_gradients([(np.ones(2, np.float32), w)])
    before = [x.path for x in opt.variables()]
    for gradient, error in ((np.ones(2, np.float32), ValueError), (np.ones(3, np.int32), TypeError)):
        with pytest.raises(error):
            opt.apply_gradients([(np.ones(2, np.float32), w), (gradient, v)])
        assert [x.path for x in opt.variables()] == before
        np.testing.assert_array_equal(w.numpy(), np.float32(1) - np.float32(0.1))
    opt.apply_gradients([(np.ones(2, np.float32), w), (np.ones(3, np.float32), v)])  # a good one registers it
    assert len(opt.variables()) == len(before) + 1
