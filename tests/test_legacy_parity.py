"""Randomized step-by-step parity of ``inertia.legacy.SGD`` with ``tf_keras.optimizers.legacy.SGD``.

The reference is TensorFlow's OptimizerV2 SGD itself (tf_keras 2.21.0 on TensorFlow 2.21.0,
installed by the test extras), run eagerly on ``tf.Variable``s. Every scenario is drawn from
a seed: 1-4 variables (0-d scalars included) of one dtype (float32, float64, float16 or
bfloat16), 1-8 steps, a learning rate that is a float (sometimes assigned anew between
steps), a zero-argument callable, one of the six schedules (tf_keras' schedule on the
reference side, the equal ``inertia.schedules`` one on ours) or a schedule of the test's own
that computes in the dtype of the step it is given, with or without the legacy ``decay``,
momentum 0, 1 or in between, Nesterov, and the legacy clipping (clipvalue, clipnorm,
global_clipnorm, and clipvalue together with either norm). Steps after the first may apply
to a subset of the variables or give one of them a None gradient. The same gradients drive
both libraries; after every step every variable, the returned step count, ``iterations``,
and every optimizer weight (``get_weights()`` by position, dtype and value, ``weights`` by
name) must agree bit for bit (rtol 0), and ``get_config()`` is compared key for key before
the first step and after the last. inertia runs on NumPy arrays wrapped in
``inertia.Variable``; a few scenarios also run on torch and JAX (test_random_scenario_on_every_backend).

Where inertia's numbers differ from tf_keras' for a reason outside the legacy face, the
scenarios remove that reason rather than loosen the comparison, and a test below pins it:

* Norms. TensorFlow sums a norm's squares in another order than NumPy (Eigen's tree
  reduction; ``sqrt(2 * sum(l2_loss))`` for the global norm), so a norm, and the clipped
  gradient, may differ in the last bit (test_tensorflow_sums_a_norm_in_another_order).
  Scenarios that clip by a norm draw gradients (and clipvalue thresholds) that are small
  integers times a power of two: every square and partial sum is then exact, the norm is
  the same in any order, and the clipping formulas must agree bit for bit.
* Schedules. tf_keras' schedules compute pow / cos / log with TensorFlow's kernels, which
  differ from NumPy's by a unit in the last place for some inputs
  (test_schedules_differ_from_tf_keras_through_tensorflows_pow). Where inertia's schedule
  gives another value than tf_keras' at one of the scenario's steps, it returns tf_keras'
  value instead (after checking the two agree within SCHEDULE_RTOL), so the optimizer is
  still compared bit for bit.

What differs on purpose (checked in every scenario):

* ``get_config()`` after the first step: tf_keras reads ``learning_rate`` and ``momentum``
  back from its float32 hyperparameter variables (``np.float32``); inertia returns the
  Python floats it was given (the legacy face's counterpart of SPEC section 3, deviation 4).
  A schedule is serialized under inertia's module (``inertia.schedules``) with Keras 3's
  default ``name`` where tf_keras writes None; class name and every other entry are equal,
  and inertia reads tf_keras' config (test_inertia_reads_the_tf_keras_config).
* A None gradient: tf_keras logs a warning through TensorFlow's logger, inertia warns with a
  Python ``UserWarning`` (Keras 3's wording); both name the same variable.

Mismatches of inertia found here are fixed, each with its own test below: ``decay``
assigned after construction, global_clipnorm's ``1/c`` rounding, bfloat16 clipvalue followed
by a norm on NumPy, and slots made only for the variables that have a gradient, in the order
tf_keras makes them (a None gradient on the first step, a variable first seen later).
"""

from __future__ import annotations

import logging
import os
import random
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow reads it when the fixture imports it

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import inertia  # noqa: E402
import inertia.legacy  # noqa: E402
from inertia.engine import host  # noqa: E402
from conftest import draw_schedule_arguments, draw_variables_and_momentum, requires, tensor  # noqa: E402

