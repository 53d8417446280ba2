"""Learning-rate schedules: Keras 3's numbers, configs, errors and serialised forms.

The check values are Keras 3.15.1's, rounded to 7 significant digits
(`keras.optimizers.schedules.<Class>(<the test's arguments>)(step)` on its NumPy backend;
they are also in the project's research notes, shared/research/keras_semantics.md section 7,
outside this repository). The side-by-side tests run ``keras.optimizers.schedules`` over
thousands of steps and must agree bit for bit.
"""

import doctest
import math
import pickle

import numpy as np
import pytest

from conftest import requires
from inertia import schedules
from inertia.schedules import (
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    LearningRateSchedule,
    PiecewiseConstantDecay,
    PolynomialDecay,
    deserialize,
    serialize,
)

# Side by side with Keras the schedules agree bit for bit; the published check values are
# rounded to 7 significant digits.
RTOL = 1e-6
KERAS_RTOL = 0.0

def assert_lr(schedule, step, expected, dtype=np.float32, rtol=RTOL, atol=0.0):
    value = schedule(step)
    assert isinstance(value, np.ndarray) and value.ndim == 0, type(value)
    assert value.dtype == dtype, (value.dtype, dtype)
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, err_msg=f"step={step}")


# --------------------------------------------------------------------------------------------
# Check values (Keras 3.15.1's, rounded to 7 digits)
# --------------------------------------------------------------------------------------------


def test_exponential_decay_check_values():
    assert_lr(ExponentialDecay(0.05, 10, 0.96), 5, 0.0489898)
    staircase = ExponentialDecay(0.1, 3, 0.96, staircase=True)
    for step, expected in [(0, 0.1), (1, 0.1), (2, 0.1), (3, 0.096), (100, 0.0259986)]:
        assert_lr(staircase, step, expected)
    assert_lr(staircase, 100, 0.1 * 0.96**33)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["reference", "fused"])
def test_exponential_decay_drives_sgd_from_lr_at_step_zero(jit_compile):
    # The optimizer reads lr(k) at step k, so the first step uses lr(0) = 1, then 0.5, 0.25:
    # with a gradient of 1 the weight goes 0 -> -1 -> -1.5 -> -1.75.
    import inertia

    optimizer = inertia.SGD(learning_rate=ExponentialDecay(1.0, 1, 0.5), jit_compile=jit_compile)
    weight = np.zeros(3, np.float32)
    trajectory = []
    for _ in range(3):
        optimizer.apply([np.ones(3, np.float32)], [weight])
        trajectory.append(weight.tolist())
    assert trajectory == [[-1.0] * 3, [-1.5] * 3, [-1.75] * 3]
    assert float(optimizer.learning_rate) == 0.125  # what the 4th step would use


def test_exponential_decay_drives_keras_sgd_the_same_way(keras):
    schedule_args = (1.0, 1, 0.5)
    theirs = keras.optimizers.SGD(learning_rate=keras.optimizers.schedules.ExponentialDecay(*schedule_args))
    weight = keras.Variable(np.zeros(3, np.float32))
    trajectory = []
    for _ in range(3):
        theirs.apply([np.ones(3, np.float32)], [weight])
        trajectory.append(np.asarray(weight.numpy()).tolist())
    assert trajectory == [[-1.0] * 3, [-1.5] * 3, [-1.75] * 3]


PIECEWISE_TABLE = [
    (-999, 1.0),
    (0, 1.0),
    (100, 1.0),
    (101, 0.1),
    (105, 0.1),
    (110, 0.1),
    (111, 0.01),
    (120, 0.01),
    (121, 0.001),
    (999, 0.001),
]


@pytest.mark.parametrize("step, expected", PIECEWISE_TABLE)
def test_piecewise_constant_check_values(step, expected):
    # values[0] is the int 1: the float values make the lr float32 (as in Keras 3.15.1).
    assert_lr(PiecewiseConstantDecay([100, 110, 120], [1, 0.1, 0.01, 0.001]), step, expected)
    assert_lr(PiecewiseConstantDecay([100, 110, 120], [1.0, 0.1, 0.01, 0.001]), step, expected)


def test_piecewise_constant_int_values_give_int32():
    schedule = PiecewiseConstantDecay([100, 110, 120], [4, 3, 2, 1])
    for step, expected in [(0, 4), (100, 4), (101, 3), (110, 3), (111, 2), (121, 1)]:
        value = schedule(step)
        assert value.dtype == np.int32 and value == expected


POLYNOMIAL_TABLE = [
    # init, D, end, power, cycle, step, lr
    (0.05, 10, 0.0, 1.0, False, 5, 0.025),
    (0.05, 10, 0.001, 1.0, False, 5, 0.0255),
    (0.05, 10, 0.001, 1.0, False, 15, 0.001),
    (0.05, 10, 0.001, 1.0, True, 15, 0.01325),
    (0.05, 10, 0.001, 1.0, True, 10, 0.001),
    (0.05, 10, 0.001, 1.0, True, 20, 0.001),
    (0.05, 10, 0.001, 0.5, False, 5, 0.0356482),
]


