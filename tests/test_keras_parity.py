"""Randomized step-by-step parity of ``inertia.SGD`` with ``keras.optimizers.SGD``.

Every scenario is drawn from a seed: 1-4 variables (0-d scalars included), 1-8 steps, and a
random mix of the optimizer's features (learning-rate schedules and callables, momentum,
Nesterov, decoupled weight decay with exclusions, one clipping mode, EMA with overwrites,
a static loss scale, gradient accumulation, None gradients, applying to a subset of the
variables). The same gradients drive both libraries; after every step every trainable
variable and every optimizer variable (by position *and* name) must agree.

Deliberate deviations from Keras (SPEC section 3) are handled explicitly, never hidden:

* Under gradient accumulation inertia's EMA advances only on real update steps, while
  Keras also moves it on every micro-step. Scenarios combining ``use_ema`` with
  ``gradient_accumulation_steps`` therefore skip the ``*_average`` slots (and draw no
  ``ema_overwrite_frequency``, whose overwrites would copy those averages into the
  weights); ``test_ema_under_accumulation_*`` pin inertia's behaviour with hand-computed
  numbers and show that Keras differs there.
* ``get_config()["learning_rate"]`` is the float the user gave in inertia and its float32
  rounding in Keras; every other key must be equal.
"""

from __future__ import annotations

import random
import re
import warnings

import numpy as np
import pytest

import inertia
from conftest import draw_schedule_arguments, draw_variables_and_momentum

# float32 against Keras: bit for bit (rtol 0) on both of inertia's paths, the reference
# (jit_compile=False) and the fused C kernel (the default), with one documented exception:
# the kernel adds a norm's squares in double lanes where NumPy adds float32 squares pairwise,
# so scenarios with clipnorm / global_clipnorm agree within NORM_RTOL on the fused path.
RTOL, ATOL = 0.0, 0.0
NORM_RTOL, NORM_ATOL = 1e-6, 1e-7
PATHS = {"reference": False, "fused": True}  # the jit_compile each path runs with
# float64 against Keras: float32-level tolerances, not 1e-12. Keras 3.15 on NumPy runs its
# type promotion through ``dtypes.result_type``, which maps float64 to float32 on every
# backend but TensorFlow ("aligned with JAX's default"), so ``ops.add/subtract/multiply`` of
# float64 arrays compute in float32 and the result is stored back as float64: already the
# plain update ``w.assign_sub(g * lr)`` rounds through float32
# (test_keras_numpy_backend_rounds_float64_through_float32 pins this). No feature is exempt,
# so the float64 variant checks dtypes, names, structure and values to float32 accuracy,
# and test_float64_is_exact_in_inertia checks inertia's own float64 arithmetic at 1e-12
# against an independent float64 NumPy reference.
RTOL64, ATOL64 = 1e-5, 1e-6
N_SCENARIOS = 60
N_SCENARIOS_64 = 30
NONE_WARNING = "Gradients do not exist for variables"
SCHEDULES = ("ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay", "InverseTimeDecay", "PolynomialDecay")
NAME_STEMS = ("kernel", "bias", "gamma", "embedding")

# Keras' own Variable.__array__ (called by its .numpy()) predates NumPy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


# ----------------------------------------------------------------------------------------
# scenario drawing
# ----------------------------------------------------------------------------------------
def _draw_learning_rate(r: random.Random) -> tuple:
    kind = r.choice(("float", "callable") + SCHEDULES)
    lr0 = r.choice([r.uniform(0.001, 0.5), 10 ** r.uniform(-4, 0)])
    if kind == "float":
        return kind, {"value": lr0}
    if kind == "callable":
        # A zero-argument callable whose value changes between steps (the test changes it).
        return kind, {"value": lr0, "factor": r.uniform(0.5, 1.5)}
    return kind, draw_schedule_arguments(r, kind, lr0)