N_SCENARIOS = 64
DTYPES = ("float32", "float64", "float16", "bfloat16")
SCHEDULES = (
    "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay", "InverseTimeDecay", "PolynomialDecay", "CosineDecayRestarts",
)
# A schedule of the test's own (one class on each side) that computes in the dtype of the
# step it is given: only it shows that the step is a float of the variable's dtype (the
# built-in schedules cast the step to float32 first).
CUSTOM_SCHEDULE = "LinearDecayInStepDtype"
LR_KINDS = ("float", "float_set", "callable", CUSTOM_SCHEDULE) + SCHEDULES
CLIPS = (None, "clipvalue", "clipnorm", "global_clipnorm", "clipvalue+clipnorm", "clipvalue+global_clipnorm")
NAME_STEMS = ("kernel", "bias", "gamma", "embedding")
# Keras 3's default ``name`` of a schedule (tf_keras' default is None).
KERAS3_SCHEDULE_NAMES = {"PiecewiseConstantDecay": "PiecewiseConstant", "CosineDecayRestarts": "SGDRDecay"}
# The largest integer in a gradient of a scenario that clips by a norm: up to 4 variables of
# up to 64 elements, so the sum of up to 256 squares is an integer (times a power of two)
# that the dtype holds exactly (float32: < 2**24; float16: <= 2048; bfloat16: <= 256).
DYADIC_LIMIT = {"float32": 15, "float64": 15, "float16": 2, "bfloat16": 1}
# tf_keras' and inertia's schedules agree within this (float32 values): pow / cos / log
# differ by at most a unit in the last place, and a schedule's arithmetic can widen that
# (1 + cos(pi*f) near f = 1 loses two more bits): at most 3.9e-7 over 100 000 drawn values.
SCHEDULE_RTOL = 4e-7
NONE_WARNING = "Gradients do not exist for variables"


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, with tf_keras as ``tf.tf_keras``: imported once for the module (skipped
    locally when missing, a failure in CI)."""
    tf_keras = requires("tf_keras")
    module = requires("tensorflow")
    module.tf_keras = tf_keras
    return module


# ----------------------------------------------------------------------------------------
# scenario drawing
# ----------------------------------------------------------------------------------------
def _numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        return requires("ml_dtypes").bfloat16
    return np.dtype(dtype)


def _draw_learning_rate(r: random.Random) -> tuple:
    kind = r.choice(LR_KINDS)
    lr0 = r.choice([r.uniform(0.001, 0.5), 10 ** r.uniform(-4, 0)])
    if kind == "float":
        return kind, {"value": lr0}
    if kind in ("float_set", "callable"):
        # "float_set": the test assigns a new float to `learning_rate` after every step;
        # "callable": a zero-argument callable whose value the test changes.
        return kind, {"value": lr0, "factor": r.uniform(0.5, 1.5)}
    if kind == CUSTOM_SCHEDULE:
        return kind, {"initial_learning_rate": lr0, "rate": r.uniform(0.01, 0.12)}  # > 0 for 8 steps
    return kind, draw_schedule_arguments(r, kind, lr0)


def _reciprocal_rounds_alike(clipnorm: float, dtype: str) -> bool:
    """Whether ``1/c`` rounded once to ``dtype`` (Keras 3) equals ``1/c`` formed in ``dtype``
    (TensorFlow); see test_global_clipnorm_rounds_the_reciprocal_of_the_threshold_as_tensorflow."""
    np_dtype = _numpy_dtype(dtype)
    return bool(np.asarray(1, np_dtype) / np.asarray(clipnorm, np_dtype) == np.asarray(1.0 / clipnorm, np_dtype))


def _draw_threshold(r: random.Random) -> float:
    # Tiny thresholds so that clipping really happens; large ones for the no-op path.
    return r.choice([10 ** r.uniform(-3, -1), r.uniform(0.1, 2.0), r.uniform(10.0, 100.0)])


def draw_scenario(seed: int) -> dict:
    r = random.Random(seed)
    dtype = DTYPES[seed % len(DTYPES)]
    shapes, names, kwargs = draw_variables_and_momentum(r, NAME_STEMS, seed)
    n_vars = len(shapes)
    if r.random() < 0.4:
        kwargs["decay"] = r.choice([r.uniform(0.01, 2.0), 0.5])
    clip = r.choice(CLIPS)
    exact_norms = clip is not None and "norm" in clip
    for mode in (clip or "").split("+"):
        if mode == "clipvalue" and exact_norms:
            # A threshold of few bits: a clipped element's square is exact, as every gradient's.
            kwargs[mode] = r.randint(1, DYADIC_LIMIT[dtype]) * 2.0 ** r.randint(-10, 3)
        elif mode:
            kwargs[mode] = _draw_threshold(r)

    steps = []
    for step in range(r.randint(1, 8)):
        indices = list(range(n_vars))
        # The first step gives every variable a gradient (see the module docstring).
        if step > 0 and n_vars > 1 and r.random() < 0.25:
            indices = sorted(r.sample(indices, r.randint(1, n_vars - 1)))
        none_index = r.choice(indices) if step > 0 and len(indices) > 1 and r.random() < 0.25 else None
        steps.append({"indices": indices, "none_index": none_index, "scale": 10 ** r.uniform(-3, 2)})
    return {
        "seed": seed,
        "dtype": dtype,
        "exact_norms": exact_norms,
        "shapes": shapes,
        "names": names,
        "lr": _draw_learning_rate(r),
        "kwargs": kwargs,
        "steps": steps,
    }


def _draw_gradient(rng, shape: tuple, scale: float, dtype: str, exact_norms: bool):
    if not exact_norms:
        return (rng.standard_normal(shape) * scale).astype(_numpy_dtype(dtype))
    # Small integers times a power of two: every square and every partial sum of squares is
    # exact, so a norm is the same in any summation order. In float16 the sum of squares
    # stays below its largest value, 65504 (at most 256 * 2**2 * 4**2 = 16384).
    limit = DYADIC_LIMIT[dtype]
    exponent = int(np.round(np.log2(scale)))
    power = 2.0 ** (min(exponent, 2) if dtype == "float16" else exponent)
    return (rng.integers(-limit, limit + 1, size=shape) * power).astype(_numpy_dtype(dtype))


def _clips_by_norm(scenario: dict) -> bool:
    return any(scenario["kwargs"].get(key) for key in ("clipnorm", "global_clipnorm"))


# ----------------------------------------------------------------------------------------
# learning rates and optimizers
# ----------------------------------------------------------------------------------------
def _tf_schedule_value(tf, schedule, step: int, dtype: str):
    """tf_keras' schedule at ``step``, called as OptimizerV2 calls it: with the step as a
    float of the variable's dtype."""
    return np.asarray(schedule(tf.cast(tf.constant(step, tf.int64), dtype)).numpy())


