"""NumPy == PyTorch == JAX, step by step, on randomized scenarios that mix every feature.

Each seed draws one scenario with NumPy: the optimizer's settings (momentum / nesterov,
weight decay and its exclusions, one clipping mode, EMA and its overwrite frequency, a static
loss scale, gradient accumulation, a float / schedule / callable learning rate, a
LossScaleOptimizer around it all), the variables (0-d and n-d) and every step's gradients
(None for some variables, a subset of the variables, inf now and then under dynamic loss
scaling). The same draws then run on NumPy, PyTorch and JAX (JAX twice: the default eager
apply that runs a compiled step, and ``jit_compile=False``), and after every step every
trainable variable and every optimizer variable (``opt.variables``, by position and by name)
must agree: to 1e-12 in float64, to rtol 1e-6 / atol 1e-7 in float32.

XLA may contract ``a*b + c`` into one rounding and divide by a constant as a multiplication
by its reciprocal, so the compiled JAX step can differ from NumPy in the last bits; the
tolerances allow that and nothing more.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pytest

import inertia
from conftest import load_backend, tensor
from inertia import schedules

SEEDS = range(40)
DTYPES = ("float64", "float32")
TOLERANCES = {"float64": {"rtol": 1e-12, "atol": 1e-12}, "float32": {"rtol": 1e-6, "atol": 1e-7}}
# (backend, jit_compile); the first is the reference. TensorFlow also runs every step inside
# a tf.function (FUNCTION), traced once per call pattern.
FUNCTION = "tf.function"
RUNS = (("numpy", True), ("torch", True), ("jax", True), ("jax", False), ("tensorflow", True), ("tensorflow", FUNCTION))

SHAPES = ((), (3,), (2, 3), (), (2, 1, 2))  # few distinct shapes: fewer JAX compilations
KINDS = ("kernel", "bias", "gamma")
CLIP_MODES = ("clipnorm", "global_clipnorm", "clipvalue")
SCHEDULES = (
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
)
LR_KINDS = ("float", *SCHEDULES, "callable", "callable_of_iterations")
MISSING_GRADIENTS = "Gradients do not exist"

# Every feature the seeds must keep drawing (per dtype); see test_seeds_draw_every_feature.
FEATURES = frozenset(
    {
        "no_momentum", "momentum", "nesterov", "weight_decay", "exclude_var_list", "exclude_var_names",
        *(f"clipped_{mode}" for mode in CLIP_MODES), "ema", "ema_overwrite", "loss_scale_factor",
        "gradient_accumulation", *(f"lr_{kind}" for kind in LR_KINDS), "none_gradients", "subset",
        "scalar_variable", "nd_variable", "loss_scale_optimizer", "lso_inf_gradient", "lso_growth",
        "api_apply", "api_apply_all", "api_apply_gradients", "prebuilt", "built_by_first_apply",
        "polynomial_decay_past_its_end",
    }
)

# Largest differences from NumPy seen per dtype (absolute, and relative to NumPy's value),
# for the record; filled by the tests.
MAX_DIFFERENCES: dict[str, dict[str, float]] = {dtype: {"abs": 0.0, "rel": 0.0} for dtype in DTYPES}


@dataclass
class Step:
    api: str  # "apply" (explicit variables), "apply_all" (the built list) or "apply_gradients"
    indices: list  # the variables this step updates
    grads: list  # one NumPy array or None per index
    finite: bool = True  # False: an inf gradient (dynamic loss scaling skips the step)


@dataclass
class Scenario:
    seed: int
    dtype: str
    names: list
    inits: list
    sgd: dict
    lr_kind: str
    lr_args: dict
    exclude_indices: list
    exclude_names: list
    lso: Optional[dict]
    prebuild: bool
    steps: list
    features: set = field(default_factory=set)


def _typed(value: float, dtype: str) -> Any:
    """Schedule hyperparameters: a float64 scenario computes its rate in float64."""
    return np.float64(value) if dtype == "float64" else float(value)


def draw(seed: int, dtype: str) -> Scenario:
    rng = np.random.default_rng([seed, DTYPES.index(dtype)])
    features: set = set()
    count = int(rng.integers(2, 5))
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), count)]
    names = [f"{KINDS[int(rng.integers(len(KINDS)))]}{i}" for i in range(count)]
    inits = [np.asarray(rng.uniform(-1.0, 1.0, shape)) for shape in shapes]
    features |= {"scalar_variable" for s in shapes if s == ()} | {"nd_variable" for s in shapes if len(s) >= 2}

    sgd: dict = {}
    if rng.random() < 0.25:
        features.add("no_momentum")
    else:
        sgd["momentum"] = float(rng.uniform(0.3, 0.95))
        sgd["nesterov"] = bool(rng.random() < 0.5)
        features.add("nesterov" if sgd["nesterov"] else "momentum")
    exclude_indices: list = []
    exclude_names: list = []
    if rng.random() < 0.6:
        sgd["weight_decay"] = float(rng.uniform(0.01, 0.3))
        features.add("weight_decay")
        if rng.random() < 0.5:
            exclude_indices = sorted(int(i) for i in rng.choice(count, int(rng.integers(1, count)), replace=False))
            features.add("exclude_var_list")
        if rng.random() < 0.5:
            exclude_names = [str(rng.choice(["bias", "gamma$", "^kernel", "1$|3$"]))]
            if any(re.search(exclude_names[0], name) for name in names):
                features.add("exclude_var_names")
    clip_mode = CLIP_MODES[int(rng.integers(3))]  # exactly one per scenario, small enough to clip
    threshold = float(rng.uniform(0.05, 0.8 if clip_mode == "global_clipnorm" else 0.4))
    sgd[clip_mode] = threshold
    if rng.random() < 0.5:
        sgd["use_ema"] = True
        sgd["ema_momentum"] = float(rng.uniform(0.5, 0.99))
        features.add("ema")
        if rng.random() < 0.6:
            sgd["ema_overwrite_frequency"] = int(rng.integers(1, 4))
    if rng.random() < 0.4:
        sgd["gradient_accumulation_steps"] = int(rng.integers(2, 4))
        features.add("gradient_accumulation")

    lso = None
    grad_scale = 1.0
    if rng.random() < 0.3:
        lso = {"initial_scale": float(2.0 ** int(rng.integers(1, 8))), "dynamic_growth_steps": int(rng.integers(1, 4))}
        grad_scale = lso["initial_scale"]
        features.add("loss_scale_optimizer")
    elif rng.random() < 0.4:
        sgd["loss_scale_factor"] = float(rng.choice([0.5, 3.0, 4.0, 128.0]))
        grad_scale = sgd["loss_scale_factor"]
        features.add("loss_scale_factor")

    min_steps = 5
    lr_kind = LR_KINDS[seed % len(LR_KINDS)]  # every kind, about equally often
    features.add(f"lr_{lr_kind}")
    lr0 = float(rng.uniform(0.02, 0.2))
    lr_args: dict = {"lr0": lr0}
    if lr_kind == "ExponentialDecay" or lr_kind == "callable_of_iterations":
        lr_args.update(decay_steps=int(rng.integers(1, 5)), decay_rate=float(rng.uniform(0.5, 0.95)), staircase=bool(rng.random() < 0.5))
    elif lr_kind == "PiecewiseConstantDecay":
        lr_args.update(boundaries=sorted(int(b) for b in rng.choice(9, 2, replace=False)))
    elif lr_kind == "PolynomialDecay":
        if (seed // len(LR_KINDS)) % 2 == 0:
            # A fractional power past the end of the decay. XLA computes 1 - s/d as
            # 1 - s*(1/d) in one rounding: below 0 for d = 5 (and d = 3 in float32), which
            # was a NaN learning rate to a fractional power (now clamped to 0).
            lr_args.update(decay_steps=5 if dtype == "float64" else 3, power=float(rng.choice([0.5, 1.5])), cycle=False)
            if sgd.pop("gradient_accumulation_steps", None):  # reach the end: every step updates
                features.discard("gradient_accumulation")
            min_steps = 8
        else:
            # Integer powers only: where XLA's 1 - s*(1/d) is a tiny positive number instead
            # of 0 (d = 3 in float64), a power < 1 magnifies it (1e-16 ** 0.5 = 1e-8).
            lr_args.update(decay_steps=int(rng.choice([2, 3, 5])), power=float(rng.choice([1.0, 2.0])), cycle=bool(rng.random() < 0.5))
    elif lr_kind == "InverseTimeDecay":
        lr_args.update(decay_steps=int(rng.integers(1, 5)), decay_rate=float(rng.uniform(0.1, 1.0)), staircase=bool(rng.random() < 0.5))
    elif lr_kind == "CosineDecay":
        lr_args.update(decay_steps=int(rng.integers(2, 9)), alpha=float(rng.uniform(0.0, 0.3)))
        if rng.random() < 0.5:
            lr_args.update(warmup_target=lr0 * 1.5, warmup_steps=int(rng.integers(1, 4)))
    elif lr_kind == "CosineDecayRestarts":
        lr_args.update(
            first_decay_steps=int(rng.integers(2, 6)), t_mul=float(rng.choice([1.0, 2.0, 1.5])),
            m_mul=float(rng.uniform(0.5, 1.0)), alpha=float(rng.uniform(0.0, 0.2)),
        )

    # One proper subset of the variables per scenario: "subset" steps update it, "none"
    # steps pass None for the others. Both reach the same compiled JAX step, which keeps
    # the number of compilations (most of this file's time) down.
    partial = None
    if count > 1 and rng.random() < 0.35:
        partial = sorted(int(i) for i in rng.choice(count, int(rng.integers(1, count)), replace=False))
    prebuild = bool(rng.random() < 0.5)

    steps: list = []
    finite_run = 0
    for index in range(int(rng.integers(min_steps, 10 if min_steps > 5 else 9))):
        mode = rng.choice(["all", "subset", "none"], p=[0.5, 0.25, 0.25])
        indices = list(range(count))
        if mode == "subset" and partial is not None and (prebuild or index > 0):
            indices = partial
            features.add("subset")
        grads = [np.asarray(rng.normal(size=shapes[i]) * grad_scale) for i in indices]
        if mode == "none" and partial is not None:
            grads = [g if i in partial else None for i, g in zip(indices, grads)]
            features.add("none_gradients")
        present = [g for g in grads if g is not None]
        if lso is not None and rng.random() < 0.25:
            target = present[int(rng.integers(len(present)))]
            target.flat[int(rng.integers(target.size))] = float(rng.choice([np.inf, -np.inf]))
            features.add("lso_inf_gradient")
            finite_run = 0
        elif lso is not None:
            finite_run += 1
            if finite_run >= lso["dynamic_growth_steps"]:
                features.add("lso_growth")
        # Would the threshold clip this step's (unscaled) gradients?
        unscaled = [g / grad_scale for g in present]
        if all(np.isfinite(g).all() for g in unscaled):
            norms = [float(np.sqrt(np.sum(g * g))) for g in unscaled]
            clipped = {
                "clipnorm": max(norms) > threshold,
                "global_clipnorm": float(np.sqrt(sum(n * n for n in norms))) > threshold,
                "clipvalue": max(float(np.max(np.abs(g))) for g in unscaled) > threshold,
            }[clip_mode]
            if clipped:
                features.add(f"clipped_{clip_mode}")
        if len(indices) == count and (prebuild or index > 0) and rng.random() < 0.3:
            api = "apply_all"
        else:
            api = str(rng.choice(["apply", "apply_gradients"]))
        features.add(f"api_{api}")
        steps.append(Step(api, indices, grads, all(np.isfinite(g).all() for g in present)))

    if lr_kind == "PolynomialDecay" and lr_args["power"] % 1:
        # Does an update step run with the (raw, inner) step counter past decay_steps?
        every = sgd.get("gradient_accumulation_steps", 1)
        raw_counts = range(sum(step.finite for step in steps))
        if any(raw >= lr_args["decay_steps"] and (raw + 1) % every == 0 for raw in raw_counts):
            features.add("polynomial_decay_past_its_end")
    updates = len(steps) // sgd.get("gradient_accumulation_steps", 1)
    if sgd.get("ema_overwrite_frequency") and updates >= sgd["ema_overwrite_frequency"]:
        features.add("ema_overwrite")
    features.add("prebuilt" if prebuild else "built_by_first_apply")
    return Scenario(seed, dtype, names, inits, sgd, lr_kind, lr_args, exclude_indices, exclude_names, lso, prebuild, steps, features)


def make_learning_rate(scenario: Scenario, holder: dict) -> Any:
    kind, args, dtype = scenario.lr_kind, dict(scenario.lr_args), scenario.dtype
    lr0 = _typed(args.pop("lr0"), dtype)
    if kind == "float":
        return float(lr0)
    if kind == "callable":
        # Reads Python state that the test changes before every step (see ``run``).
        return lambda: holder["rate"]
    if kind == "callable_of_iterations":
        # A callable that reads the optimizer's (possibly traced) step counter.
        decay = schedules.ExponentialDecay(lr0, **args)
        return lambda: decay(holder["optimizer"].iterations)
    if kind == "PiecewiseConstantDecay":
        values = [lr0, lr0 * _typed(0.5, dtype), lr0 * _typed(0.1, dtype)]
        return schedules.PiecewiseConstantDecay(args["boundaries"], values)
    if kind == "CosineDecay" and "warmup_target" in args:
        args["warmup_target"] = _typed(args["warmup_target"], dtype)
    return getattr(schedules, kind)(lr0, **args)


def snapshot(variables: list, optimizer: Any) -> tuple:
    return (
        [(v.name, v.numpy()) for v in variables],
        [(v.name, v.numpy()) for v in optimizer.variables],
    )


def run(scenario: Scenario, backend_name: str, jit_compile: bool) -> list:
    load_backend(backend_name)

    def array(value: Any) -> Any:
        return tensor(value, scenario.dtype, backend_name=backend_name)

    variables = [inertia.Variable(array(init), name=name) for name, init in zip(scenario.names, scenario.inits)]
    holder: dict = {}
    inner = inertia.SGD(
        learning_rate=make_learning_rate(scenario, holder), name="sgd", jit_compile=jit_compile, **scenario.sgd
    )
    holder["optimizer"] = inner
    if scenario.exclude_indices or scenario.exclude_names:
        inner.exclude_from_weight_decay(
            var_list=[variables[i] for i in scenario.exclude_indices] or None, var_names=scenario.exclude_names or None
        )
    optimizer = inner if scenario.lso is None else inertia.LossScaleOptimizer(inner, name="lso", **scenario.lso)
    if scenario.prebuild:
        optimizer.build(variables)

    def apply(api: str, grads: list, targets: list) -> None:
        if api == "apply_all":
            optimizer.apply(grads)
        elif api == "apply":
            optimizer.apply(grads, targets)
        else:
            optimizer.apply_gradients(zip(grads, targets))

    if jit_compile == FUNCTION:
        import tensorflow as tf

        # The callable learning rate reads a variable: a Python value would be read once, when traced.
        holder["rate"] = tf.Variable(0.0, dtype=scenario.dtype)
        functions: dict = {}

        def apply(api: str, grads: list, targets: list, eager: Any = apply) -> None:  # noqa: F811
            key = (api, tuple(g is None for g in grads), tuple(id(t) for t in targets))
            if key not in functions:
                functions[key] = tf.function(lambda given: eager(api, _with_nones(given, grads), targets))
            functions[key]([g for g in grads if g is not None])

    history = []
    for number, step in enumerate(scenario.steps):
        rate = scenario.lr_args["lr0"] * (1 + 0.5 * np.sin(number))
        if isinstance(holder.get("rate"), (int, float, type(None))):
            holder["rate"] = rate
        else:
            holder["rate"].assign(rate)
        grads = [None if g is None else array(g) for g in step.grads]
        targets = [variables[i] for i in step.indices]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            apply(step.api, grads, targets)
        where = f"{backend_name} (jit_compile={jit_compile}), step {number}"
        missing = [w for w in caught if MISSING_GRADIENTS in str(w.message)]
        # A skipped step (inf gradient under dynamic loss scaling) never reaches the filter;
        # inside a tf.function the warning comes once, when the step is traced.
        if jit_compile != FUNCTION:
            assert bool(missing) == (any(g is None for g in step.grads) and step.finite), where
        assert all(issubclass(w.category, UserWarning) for w in missing), where
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], where
        history.append(snapshot(variables, optimizer))
    if inner.use_ema:
        optimizer.finalize_variable_values(variables)
        history.append(snapshot(variables, optimizer))

    if backend_name == "jax":
        # The eager JAX apply runs compiled steps unless told not to, or unless the learning
        # rate is a plain callable (called eagerly every step: it may read Python state).
        assert bool(inner._compiled.steps) == (jit_compile and not scenario.lr_kind.startswith("callable"))
    else:
        assert not inner._compiled.steps
    for variable in variables:
        assert variable.dtype == scenario.dtype and variable.backend.name == backend_name
    return history


def _with_nones(given: list, pattern: list) -> list:
    """``given`` (the gradients that are not None) put back in ``pattern``'s places."""
    values = iter(given)
    return [None if g is None else next(values) for g in pattern]