def draw_scenario(seed: int, dtype: str = "float32") -> dict:
    r = random.Random(seed)
    shapes, names, kwargs = draw_variables_and_momentum(r, NAME_STEMS, seed)
    n_vars = len(shapes)
    exclude = None
    if r.random() < 0.5:
        kwargs["weight_decay"] = r.uniform(1e-3, 0.5)
        exclude = r.choice([None, "var_list", "var_names"])
    clip = r.choice([None, "clipnorm", "global_clipnorm", "clipvalue"])
    if clip is not None:
        # Tiny thresholds so that clipping really happens; large ones for the no-op path.
        kwargs[clip] = r.choice([10 ** r.uniform(-3, -1), r.uniform(0.1, 2.0), r.uniform(10.0, 100.0)])
    use_ema = r.random() < 0.4
    accumulation = r.choice([None, None, 2, 3])
    if use_ema:
        kwargs["use_ema"] = True
        kwargs["ema_momentum"] = r.choice([0.0, 1.0, r.uniform(0.0, 1.0), 0.99])
        if accumulation is None:  # see the module docstring: no overwrite under accumulation
            kwargs["ema_overwrite_frequency"] = r.choice([None, 1, 2, 3])
    if r.random() < 0.3:
        kwargs["loss_scale_factor"] = r.choice([0.5, 2.0, 128.0, r.uniform(0.1, 1000.0)])
    if accumulation:
        kwargs["gradient_accumulation_steps"] = accumulation

    n_steps = r.randint(1, 8)
    steps = []
    for step in range(n_steps):
        indices = list(range(n_vars))
        explicit_vars = True
        if step > 0 and n_vars > 1 and r.random() < 0.2:  # a subset, once built on all
            indices = sorted(r.sample(indices, r.randint(1, n_vars - 1)))
        elif step > 0 and r.random() < 0.1:
            explicit_vars = False  # opt.apply(grads): the built list
        none_index = r.choice(indices) if len(indices) > 1 and r.random() < 0.2 else None
        steps.append(
            {
                "indices": indices,
                "explicit_vars": explicit_vars,
                "none_index": none_index,
                "scale": 10 ** r.uniform(-3, 2),
            }
        )

    return {
        "seed": seed,
        "dtype": dtype,
        "shapes": shapes,
        "names": names,
        "lr": _draw_learning_rate(r),
        "kwargs": kwargs,
        "exclude": exclude,
        "exclude_pick": sorted(r.sample(range(n_vars), r.randint(1, n_vars))),
        "steps": steps,
    }


def _make_learning_rate(schedules_module, lr_spec: tuple, box: dict):
    kind, kwargs = lr_spec
    if kind == "float":
        return kwargs["value"]
    if kind == "callable":
        box["lr"] = kwargs["value"]

        def learning_rate():
            return box["lr"]

        return learning_rate
    return getattr(schedules_module, kind)(**kwargs)


def _make_optimizers(keras, scenario: dict, box: dict, jit_compile: bool = True):
    kwargs = scenario["kwargs"]
    k_opt = keras.optimizers.SGD(learning_rate=_make_learning_rate(keras.optimizers.schedules, scenario["lr"], box), **kwargs)
    i_opt = inertia.SGD(
        learning_rate=_make_learning_rate(inertia.schedules, scenario["lr"], box), jit_compile=jit_compile, **kwargs
    )
    return k_opt, i_opt


def _compare_config(k_opt, i_opt, scenario: dict) -> None:
    kind, lr_kwargs = scenario["lr"]
    i_config = i_opt.get_config()
    # Only a non-default jit_compile is in inertia's config (the reference path's False);
    # Keras 3.15's config has no such key.
    assert i_config.pop("jit_compile", False) is False
    if kind == "callable":
        # Keras serializes the function by its source code; inertia keeps the callable.
        # Every other key is compared through the attributes both configs are built from.
        k_config = {key: getattr(k_opt, key) for key in i_config if key != "learning_rate"}
        k_lr = None
    else:
        k_config = k_opt.get_config()
        k_lr = k_config.pop("learning_rate")
    i_lr = i_config.pop("learning_rate")
    assert i_config == k_config
    assert list(i_config) == list(k_config)  # Keras' key order
    if kind == "float":
        # SPEC 3, deviation 4: inertia returns the float given, Keras its float32 rounding.
        assert i_lr == lr_kwargs["value"]
        assert k_lr == float(np.float32(lr_kwargs["value"]))
    elif kind != "callable":
        assert i_lr["class_name"] == k_lr["class_name"] == kind
        assert i_lr["config"] == k_lr["config"]