def _inertia_schedule_value(schedule, step: int, dtype: str):
    return np.asarray(schedule(np.asarray(step).astype(_numpy_dtype(dtype))))


def _to_numpy(value):
    """A NumPy, torch or JAX array as a NumPy array (torch's bfloat16 has no ``.numpy()``)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            return value.float().numpy().astype(_numpy_dtype("bfloat16"))
        return value.numpy()
    return np.asarray(value)


def _with_tensorflow_values(tf, inertia_schedule, tf_schedule, dtype: str):
    """``inertia_schedule`` (same class name and config), returning tf_keras' value at each
    step after checking that its own agrees within SCHEDULE_RTOL."""
    base = type(inertia_schedule)

    class TensorFlowValued(base):
        def __call__(self, step):
            ours = _to_numpy(super().__call__(step))
            theirs = _tf_schedule_value(tf, tf_schedule, int(float(step)), dtype)
            assert ours.dtype == theirs.dtype == np.float32
            np.testing.assert_allclose(ours, theirs, rtol=SCHEDULE_RTOL, atol=0, err_msg=f"schedule at step {step}")
            return theirs

    TensorFlowValued.__name__ = TensorFlowValued.__qualname__ = base.__name__
    return TensorFlowValued(**inertia_schedule.get_config())


def _linear_decay_in_step_dtype(base: type) -> type:
    """``initial * (1 - rate*step)``, computed in the step's dtype, as a subclass of ``base``
    (tf_keras' or inertia's LearningRateSchedule)."""

    class LinearDecayInStepDtype(base):
        def __init__(self, initial_learning_rate, rate):
            self.initial_learning_rate, self.rate = initial_learning_rate, rate

        def __call__(self, step):
            # Every operand an array of the step's dtype: torch would multiply a float16 /
            # bfloat16 tensor by a Python float held in float32 (its "opmath"), where
            # TensorFlow and NumPy round the float to the tensor's dtype first.
            zero = step * 0.0
            initial, rate = zero + self.initial_learning_rate, zero + self.rate
            return initial * (1.0 - step * rate)

        def get_config(self):
            return {"initial_learning_rate": self.initial_learning_rate, "rate": self.rate}

    return LinearDecayInStepDtype


def _make_optimizers(tf, scenario: dict, box: dict) -> tuple:
    """The two optimizers, and whether inertia's schedule takes tf_keras' values."""
    kind, lr_kwargs = scenario["lr"]
    if kind in ("float", "float_set"):
        t_lr = i_lr = lr_kwargs["value"]
    elif kind == "callable":
        box["lr"] = lr_kwargs["value"]
        t_lr = i_lr = lambda: box["lr"]  # noqa: E731
    elif kind == CUSTOM_SCHEDULE:
        t_lr = _linear_decay_in_step_dtype(tf.tf_keras.optimizers.schedules.LearningRateSchedule)(**lr_kwargs)
        i_lr = _linear_decay_in_step_dtype(inertia.schedules.LearningRateSchedule)(**lr_kwargs)
    else:
        t_lr = getattr(tf.tf_keras.optimizers.schedules, kind)(**lr_kwargs)
        i_lr = getattr(inertia.schedules, kind)(**lr_kwargs)
    tensorflow_valued = kind in SCHEDULES and _schedules_differ(tf, t_lr, i_lr, scenario)
    if tensorflow_valued:
        i_lr = _with_tensorflow_values(tf, i_lr, t_lr, scenario["dtype"])
    t_opt = tf.tf_keras.optimizers.legacy.SGD(learning_rate=t_lr, **scenario["kwargs"])
    i_opt = inertia.legacy.SGD(learning_rate=i_lr, **scenario["kwargs"])
    return t_opt, i_opt, tensorflow_valued


def _schedules_differ(tf, t_schedule, i_schedule, scenario: dict) -> bool:
    dtype = scenario["dtype"]
    return any(
        not np.array_equal(_inertia_schedule_value(i_schedule, k, dtype), _tf_schedule_value(tf, t_schedule, k, dtype))
        for k in range(len(scenario["steps"]))
    )


# ----------------------------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------------------------
_KERAS3_DEFAULT_NAME = object()


def _compare_config(t_opt, i_opt, kind: str, schedule_name=_KERAS3_DEFAULT_NAME) -> None:
    """Key for key; ``schedule_name`` is the ``name`` inertia's schedule config should hold."""
    t_config, i_config = t_opt.get_config(), i_opt.get_config()
    assert list(i_config) == list(t_config)  # the legacy key order, clip keys only when set
    for key in ("learning_rate", "momentum"):
        t_value, i_value = t_config.pop(key), i_config.pop(key)
        if isinstance(t_value, dict) and kind == CUSTOM_SCHEDULE:  # each side names its own module
            assert i_value["class_name"] == t_value["class_name"] == kind
            assert i_value["config"] == t_value["config"]
        elif isinstance(t_value, dict):  # a schedule
            assert i_value["class_name"] == t_value["class_name"] == kind
            assert i_value["registered_name"] is t_value["registered_name"] is None
            assert (i_value["module"], t_value["module"]) == ("inertia.schedules", "keras.optimizers.schedules")
            t_schedule, i_schedule = dict(t_value["config"]), dict(i_value["config"])
            if schedule_name is _KERAS3_DEFAULT_NAME:
                schedule_name = KERAS3_SCHEDULE_NAMES.get(kind, kind)
            assert (t_schedule.pop("name"), i_schedule.pop("name")) == (None, schedule_name)
            assert i_schedule == t_schedule
            assert list(i_schedule) == list(t_schedule)
        elif isinstance(t_value, np.float32):
            # Built, tf_keras reads its float32 hyperparameter variable back; inertia keeps
            # the Python float it was given (see the module docstring).
            assert type(i_value) is float, key
            assert np.float32(i_value) == t_value, key
        else:
            assert i_value == t_value and type(i_value) is type(t_value), key
    assert i_config == t_config  # name, clip options, decay, nesterov