@pytest.mark.parametrize("init, decay_steps, end, power, cycle, step, expected", POLYNOMIAL_TABLE)
def test_polynomial_decay_check_values(init, decay_steps, end, power, cycle, step, expected):
    assert_lr(PolynomialDecay(init, decay_steps, end, power, cycle), step, expected)


def test_polynomial_decay_cycle_at_step_zero_uses_default_end():
    schedule = PolynomialDecay(0.001, 10, cycle=True)
    assert schedule.end_learning_rate == 0.0001
    assert_lr(schedule, 0, 0.001)
    # Jumps back up right after each multiple of decay_steps.
    assert_lr(schedule, 11, (0.001 - 0.0001) * (1 - 11 / 20) + 0.0001)


def test_inverse_time_decay_check_values():
    schedule = InverseTimeDecay(0.1, 10, 0.96)
    table = [(0, 0.1), (1, 0.0912409), (2, 0.0838926), (5, 0.0675676), (10, 0.0510204), (11, 0.0486381)]
    for step, expected in table:
        assert_lr(schedule, step, expected)
    staircase = InverseTimeDecay(0.1, 10, 0.96, staircase=True)
    for step, expected in [(0, 0.1), (9, 0.1), (10, 0.0510204), (19, 0.0510204), (20, 0.0342466)]:
        assert_lr(staircase, step, expected)


COSINE_STEPS = [0, 250, 500, 750, 1000, 1250]


def test_cosine_decay_check_values():
    for step, expected in zip(COSINE_STEPS, [1, 0.8535534, 0.5, 0.1464466, 0, 0]):
        assert_lr(CosineDecay(1.0, 1000), step, expected, atol=1e-7)
    for step, expected in zip(COSINE_STEPS, [1, 0.8681981, 0.55, 0.231802, 0.1, 0.1]):
        assert_lr(CosineDecay(1.0, 1000, alpha=0.1), step, expected)


def test_cosine_decay_warmup_from_zero_check_values():
    schedule = CosineDecay(0.0, 1000, warmup_target=10.0, warmup_steps=2000)
    for step in range(0, 2001, 250):
        assert_lr(schedule, step, 1.25 * step / 250)
    for step, expected in zip([2250, 2500, 2750, 3000, 3250], [8.535534, 5, 1.464466, 0, 0]):
        assert_lr(schedule, step, expected, atol=1e-6)


def test_cosine_decay_warmup_starts_from_initial_learning_rate():
    # The ramp adds ``initial_learning_rate`` (the code does; Keras' docstring omits it).
    schedule = CosineDecay(0.1, 10, alpha=0.1, warmup_target=1.0, warmup_steps=5)
    for step, expected in zip(range(6), [0.1, 0.28, 0.46, 0.64, 0.82, 1.0]):
        assert_lr(schedule, step, expected)
    assert_lr(schedule, 6, 0.977975)
    assert_lr(schedule, 10, 0.55)
    assert_lr(schedule, 15, 0.1)
    assert_lr(schedule, 16, 0.1)


def test_cosine_decay_warmup_reaches_its_target_exactly_at_the_boundary(keras):
    # At step == warmup_steps the warmup is over: the decay starts from the target itself
    # (cos(0) = 1), which float32 holds exactly; the warmup line's own value there would be
    # 0.5 + (0.1 - 0.5) * 300/300 = 0.09999999 in float32.
    ours = CosineDecay(0.5, 900, warmup_target=0.1, warmup_steps=300)
    theirs = keras.optimizers.schedules.CosineDecay(0.5, 900, warmup_target=0.1, warmup_steps=300)
    # keras 3.15.1's values, as exact float32 bit patterns
    expected_bits = {299: "0x1.9f0fbp-4", 300: "0x1.99999ap-4", 301: "0x1.999948p-4"}
    for step, bits in expected_bits.items():
        expected = np.float32(float.fromhex(bits))
        assert ours(step) == expected == np.asarray(theirs(step)), step


def test_cosine_decay_restarts_check_values():
    schedule = CosineDecayRestarts(1.0, 1000)
    for step, expected in zip([0, 250, 500, 750], [1, 0.8535534, 0.5, 0.1464466]):
        assert_lr(schedule, step, expected)
    # Rounded, 2.5e-6; float32 cancellation makes it 2.4735928e-06 (Keras 3.15.1 gives the same).
    assert_lr(schedule, 999, 2.4735928e-06)
    assert round(float(schedule(999)), 7) == 2.5e-6
    for step, expected in [(1000, 1.0), (1250, 0.9619398), (2000, 0.5), (3000, 1.0)]:
        assert_lr(schedule, step, expected)

    shrinking = CosineDecayRestarts(1.0, 1000, m_mul=0.9)
    assert_lr(shrinking, 1000, 0.9)
    assert_lr(shrinking, 1250, 0.8657458)

    periodic = CosineDecayRestarts(1.0, 1000, t_mul=1.0, alpha=0.1)
    for period in range(3):
        for offset, expected in zip([0, 250, 500, 750], [1, 0.8681981, 0.55, 0.231802]):
            assert_lr(periodic, 1000 * period + offset, expected)