def assert_histories_match(reference: list, other: list, scenario: Scenario, label: str) -> None:
    tolerance = TOLERANCES[scenario.dtype]
    record = MAX_DIFFERENCES[scenario.dtype]
    assert len(reference) == len(other)
    for number, (expected_step, actual_step) in enumerate(zip(reference, other)):
        for kind, expected, actual in zip(("trainable", "optimizer"), expected_step, actual_step):
            assert [name for name, _ in actual] == [name for name, _ in expected], f"{label}: {kind} names, step {number}"
            for position, ((name, want), (_, got)) in enumerate(zip(expected, actual)):
                where = f"seed {scenario.seed} {scenario.dtype}, {label} vs numpy, step {number}, {kind} variable #{position} {name!r}"
                assert got.dtype == want.dtype and got.shape == want.shape, where
                if want.dtype.kind in "iub":
                    np.testing.assert_array_equal(got, want, err_msg=where)
                    continue
                assert np.isfinite(want).all(), where  # inf gradients never reach the state
                np.testing.assert_allclose(got, want, err_msg=where, **tolerance)
                difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
                if difference.size:
                    record["abs"] = max(record["abs"], float(difference.max()))
                    scale = np.abs(want.astype(np.float64))
                    relative = difference[scale > 0] / scale[scale > 0]
                    if relative.size:
                        record["rel"] = max(record["rel"], float(relative.max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_numpy_torch_and_jax_agree_step_by_step(seed, dtype):
    scenario = draw(seed, dtype)
    reference = run(scenario, *RUNS[0])
    for backend_name, jit_compile in RUNS[1:]:
        history = run(scenario, backend_name, jit_compile)
        assert_histories_match(reference, history, scenario, f"{backend_name} (jit_compile={jit_compile})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_seeds_draw_every_feature(dtype):
    """A guard: if a change to the drawing stops exercising a feature, this fails."""
    drawn: dict = {}
    for seed in SEEDS:
        for feature in draw(seed, dtype).features:
            drawn[feature] = drawn.get(feature, 0) + 1
    missing = sorted(FEATURES - set(drawn))
    assert not missing, f"the {dtype} seeds never draw: {missing}"
    rare = sorted(feature for feature in FEATURES if drawn[feature] < 2)
    assert not rare, f"the {dtype} seeds draw these only once: {rare}"
    assert set(drawn) <= FEATURES, sorted(set(drawn) - FEATURES)


def test_draws_are_reproducible():
    first, second = draw(3, "float32"), draw(3, "float32")
    assert first.sgd == second.sgd and first.lr_args == second.lr_args
    for a, b in zip(first.steps, second.steps):
        assert a.indices == b.indices and a.api == b.api
        for x, y in zip(a.grads, b.grads):
            assert (x is None and y is None) or np.array_equal(x, y)