def _assert_same(i_value, t_value, what: str) -> None:
    actual, expected = _to_numpy(i_value), np.asarray(t_value)
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _apply_both(t_opt, i_opt, t_pairs: list, i_pairs: list, none_name) -> tuple:
    """Apply one step on both; checks how each reports a None gradient."""
    tf_logger = logging.getLogger("tensorflow")
    records = _Records()
    # Only our handler while tf_keras steps: its warning is checked here, not printed.
    handlers, propagate = tf_logger.handlers, tf_logger.propagate
    tf_logger.handlers, tf_logger.propagate = [records], False
    try:
        t_result = t_opt.apply_gradients(t_pairs)
    finally:
        tf_logger.handlers, tf_logger.propagate = handlers, propagate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        i_result = i_opt.apply_gradients(i_pairs)
    i_messages = [str(w.message) for w in caught if NONE_WARNING in str(w.message)]
    t_messages = [m for m in records.messages if NONE_WARNING in m]
    if none_name is None:
        assert i_messages == t_messages == []
    else:
        # The same variable in both, in TensorFlow's `name:0` form there.
        assert t_messages == [
            f"{NONE_WARNING} ['{none_name}:0'] when minimizing the loss. If you're using "
            "`model.compile()`, did you forget to provide a `loss` argument?"
        ]
        assert i_messages == [
            f"{NONE_WARNING} ['{none_name}'] when minimizing the loss. If using "
            "`model.compile()`, did you forget to provide a `loss` argument?"
        ]
    return t_result, i_result


def _assert_same_state(t_opt, i_opt, t_vars: list, i_vars: list, names: list, where: str) -> None:
    assert int(_to_numpy(i_opt.iterations.numpy())) == int(t_opt.iterations.numpy()), where
    for t_var, i_var, name in zip(t_vars, i_vars, names):
        _assert_same(i_var.numpy(), t_var.numpy(), f"{where}: variable {name}")
    t_weights = t_opt.weights
    assert [w.path + ":0" for w in i_opt.weights] == [w.name for w in t_weights], where
    assert [w.path for w in i_opt.variables()] == [w.path for w in i_opt.weights], where
    assert i_opt.get_slot_names() == t_opt.get_slot_names(), where
    t_values, i_values = t_opt.get_weights(), i_opt.get_weights()
    assert len(i_values) == len(t_values), where
    for t_value, i_value, weight in zip(t_values, i_values, t_weights):
        _assert_same(i_value, t_value, f"{where}: weight {weight.name}")