def test_cosine_decay_restarts_alpha_is_not_scaled_by_m_mul():
    schedule = CosineDecayRestarts(2.0, 10, t_mul=1.0, m_mul=0.5, alpha=0.2)
    # Start of period 2: init * ((1 - alpha) * m_mul**2 + alpha).
    assert_lr(schedule, 20, 2.0 * (0.8 * 0.25 + 0.2))


# --------------------------------------------------------------------------------------------
# Side by side with Keras
# --------------------------------------------------------------------------------------------


def _steps(*periods):
    """0..3000 in varied strides, plus each multiple of the periods and its neighbours."""
    steps = set(range(0, 30)) | set(range(30, 400, 11)) | set(range(400, 3001, 41))
    for period in periods:
        for multiple in list(range(0, 3001, period))[:25]:  # the first restarts / stairs
            steps |= {multiple - 1, multiple, multiple + 1}
    return sorted(s for s in steps if s >= 0) + [3000, 7919, 123457]


KERAS_CASES = [
    ("ExponentialDecay", (0.05, 10, 0.96), {}, (10,)),
    ("ExponentialDecay", (0.1, 3, 0.96), {"staircase": True}, (3,)),
    ("ExponentialDecay", (2.5, 700, 1.07), {}, (700,)),
    ("PiecewiseConstantDecay", ([100, 110, 120], [1.0, 0.1, 0.01, 0.001]), {}, ()),
    ("PiecewiseConstantDecay", ([0, 500, 2000], [3, 2, 1, 0]), {}, (500,)),
    ("PiecewiseConstantDecay", ([10.5, 250.9], [0.3, 0.2, 0.1]), {}, ()),
    ("PiecewiseConstantDecay", ([300, 100], [0.5, 0.25, 0.125]), {}, (100,)),  # not increasing
    ("PolynomialDecay", (0.05, 10, 0.001), {}, (10,)),
    ("PolynomialDecay", (0.05, 10, 0.001, 0.5, True), {}, (10,)),
    ("PolynomialDecay", (0.1, 370, 0.0), {"power": 2.0, "cycle": True}, (370,)),
    ("PolynomialDecay", (0.1, 1000), {"power": 3.0}, (1000,)),
    ("InverseTimeDecay", (0.1, 10, 0.96), {}, (10,)),
    ("InverseTimeDecay", (0.1, 10, 0.96, True), {}, (10,)),
    ("CosineDecay", (1.0, 1000), {}, (250,)),
    ("CosineDecay", (0.3, 777, 0.1), {}, (777,)),
    ("CosineDecay", (1.0, 10, 0.256), {}, (10,)),  # (1 - alpha) rounds: 0.98179305 at step 1
    ("CosineDecay", (0.0, 1000), {"warmup_target": 10.0, "warmup_steps": 2000}, (250,)),
    ("CosineDecay", (0.1, 10, 0.1), {"warmup_target": 1.0, "warmup_steps": 5}, (5,)),
    ("CosineDecay", (0.1, 100, 0.1), {"warmup_target": 1.0, "warmup_steps": 0}, (100,)),
    ("CosineDecay", (0.5, 900), {"warmup_target": 0.1, "warmup_steps": 300}, (300,)),  # ramps down
    ("CosineDecayRestarts", (1.0, 1000), {}, (1000,)),
    ("CosineDecayRestarts", (1.0, 1000), {"m_mul": 0.9}, (1000,)),
    ("CosineDecayRestarts", (1.0, 1000), {"t_mul": 1.0, "alpha": 0.1}, (1000,)),
    ("CosineDecayRestarts", (0.3, 77, 1.5, 0.8, 0.05), {}, (77,)),
    ("CosineDecayRestarts", (0.2, 30), {"t_mul": 3.0, "m_mul": 0.5, "alpha": 0.01}, (30, 90)),
]


@pytest.mark.parametrize(
    "class_name, args, kwargs, periods",
    KERAS_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(KERAS_CASES)],
)
def test_matches_keras_over_steps(keras, class_name, args, kwargs, periods):
    ours = getattr(schedules, class_name)(*args, **kwargs)
    theirs = getattr(keras.optimizers.schedules, class_name)(*args, **kwargs)
    for step in _steps(*periods):
        expected = np.asarray(theirs(step))
        actual = ours(step)
        assert actual.dtype == expected.dtype, (step, actual.dtype, expected.dtype)
        np.testing.assert_allclose(actual, expected, rtol=KERAS_RTOL, atol=0, err_msg=f"step={step}")


@pytest.mark.parametrize(
    "step", [5, np.int64(5), np.int32(1234), np.array(77), 5.5, np.float32(100.5), np.float64(999.25)]
)
def test_matches_keras_for_step_types(keras, step):
    for class_name, args, kwargs, _ in KERAS_CASES:
        ours = getattr(schedules, class_name)(*args, **kwargs)(step)
        theirs = np.asarray(getattr(keras.optimizers.schedules, class_name)(*args, **kwargs)(step))
        assert ours.dtype == theirs.dtype, class_name
        np.testing.assert_allclose(ours, theirs, rtol=KERAS_RTOL, err_msg=class_name)