# ----------------------------------------------------------------------------------------
# the parity driver
# ----------------------------------------------------------------------------------------
def _assert_close(i_var, k_var, rtol, atol, what):
    actual, expected = np.asarray(i_var.numpy()), np.asarray(k_var.numpy())
    assert actual.shape == expected.shape, what
    # Keras' declared dtype: on its NumPy backend a float64 variable's slots hold float32
    # zeros until first assigned (the "zeros" initializer ignores the dtype there).
    assert str(actual.dtype) == k_var.dtype, f"{what}: dtype {actual.dtype} != {k_var.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _apply(opt, grads, variables, expect_none_warning: bool) -> list:
    """``opt.apply``; returns the None-gradient warning texts (exactly one when expected)."""
    if expect_none_warning:
        with pytest.warns(UserWarning, match=NONE_WARNING) as caught:
            opt.apply(grads, variables) if variables is not None else opt.apply(grads)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.apply(grads, variables) if variables is not None else opt.apply(grads)
    messages = [str(w.message) for w in caught if NONE_WARNING in str(w.message)]
    assert len(messages) == int(expect_none_warning), messages
    return messages


def run_scenario(keras, scenario: dict, rtol: float, atol: float, jit_compile: bool = True) -> None:
    dtype = scenario["dtype"]
    rng = np.random.default_rng(scenario["seed"])
    init = [rng.standard_normal(shape).astype(dtype) for shape in scenario["shapes"]]
    k_vars = [keras.Variable(v.copy(), dtype=dtype, name=n) for v, n in zip(init, scenario["names"])]
    i_vars = [inertia.Variable(v.copy(), name=n) for v, n in zip(init, scenario["names"])]
    box: dict = {}
    k_opt, i_opt = _make_optimizers(keras, scenario, box, jit_compile)

    exclude = scenario["exclude"]
    if exclude == "var_list":
        pick = scenario["exclude_pick"]
        k_opt.exclude_from_weight_decay(var_list=[k_vars[i] for i in pick])
        i_opt.exclude_from_weight_decay(var_list=[i_vars[i] for i in pick])
    elif exclude == "var_names":
        # Keras searches the regex in the variable's short name: "bias" matches "bias_2".
        names = [re.sub(r"_\d+$", "", scenario["names"][i]) for i in scenario["exclude_pick"]]
        k_opt.exclude_from_weight_decay(var_names=names)
        i_opt.exclude_from_weight_decay(var_names=names)
    _compare_config(k_opt, i_opt, scenario)

    kwargs = scenario["kwargs"]
    skip_averages = kwargs.get("use_ema") and kwargs.get("gradient_accumulation_steps")
    for step_number, step in enumerate(scenario["steps"]):
        grads = [(rng.standard_normal(shape) * step["scale"]).astype(dtype) for shape in scenario["shapes"]]
        indices = step["indices"]
        none_index = step["none_index"]
        picked = [None if i == none_index else grads[i] for i in indices]
        k_grads = [None if g is None else g.copy() for g in picked]
        i_grads = [None if g is None else g.copy() for g in picked]
        explicit = step["explicit_vars"]
        k_warned = _apply(k_opt, k_grads, [k_vars[i] for i in indices] if explicit else None, none_index is not None)
        i_warned = _apply(i_opt, i_grads, [i_vars[i] for i in indices] if explicit else None, none_index is not None)
        assert i_warned == k_warned  # same text, naming the same variable paths
        if "factor" in scenario["lr"][1]:
            box["lr"] *= scenario["lr"][1]["factor"]

        where = f"seed {scenario['seed']}, step {step_number}"
        assert int(i_opt.iterations) == int(k_opt.iterations), where
        for k_var, i_var in zip(k_vars, i_vars):
            _assert_close(i_var, k_var, rtol, atol, f"{where}: variable {k_var.name}")
        k_slots, i_slots = k_opt.variables, i_opt.variables
        assert [v.name for v in i_slots] == [v.name for v in k_slots], where
        assert [v.path for v in i_slots] == [v.path for v in k_slots], where
        for k_slot, i_slot in zip(k_slots, i_slots):
            if skip_averages and k_slot.name.endswith("_average"):
                continue  # SPEC 3, deviation 2; pinned by test_ema_under_accumulation_*
            what = f"{where}: optimizer variable {k_slot.name}"
            if k_slot.name == "iteration":
                assert int(i_slot.numpy()) == int(k_slot.numpy()), what
                continue
            _assert_close(i_slot, k_slot, rtol, atol, what)

    np.testing.assert_allclose(float(i_opt.learning_rate), float(k_opt.learning_rate), rtol=rtol, atol=atol)
    _compare_config(k_opt, i_opt, scenario)