def run_scenario(tf, scenario: dict, make_array=np.asarray, jit_compile: bool = True) -> bool:
    """Run ``scenario`` on both libraries, comparing after every step; returns whether
    inertia's schedule took tf_keras' values. ``make_array`` turns a NumPy array into an
    array of the backend under test."""
    dtype = scenario["dtype"]
    rng = np.random.default_rng(scenario["seed"])
    init = [rng.standard_normal(shape).astype(_numpy_dtype(dtype)) for shape in scenario["shapes"]]
    names = scenario["names"]
    t_vars = [tf.Variable(v.copy(), name=n) for v, n in zip(init, names)]
    i_vars = [inertia.Variable(make_array(v.copy()), name=n) for v, n in zip(init, names)]
    box: dict = {}
    t_opt, i_opt, tensorflow_valued = _make_optimizers(tf, scenario, box)
    i_opt.jit_compile = jit_compile
    kind, lr_kwargs = scenario["lr"]
    _compare_config(t_opt, i_opt, kind)

    for step_number, step in enumerate(scenario["steps"]):
        where = f"seed {scenario['seed']} ({dtype}), step {step_number}"
        grads = [_draw_gradient(rng, shape, step["scale"], dtype, scenario["exact_norms"]) for shape in scenario["shapes"]]
        none_index = step["none_index"]
        t_pairs = [(None if i == none_index else tf.constant(grads[i]), t_vars[i]) for i in step["indices"]]
        i_pairs = [(None if i == none_index else make_array(grads[i].copy()), i_vars[i]) for i in step["indices"]]
        none_name = None if none_index is None else names[none_index]
        t_result, i_result = _apply_both(t_opt, i_opt, t_pairs, i_pairs, none_name)
        assert int(_to_numpy(i_result.numpy())) == int(t_result.numpy()) == step_number + 1, where
        if kind in ("float_set", "callable"):
            box["lr"] = box.get("lr", lr_kwargs["value"]) * lr_kwargs["factor"]
            if kind == "float_set":
                t_opt.learning_rate = box["lr"]
                i_opt.learning_rate = box["lr"]
        _assert_same_state(t_opt, i_opt, t_vars, i_vars, names, where)

    _compare_config(t_opt, i_opt, kind)
    return tensorflow_valued


# ----------------------------------------------------------------------------------------
# the random scenarios
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(N_SCENARIOS))
def test_random_scenario(tf, seed):
    run_scenario(tf, draw_scenario(seed))


# A few scenarios on every backend. Norm clipping is left out here, for the backends'
# arithmetic, not the legacy face's: torch 2.13's CPU `torch.sqrt` is not correctly rounded
# in float32 or float64 (sqrt(9.984375f) gives 0x404a3a43, IEEE 0x404a3a44; about 1 in 6
# float32 and 1 in 80 float64 inputs differ from NumPy's), and XLA divides by a broadcast
# scalar (clipnorm's `(g*c) / norm`) as a multiplication by its reciprocal. JAX runs its
# eager path: compiled, XLA contracts `v*m - g*lr` into a fused multiply-add, which
# TensorFlow's kernels do not.
BACKEND_SEEDS = [seed for seed in range(3000, 3100) if not _clips_by_norm(draw_scenario(seed))][:8]


@pytest.mark.parametrize("seed", BACKEND_SEEDS)
def test_random_scenario_on_every_backend(tf, backend, seed):
    run_scenario(
        tf,
        draw_scenario(seed),
        make_array=lambda array: tensor(array, str(array.dtype), backend.name),
        jit_compile=backend.name != "jax",
    )


# On TensorFlow every scenario runs, norm clipping included: inertia steps tf.Variables with
# TensorFlow's own kernels, as tf_keras does.
TENSORFLOW_SEEDS = range(3000, 3024)


@pytest.mark.parametrize("seed", TENSORFLOW_SEEDS)
def test_random_scenario_on_tensorflow_variables(tf, seed):
    run_scenario(tf, draw_scenario(seed), make_array=lambda array: tensor(array, str(array.dtype), "tensorflow"))


def test_tensorflow_seeds_clip_by_norm():
    assert sum(_clips_by_norm(draw_scenario(seed)) for seed in TENSORFLOW_SEEDS) >= 6


def test_scenarios_cover_every_feature(tf):
    """The seeds above really exercise every feature (guards against a drifting generator)."""
    seen: set = set()
    for seed in list(range(N_SCENARIOS)) + BACKEND_SEEDS:
        s = draw_scenario(seed)
        kw = s["kwargs"]
        kind = s["lr"][0]
        seen.add(("dtype", s["dtype"]))
        seen.add(("lr", kind))
        seen.add(("decay", "decay" in kw, kind in SCHEDULES))
        seen.add(("rank0", any(shape == () for shape in s["shapes"])))
        seen.add(("momentum", "zero" if kw["momentum"] == 0 else "one" if kw["momentum"] == 1 else "between"))
        seen.add(("nesterov", kw["nesterov"] and kw["momentum"] > 0))
        seen.add(("clip", "+".join(k for k in ("clipvalue", "clipnorm", "global_clipnorm") if k in kw)))
        for clip in ("clipnorm", "global_clipnorm"):
            if clip in kw:
                seen.add((clip, "tiny", kw[clip] < 0.1))
        seen.add(("none_grad", any(st["none_index"] is not None for st in s["steps"])))
        seen.add(("subset", any(len(st["indices"]) < len(s["shapes"]) for st in s["steps"])))
        if kind in SCHEDULES:
            t_schedule = getattr(tf.tf_keras.optimizers.schedules, kind)(**s["lr"][1])
            i_schedule = getattr(inertia.schedules, kind)(**s["lr"][1])
            seen.add(("tensorflow_valued", _schedules_differ(tf, t_schedule, i_schedule, s)))
    expected = {("dtype", d) for d in DTYPES} | {("lr", kind) for kind in LR_KINDS}
    expected |= {("decay", True, False), ("decay", True, True), ("rank0", True), ("nesterov", True)}
    expected |= {("momentum", m) for m in ("zero", "one", "between")}
    expected |= {("clip", clip or "") for clip in CLIPS}
    expected |= {(clip, "tiny", tiny) for clip in ("clipnorm", "global_clipnorm") for tiny in (True, False)}
    expected |= {("none_grad", True), ("subset", True), ("tensorflow_valued", True), ("tensorflow_valued", False)}
    assert expected <= seen, sorted(expected - seen, key=str)