@pytest.mark.parametrize(
    "class_name, args, kwargs",
    [
        ("ExponentialDecay", (np.float16(0.05), 10, 0.96), {}),
        ("PolynomialDecay", (np.float16(0.05), 37, 0.001, 2.0, True), {}),
        ("CosineDecay", (np.float16(0.1), 10, 0.1), {"warmup_target": 1.0, "warmup_steps": 5}),
        ("CosineDecayRestarts", (np.float16(0.3), 77, 1.5, 0.8, 0.05), {}),
    ],
)
def test_float16_learning_rate_matches_keras(keras, class_name, args, kwargs):
    ours = getattr(schedules, class_name)(*args, **kwargs)
    theirs = getattr(keras.optimizers.schedules, class_name)(*args, **kwargs)
    for step in range(0, 3000, 13):  # float16 holds steps exactly up to 2048
        expected = np.asarray(theirs(step))
        assert ours(step).dtype == np.float16 == expected.dtype
        np.testing.assert_allclose(ours(step), expected, rtol=1e-3, err_msg=f"step={step}")


# --------------------------------------------------------------------------------------------
# dtypes and step types
# --------------------------------------------------------------------------------------------


def _float64_reference(class_name, step):
    """Each formula in Python floats (double precision)."""
    s = float(step)
    if class_name == "ExponentialDecay":
        return 0.05 * 0.96 ** math.floor(s / 7)
    if class_name == "PolynomialDecay":
        d = 10 * (1 if s == 0 else math.ceil(s / 10))
        return (0.05 - 0.001) * (1 - s / d) ** 0.5 + 0.001
    if class_name == "InverseTimeDecay":
        return 0.1 / (1 + 0.96 * s / 10)
    if class_name == "CosineDecay":
        s = min(s, 10 + 5)
        if s < 5:
            return (1.0 - 0.1) * s / 5 + 0.1
        return 1.0 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * (s - 5) / 10)) + 0.1)
    if class_name == "CosineDecayRestarts":
        x = s / 100
        i = math.floor(math.log(1 - x * (1 - 2.0)) / math.log(2.0))
        t = (x - (1 - 2.0**i) / (1 - 2.0)) / 2.0**i
        return 0.3 * ((1 - 0.05) * 0.5 * 0.9**i * (1 + math.cos(math.pi * t)) + 0.05)
    raise AssertionError(class_name)


FLOAT64_SCHEDULES = {
    "ExponentialDecay": lambda init: ExponentialDecay(init, 7, 0.96, staircase=True),
    "PolynomialDecay": lambda init: PolynomialDecay(init, 10, 0.001, 0.5, cycle=True),
    "InverseTimeDecay": lambda init: InverseTimeDecay(init, 10, 0.96),
    "CosineDecay": lambda init: CosineDecay(init, 10, 0.1, warmup_target=1.0, warmup_steps=5),
    "CosineDecayRestarts": lambda init: CosineDecayRestarts(init, 100, 2.0, 0.9, 0.05),
}
FLOAT64_INITS = {
    "ExponentialDecay": 0.05,
    "PolynomialDecay": 0.05,
    "InverseTimeDecay": 0.1,
    "CosineDecay": 0.1,
    "CosineDecayRestarts": 0.3,
}


@pytest.mark.parametrize("class_name", sorted(FLOAT64_SCHEDULES))
def test_float64_learning_rate_computes_in_float64(class_name):
    schedule = FLOAT64_SCHEDULES[class_name](np.float64(FLOAT64_INITS[class_name]))
    for step in [0, 1, 2, 3, 5, 6, 9, 10, 11, 15, 19, 20, 99, 100, 101, 299, 300, 301, 1234, 3000]:
        value = schedule(step)
        assert value.dtype == np.float64 and value.ndim == 0
        np.testing.assert_allclose(value, _float64_reference(class_name, step), rtol=1e-12)
    # The same schedule from a Python float stays float32, about 1e-7 away.
    single = FLOAT64_SCHEDULES[class_name](FLOAT64_INITS[class_name])(11)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, _float64_reference(class_name, 11), rtol=1e-6)


def test_float64_values_give_float64_piecewise_constant():
    schedule = PiecewiseConstantDecay([10], [np.float64(0.1), np.float64(0.2)])
    assert schedule(3).dtype == np.float64 and schedule(3) == 0.1 and schedule(11) == 0.2


def test_integer_learning_rate_is_float32_not_int32():
    # Keras computes in int32 here (decay_rate truncated to 0); a float32 lr is meant.
    assert_lr(ExponentialDecay(1, 10, 0.5), 10, 0.5)
    assert_lr(ExponentialDecay(np.int64(1), 10, 0.5), 20, 0.25)
    assert_lr(CosineDecay(1, 1000), 500, 0.5)