def _clips_by_norm(scenario: dict) -> bool:
    return any(scenario["kwargs"].get(key) for key in ("clipnorm", "global_clipnorm"))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", range(N_SCENARIOS))
def test_random_scenario_float32(keras, seed, path):
    scenario = draw_scenario(seed)
    rtol, atol = (NORM_RTOL, NORM_ATOL) if path == "fused" and _clips_by_norm(scenario) else (RTOL, ATOL)
    run_scenario(keras, scenario, rtol, atol, jit_compile=PATHS[path])


@pytest.mark.parametrize("seed", range(1000, 1000 + N_SCENARIOS_64))
def test_random_scenario_float64(keras, seed):
    run_scenario(keras, draw_scenario(seed, "float64"), RTOL64, ATOL64)


def test_scenarios_cover_every_feature():
    """The seeds above really exercise every feature (guards against a drifting generator)."""
    scenarios = [draw_scenario(seed) for seed in range(N_SCENARIOS)] + [
        draw_scenario(seed, "float64") for seed in range(1000, 1000 + N_SCENARIOS_64)
    ]
    seen: set = set()
    for s in scenarios:
        kw = s["kwargs"]
        seen.add(("lr", s["lr"][0]))
        seen.add(("rank0", any(shape == () for shape in s["shapes"])))
        seen.add(("momentum", "zero" if kw["momentum"] == 0 else "positive"))
        seen.add(("nesterov", kw["nesterov"] and kw["momentum"] > 0))
        seen.add(("weight_decay", "weight_decay" in kw, s["exclude"] if "weight_decay" in kw else None))
        for clip in ("clipnorm", "global_clipnorm", "clipvalue"):
            if clip in kw:
                seen.add((clip, kw[clip] < 0.1))
        seen.add(("ema", kw.get("use_ema", False), kw.get("ema_overwrite_frequency") is not None))
        seen.add(("loss_scale", "loss_scale_factor" in kw))
        seen.add(("accumulation", kw.get("gradient_accumulation_steps")))
        seen.add(("ema+accumulation", bool(kw.get("use_ema") and kw.get("gradient_accumulation_steps"))))
        seen.add(("none_grad", any(st["none_index"] is not None for st in s["steps"])))
        seen.add(("subset", any(len(st["indices"]) < len(s["shapes"]) for st in s["steps"])))
        seen.add(("implicit_vars", any(not st["explicit_vars"] for st in s["steps"])))
    expected = {("lr", kind) for kind in ("float", "callable") + SCHEDULES}
    expected |= {("rank0", True), ("momentum", "zero"), ("momentum", "positive"), ("nesterov", True)}
    expected |= {("weight_decay", True, e) for e in (None, "var_list", "var_names")}
    expected |= {(clip, tiny) for clip in ("clipnorm", "global_clipnorm", "clipvalue") for tiny in (True, False)}
    expected |= {("ema", True, True), ("ema", True, False), ("loss_scale", True)}
    expected |= {("accumulation", 2), ("accumulation", 3), ("ema+accumulation", True)}
    expected |= {("none_grad", True), ("subset", True), ("implicit_vars", True)}
    assert expected <= seen, sorted(expected - seen, key=str)


# ----------------------------------------------------------------------------------------
# deterministic checks
# ----------------------------------------------------------------------------------------
def _mlp_gradients(params, x, y):
    """Least squares through a tanh hidden layer, with hand-written float32 backprop."""
    w1, b1, w2, b2 = params
    h_pre = x @ w1 + b1
    h = np.tanh(h_pre)
    out = h @ w2 + b2
    d_out = (2.0 / np.float32(len(x))) * (out - y)
    d_out = d_out.astype(np.float32)
    g_w2 = h.T @ d_out
    g_b2 = d_out.sum(axis=0)
    d_h = (d_out @ w2.T) * (np.float32(1) - h * h)
    g_w1 = x.T @ d_h
    g_b1 = d_h.sum(axis=0)
    return [g.astype(np.float32) for g in (g_w1, g_b1, g_w2, g_b2)]