# ----------------------------------------------------------------------------------------
# deterministic checks, side by side with tf_keras
# ----------------------------------------------------------------------------------------
def _pair(tf, value, dtype="float32", name="w"):
    array = np.asarray(value, dtype=_numpy_dtype(dtype))
    return tf.Variable(array.copy(), name=name), inertia.Variable(array.copy(), name=name)


def test_mixed_dtypes_take_one_learning_rate_per_dtype(tf):
    # OptimizerV2 computes lr_t once per variable dtype: the schedule at the step as a float
    # of that dtype, cast to it, then divided by 1 + d*k in it; here float32, float64 and
    # float16 in one step. (No global_clipnorm: tf.clip_by_global_norm cannot stack norms of
    # several dtypes.)
    rng = np.random.default_rng(11)
    dtypes = ["float32", "float64", "float16", "float64"]
    shapes = [(3, 2), (), (4,), (2,)]
    pairs = [_pair(tf, rng.standard_normal(shape), dtype, f"w{i}") for i, (shape, dtype) in enumerate(zip(shapes, dtypes))]
    t_vars, i_vars = [p[0] for p in pairs], [p[1] for p in pairs]
    config = dict(momentum=0.9, nesterov=True, decay=0.3, clipvalue=1.5, name="mixed")
    t_opt = tf.tf_keras.optimizers.legacy.SGD(tf.tf_keras.optimizers.schedules.InverseTimeDecay(0.2, 2, 0.7), **config)
    i_opt = inertia.legacy.SGD(inertia.schedules.InverseTimeDecay(0.2, 2, 0.7), **config)
    for step in range(4):
        grads = [(rng.standard_normal(shape) * 2).astype(_numpy_dtype(dtype)) for shape, dtype in zip(shapes, dtypes)]
        t_opt.apply_gradients([(tf.constant(g), v) for g, v in zip(grads, t_vars)])
        i_opt.apply_gradients([(g.copy(), v) for g, v in zip(grads, i_vars)])
        _assert_same_state(t_opt, i_opt, t_vars, i_vars, ["w0", "w1", "w2", "w3"], f"step {step}")


def test_minimize_with_a_callable_loss_and_var_list(tf):
    # A linear loss, sum(w * k): both autodiff systems give the gradient k exactly.
    k = np.array([0.5, -3.0, 1.25], np.float32)
    t_w, i_w = _pair(tf, [1.0, 2.0, -1.0], name="kernel")
    config = dict(learning_rate=0.3, momentum=0.75, nesterov=True, decay=0.2, clipvalue=2.0, name="mini")
    t_opt, i_opt = tf.tf_keras.optimizers.legacy.SGD(**config), inertia.legacy.SGD(**config)
    for _ in range(3):
        t_step = t_opt.minimize(lambda: tf.reduce_sum(t_w * k), lambda: [t_w])
        i_step = i_opt.minimize(lambda: (i_w * k).sum(), lambda: [i_w])
    assert int(t_step.numpy()) == int(i_step.numpy()) == 3
    _assert_same_state(t_opt, i_opt, [t_w], [i_w], ["kernel"], "minimize")


def test_inertia_reads_the_tf_keras_config(tf):
    schedules = tf.tf_keras.optimizers.schedules
    t_opt = tf.tf_keras.optimizers.legacy.SGD(
        schedules.PolynomialDecay(0.5, 4, 0.1, power=2.0), momentum=0.5, nesterov=True, clipvalue=1.0, global_clipnorm=3.0, decay=0.1,
        name="from_tf",
    )
    t_w, i_w = _pair(tf, [1.0, -2.0], name="kernel")
    t_opt.apply_gradients([(tf.constant([4.0, 3.0]), t_w)])  # built: config values read back as np.float32
    i_opt = inertia.legacy.SGD.from_config(t_opt.get_config())
    i_opt.apply_gradients([(np.array([4.0, 3.0], np.float32), i_w)])
    assert isinstance(i_opt.learning_rate, inertia.schedules.PolynomialDecay)
    _compare_config(t_opt, i_opt, "PolynomialDecay", schedule_name=None)  # tf_keras' None, read as given
    _assert_same_state(t_opt, i_opt, [t_w], [i_w], ["kernel"], "from tf_keras' config")


