"""``inertia.mlx.SGD`` against ``mlx.optimizers.SGD``, the optimizer it reproduces.

What this file proves:

* Numbers. In 30 seeded random scenarios (momentum, 0 included; dampening; L2 weight
  decay; Nesterov; a constant or scheduled learning rate; nested dict / list / tuple trees;
  several steps), inertia on NumPy arrays and on MLX arrays gives MLX's parameters,
  velocities, step and learning rate bit for bit in float32. On torch tensors and JAX
  arrays it gives the NumPy numbers (float32 within 1 ulp, float64 within 1e-12). In
  float16 and bfloat16 all four libraries give MLX's numbers bit for bit.
* State. The layout is MLX's (keys, nesting, list and tuple containers, step and
  learning-rate dtypes), after ``init`` and after steps; superset parameters; the
  learning-rate setter; a callable learning rate sees step 0 first.
* ``update``: an ``mlx.nn`` model is updated as MLX updates it; plain nested containers
  in place.
* Pinned divergences. The first step is dampened (MLX) where torch.optim does not dampen
  it; an empty gradient tree is a no-op (MLX counts a step); setting the learning rate
  replaces a schedule (MLX's schedule overrides the set value at the next step).
* Pure use: under ``jax.jit`` and ``mx.compile``, state passed in and out gives the eager
  numbers.
* Errors: every rejected call names the culprit and leaves state and step untouched; the
  next valid step equals that of an optimizer that never saw the bad call.
"""

import collections
import copy
import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import load_backend, requires

from inertia import backend as backends
from inertia.mlx import SGD
from inertia.schedules import ExponentialDecay

SEEDS = range(30)
RATE_KINDS = ("constant", "cosine", "exponential", "step", "warmup_cosine")
STEP_DTYPES = {"numpy": "uint64", "mlx": "uint64", "torch": "int64", "jax": "uint64", "tensorflow": "uint64"}