def test_piecewise_constant_float_boundaries_are_cast_to_the_step_dtype():
    schedule = PiecewiseConstantDecay([100.5], [1.0, 2.0])
    assert schedule(100) == 1.0 and schedule(101) == 2.0
    # For an integer step the boundary truncates to 100, so 100.5 is not reached...
    assert schedule(np.int32(100)) == 1.0
    # ...while a float step compares with 100.5 itself.
    assert schedule(100.5) == 1.0 and schedule(100.75) == 2.0


def test_step_can_be_an_inertia_variable():
    from inertia import Variable

    step = Variable(np.int64(1250), name="iteration", trainable=False)
    assert_lr(CosineDecayRestarts(1.0, 1000), step, 0.9619398)
    assert_lr(PiecewiseConstantDecay([100, 110, 120], [1.0, 0.1, 0.01, 0.001]), step, 0.001)


@pytest.mark.parametrize("step", [None, "5", b"5"])
def test_non_numeric_step_is_rejected(step):
    with pytest.raises(TypeError, match="numeric step"):
        ExponentialDecay(0.1, 10, 0.5)(step)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

VALIDATION_CASES = [
    # Keras' own checks and messages.
    (
        lambda: ExponentialDecay(0.1, 0, 0.5),
        ValueError,
        "Argument `decay_steps` must be > 0. Received: decay_steps=0",
    ),
    (
        lambda: PolynomialDecay(0.1, -5),
        ValueError,
        "Argument `decay_steps` must be > 0. Received: decay_steps=-5",
    ),
    (
        lambda: InverseTimeDecay(0.1, 0, 0.5),
        ValueError,
        "Argument `decay_steps` must be > 0. Received: decay_steps=0",
    ),
    (
        lambda: CosineDecay(0.1, 0),
        ValueError,
        "Argument `decay_steps` must be > 0. Received: decay_steps=0",
    ),
    (
        lambda: CosineDecayRestarts(0.1, 0),
        ValueError,
        "Argument `first_decay_steps` must be > 0. Received: first_decay_steps=0",
    ),
    (
        lambda: PiecewiseConstantDecay([1, 2], [1.0, 2.0]),
        ValueError,
        "The length of boundaries should be 1 less than the length of values. Received: "
        "boundaries=[1, 2] of length 2, and values=[1.0, 2.0] of length 2.",
    ),
    # Beyond Keras: non-finite numbers.
    (
        lambda: ExponentialDecay(float("nan"), 10, 0.5),
        ValueError,
        "Argument `initial_learning_rate` must be a finite number. Received: initial_learning_rate=nan",
    ),
    (lambda: ExponentialDecay(0.1, 10, float("inf")), ValueError, "Received: decay_rate=inf"),
    (lambda: ExponentialDecay(0.1, float("nan"), 0.5), ValueError, "Received: decay_steps=nan"),
    (lambda: ExponentialDecay(0.1, 10**400, 0.5), ValueError, "must be a finite number"),
    (lambda: InverseTimeDecay(0.1, 10, -float("inf")), ValueError, "Received: decay_rate=-inf"),
    (
        lambda: PolynomialDecay(0.1, 10, end_learning_rate=np.nan),
        ValueError,
        "Received: end_learning_rate=nan",
    ),
    (lambda: PolynomialDecay(0.1, 10, power=np.float32("inf")), ValueError, "Received: power=inf"),
    (lambda: CosineDecay(0.1, 10, alpha=np.nan), ValueError, "Received: alpha=nan"),
    (lambda: CosineDecay(0.1, 10, warmup_target=np.inf), ValueError, "Received: warmup_target=inf"),
    (
        lambda: CosineDecay(0.1, 10, warmup_target=1.0, warmup_steps=-1),
        ValueError,
        "Argument `warmup_steps` must be >= 0. Received: warmup_steps=-1",
    ),
    (lambda: CosineDecay(0.1, 10, warmup_steps=np.nan), ValueError, "Received: warmup_steps=nan"),
    (
        lambda: CosineDecayRestarts(0.1, 10, t_mul=np.nan),
        ValueError,
        "Argument `t_mul` must be a finite number. Received: t_mul=nan",
    ),
    (lambda: CosineDecayRestarts(0.1, 10, m_mul=np.inf), ValueError, "Received: m_mul=inf"),
    (lambda: CosineDecayRestarts(0.1, 10, alpha=-np.inf), ValueError, "Received: alpha=-inf"),
    (
        lambda: CosineDecayRestarts(np.float64("nan"), 10),
        ValueError,
        "Received: initial_learning_rate=nan",
    ),
    (
        lambda: PiecewiseConstantDecay([10], [1.0, np.nan]),
        ValueError,
        "Argument `values[1]` must be a finite number. Received: values[1]=nan",
    ),
    (
        lambda: PiecewiseConstantDecay([np.inf], [1.0, 2.0]),
        ValueError,
        "Received: boundaries[0]=inf",
    ),
    (
        lambda: PiecewiseConstantDecay([], [1.0]),
        ValueError,
        "Argument `boundaries` must contain at least one boundary",
    ),
    # Beyond Keras: things that are not numbers.
    (
        lambda: ExponentialDecay("0.1", 10, 0.5),
        TypeError,
        "Argument `initial_learning_rate` must be a real number. Received: initial_learning_rate='0.1'",
    ),
    (lambda: ExponentialDecay(None, 10, 0.5), TypeError, "Received: initial_learning_rate=None"),
    (lambda: ExponentialDecay(0.1, "10", 0.5), TypeError, "Received: decay_steps='10'"),
    (lambda: ExponentialDecay(0.1, 10, None), TypeError, "Received: decay_rate=None"),
    (
        lambda: ExponentialDecay(0.1, 10, 0.5, staircase="yes"),
        TypeError,
        "Argument `staircase` must be a bool. Received: staircase='yes'",
    ),
    (lambda: ExponentialDecay(True, 10, 0.5), TypeError, "Received: initial_learning_rate=True"),
    (
        lambda: ExponentialDecay(0.1, 10, 0.5, name=3),
        TypeError,
        "Argument `name` must be a string. Received: name=3",
    ),
    (
        lambda: PolynomialDecay(0.1, 10, end_learning_rate=None),
        TypeError,
        "Received: end_learning_rate=None",
    ),
    (lambda: PolynomialDecay(0.1, 10, power="2"), TypeError, "Received: power='2'"),
    (lambda: PolynomialDecay(0.1, 10, cycle=None), TypeError, "Received: cycle=None"),
    (lambda: InverseTimeDecay(0.1, None, 0.5), TypeError, "Received: decay_steps=None"),
    (lambda: CosineDecay(0.1, 10, alpha=None), TypeError, "Received: alpha=None"),
    (lambda: CosineDecay(0.1, 10, warmup_target="1"), TypeError, "Received: warmup_target='1'"),
    (lambda: CosineDecay(0.1, 10, warmup_steps=None), TypeError, "Received: warmup_steps=None"),
    (lambda: CosineDecayRestarts(0.1, 10, t_mul=None), TypeError, "Received: t_mul=None"),
    (lambda: CosineDecayRestarts(0.1, 10, m_mul="x"), TypeError, "Received: m_mul='x'"),
    (lambda: CosineDecayRestarts(0.1, [10]), TypeError, "Received: first_decay_steps=[10]"),
    (lambda: CosineDecayRestarts(0.1, 10, alpha=1j), TypeError, "Received: alpha=1j"),
    (lambda: PiecewiseConstantDecay([10], [1.0, "2"]), TypeError, "Received: values[1]='2'"),
    (lambda: PiecewiseConstantDecay([None], [1.0, 2.0]), TypeError, "Received: boundaries[0]=None"),
    (
        lambda: PiecewiseConstantDecay(10, [1.0, 2.0]),
        TypeError,
        "Argument `boundaries` must be a list of numbers. Received: boundaries=10",
    ),
    (lambda: PiecewiseConstantDecay([10], "12"), TypeError, "Received: values='12'"),
]