def test_schedules_differ_from_tf_keras_through_tensorflows_pow(tf):
    """Why a scenario's schedule may take tf_keras' values (see _with_tensorflow_values)."""
    # tf_keras 2.21.0: ExponentialDecay(0.1, 1, 0.9)(4.0) = 0.1f * tf.pow(0.9f, 4.0f). TensorFlow's
    # float32 pow gives 0.6560999, the correctly rounded 0.9f**4; NumPy 2.4's gives 0.6561,
    # one unit in the last place above (and Keras 3 on NumPy, like inertia, uses it).
    t_schedule = tf.tf_keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.9)
    i_schedule = inertia.schedules.ExponentialDecay(0.1, 1, 0.9)
    base, exponent = np.float32(0.9), np.float32(4.0)
    tf_pow, np_pow = tf.pow(base, exponent).numpy(), np.power(base, exponent)
    assert (tf_pow, np_pow) == (np.float32(0.6560999), np.float32(0.6561))
    assert tf_pow == np.float32(np.float64(base) ** 4)  # exact in float64, rounded once
    t_value, i_value = _tf_schedule_value(tf, t_schedule, 4, "float32"), _inertia_schedule_value(i_schedule, 4, "float32")
    assert t_value == np.float32(0.1) * tf_pow == np.float32(0.06560999)
    assert i_value == np.float32(0.1) * np_pow == np.float32(0.06561)
    np.testing.assert_allclose(i_value, t_value, rtol=SCHEDULE_RTOL)
    # Every other step of this schedule agrees bit for bit.
    for step in (0, 1, 2, 3):
        assert _inertia_schedule_value(i_schedule, step, "float32") == _tf_schedule_value(tf, t_schedule, step, "float32")


def test_tensorflow_sums_a_norm_in_another_order(tf):
    """Why the scenarios that clip by a norm draw gradients with exact squares."""
    # Twelve float32 normals (np.random.default_rng(0), second draw): TensorFlow's reduction
    # sums their squares to 11.644472, NumPy's pairwise sum to 11.644471.
    rng = np.random.default_rng(0)
    rng.standard_normal(12)
    gradient = rng.standard_normal(12).astype(np.float32)
    tf_sum, np_sum = tf.reduce_sum(gradient * gradient).numpy(), np.sum(gradient * gradient)
    assert (tf_sum, np_sum) == (np.float32(11.644472), np.float32(11.644471))
    t_w, i_w = _pair(tf, np.zeros(12), name="w")
    tf.tf_keras.optimizers.legacy.SGD(1.0, clipnorm=1.0).apply_gradients([(tf.constant(gradient), t_w)])
    with host.disabled():  # the reference path's NumPy sum (the host kernel sums in double)
        inertia.legacy.SGD(1.0, clipnorm=1.0).apply_gradients([(gradient.copy(), i_w)])
    # The same formula, -(g*c) / max(norm, c), around the two norms: each side to the bit.
    one = np.float32(1.0)
    np.testing.assert_array_equal(t_w.numpy(), -((gradient * one) / np.sqrt(tf_sum)))
    np.testing.assert_array_equal(i_w.numpy(), -((gradient * one) / np.sqrt(np_sum)))
    assert not np.array_equal(i_w.numpy(), t_w.numpy())
    # One unit in the last place of the norm: the weights agree within two float32 ulps.
    np.testing.assert_allclose(i_w.numpy(), t_w.numpy(), rtol=2.0**-22, atol=0)


def test_decay_assigned_after_construction_changes_nothing(tf):
    # tf_keras 2.21.0: OptimizerV2._decayed_lr divides by `_initial_decay` (the constructor's
    # value); `opt.decay = 0.25` sets the hyperparameter, which no update reads. Second step:
    # lr 1 / (1 + 0.5*1), so w = -1 - 2/3 = -1.6666666 (float32), not -1 - 1/1.25 = -1.8.
    t_w, i_w = _pair(tf, [0.0], name="w")
    t_opt = tf.tf_keras.optimizers.legacy.SGD(learning_rate=1.0, decay=0.5)
    i_opt = inertia.legacy.SGD(learning_rate=1.0, decay=0.5)
    for step in range(2):
        t_opt.apply_gradients([(tf.constant([1.0]), t_w)])
        i_opt.apply_gradients([(np.array([1.0], np.float32), i_w)])
        t_opt.decay = i_opt.decay = 0.25
    assert t_w.numpy().tolist() == [np.float32(-1.0) - np.float32(1.0) / np.float32(1.5)]
    _assert_same_state(t_opt, i_opt, [t_w], [i_w], ["w"], "after two steps")