@pytest.mark.parametrize("path", PATHS)
def test_mlp_least_squares_50_steps(keras, path):
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = (np.sin(x.sum(axis=1, keepdims=True)) * 3.0).astype(np.float32)
    init = [
        (rng.standard_normal((4, 8)) * 0.5).astype(np.float32),
        np.zeros(8, np.float32),
        (rng.standard_normal((8, 1)) * 0.5).astype(np.float32),
        np.zeros(1, np.float32),
    ]
    names = ["dense_kernel", "dense_bias", "out_kernel", "out_bias"]
    config = dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, clipnorm=1.0, name="mlp")
    k_vars = [keras.Variable(v.copy(), name=n) for v, n in zip(init, names)]
    i_vars = [inertia.Variable(v.copy(), name=n) for v, n in zip(init, names)]
    k_opt, i_opt = keras.optimizers.SGD(**config), inertia.SGD(jit_compile=PATHS[path], **config)
    losses = []
    for _ in range(50):
        k_opt.apply(_mlp_gradients([v.numpy() for v in k_vars], x, y), k_vars)
        i_grads = _mlp_gradients([v.numpy() for v in i_vars], x, y)
        i_opt.apply(i_grads, i_vars)
        w1, b1, w2, b2 = (v.numpy() for v in i_vars)
        losses.append(float(np.mean((np.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)))
    assert losses[-1] < 0.5 * losses[0]  # it really trains
    # The fused kernel's norms (clipnorm) differ in the last bit; 50 steps of training carry
    # such a difference a little further than one step.
    rtol, atol = (0.0, 0.0) if path == "reference" else (1e-5, 1e-7)
    for k_var, i_var in zip(k_vars, i_vars):
        np.testing.assert_allclose(i_var.numpy(), k_var.numpy(), rtol=rtol, atol=atol, err_msg=k_var.name)
    for k_slot, i_slot in zip(k_opt.variables, i_opt.variables):
        assert i_slot.name == k_slot.name
        np.testing.assert_allclose(i_slot.numpy(), k_slot.numpy(), rtol=rtol, atol=atol, err_msg=k_slot.name)
    assert int(i_opt.iterations) == int(k_opt.iterations) == 50


# EMA under gradient accumulation (deliberate deviation 2). N=2, ema_momentum=0.5, lr=1,
# g=1 on every call, from v=10. Real updates happen on calls 2, 4, 6 (mean gradient 1):
#   v after each call:            10, 9, 9, 8, 8, 7
#   inertia's average (real steps only): call 2 copies (first real step) -> 9;
#       call 4 -> 0.5*9 + 0.5*8 = 8.5; call 6 -> 0.5*8.5 + 0.5*7 = 7.75;
#       it stays put on the micro-steps (0 = the slot's initial value before call 2).
#   Keras' average (every call; "first step" while iterations = raw // 2 == 0):
#       call 1 copies 10; call 2 copies 9; call 3: 0.5*9+0.5*9 = 9; call 4: 0.5*9+0.5*8 = 8.5;
#       call 5: 0.5*8.5+0.5*8 = 8.25; call 6: 0.5*8.25+0.5*7 = 7.625.
EMA_ACC_V = [10.0, 9.0, 9.0, 8.0, 8.0, 7.0]
EMA_ACC_INERTIA_AVERAGE = [0.0, 9.0, 9.0, 8.5, 8.5, 7.75]
EMA_ACC_KERAS_AVERAGE = [10.0, 9.0, 9.0, 8.5, 8.25, 7.625]


def _ema_accumulation_trace(make_variable, make_sgd, **extra):
    v = make_variable(np.float32(10.0), name="v")
    opt = make_sgd(learning_rate=1.0, use_ema=True, ema_momentum=0.5, gradient_accumulation_steps=2, name="ema_acc", **extra)
    values, averages = [], []
    for _ in range(6):
        opt.apply([np.float32(1.0)], [v])
        values.append(float(v.numpy()))
        averages.append(float(next(s for s in opt.variables if s.name == "v_average").numpy()))
    return values, averages, opt


def test_ema_under_accumulation_inertia_hand_computed():
    values, averages, opt = _ema_accumulation_trace(inertia.Variable, inertia.SGD)
    assert values == EMA_ACC_V
    assert averages == EMA_ACC_INERTIA_AVERAGE
    assert int(opt.iterations) == 3


def test_ema_under_accumulation_with_overwrite_inertia_hand_computed():
    # Same with ema_overwrite_frequency=2: the EMA clock is the real step count (0, 1, 2 on
    # calls 2, 4, 6), so only call 4 ((1+1) % 2 == 0) copies the average into v:
    #   call 2: v 9, avg 9; call 4: v 8, avg 8.5 -> v = 8.5; call 6: v 7.5, avg 0.5*8.5+0.5*7.5 = 8.
    values, averages, _ = _ema_accumulation_trace(inertia.Variable, inertia.SGD, ema_overwrite_frequency=2)
    assert values == [10.0, 9.0, 9.0, 8.5, 8.5, 7.5]
    assert averages == [0.0, 9.0, 9.0, 8.5, 8.5, 8.0]


def test_ema_under_accumulation_keras_differs(keras):
    """Pins the deviation: same weights, different averages (Keras moves them on micro-steps)."""
    k_values, k_averages, _ = _ema_accumulation_trace(keras.Variable, keras.optimizers.SGD)
    i_values, i_averages, _ = _ema_accumulation_trace(inertia.Variable, inertia.SGD)
    assert k_values == i_values == EMA_ACC_V
    assert k_averages == EMA_ACC_KERAS_AVERAGE
    assert i_averages == EMA_ACC_INERTIA_AVERAGE
    assert k_averages[0] != i_averages[0] and k_averages[-1] != i_averages[-1]


def test_none_gradient_for_every_variable_raises_in_both(keras):
    k_var, i_var = keras.Variable(np.ones(2, np.float32), name="w"), inertia.Variable(np.ones(2, np.float32), name="w")
    for opt, var in ((keras.optimizers.SGD(name="n"), k_var), (inertia.SGD(name="n"), i_var)):
        with pytest.raises(ValueError, match="No gradients provided for any variable"):
            opt.apply([None], [var])


# ----------------------------------------------------------------------------------------
# float64
# ----------------------------------------------------------------------------------------
def test_keras_numpy_backend_rounds_float64_through_float32(keras):
    """Why the float64 variant cannot use 1e-12 against Keras (see RTOL64)."""
    w0, g, lr = np.array([0.7, 0.3]), np.array([0.1, 0.1]), 0.5
    k_var = keras.Variable(w0.copy(), dtype="float64", name="w")
    i_var = inertia.Variable(w0.copy(), name="w")
    keras.optimizers.SGD(learning_rate=lr, name="k64").apply([g.copy()], [k_var])
    inertia.SGD(learning_rate=lr, name="i64").apply([g.copy()], [i_var])
    assert k_var.dtype == "float64" and i_var.dtype == "float64"
    f32 = np.float32
    keras_expected = (w0.astype(f32) - g.astype(f32) * f32(lr)).astype(np.float64)
    np.testing.assert_array_equal(k_var.numpy(), keras_expected)  # float32 arithmetic
    np.testing.assert_array_equal(i_var.numpy(), w0 - g * lr)  # float64 arithmetic
    assert not np.array_equal(k_var.numpy(), i_var.numpy())


def test_float64_is_exact_in_inertia():
    """inertia's float64 path at 1e-12 against a plain float64 NumPy restatement of Keras' SGD
    (momentum + Nesterov + decoupled weight decay + clipnorm + loss scale + EMA)."""
    rng = np.random.default_rng(64)
    shapes = [(3, 2), (), (4,)]
    init = [rng.standard_normal(s) for s in shapes]
    lr, momentum, wd, clipnorm, scale, ema = 0.1, 0.9, 0.05, 0.5, 4.0, 0.8
    variables = [inertia.Variable(v.copy(), name=f"w{i}") for i, v in enumerate(init)]
    opt = inertia.SGD(
        learning_rate=lr, momentum=momentum, nesterov=True, weight_decay=wd, clipnorm=clipnorm,
        loss_scale_factor=scale, use_ema=True, ema_momentum=ema, name="f64",
    )
    lr32 = float(np.float32(lr))  # the learning-rate variable is float32, as in Keras
    ws = [v.copy() for v in init]
    vel = [np.zeros_like(v) for v in init]
    avg = [np.zeros_like(v) for v in init]
    for step in range(6):
        grads = [rng.standard_normal(s) * 3.0 for s in shapes]
        opt.apply([g.copy() for g in grads], variables)
        for i, g in enumerate(grads):
            g = g / scale
            g = g * clipnorm / max(np.sqrt(np.sum(g * g)), clipnorm)
            ws[i] = ws[i] - ws[i] * wd * lr32
            vel[i] = momentum * vel[i] - lr32 * g
            ws[i] = ws[i] + momentum * vel[i] - lr32 * g
            avg[i] = ws[i].copy() if step == 0 else ema * avg[i] + (1 - ema) * ws[i]
        for i, variable in enumerate(variables):
            assert variable.dtype == "float64"
            np.testing.assert_allclose(variable.numpy(), ws[i], rtol=1e-12, atol=1e-14)
        slots = {s.name: s.numpy() for s in opt.variables}
        for i in range(len(shapes)):
            assert slots[f"w{i}_momentum"].dtype == np.float64
            np.testing.assert_allclose(slots[f"w{i}_momentum"], vel[i], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(slots[f"w{i}_average"], avg[i], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------
# single behaviours, each side by side with Keras at rtol 0
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_exclude_by_name_searches_the_pattern_anywhere_in_the_name(keras, path):
    # Keras excludes a variable when re.search finds a pattern in its name: "bias" excludes
    # "dense_bias" as well as "bias_dense". Zero gradients, no momentum: only the decay moves
    # a weight, 2 - 2*0.25*0.5 = 1.75.
    names = ["dense_bias", "bias_dense", "dense_kernel"]
    k_vars = [keras.Variable(np.full(2, 2.0, np.float32), name=n) for n in names]
    i_vars = [inertia.Variable(np.full(2, 2.0, np.float32), name=n) for n in names]
    k_opt = keras.optimizers.SGD(learning_rate=0.5, weight_decay=0.25)
    i_opt = inertia.SGD(learning_rate=0.5, weight_decay=0.25, jit_compile=PATHS[path])
    k_opt.exclude_from_weight_decay(var_names=["bias"])
    i_opt.exclude_from_weight_decay(var_names=["bias"])
    zeros = [np.zeros(2, np.float32) for _ in names]
    k_opt.apply([z.copy() for z in zeros], k_vars)
    i_opt.apply([z.copy() for z in zeros], i_vars)
    expected = [[2.0, 2.0], [2.0, 2.0], [1.75, 1.75]]
    assert [np.asarray(v.numpy()).tolist() for v in k_vars] == expected
    assert [v.numpy().tolist() for v in i_vars] == expected


@pytest.mark.parametrize("path", PATHS)
def test_a_step_of_only_overwrite_with_gradient_variables_still_counts(keras, path):
    # Keras bumps `iterations` on every apply, also when every gradient went to an
    # overwrite_with_gradient variable (float8 scale bookkeeping) and none is left to train.
    k_var = keras.Variable(np.ones(2, np.float32), name="scale")
    k_var.overwrite_with_gradient = True
    i_var = inertia.Variable(np.ones(2, np.float32), name="scale", overwrite_with_gradient=True)
    k_opt, i_opt = keras.optimizers.SGD(learning_rate=0.1), inertia.SGD(learning_rate=0.1, jit_compile=PATHS[path])
    for value in (3.0, 5.0, 7.0):
        k_opt.apply([np.full(2, value, np.float32)], [k_var])
        i_opt.apply([np.full(2, value, np.float32)], [i_var])
    assert int(k_opt.iterations) == int(i_opt.iterations) == 3
    assert np.asarray(k_var.numpy()).tolist() == i_var.numpy().tolist() == [7.0, 7.0]


@pytest.mark.parametrize("path", PATHS)
def test_clipnorm_rounds_as_keras_when_c_is_not_a_power_of_two(keras, path):
    # Keras forms (g * c) / max(norm, c). With c = 0.7 (not a power of two) the other
    # association, (g / max(norm, c)) * c, rounds differently in some elements, so only the
    # exact formula passes at rtol 0.
    gradient = np.array([[2.0, -4.0, 5.0, 6.0, 8.0, -10.0], [1.0, 3.0, -3.0, 4.0, 3.0, 0.0]], np.float32)
    squares = float(np.sum(gradient.astype(np.float64) ** 2))
    assert squares == 289.0  # a norm of exactly 17 in any summation order
    c, norm = np.float32(0.7), np.float32(17.0)
    clipped = (gradient * c) / norm
    assert not np.array_equal(clipped, (gradient / norm) * c)  # the data tells the two apart
    k_var = keras.Variable(np.zeros_like(gradient), name="w")
    i_var = inertia.Variable(np.zeros_like(gradient), name="w")
    keras.optimizers.SGD(learning_rate=1.0, clipnorm=0.7).apply([gradient.copy()], [k_var])
    inertia.SGD(learning_rate=1.0, clipnorm=0.7, jit_compile=PATHS[path]).apply([gradient.copy()], [i_var])
    np.testing.assert_array_equal(np.asarray(k_var.numpy()), -clipped)
    np.testing.assert_array_equal(i_var.numpy(), -clipped)


@pytest.mark.parametrize("path", PATHS)
def test_global_clipnorm_over_float32_and_float64_takes_the_norm_in_float64(path):
    # The joint norm is formed in the widest dtype of the variables: float64 here, so the
    # float64 variable's update is exact float64 arithmetic and only the float32 variable
    # sees a float32 scale. (Keras' NumPy backend rounds float64 through float32 anyway:
    # see test_keras_numpy_backend_rounds_float64_through_float32; this is inertia's own rule.)
    g32 = np.array([2.0, -4.0, 5.0], np.float32)  # squares add to 45
    g64 = np.array([6.0, 8.0, -10.0, 2.0, 2.0], np.float64)  # squares add to 208: 253 in all
    lr, c = 0.5, 0.7
    w32 = inertia.Variable(np.zeros(3, np.float32), name="w32")
    w64 = inertia.Variable(np.zeros(5, np.float64), name="w64")
    optimizer = inertia.SGD(learning_rate=lr, global_clipnorm=c, jit_compile=PATHS[path])
    optimizer.apply([g32.copy(), g64.copy()], [w32, w64])
    norm = np.sqrt(np.float64(45.0) + np.float64(208.0))
    scale = np.float64(c) * min(1.0 / norm, np.float64(1.0 / c)) + (norm - norm)
    lr32 = np.float64(np.float32(lr))  # the learning-rate variable is float32, as in Keras
    np.testing.assert_array_equal(w64.numpy(), -((g64 * scale) * lr32))
    np.testing.assert_array_equal(w32.numpy(), -((g32 * np.float32(scale)) * np.float32(lr)))
    # A float32 norm and scale would move the float64 weight by another amount:
    scale32 = np.float64(np.float32(c) * min(np.float32(1) / np.sqrt(np.float32(253.0)), np.float32(1.0 / c)))
    assert not np.array_equal(w64.numpy(), -((g64 * scale32) * lr32))


@pytest.mark.parametrize("path", PATHS)
def test_loss_scaling_leaves_overwrite_with_gradient_values_unscaled(keras, path):
    # LossScaleOptimizer divides the trained variables' gradients by the scale (8 / 4 = 2, so
    # w = 1 - 0.1*2 = 0.8), but an overwrite_with_gradient variable takes its "gradient" as
    # it is: s = 3, not 3 / 4.
    k_w, k_s = keras.Variable(np.ones(1, np.float32), name="w"), keras.Variable(np.zeros(1, np.float32), name="s")
    k_s.overwrite_with_gradient = True
    i_w = inertia.Variable(np.ones(1, np.float32), name="w")
    i_s = inertia.Variable(np.zeros(1, np.float32), name="s", overwrite_with_gradient=True)
    k_opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(learning_rate=0.1), initial_scale=4.0)
    i_opt = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.1, jit_compile=PATHS[path]), initial_scale=4.0)
    k_opt.apply([np.array([8.0], np.float32), np.array([3.0], np.float32)], [k_w, k_s])
    i_opt.apply([np.array([8.0], np.float32), np.array([3.0], np.float32)], [i_w, i_s])
    assert np.asarray(k_w.numpy()).tolist() == i_w.numpy().tolist() == [np.float32(1.0) - np.float32(0.1) * 2]
    assert np.asarray(k_s.numpy()).tolist() == i_s.numpy().tolist() == [3.0]