# --- trees ---------------------------------------------------------------------------------
def map_tree(fn, tree):
    if isinstance(tree, dict):
        return {key: map_tree(fn, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [map_tree(fn, value) for value in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return fn(tree)


def to_numpy(array):
    return array if isinstance(array, np.ndarray) else backends.of(array).to_numpy(array)


def as_numpy(tree):
    return map_tree(to_numpy, tree)


def on_library(tree, library):
    """A copy of a NumPy tree as ``library``'s arrays (same dtypes)."""
    if library == "jax":
        load_backend("jax")  # float64 enabled
    convert = {
        "numpy": np.array,
        "mlx": lambda a: requires("mlx.core").array(a),
        "torch": lambda a: requires("torch").tensor(a),
        "jax": lambda a: requires("jax.numpy").asarray(a),
        "tensorflow": lambda a: requires("tensorflow").constant(a),
    }[library]
    return map_tree(lambda a: convert(np.array(a)), tree)


def assert_identical(actual, expected, where="tree"):
    """Same containers, keys (in order), dtypes, shapes and bits."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {type(actual).__name__}, expected a dict"
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual).__name__}, expected {type(expected).__name__}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{index}]")
    else:
        a, e = to_numpy(actual), to_numpy(expected)
        assert (a.dtype, a.shape) == (e.dtype, e.shape), f"{where}: {a.dtype}{a.shape} != {e.dtype}{e.shape}"
        if a.tobytes() != e.tobytes():
            ulps = np.abs(a.astype(np.float64) - e) / np.spacing(np.abs(e)) if e.dtype.kind == "f" else None
            raise AssertionError(f"{where}: not bitwise equal (ulps: {ulps}):\n{a}\n{e}")


def flatten(tree, path=()):
    """{path: leaf as NumPy}; dict keys sorted, as JAX returns them from jit."""
    if isinstance(tree, dict):
        return {k: v for key in sorted(tree, key=repr) for k, v in flatten(tree[key], path + (key,)).items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for index, item in enumerate(tree) for k, v in flatten(item, path + (index,)).items()}
    return {path: to_numpy(tree)}


def assert_close_trees(actual, expected, *, ulps=None, rtol=None, atol=0.0, where="tree"):
    """Same leaves (paths, dtypes, shapes), within ``ulps`` units in the last place, or
    ``rtol`` and ``atol``."""
    flat_actual, flat_expected = flatten(actual), flatten(expected)
    assert list(flat_actual) == list(flat_expected), where
    for path, e in flat_expected.items():
        a = flat_actual[path]
        assert (a.dtype, a.shape) == (e.dtype, e.shape), f"{where}{list(path)}: {a.dtype}{a.shape} != {e.dtype}{e.shape}"
        if ulps is not None:
            tolerance = ulps * np.spacing(np.maximum(np.abs(a), np.abs(e)))
            assert np.all(np.abs(a - e) <= tolerance), f"{where}{list(path)}: more than {ulps} ulp apart:\n{a}\n{e}"
        else:
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{where}{list(path)}")


def without_step(state):
    """The state less its step counter, whose dtype is the library's (int64 on torch)."""
    return {key: value for key, value in state.items() if key != "step"}


# --- schedules -------------------------------------------------------------------------------
def mlx_schedule(rate):
    """The learning rate ``rate`` describes, as MLX's own schedule functions."""
    optim = requires("mlx.optimizers")
    kind, *args = rate
    if kind == "constant":
        return args[0]
    if kind == "cosine":
        return optim.cosine_decay(*args)
    if kind == "exponential":
        return optim.exponential_decay(*args)
    if kind == "step":
        return optim.step_decay(*args)
    start, peak, warmup, decay_steps = args
    return optim.join_schedules(
        [optim.linear_schedule(start, peak, warmup), optim.cosine_decay(peak, decay_steps)], [warmup]
    )


def numpy_schedule(rate):
    """The same schedule written with NumPy float32 scalars, as MLX evaluates it in float32.

    Scalars, not 0-d arrays: NumPy's float32 ``**`` on arrays takes a vectorised path that
    is 1-2 ulp away from MLX's (and from NumPy's own scalar ``**``) at some steps.
    """
    f32 = np.float32
    kind, *args = rate

    def cosine(init, decay_steps, end=0.0):
        def schedule(step):
            s = f32(min(int(step), decay_steps))
            return f32(end) + f32(0.5) * (f32(1.0) + np.cos(f32(math.pi / decay_steps) * s)) * f32(init - end)

        return schedule

    if kind == "constant":
        return args[0]
    if kind == "cosine":
        return cosine(*args)
    if kind == "exponential":
        init, decay_rate = args
        return lambda step: f32(init) * f32(decay_rate) ** f32(int(step))
    if kind == "step":
        init, decay_rate, step_size = args
        return lambda step: f32(init) * f32(decay_rate) ** f32(int(step) // step_size)
    start, peak, warmup, decay_steps = args
    after_warmup = cosine(peak, decay_steps)

    def warmup_cosine(step):
        s = int(step)
        if s < warmup:
            return f32(min(s, warmup)) * f32((peak - start) / warmup) + f32(start)
        return after_warmup(s - warmup)

    return warmup_cosine


def schedule_for(rate, library):
    return mlx_schedule(rate) if library == "mlx" else numpy_schedule(rate)


# --- random scenarios ------------------------------------------------------------------------
@dataclass
class Scenario:
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    rate: tuple
    params: dict
    gradients: list

    @property
    def hyperparameters(self):
        return dict(momentum=self.momentum, dampening=self.dampening, weight_decay=self.weight_decay, nesterov=self.nesterov)


def draw_scenario(seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    uniform = lambda low, high: float(rng.uniform(low, high))  # noqa: E731
    momentum = float(rng.choice([0.0, 0.5, 0.9, uniform(0.01, 0.99)]))
    nesterov = bool(momentum > 0 and rng.random() < 0.4)
    dampening = 0.0 if nesterov or rng.random() < 0.5 else uniform(0.05, 0.9)
    weight_decay = float(rng.choice([0.0, 1e-4, uniform(0.0, 0.2)]))
    kind = RATE_KINDS[seed % len(RATE_KINDS)]
    rate = {
        "constant": lambda: ("constant", uniform(0.01, 0.5)),
        "cosine": lambda: ("cosine", uniform(0.05, 0.5), int(rng.integers(2, 8)), uniform(0.0, 0.01)),
        "exponential": lambda: ("exponential", uniform(0.05, 0.5), uniform(0.5, 0.99)),
        "step": lambda: ("step", uniform(0.05, 0.5), uniform(0.3, 0.9), int(rng.integers(1, 4))),
        "warmup_cosine": lambda: (
            "warmup_cosine", uniform(0.0, 0.05), uniform(0.1, 0.5), int(rng.integers(1, 4)), int(rng.integers(2, 6))
        ),
    }[kind]()

    def array(*shape):
        return np.asarray(rng.standard_normal(shape), dtype=dtype)

    size = lambda: int(rng.integers(1, 4))  # noqa: E731
    rows, cols = size(), size()
    params = {
        "encoder": {"kernel": array(rows, cols), "bias": array(cols)},
        "layers": [{"w": array(size())}, array(size(), 2)],
        "scale": array(),
    }
    if rng.random() < 0.4:
        params["pair"] = (array(2), array(size()))
    steps = int(rng.integers(3, 7))
    gradients = [map_tree(lambda p: array(*p.shape), params) for _ in range(steps)]
    return Scenario(momentum, dampening, weight_decay, nesterov, rate, params, gradients)


@functools.lru_cache(maxsize=None)
def run_mlx_reference(seed):
    """MLX's SGD on MLX arrays: (parameters, state) as NumPy trees."""
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    scenario = draw_scenario(seed)
    optimizer = optim.SGD(mlx_schedule(scenario.rate), **scenario.hyperparameters)
    params = on_library(scenario.params, "mlx")
    for grads in scenario.gradients:
        params = optimizer.apply_gradients(on_library(grads, "mlx"), params)
        mx.eval(params, optimizer.state)
    return as_numpy(params), as_numpy(optimizer.state)


@functools.lru_cache(maxsize=None)
def run_inertia(seed, library, dtype="float32"):
    """inertia.mlx.SGD on ``library``'s arrays: (parameters, state) as NumPy trees."""
    scenario = draw_scenario(seed, dtype)
    optimizer = SGD(schedule_for(scenario.rate, library), **scenario.hyperparameters)
    params = on_library(scenario.params, library)
    for grads in scenario.gradients:
        params = optimizer.apply_gradients(on_library(grads, library), params)
    libraries = set()
    map_tree(lambda leaf: libraries.add(backends.of(leaf).name), [params, optimizer.state])
    assert libraries == {library}, "parameters, velocities and counters all on the parameters' library"
    return as_numpy(params), as_numpy(optimizer.state)


# --- 1. bitwise equality with MLX ---------------------------------------------------------------
@pytest.mark.parametrize("library", ["numpy", "mlx"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_scenario_gives_mlx_numbers_bit_for_bit(seed, library):
    expected_params, expected_state = run_mlx_reference(seed)
    params, state = run_inertia(seed, library)
    assert_identical(params, expected_params, f"{library} parameters")
    assert_identical(state, expected_state, f"{library} state")
    assert int(state["step"]) == len(draw_scenario(seed).gradients)


def test_numpy_schedules_give_mlx_rates_bit_for_bit():
    """The NumPy formulas used above are MLX's schedules, so NumPy runs see MLX's rates."""
    mx = requires("mlx.core")
    rates = {draw_scenario(seed).rate for seed in SEEDS} | {
        ("exponential", 0.1, 0.93),
        ("warmup_cosine", 0.0, 0.3, 4, 9),
    }
    for rate in rates:
        if rate[0] == "constant":
            continue
        reference, ours = mlx_schedule(rate), numpy_schedule(rate)
        for step in range(40):
            expected = np.array(reference(mx.array(step, dtype=mx.uint64)))
            got = np.asarray(ours(np.array(step, dtype=np.uint64)))
            assert (got.dtype, got.tobytes()) == (expected.dtype, expected.tobytes()), (rate, step, got, expected)


def test_the_random_scenarios_cover_every_feature():
    scenarios = [draw_scenario(seed) for seed in SEEDS]
    drawn = {
        "plain SGD (momentum 0)": any(s.momentum == 0 for s in scenarios),
        "dampening without momentum": any(s.momentum == 0 and s.dampening > 0 for s in scenarios),
        "heavy-ball momentum": any(s.momentum > 0 and not s.nesterov for s in scenarios),
        "Nesterov": any(s.nesterov for s in scenarios),
        "dampening with momentum": any(s.momentum > 0 and s.dampening > 0 for s in scenarios),
        "Nesterov with weight decay": any(s.nesterov and s.weight_decay > 0 for s in scenarios),
        "weight decay": any(s.weight_decay > 0 for s in scenarios),
        "no weight decay": any(s.weight_decay == 0 for s in scenarios),
        "tuple in the tree": any("pair" in s.params for s in scenarios),
        "0-d parameter": all(s.params["scale"].shape == () for s in scenarios),
        "several steps": all(len(s.gradients) >= 3 for s in scenarios),
        **{f"rate {kind}": any(s.rate[0] == kind for s in scenarios) for kind in RATE_KINDS},
    }
    missing = [feature for feature, seen in drawn.items() if not seen]
    assert not missing, f"never drawn: {missing}"


# --- 2. torch and JAX equal NumPy -------------------------------------------------------------
# Eager JAX compiles every operation anew for each shape (~0.3 s a scenario): every fourth
# seed, which still draws every kind of learning rate.
TORCH_AND_JAX_RUNS = (
    [(seed, "torch") for seed in SEEDS] + [(seed, "jax") for seed in SEEDS[::4]] + [(seed, "tensorflow") for seed in SEEDS[::4]]
)


@pytest.mark.parametrize("seed, library", TORCH_AND_JAX_RUNS)
def test_torch_and_jax_float32_equal_numpy_within_one_ulp(seed, library):
    load_backend(library)
    expected_params, expected_state = run_inertia(seed, "numpy")
    params, state = run_inertia(seed, library)
    assert_close_trees(params, expected_params, ulps=1, where=f"{library} parameters")
    assert_close_trees(without_step(state), without_step(expected_state), ulps=1, where=f"{library} state")
    assert str(state["step"].dtype) == STEP_DTYPES[library]
    assert int(state["step"]) == int(expected_state["step"])


@pytest.mark.parametrize("seed, library", [(seed, "torch") for seed in SEEDS[:10]] + [(seed, "jax") for seed in (0, 6)])
def test_torch_and_jax_float64_equal_numpy(seed, library):
    load_backend(library)
    expected_params, expected_state = run_inertia(seed, "numpy", "float64")
    params, state = run_inertia(seed, library, "float64")
    assert params["scale"].dtype == np.float64
    assert_close_trees(params, expected_params, rtol=1e-12, where=f"{library} parameters")
    assert_close_trees(without_step(state), without_step(expected_state), rtol=1e-12, where=f"{library} state")


def in_low_precision(tree, library, dtype):
    """A float32 NumPy tree as ``library``'s arrays of ``dtype`` (float16 or bfloat16)."""
    if library == "numpy":
        numpy_dtype = requires("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.float16
        return map_tree(lambda a: a.astype(numpy_dtype), tree)
    if library == "mlx":
        mx = requires("mlx.core")
        return map_tree(lambda a: mx.array(a).astype(getattr(mx, dtype)), tree)
    if library == "torch":
        torch = requires("torch")
        return map_tree(lambda a: torch.tensor(a).to(getattr(torch, dtype)), tree)
    return map_tree(lambda a: a.astype(dtype), on_library(tree, "jax"))


@pytest.mark.parametrize("library", ["numpy", "mlx", "torch", "jax"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gives_mlx_numbers_bit_for_bit(dtype, library):
    """MLX rounds its Python-float hyperparameters to the array's dtype; so does inertia,
    where NumPy's bfloat16 would promote them to float32 and torch would multiply in float32."""
    optim = requires("mlx.optimizers")
    rng = np.random.default_rng(5)
    params = {"w": rng.standard_normal(300).astype(np.float32), "b": [rng.standard_normal(7).astype(np.float32)]}
    grads = [map_tree(lambda p: rng.standard_normal(p.shape).astype(np.float32), params) for _ in range(4)]
    for hyper in [
        dict(momentum=0.9, weight_decay=0.01),
        dict(momentum=0.7, dampening=0.3),
        dict(momentum=0.8, nesterov=True, weight_decay=0.003),
        dict(weight_decay=0.05),
    ]:
        reference, optimizer = optim.SGD(0.1234, **hyper), SGD(0.1234, **hyper)
        expected, result = in_low_precision(params, "mlx", dtype), in_low_precision(params, library, dtype)
        for g in grads:
            expected = reference.apply_gradients(in_low_precision(g, "mlx", dtype), expected)
            result = optimizer.apply_gradients(in_low_precision(g, library, dtype), result)
        velocities = [{key: opt.state[key] for key in params} for opt in (optimizer, reference)]
        for name, ours, theirs in [("parameters", result, expected), ("velocities", *velocities)]:
            ours, theirs = flatten(ours), flatten(theirs)
            assert {str(a.dtype) for a in ours.values()} == {str(a.dtype) for a in theirs.values()} == {dtype}, (hyper, name)
            for path in theirs:
                np.testing.assert_array_equal(
                    ours[path].astype(np.float32), theirs[path].astype(np.float32), err_msg=f"{hyper} {name} {path}"
                )


# --- 3. state layout, superset parameters, the learning rate ------------------------------------
def nested_params():
    rng = np.random.default_rng(7)
    array = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "w": array(3, 2),
        "layers": [{"kernel": array(2, 2), "bias": array(2)}, array(4)],
        "pair": (array(1), array(2)),
    }


def nested_gradients(seed):
    rng = np.random.default_rng(seed)
    return map_tree(lambda p: rng.standard_normal(p.shape).astype(np.float32), nested_params())


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_state_layout_is_mlxs_after_init_and_after_steps(library):
    optim = requires("mlx.optimizers")
    reference = optim.SGD(0.1, momentum=0.9)
    reference.init(on_library(nested_params(), "mlx"))
    optimizer = SGD(0.1, momentum=0.9)
    optimizer.init(on_library(nested_params(), library))

    assert list(optimizer.state) == ["step", "learning_rate", "w", "layers", "pair"]
    assert isinstance(optimizer.state["layers"], list) and isinstance(optimizer.state["pair"], tuple)
    assert np.all(to_numpy(optimizer.state["layers"][0]["kernel"]["v"]) == 0)
    assert_identical(optimizer.state, reference.state, f"{library} state after init")

    params, reference_params = on_library(nested_params(), library), on_library(nested_params(), "mlx")
    for seed in range(3):
        params = optimizer.apply_gradients(on_library(nested_gradients(seed), library), params)
        reference_params = reference.apply_gradients(on_library(nested_gradients(seed), "mlx"), reference_params)
    assert_identical(optimizer.state, reference.state, f"{library} state after 3 steps")
    assert_identical(params, reference_params, f"{library} parameters after 3 steps")


@pytest.mark.parametrize("library", ["numpy", "mlx", "torch", "jax"])
def test_counters_move_to_the_parameters_library_with_mlx_dtypes(library):
    """Step uint64 (int64 on torch, which cannot add uint64), learning rate float32."""
    optimizer = SGD(0.1, momentum=0.5)
    assert str(optimizer.step.dtype) == "uint64" and int(optimizer.step) == 0  # on NumPy until params are seen
    params = on_library({"w": np.ones(3, np.float32)}, library)
    optimizer.init(params)
    for name in ("step", "learning_rate"):
        assert backends.of(optimizer.state[name]).name == library, name
    assert str(optimizer.step.dtype).rsplit(".", 1)[-1] == STEP_DTYPES[library]
    assert str(optimizer.learning_rate.dtype).rsplit(".", 1)[-1] == "float32"
    for _ in range(2):
        params = optimizer.apply_gradients(on_library({"w": np.ones(3, np.float32)}, library), params)
    assert int(optimizer.step) == 2 and str(optimizer.step.dtype).rsplit(".", 1)[-1] == STEP_DTYPES[library]
    lr = np.float32(0.1)
    np.testing.assert_array_equal(to_numpy(params["w"]), np.full(3, np.float32(1) - lr - lr * np.float32(1.5)))


def test_jax_without_x64_counts_steps_in_uint32():
    jax = requires("jax")
    load_backend("jax")
    jax.config.update("jax_enable_x64", False)
    try:
        optimizer = SGD(0.1)
        optimizer.apply_gradients({"w": jax.numpy.ones(2)}, {"w": jax.numpy.ones(2)})
        assert str(optimizer.step.dtype) == "uint32" and int(optimizer.step) == 1
    finally:
        jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_superset_parameters_leave_frozen_parts_out_as_mlx(library):
    optim = requires("mlx.optimizers")
    params = {
        "trained": np.arange(3, dtype=np.float32),
        "frozen": np.ones(2, np.float32),
        "layers": [np.ones(2, np.float32), np.zeros(1, np.float32)],
    }
    grads = {"trained": np.full(3, 0.5, np.float32), "layers": [np.full(2, -1.0, np.float32)]}
    reference = optim.SGD(0.25, momentum=0.75, weight_decay=0.01)
    optimizer = SGD(0.25, momentum=0.75, weight_decay=0.01)
    for _ in range(2):
        expected = reference.apply_gradients(on_library(grads, "mlx"), on_library(params, "mlx"))
        result = optimizer.apply_gradients(on_library(grads, library), on_library(params, library))
    assert list(result) == ["trained", "layers"] and len(result["layers"]) == 1
    assert "frozen" not in optimizer.state
    assert_identical(result, expected, "result")
    assert_identical(optimizer.state, reference.state, "state")


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_learning_rate_setter_mid_training_matches_mlx(library):
    optim = requires("mlx.optimizers")
    reference = optim.SGD(0.1, momentum=0.9, dampening=0.2)
    optimizer = SGD(0.1, momentum=0.9, dampening=0.2)
    params, reference_params = on_library(nested_params(), library), on_library(nested_params(), "mlx")
    for seed in range(5):
        if seed == 2:
            reference.learning_rate = 0.0301
            optimizer.learning_rate = 0.0301
            assert_identical(optimizer.learning_rate, reference.learning_rate, "rate just set")
        params = optimizer.apply_gradients(on_library(nested_gradients(seed), library), params)
        reference_params = reference.apply_gradients(on_library(nested_gradients(seed), "mlx"), reference_params)
    assert float(to_numpy(optimizer.learning_rate)) == np.float32(0.0301)
    assert_identical(params, reference_params, "parameters")
    assert_identical(optimizer.state, reference.state, "state")


def test_setting_the_rate_replaces_a_schedule_where_mlx_keeps_the_schedule():
    """Pinned divergence: MLX's setter writes the rate but its schedule overwrites it at the
    next step; inertia's setter drops the schedule, so the set rate stays."""
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    reference = optim.SGD(optim.exponential_decay(0.2, 0.5))
    optimizer = SGD(numpy_schedule(("exponential", 0.2, 0.5)))
    grads = {"w": np.ones(1, np.float32)}
    reference.apply_gradients(on_library(grads, "mlx"), on_library(grads, "mlx"))
    optimizer.apply_gradients(grads, grads)
    reference.learning_rate = 0.05
    optimizer.learning_rate = 0.05
    mlx_w = reference.apply_gradients(on_library(grads, "mlx"), on_library(grads, "mlx"))["w"]
    our_w = optimizer.apply_gradients(grads, grads)["w"]
    assert float(reference.learning_rate) == np.float32(0.1)  # schedule(1) = 0.2 * 0.5
    assert float(to_numpy(optimizer.learning_rate)) == np.float32(0.05)
    assert float(mx.array(mlx_w)[0]) == np.float32(1) - np.float32(0.1)
    assert our_w[0] == np.float32(1) - np.float32(0.05)


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_a_callable_rate_sees_step_zero_first_as_in_mlx(library):
    optim = requires("mlx.optimizers")

    def recording(seen, as_rate):
        def schedule(step):
            seen.append(int(step))
            return as_rate(0.5 / (1 + int(step)))

        return schedule

    ours, theirs = [], []
    optimizer = SGD(recording(ours, float))
    reference = optim.SGD(recording(theirs, requires("mlx.core").array))
    assert ours == theirs == [0]  # both ask for the rate of step 1 at construction
    w = on_library({"w": np.zeros(1, np.float32)}, library)
    for _ in range(3):
        w = optimizer.apply_gradients(on_library({"w": np.ones(1, np.float32)}, library), w)
        reference.apply_gradients(on_library({"w": np.ones(1, np.float32)}, "mlx"), {"w": requires("mlx.core").zeros(1)})
    assert ours == theirs == [0, 0, 1, 2]
    expected = -(np.float32(0.5) + np.float32(0.25)) - np.float32(0.5 / 3)  # schedule(0) drove step 1
    assert to_numpy(w["w"])[0] == expected


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_top_level_list_is_accepted_with_state_keyed_by_index(library):
    """An extension over MLX: the numbers are MLX's for a dict keyed 0, 1, ..."""
    optim = requires("mlx.optimizers")
    params = [np.ones(2, np.float32), np.full(3, 2.0, np.float32)]
    grads = [np.full(2, 0.5, np.float32), np.full(3, -0.25, np.float32)]
    reference = optim.SGD(0.1, momentum=0.9, nesterov=True)
    optimizer = SGD(0.1, momentum=0.9, nesterov=True)
    ours, theirs = on_library(params, library), on_library(dict(enumerate(params)), "mlx")
    for _ in range(3):
        ours = optimizer.apply_gradients(on_library(grads, library), ours)
        theirs = reference.apply_gradients(on_library(dict(enumerate(grads)), "mlx"), theirs)
    assert isinstance(ours, list)
    assert_identical(dict(enumerate(ours)), theirs, "parameters")
    assert_identical(optimizer.state, reference.state, "state")


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_named_tuples_in_the_tree_are_kept_as_mlx_keeps_them(library):
    optim = requires("mlx.optimizers")
    Pair = collections.namedtuple("Pair", "first second")
    params = {"pair": Pair(np.ones(2, np.float32), np.full(1, 3.0, np.float32))}
    grads = {"pair": Pair(np.full(2, 0.5, np.float32), np.full(1, -1.0, np.float32))}
    reference, optimizer = optim.SGD(0.1, momentum=0.9), SGD(0.1, momentum=0.9)
    expected, result = on_library(params, "mlx"), on_library(params, library)
    for _ in range(2):
        expected = reference.apply_gradients(on_library(grads, "mlx"), expected)
        result = optimizer.apply_gradients(on_library(grads, library), result)
    assert type(result["pair"]) is Pair
    assert_identical(result, expected, "parameters")
    assert_identical(optimizer.state, reference.state, "state")


def test_parameters_added_later_inside_a_list_get_fresh_state():
    """Beyond MLX (which initialises once): state grows with the tree, containers kept."""
    optimizer = SGD(0.5, momentum=0.9)
    optimizer.init({"layers": [np.ones(2, np.float32)], "pair": (np.ones(1, np.float32),)})
    params = {"layers": [np.ones(2, np.float32), np.ones(3, np.float32)], "pair": (np.ones(1, np.float32),) * 2}
    grads = map_tree(lambda p: np.full(p.shape, 0.25, np.float32), params)
    optimizer.apply_gradients(grads, params)
    result = optimizer.apply_gradients(grads, params)
    assert isinstance(optimizer.state["layers"], list) and isinstance(optimizer.state["pair"], tuple)
    assert len(optimizer.state["layers"]) == 2 and len(optimizer.state["pair"]) == 2
    velocity = np.float32(0.9) * np.float32(0.25) + np.float32(0.25)  # v2 = m*v1 + g, v1 = g
    np.testing.assert_array_equal(optimizer.state["layers"][1]["v"], np.full(3, velocity))
    np.testing.assert_array_equal(result["pair"][1], np.full(1, np.float32(1) - np.float32(0.5) * velocity))


def test_empty_gradients_are_a_no_op_where_mlx_counts_a_step():
    """Pinned deliberate deviation (SPEC: "apply([]) is a silent no-op")."""
    optim = requires("mlx.optimizers")
    reference = optim.SGD(optim.exponential_decay(0.1, 0.5))
    optimizer = SGD(numpy_schedule(("exponential", 0.1, 0.5)), momentum=0.9)
    optimizer.apply_gradients({"w": np.ones(2, np.float32)}, {"w": np.ones(2, np.float32)})
    before = copy.deepcopy(optimizer.state)
    assert optimizer.apply_gradients({}, {"w": np.ones(2, np.float32)}) == {}
    assert optimizer.apply_gradients([], []) == []
    assert_identical(optimizer.state, before, "state")
    reference.update({}, {})
    assert int(reference.step) == 1


# --- 4. update() ---------------------------------------------------------------------------------
def test_update_of_an_mlx_module_matches_mlx():
    mx, nn, optim = requires("mlx.core"), requires("mlx.nn"), requires("mlx.optimizers")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(3, 4), nn.Linear(4, 2)]
            self.gain = mx.array([1.5, -0.5])

        def __call__(self, x):
            for layer in self.layers:
                x = nn.relu(layer(x)) if layer is not self.layers[-1] else layer(x)
            return x * self.gain

    mx.random.seed(3)
    ours, theirs = Net(), Net()
    theirs.update(ours.parameters())
    x, y = mx.random.normal((8, 3)), mx.random.normal((8, 2))

    def loss(model):
        return mx.mean((model(x) - y) ** 2)

    initial_loss = float(loss(ours))
    optimizer = SGD(0.05, momentum=0.9, weight_decay=1e-3)
    reference = optim.SGD(0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(4):
        optimizer.update(ours, nn.value_and_grad(ours, loss)(ours)[1])
        reference.update(theirs, nn.value_and_grad(theirs, loss)(theirs)[1])
        mx.eval(ours.parameters(), theirs.parameters(), optimizer.state, reference.state)
    assert_identical(ours.parameters(), theirs.parameters(), "module parameters")
    assert_identical(optimizer.state, reference.state, "state")
    assert isinstance(optimizer.state["layers"], list)
    assert float(loss(ours)) < initial_loss  # it trained


def test_update_of_an_mlx_linear_matches_mlx():
    mx, nn, optim = requires("mlx.core"), requires("mlx.nn"), requires("mlx.optimizers")
    ours, theirs = nn.Linear(2, 3), nn.Linear(2, 3)
    theirs.update(ours.parameters())
    grads = {"weight": mx.ones((3, 2)), "bias": mx.array([1.0, -2.0, 0.5])}
    optimizer, reference = SGD(0.1, momentum=0.5, dampening=0.5), optim.SGD(0.1, momentum=0.5, dampening=0.5)
    for _ in range(2):
        optimizer.update(ours, grads)
        reference.update(theirs, grads)
    assert_identical(ours.parameters(), theirs.parameters(), "linear")


@pytest.mark.parametrize("library", ["numpy", "mlx"])
def test_update_of_plain_nested_containers_is_in_place(library):
    f32 = lambda value, size: np.full(size, value, np.float32)  # noqa: E731
    params = on_library({"a": f32(1, 2), "sub": [f32(0, 3), {"b": f32(4, 1)}], "frozen": f32(1, 1)}, library)
    grads = on_library({"a": f32(0.5, 2), "sub": [f32(1, 3), {"b": f32(-1, 1)}]}, library)
    sub, inner, frozen = params["sub"], params["sub"][1], params["frozen"]
    twin = SGD(0.1, momentum=0.9)
    expected = twin.apply_gradients(grads, params)
    optimizer = SGD(0.1, momentum=0.9)
    assert optimizer.update(params, grads) is None
    assert params["sub"] is sub and params["sub"][1] is inner and params["frozen"] is frozen
    assert_identical({"a": params["a"], "sub": params["sub"]}, expected, "updated in place")
    assert to_numpy(params["sub"][1]["b"])[0] == np.float32(4.0) + np.float32(0.1)


# --- 5. the first step against torch.optim.SGD ----------------------------------------------------
def torch_sgd_run(w0, grads, **hyperparameters):
    torch = requires("torch")
    w = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch.optim.SGD([w], **hyperparameters)
    trajectory = []
    for g in grads:
        w.grad = torch.tensor(g)
        optimizer.step()
        trajectory.append(w.detach().numpy().copy())
    return trajectory


def inertia_mlx_run(w0, grads, lr, **hyperparameters):
    optimizer = SGD(lr, **hyperparameters)
    params, trajectory = {"w": w0.copy()}, []
    for g in grads:
        params = optimizer.apply_gradients({"w": g}, params)
        trajectory.append(params["w"])
    return trajectory


LR = 0.125  # exact in float32: MLX keeps the rate in float32, torch as a Python float


def test_mlx_dampens_the_first_step_and_torch_does_not():
    rng = np.random.default_rng(11)
    w0, grads = rng.standard_normal(4), [rng.standard_normal(4) for _ in range(3)]
    hyper = dict(momentum=0.9, dampening=0.3)
    ours = inertia_mlx_run(w0, grads, LR, **hyper)
    torchs = torch_sgd_run(w0, grads, lr=LR, **hyper)
    np.testing.assert_allclose(ours[0], w0 - LR * 0.7 * grads[0], rtol=1e-12)  # v1 = (1-d) g
    np.testing.assert_allclose(torchs[0], w0 - LR * grads[0], rtol=1e-12)  # b1 = g
    for step, (a, b) in enumerate(zip(ours, torchs)):
        assert np.max(np.abs(a - b)) > 1e-3, f"step {step + 1}: the two should differ"


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_without_dampening_mlx_and_torch_agree(nesterov, weight_decay):
    rng = np.random.default_rng(12)
    w0, grads = rng.standard_normal(5), [rng.standard_normal(5) for _ in range(6)]
    hyper = dict(momentum=0.875, weight_decay=weight_decay, nesterov=nesterov)
    ours = inertia_mlx_run(w0, grads, LR, **hyper)
    torchs = torch_sgd_run(w0, grads, lr=LR, **hyper)
    assert ours[0].dtype == np.float64
    for a, b in zip(ours, torchs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# --- 6. pure use under jax.jit and mx.compile -------------------------------------------------
def pure_step(optimizer):
    """(state, params, grads) -> (new params, new state): the state goes in and out."""

    def step(state, params, grads):
        optimizer.state = state
        params = optimizer.apply_gradients(grads, params)
        return params, optimizer.state

    return step


@pytest.mark.parametrize("rate, dtype", [("constant", "float32"), ("schedule", "float64")])
def test_jax_jit_with_state_passed_through_equals_eager(rate, dtype):
    jax = requires("jax")
    load_backend("jax")
    scenario = draw_scenario(3, dtype)
    learning_rate = (lambda: ExponentialDecay(0.2, 2, 0.7)) if rate == "schedule" else (lambda: 0.15)
    hyper = dict(momentum=0.9, weight_decay=0.01, dampening=0.1)
    eager, pure = SGD(learning_rate(), **hyper), SGD(learning_rate(), **hyper)
    eager_params = pure_params = on_library(scenario.params, "jax")
    pure.init(pure_params)
    state, jitted = pure.state, jax.jit(pure_step(pure))
    for grads in scenario.gradients:
        grads = on_library(grads, "jax")
        eager_params = eager.apply_gradients(grads, eager_params)
        pure_params, state = jitted(state, pure_params, grads)
    assert int(state["step"]) == len(scenario.gradients) and isinstance(state["layers"], list)
    # Not bit for bit: XLA:CPU contracts each `y + a*x` of the jitted rule into one fused
    # multiply-add (one rounding) where eager JAX rounds twice, as MLX does; so the jitted
    # numbers sit within rounding of the operands (~1), not of a small result.
    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-15)
    assert_close_trees(pure_params, eager_params, where="jit parameters", **tolerance)
    assert_close_trees(state, eager.state, where="jit state", **tolerance)


def test_mx_compile_with_state_passed_through_equals_eager():
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    scenario = draw_scenario(4)
    rate = ("cosine", 0.3, 4, 0.01)
    hyper = dict(momentum=0.8, nesterov=True, weight_decay=0.02)
    eager, pure = SGD(mlx_schedule(rate), **hyper), SGD(mlx_schedule(rate), **hyper)
    reference = optim.SGD(mlx_schedule(rate), **hyper)
    eager_params = pure_params = reference_params = on_library(scenario.params, "mlx")
    pure.init(pure_params)
    state, compiled = pure.state, mx.compile(pure_step(pure))
    for grads in scenario.gradients:
        grads = on_library(grads, "mlx")
        eager_params = eager.apply_gradients(grads, eager_params)
        reference_params = reference.apply_gradients(grads, reference_params)
        pure_params, state = compiled(state, pure_params, grads)
    mx.eval(pure_params, state)
    assert int(state["step"]) == len(scenario.gradients)
    assert_identical(eager_params, reference_params, "eager parameters")
    assert_identical(pure_params, eager_params, "compiled parameters")
    assert_identical(state, eager.state, "compiled state")


@pytest.mark.parametrize("init", [False, True], ids=["lazy", "init first"])
def test_mx_compile_with_the_state_captured_advances_step_and_rate_as_mlx(init):
    """``mx.compile(step, inputs=opt.state, outputs=opt.state)``: the step counter and a
    scheduled learning rate are MLX arrays of the state, advanced inside the compiled
    function exactly as mlx.optimizers.SGD advances its own."""
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    schedule = lambda: optim.cosine_decay(0.3, 6)  # noqa: E731
    results = []
    for cls in (optim.SGD, SGD):
        optimizer = cls(schedule(), momentum=0.9, weight_decay=0.01)
        params = {"w": mx.array([1.0, -2.0, 0.5]), "layers": [{"b": mx.array([0.25])}]}
        if init:
            optimizer.init(params)
        compiled = mx.compile(lambda p, g: optimizer.apply_gradients(g, p), inputs=optimizer.state, outputs=optimizer.state)
        rates, steps = [], []
        for k in range(5):
            grads = {"w": mx.array([0.5, -0.5, 1.0]) * (k + 1), "layers": [{"b": mx.array([2.0])}]}
            params = compiled(params, grads)
            mx.eval(params, optimizer.state)
            assert isinstance(optimizer.step, mx.array) and isinstance(optimizer.learning_rate, mx.array)
            steps.append(int(optimizer.step))
            rates.append(float(optimizer.learning_rate))
        results.append((params, optimizer.state, steps, rates))
    (reference_params, reference_state, reference_steps, reference_rates), (params, state, steps, rates) = results
    assert steps == reference_steps == [1, 2, 3, 4, 5]
    assert rates == reference_rates and len(set(rates)) == 5  # the rate follows the schedule
    assert_identical(params, reference_params, "compiled parameters")
    assert_identical(state, reference_state, "compiled state")


# --- 7. errors, atomically ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        (dict(learning_rate=-0.1), ValueError, ["`learning_rate`", "-0.1"]),
        (dict(learning_rate=float("nan")), ValueError, ["`learning_rate`", "nan"]),
        (dict(learning_rate=float("inf")), ValueError, ["`learning_rate`", "inf"]),
        (dict(learning_rate="0.1"), TypeError, ["`learning_rate`", "'0.1'"]),
        (dict(learning_rate=np.ones(2)), TypeError, ["`learning_rate`", "array"]),
        (dict(learning_rate=None), TypeError, ["`learning_rate`", "None"]),
        (dict(learning_rate=0.1, momentum=-0.9), ValueError, ["`momentum`", "-0.9"]),
        (dict(learning_rate=0.1, momentum=float("inf")), ValueError, ["`momentum`", "inf"]),
        (dict(learning_rate=0.1, momentum="0.9"), TypeError, ["`momentum`", "'0.9'"]),
        (dict(learning_rate=0.1, momentum=True), TypeError, ["`momentum`", "True"]),
        (dict(learning_rate=0.1, weight_decay=-1e-4), ValueError, ["`weight_decay`", "-0.0001"]),
        (dict(learning_rate=0.1, weight_decay=float("nan")), ValueError, ["`weight_decay`", "nan"]),
        (dict(learning_rate=0.1, dampening=-0.5), ValueError, ["`dampening`", "-0.5"]),
        (dict(learning_rate=0.1, nesterov=True), ValueError, ["Nesterov", "momentum=0.0"]),
        (dict(learning_rate=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, ["Nesterov", "dampening=0.1"]),
        (dict(learning_rate=0.1, momentum=0.9, nesterov="yes"), TypeError, ["`nesterov`", "'yes'"]),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, error, fragments):
    with pytest.raises(error) as info:
        SGD(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def trained(learning_rate=0.1):
    """An optimizer two steps into training, a twin for comparison, parameters, gradients."""
    params = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32), "new": np.ones(1, np.float32)}
    grads = {"w": np.full((2, 2), 0.5, np.float32), "b": np.ones(2, np.float32)}
    optimizers = [SGD(learning_rate, momentum=0.9, weight_decay=0.01) for _ in range(2)]
    for optimizer in optimizers:
        for _ in range(2):
            optimizer.apply_gradients(grads, params)
    return optimizers[0], optimizers[1], params, grads


def ones(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


def as_torch(array):
    return requires("torch").tensor(array)


GOOD_PARAMS = {"w": ones(2, 2), "b": ones(2), "new": ones(1)}
# name -> (a function building the bad call's (gradients, parameters), error, message fragment)
BAD_CALLS = {
    "gradient not an array": (lambda: ({"w": ones(2, 2), "b": 0.5}, GOOD_PARAMS), TypeError, "['b'] must be an array"),
    "gradient a string": (lambda: ({"w": ones(2, 2), "b": "g"}, GOOD_PARAMS), TypeError, "['b'] must be an array"),
    "gradient of another library": (
        lambda: ({"w": ones(2, 2), "b": as_torch(ones(2))}, GOOD_PARAMS),
        TypeError,
        "torch array but the parameter is on numpy",
    ),
    "integer gradient": (
        lambda: ({"w": ones(2, 2), "b": ones(2, dtype=np.int32)}, GOOD_PARAMS),
        TypeError,
        "dtype int32",
    ),
    "bool gradient": (lambda: ({"w": ones(2, 2), "b": ones(2, dtype=bool)}, GOOD_PARAMS), TypeError, "dtype bool"),
    "complex gradient": (
        lambda: ({"w": ones(2, 2), "b": ones(2, dtype=np.complex64)}, GOOD_PARAMS),
        TypeError,
        "dtype complex64",
    ),
    "shape mismatch": (
        lambda: ({"w": ones(2, 2), "b": ones(3)}, GOOD_PARAMS),
        ValueError,
        "shape (3,) but the parameter has shape (2,)",
    ),
    "path missing in parameters": (
        lambda: ({"w": ones(2, 2), "extra": ones(2)}, GOOD_PARAMS),
        ValueError,
        "no entry at ['extra']",
    ),
    "nested path missing": (
        lambda: ({"w": ones(2, 2), "b": [ones(2)]}, {"w": ones(2, 2), "b": {"x": ones(2)}}),
        ValueError,
        "no entry at ['b'][0]",
    ),
    "path missing above a nested leaf: the missing key named": (
        lambda: ({"w": ones(2, 2), "deep": {"inner": [ones(2)]}}, GOOD_PARAMS),
        ValueError,
        "no entry at ['deep']",
    ),
    "integer parameter": (
        lambda: ({"w": ones(2, 2), "b": ones(2)}, {"w": ones(2, 2), "b": ones(2, dtype=np.int64)}),
        TypeError,
        "must be floating-point",
    ),
    "parameter not an array": (
        lambda: ({"w": ones(2, 2), "b": ones(2)}, {"w": ones(2, 2), "b": [1.0, 1.0]}),
        TypeError,
        "must hold arrays",
    ),
    "mixed libraries among parameters": (
        lambda: ({"w": ones(2, 2), "b": ones(2)}, {"w": ones(2, 2), "b": as_torch(ones(2))}),
        ValueError,
        "one array library",
    ),
    "a new parameter beside a bad one": (
        lambda: ({"new": ones(1), "b": ones(5)}, GOOD_PARAMS),
        ValueError,
        "shape (5,)",
    ),
    "a bare array": (lambda: (ones(2), ones(2)), TypeError, "bare array"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_rejected_apply_gradients_changes_nothing(case):
    build, error, fragment = BAD_CALLS[case]
    gradients, parameters = build()
    optimizer, twin, params, grads = trained()
    before = copy.deepcopy(optimizer.state)
    with pytest.raises(error) as info:
        optimizer.apply_gradients(gradients, parameters)
    assert fragment in str(info.value)
    assert_identical(optimizer.state, before, "state after the rejected call")
    assert int(optimizer.step) == 2 and "new" not in optimizer.state
    # and the next good step is the one an optimizer that never saw the bad call takes
    assert_identical(optimizer.apply_gradients(grads, params), twin.apply_gradients(grads, params), "next step")
    assert_identical(optimizer.state, twin.state, "state after the next step")


def test_rejected_calls_on_a_fresh_optimizer_leave_its_counters_where_they_were():
    mx = requires("mlx.core")
    optimizer = SGD(0.1, momentum=0.9)
    for call in (
        lambda: optimizer.apply_gradients(mx.ones(2), mx.ones(2)),
        lambda: optimizer.init(mx.ones(2)),
        lambda: optimizer.apply_gradients({"w": mx.ones(2, dtype=mx.int32)}, {"w": mx.ones(2)}),
    ):
        with pytest.raises(TypeError):
            call()
        assert list(optimizer.state) == ["step", "learning_rate"]
        assert isinstance(optimizer.step, np.ndarray) and isinstance(optimizer.learning_rate, np.ndarray)


def test_rejected_update_changes_neither_model_nor_state():
    optimizer, twin, params, grads = trained()
    model = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    saved_model, saved_state = copy.deepcopy(model), copy.deepcopy(optimizer.state)
    with pytest.raises(ValueError, match="shape"):
        optimizer.update(model, {"w": np.ones((2, 2), np.float32), "b": np.ones(3, np.float32)})
    assert_identical(model, saved_model, "model")
    assert_identical(optimizer.state, saved_state, "state")


@pytest.mark.parametrize(
    "value, error",
    [(-0.1, ValueError), (float("nan"), ValueError), ("fast", TypeError), (np.ones(2, np.float32), TypeError), (None, TypeError)],
)
def test_rejected_learning_rate_keeps_the_rate_and_the_schedule(value, error):
    schedule = numpy_schedule(("exponential", 0.2, 0.5))
    optimizer, twin, params, grads = trained(learning_rate=schedule)
    before = copy.deepcopy(optimizer.state)
    with pytest.raises(error, match="learning_rate"):
        optimizer.learning_rate = value
    assert_identical(optimizer.state, before, "state")
    optimizer.apply_gradients(grads, params)
    twin.apply_gradients(grads, params)
    assert optimizer.learning_rate == np.float32(0.2) * np.float32(0.5) ** 2  # still scheduled
    assert_identical(optimizer.state, twin.state, "state after the next step")


def _state_with(**entries):
    """A valid saved state (two steps in) with some entries replaced."""
    optimizer, *_ = trained()
    return {**copy.deepcopy(optimizer.state), **entries}


REJECTED_STATES = {
    "a string": (lambda: "state", ValueError, "`state` must be a dict", "state='state'"),
    "None": (lambda: None, ValueError, "`state` must be a dict", "state=None"),
    "step at the uint64 maximum": (
        lambda: _state_with(step=np.array(2**64 - 1, np.uint64)), ValueError,
        "`state['step']` must be in [0, 18446744073709551615)", "state['step']=array(18446744073709551615, dtype=uint64)",
    ),
    "negative step": (lambda: _state_with(step=np.array(-1, np.int64)), ValueError, "`state['step']` must be in [0,", "state['step']=array(-1)"),
    "fractional step": (lambda: _state_with(step=np.array(2.5, np.float32)), TypeError, "`state['step']` must be a 0-d integer array", "float32"),
    "float step": (lambda: _state_with(step=2.0), TypeError, "`state['step']` must be an integer", "state['step']=2.0"),
    "bool step": (lambda: _state_with(step=np.array(True)), TypeError, "`state['step']`", "bool"),
    "step of shape (1,)": (lambda: _state_with(step=np.array([2], np.uint64)), TypeError, "`state['step']` must be a 0-d", "[2]"),
    "negative Python step": (lambda: _state_with(step=-3), ValueError, "`state['step']`", "state['step']=-3"),
    "NaN learning rate": (
        lambda: _state_with(learning_rate=np.array(np.nan, np.float32)), ValueError,
        "`state['learning_rate']` must be finite and >= 0", "state['learning_rate']=array(nan, dtype=float32)",
    ),
    "negative learning rate": (lambda: _state_with(learning_rate=-0.1), ValueError, "`state['learning_rate']`", "state['learning_rate']=-0.1"),
    "infinite learning rate": (lambda: _state_with(learning_rate=np.full(2, np.inf)), ValueError, "`state['learning_rate']`", "inf"),
    "string learning rate": (lambda: _state_with(learning_rate="0.1"), TypeError, "`state['learning_rate']` must be a real", "'0.1'"),
}


@pytest.mark.parametrize("case", list(REJECTED_STATES))
def test_rejected_state_keeps_the_state(case):
    make, error, *fragments = REJECTED_STATES[case]
    value = make()
    optimizer, twin, params, grads = trained()
    before = copy.deepcopy(optimizer.state)
    with pytest.raises(error) as info:
        optimizer.state = value
    for fragment in fragments:
        assert fragment in str(info.value)
    assert_identical(optimizer.state, before, "state")
    assert_identical(optimizer.apply_gradients(grads, params), twin.apply_gradients(grads, params), "next step")
    assert_identical(optimizer.state, twin.state, "state after the next step")


def test_a_state_without_step_is_taken_as_mlx_takes_it():
    """MLX's state setter takes any dict; one without "step" fails at the next update (a
    KeyError in MLX). inertia takes it too, and says why it cannot step, before any change."""
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    params = {"w": mx.array([1.0, 2.0]), "b": mx.array([0.5])}
    grads = {"w": mx.array([0.5, -0.5]), "b": mx.array([1.0])}
    reference, optimizer = optim.SGD(0.1, momentum=0.9), SGD(0.1, momentum=0.9)
    for opt in (reference, optimizer):
        opt.state = {"learning_rate": mx.array(0.1)}
        opt.init(params)  # init works without a step, in both
    assert_identical(optimizer.state, reference.state, "state after init")
    before = copy.deepcopy(optimizer.state)
    with pytest.raises(KeyError):
        reference.apply_gradients(grads, params)
    with pytest.raises(ValueError) as info:
        optimizer.apply_gradients(grads, params)
    assert "`state`" in str(info.value) and "'step'" in str(info.value)
    assert_identical(optimizer.state, before, "state after the refused step")
    with pytest.raises(KeyError):
        optimizer.step  # noqa: B018 (a dict lookup, as MLX's property)
    for opt in (reference, optimizer):
        opt.state["step"] = mx.array(0, mx.uint64)
    for _ in range(2):
        assert_identical(optimizer.apply_gradients(grads, params), reference.apply_gradients(grads, params), "parameters")
    assert_identical(optimizer.state, reference.state, "state")


def test_a_state_without_learning_rate_steps_when_a_schedule_makes_it():
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    params, grads = {"w": mx.array([1.0, 2.0])}, {"w": mx.array([0.5, -0.5])}
    reference, optimizer = optim.SGD(optim.exponential_decay(0.2, 0.5)), SGD(optim.exponential_decay(0.2, 0.5))
    constant = SGD(0.1)
    for opt in (reference, optimizer, constant):
        opt.state = {"step": mx.array(3, mx.uint64)}
    assert_identical(optimizer.apply_gradients(grads, params), reference.apply_gradients(grads, params), "parameters")
    assert_identical(optimizer.state, reference.state, "state")
    with pytest.raises(ValueError, match="has no 'learning_rate' entry"):
        constant.apply_gradients(grads, params)  # nothing makes its rate: refused before the step counts
    assert int(constant.step) == 3 and "w" not in constant.state


def test_state_from_mlx_loads_and_continues_as_mlx():
    """MLX's state (lists and tuples below the top) is a valid inertia state."""
    mx, optim = requires("mlx.core"), requires("mlx.optimizers")
    reference = optim.SGD(0.1, momentum=0.9, dampening=0.25)
    reference_params = on_library(nested_params(), "mlx")
    reference_params = reference.apply_gradients(on_library(nested_gradients(0), "mlx"), reference_params)
    optimizer = SGD(0.1, momentum=0.9, dampening=0.25)
    optimizer.state = copy.deepcopy(reference.state)
    optimizer.learning_rate = reference.learning_rate = 0.0625
    assert isinstance(optimizer.learning_rate, mx.array)  # the loaded state's library
    params = optimizer.apply_gradients(on_library(nested_gradients(1), "mlx"), reference_params)
    reference_params = reference.apply_gradients(on_library(nested_gradients(1), "mlx"), reference_params)
    assert_identical(params, reference_params, "parameters")
    assert_identical(optimizer.state, reference.state, "state")


# --- 8. threads -----------------------------------------------------------------------------------
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_one_optimizer_updated_from_several_threads_takes_every_step_whole(library):
    """N threads x M ``update`` calls on one model with one constant gradient (no weight
    decay: the steps commute) count N*M steps and give the sequential state and weights."""
    import sys
    import threading

    threads, steps = 4, 50

    def run(threads_, steps_):
        optimizer = SGD(0.125, momentum=0.9)
        model = on_library({"w": np.array([1.0, -2.0, 3.0], np.float32), "b": [np.array([0.5], np.float32)]}, library)
        grads = on_library({"w": np.full(3, 0.25, np.float32), "b": [np.array([0.5], np.float32)]}, library)
        barrier = threading.Barrier(threads_)

        def work():
            barrier.wait()
            for _ in range(steps_):
                optimizer.update(model, grads)

        workers = [threading.Thread(target=work) for _ in range(threads_)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return optimizer, model

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        optimizer, model = run(threads, steps)
    finally:
        sys.setswitchinterval(previous)
    sequential, sequential_model = run(1, threads * steps)
    assert int(to_numpy(optimizer.step)) == threads * steps
    assert_identical(model, sequential_model, "weights")
    assert_identical(optimizer.state, sequential.state, "state")


def test_copies_and_pickles_get_their_own_lock():
    import pickle

    optimizer, twin, params, grads = trained()
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert clone._lock is not optimizer._lock and "_lock" not in optimizer.__getstate__()
        reference = copy.deepcopy(twin)
        assert_identical(clone.apply_gradients(grads, params), reference.apply_gradients(grads, params), "a copy's step")
        assert_identical(clone.state, reference.state, "a copy's state")