def test_global_clipnorm_rounds_the_reciprocal_of_the_threshold_as_tensorflow(tf):
    # tf.clip_by_global_norm (TensorFlow 2.21.0): scale = c * min(1/norm, 1/c) with
    # 1/c = constant(1.0, dtype) / c, i.e. float32(1 / float32(1.7)) = 0.58823526, and
    # 1.7f * 0.58823526f = 0.99999994. Keras 3 takes float32(1.0 / 1.7) = 0.5882353:
    # 1.7f * 0.5882353f = 1.0000001. With a norm of 1.25 < 1.7 nothing is clipped, yet the
    # two forms scale the gradient [0.75, 1] differently: tf_keras moves w to
    # [-0.74999994, -0.99999994], Keras 3's form would give [-0.7500001, -1.0000001].
    assert not _reciprocal_rounds_alike(1.7, "float32")
    t_w, i_w = _pair(tf, [0.0, 0.0], name="w")
    gradient = np.array([0.75, 1.0], np.float32)
    tf.tf_keras.optimizers.legacy.SGD(1.0, global_clipnorm=1.7).apply_gradients([(tf.constant(gradient), t_w)])
    inertia.legacy.SGD(1.0, global_clipnorm=1.7).apply_gradients([(gradient.copy(), i_w)])
    np.testing.assert_array_equal(t_w.numpy(), -gradient * (np.float32(1.7) * (np.float32(1) / np.float32(1.7))))
    _assert_same(i_w.numpy(), t_w.numpy(), "w")


def test_bfloat16_clipvalue_then_a_norm_stays_in_bfloat16(tf):
    # np.clip returns float32 for an ml_dtypes bfloat16 array; the clipnorm after clipvalue
    # (legacy order) must still run in bfloat16, as TensorFlow's does:
    # g = [0.5]*3 (clipvalue 2 changes nothing), norm bf16(sqrt(0.75)) = 0.867188,
    # g*c = bf16(0.5 * bf16(0.3)) = 0.150391, so w = -0.173828; inertia gets -0.172852.
    bfloat16 = _numpy_dtype("bfloat16")
    gradient = np.full(3, 0.5, bfloat16)
    results = {}
    for clipvalue in (None, 2.0):
        t_w, i_w = _pair(tf, np.zeros(3), "bfloat16", name="w")
        config = dict(learning_rate=1.0, clipnorm=0.3) | ({"clipvalue": clipvalue} if clipvalue else {})
        tf.tf_keras.optimizers.legacy.SGD(**config).apply_gradients([(tf.constant(gradient), t_w)])
        inertia.legacy.SGD(**config).apply_gradients([(gradient.copy(), i_w)])
        results[clipvalue] = (t_w.numpy(), i_w.numpy())
    expected = np.full(3, -0.173828, bfloat16)
    np.testing.assert_array_equal(results[None][0], expected)
    np.testing.assert_array_equal(results[None][1], expected)
    np.testing.assert_array_equal(results[2.0][0], expected)
    np.testing.assert_array_equal(results[2.0][1], expected)


# ----------------------------------------------------------------------------------------
# slots made when a variable first has a gradient
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_on_the_first_step", [True, False], ids=["none_gradient_on_the_first_step", "first_seen_after_the_first_step"])
def test_a_variable_gets_its_slot_when_it_first_has_a_gradient(tf, a_on_the_first_step):
    # tf_keras 2.21.0 drops None gradients, then creates slots for the variables of each
    # apply_gradients call: `a`, given None on the first step or not given at all, gets its
    # slot on the second step, after that of `b` (OptimizerV2 users rely on this, e.g. with
    # layers built lazily).
    t_a, i_a = _pair(tf, [1.0, 1.0], name="a")
    t_b, i_b = _pair(tf, [1.0, 1.0, 1.0], name="b")
    t_opt = tf.tf_keras.optimizers.legacy.SGD(0.1, momentum=0.5, name="o")
    i_opt = inertia.legacy.SGD(0.1, momentum=0.5, name="o")
    t_first, i_first = [(tf.ones(3), t_b)], [(np.ones(3, np.float32), i_b)]
    if a_on_the_first_step:
        t_first, i_first = [(None, t_a)] + t_first, [(None, i_a)] + i_first
    _apply_both(t_opt, i_opt, t_first, i_first, "a" if a_on_the_first_step else None)
    assert [w.name for w in t_opt.weights] == ["o/iter:0", "o/b/momentum:0"]
    both = ([(tf.ones(2), t_a), (tf.ones(3), t_b)], [(np.ones(2, np.float32), i_a), (np.ones(3, np.float32), i_b)])
    _apply_both(t_opt, i_opt, *both, None)
    assert [w.name for w in t_opt.weights] == ["o/iter:0", "o/b/momentum:0", "o/a/momentum:0"]
    _assert_same_state(t_opt, i_opt, [t_a, t_b], [i_a, i_b], ["a", "b"], "after two steps")