@pytest.mark.parametrize("factory, error, message", VALIDATION_CASES)
def test_invalid_arguments_are_rejected(factory, error, message):
    with pytest.raises(error) as info:
        factory()
    assert message in str(info.value)


def test_accepted_edge_arguments():
    # Float steps counts are fine (Keras' own docstring uses decay_steps=1.0).
    assert_lr(InverseTimeDecay(0.1, 1.0, 0.5), 2, 0.05)
    # A warmup target with zero warmup steps starts the decay from the target.
    assert_lr(CosineDecay(0.1, 10, warmup_target=1.0, warmup_steps=0), 0, 1.0)
    # 0-d arrays are numbers too.
    assert_lr(ExponentialDecay(np.array(0.1, np.float32), 10, np.array(0.5)), 10, 0.05)
    # tf.keras 2 configs carry name=None.
    assert ExponentialDecay(0.1, 10, 0.5, name=None).get_config()["name"] is None


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


def test_base_class_must_be_overridden():
    class Incomplete(LearningRateSchedule):
        pass

    with pytest.raises(NotImplementedError) as info:
        Incomplete()(0)
    assert str(info.value) == "Learning rate schedule 'Incomplete' must override `__call__(self, step)`."
    with pytest.raises(NotImplementedError) as info:
        Incomplete().get_config()
    assert str(info.value) == (
        "Learning rate schedule 'Incomplete' must override `get_config()` in order to be serializable."
    )
    with pytest.raises(NotImplementedError):
        serialize(Incomplete())
    assert "Incomplete object" in repr(Incomplete())


def test_subclass_round_trips_through_custom_objects():
    class Halving(LearningRateSchedule):
        def __init__(self, initial_learning_rate):
            self.initial_learning_rate = initial_learning_rate

        def __call__(self, step):
            return self.initial_learning_rate / 2**step

        def get_config(self):
            return {"initial_learning_rate": self.initial_learning_rate}

    data = serialize(Halving(1.0))
    assert data == {
        "module": "inertia.schedules",
        "class_name": "Halving",
        "config": {"initial_learning_rate": 1.0},
        "registered_name": None,
    }
    restored = deserialize(data, custom_objects={"Halving": Halving})
    assert isinstance(restored, Halving) and restored(2) == 0.25
    with pytest.raises(ValueError, match="Halving"):
        deserialize(data)


# --------------------------------------------------------------------------------------------
# Configs and serialisation
# --------------------------------------------------------------------------------------------

ARGUMENTS = {
    "ExponentialDecay": ((0.1, 100, 0.9), {"staircase": True, "name": "exp"}),
    "PiecewiseConstantDecay": (([10, 20], [0.3, 0.2, 0.1]), {}),
    "PolynomialDecay": ((0.1, 100), {"end_learning_rate": 0.01, "power": 2.0, "cycle": True}),
    "InverseTimeDecay": ((0.1, 100, 0.5), {}),
    "CosineDecay": ((0.0, 1000), {"alpha": 0.1, "warmup_target": 0.5, "warmup_steps": 100}),
    "CosineDecayRestarts": ((0.1, 100), {"t_mul": 1.5, "m_mul": 0.9, "alpha": 0.05}),
}


@pytest.mark.parametrize("class_name", sorted(ARGUMENTS))
def test_config_equals_keras_config_key_for_key(keras, class_name):
    args, kwargs = ARGUMENTS[class_name]
    ours = getattr(schedules, class_name)(*args, **kwargs).get_config()
    theirs = getattr(keras.optimizers.schedules, class_name)(*args, **kwargs).get_config()
    assert list(ours) == list(theirs)
    assert ours == theirs
    # Defaults too.
    for name, (positional, _) in ARGUMENTS.items():
        ours = getattr(schedules, name)(*positional).get_config()
        assert ours == getattr(keras.optimizers.schedules, name)(*positional).get_config()


def test_config_keys_in_keras_order():
    expected = {
        ExponentialDecay: ["initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name"],
        PiecewiseConstantDecay: ["boundaries", "values", "name"],
        PolynomialDecay: [
            "initial_learning_rate", "decay_steps", "end_learning_rate", "power", "cycle", "name"
        ],
        InverseTimeDecay: ["initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name"],
        CosineDecay: [
            "initial_learning_rate", "decay_steps", "alpha", "name", "warmup_target", "warmup_steps"
        ],
        CosineDecayRestarts: [
            "initial_learning_rate", "first_decay_steps", "t_mul", "m_mul", "alpha", "name"
        ],
    }
    for cls, keys in expected.items():
        args, kwargs = ARGUMENTS[cls.__name__]
        assert list(cls(*args, **kwargs).get_config()) == keys


def test_defaults_and_names():
    assert ExponentialDecay(0.1, 10, 0.5).get_config()["name"] == "ExponentialDecay"
    assert PiecewiseConstantDecay([1], [1.0, 2.0]).name == "PiecewiseConstant"
    assert PolynomialDecay(0.1, 10).get_config() == {
        "initial_learning_rate": 0.1,
        "decay_steps": 10,
        "end_learning_rate": 0.0001,
        "power": 1.0,
        "cycle": False,
        "name": "PolynomialDecay",
    }
    assert CosineDecay(0.1, 10).get_config()["warmup_target"] is None
    restarts = CosineDecayRestarts(0.1, 10)
    assert (restarts.name, restarts._t_mul, restarts._m_mul, restarts.alpha) == ("SGDRDecay", 2.0, 1.0, 0.0)
    assert not hasattr(restarts, "t_mul")


ROUND_TRIP_STEPS = [0, 1, 5, 10, 99, 100, 101, 150, 999, 1000, 2500]


def _same_values(a, b):
    for step in ROUND_TRIP_STEPS:
        x, y = a(step), b(step)
        assert x.dtype == y.dtype and x == y, step


@pytest.mark.parametrize("class_name", sorted(ARGUMENTS))
def test_from_config_and_serialize_round_trip(class_name):
    args, kwargs = ARGUMENTS[class_name]
    original = getattr(schedules, class_name)(*args, **kwargs)
    config = original.get_config()
    again = type(original).from_config(config)
    assert type(again) is type(original) and again.get_config() == config
    _same_values(original, again)

    data = serialize(original)
    assert data == {
        "module": "inertia.schedules",
        "class_name": class_name,
        "config": config,
        "registered_name": None,
    }
    restored = deserialize(data)
    assert type(restored) is type(original) and restored.get_config() == config
    _same_values(original, restored)

    module_less = deserialize({"class_name": class_name, "config": config})
    assert module_less.get_config() == config

    copied = pickle.loads(pickle.dumps(original))
    assert copied.get_config() == config
    assert repr(original).startswith(f"{class_name}(")


def test_get_config_is_a_copy():
    schedule = PiecewiseConstantDecay([10], [0.2, 0.1])
    schedule.get_config()["boundaries"].append(20)
    assert schedule.boundaries == [10]


@pytest.mark.parametrize("class_name", sorted(ARGUMENTS))
def test_deserialize_keras_serialized_schedule(keras, class_name):
    args, kwargs = ARGUMENTS[class_name]
    theirs = getattr(keras.optimizers.schedules, class_name)(*args, **kwargs)
    data = keras.optimizers.schedules.serialize(theirs)
    assert data["module"] == "keras.optimizers.schedules"
    ours = deserialize(data)
    assert type(ours).__name__ == class_name
    assert ours.get_config() == theirs.get_config()
    for step in ROUND_TRIP_STEPS:
        np.testing.assert_allclose(ours(step), np.asarray(theirs(step)), rtol=RTOL)
    # And Keras reads ours back once the module is its own.
    back = keras.optimizers.schedules.deserialize({**serialize(ours), "module": "keras.optimizers.schedules"})
    assert back.get_config() == theirs.get_config()


def test_deserialize_keras_wrapped_numpy_values(keras):
    # Keras' serialiser wraps NumPy scalars and arrays in ``__tensor__`` dicts.
    theirs = keras.optimizers.schedules.ExponentialDecay(np.float32(0.1), 10, np.float32(0.5))
    ours = deserialize(keras.optimizers.schedules.serialize(theirs))
    assert ours.initial_learning_rate == np.float32(0.1)
    assert_lr(ours, 10, np.float32(0.1) * np.float32(0.5))

    piecewise = keras.optimizers.schedules.PiecewiseConstantDecay(np.array([10, 20]), [0.3, 0.2, 0.1])
    ours = deserialize(keras.optimizers.schedules.serialize(piecewise))
    assert ours.boundaries == [10, 20]
    assert_lr(ours, 15, 0.2)

    tupled = {"class_name": "PiecewiseConstantDecay", "config": {
        "boundaries": {"class_name": "__tuple__", "config": {"value": [10, 20]}},
        "values": [0.3, 0.2, 0.1],
        "name": "p",
    }}
    assert deserialize(tupled).boundaries == [10, 20]


def test_deserialize_errors():
    with pytest.raises(ValueError, match="NoSuchDecay"):
        deserialize({"class_name": "NoSuchDecay", "config": {}})
    with pytest.raises(ValueError, match="my.module"):
        deserialize({"module": "my.module", "class_name": "ExponentialDecay", "config": {}})
    with pytest.raises(TypeError, match="class_name"):
        deserialize("ExponentialDecay")
    with pytest.raises(TypeError):
        deserialize({"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1, "bogus": 1}})
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        serialize(lambda step: 0.1)


def test_tf_keras_2_config_without_module_and_name_none():
    data = {
        "class_name": "ExponentialDecay",
        "config": {
            "initial_learning_rate": 0.1,
            "decay_steps": 10,
            "decay_rate": 0.5,
            "staircase": False,
            "name": None,
        },
    }
    assert_lr(deserialize(data), 10, 0.05)


def test_docstring_examples_run():
    result = doctest.testmod(schedules, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0


# --------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------

JAX_SCHEDULES = [
    ExponentialDecay(0.05, 10, 0.96),
    ExponentialDecay(0.1, 3, 0.96, staircase=True),
    PiecewiseConstantDecay([100, 110, 120], [1, 0.1, 0.01, 0.001]),
    PiecewiseConstantDecay([100, 110, 120], [4, 3, 2, 1]),
    PolynomialDecay(0.05, 10, 0.001),
    PolynomialDecay(0.05, 10, 0.001, 0.5, cycle=True),
    InverseTimeDecay(0.1, 10, 0.96, staircase=True),
    CosineDecay(1.0, 1000, alpha=0.1),
    CosineDecay(0.1, 10, 0.1, warmup_target=1.0, warmup_steps=5),
    CosineDecayRestarts(1.0, 1000),
    CosineDecayRestarts(1.0, 1000, t_mul=1.0, alpha=0.1),
    CosineDecayRestarts(0.3, 77, 1.5, 0.8, 0.05),
]
JAX_STEPS = [0, 1, 2, 5, 9, 10, 11, 15, 99, 100, 101, 110, 111, 120, 121, 250, 999, 1000, 1001, 1250, 3000]


@pytest.mark.parametrize("schedule", JAX_SCHEDULES, ids=lambda s: type(s).__name__)
def test_jax_jit_matches_numpy(schedule):
    jax = requires("jax")
    import jax.numpy as jnp

    compiled = jax.jit(schedule)
    for step in JAX_STEPS:
        traced = compiled(jnp.asarray(step, dtype=jnp.int32))
        assert isinstance(traced, jax.Array) and traced.ndim == 0
        expected = schedule(step)
        assert traced.dtype == expected.dtype
        # XLA's float32 transcendental functions may differ from NumPy's in the last bit.
        np.testing.assert_allclose(np.asarray(traced), expected, rtol=RTOL, atol=1e-9, err_msg=f"step={step}")
    # Eagerly, with a JAX step, the result is a JAX array as well.
    assert isinstance(schedule(jnp.int32(7)), jax.Array)
