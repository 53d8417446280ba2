"""The multi-device scenarios of ``test_jax_sharding.py``, run in a process of their own.

JAX fixes its device count when it starts, and the test process has started it with one
CPU device, so ``test_jax_sharding.py`` runs this script with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. Each scenario trains the same
model (variables sharded over a 2x2 mesh in several ways) for a few steps and reports, as
JSON, what the tests assert: where every variable and slot ended up, whether two identical
runs gave identical bits, and how far its numbers are from the same run on unsharded
(single-device) arrays, by XLA's own fusions (the arithmetic a sharded step runs) and by the
default path (inertia's fused custom call for the large tensors).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/jax_sharding_scenarios.py OUT.json [SCENARIO ...]

Importing this module runs nothing (pytest's doctest collection imports it).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

DEVICES = 4
STEPS = 6
# The model: name, shape, and its partition spec over the ("rows", "cols") mesh.
PARAMETERS = (
    ("kernel", (256, 512), ("rows", "cols")),  # 512 KiB: takes the custom call unsharded
    ("bias", (512,), ("cols",)),  # under xla_fused.SMALLEST_BYTES: XLA's fusions unsharded too
    ("embedding", (96, 64), (None, "rows")),
    ("scale", (8,), ()),  # replicated over the 4 devices
)
# Gradients laid out otherwise than their weights (a scenario's gradients="elsewhere"): left
# to itself, XLA would give the weights' slots (the gradient accumulators) these layouts.
ELSEWHERE = {"kernel": ("cols", "rows"), "bias": (), "embedding": ("rows", None), "scale": ("rows",)}

EVERYTHING = dict(
    momentum=0.9, nesterov=True, weight_decay=0.05, global_clipnorm=1.0, use_ema=True, ema_momentum=0.8,
    ema_overwrite_frequency=2, loss_scale_factor=64.0, gradient_accumulation_steps=2,
)
KERAS = {
    "momentum": dict(momentum=0.9),
    "nesterov_weight_decay": dict(momentum=0.9, nesterov=True, weight_decay=0.05),
    "clipnorm": dict(momentum=0.9, clipnorm=0.5),
    "global_clipnorm": dict(momentum=0.9, global_clipnorm=1.0),
    "clipvalue": dict(momentum=0.5, clipvalue=0.05),
    "ema_overwrite": dict(momentum=0.9, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3),
    "loss_scale": dict(momentum=0.9, loss_scale_factor=128.0),
    "accumulation": dict(momentum=0.9, gradient_accumulation_steps=3),
    "everything": EVERYTHING,
}


class Scenario(NamedTuple):
    face: str  # "keras" (inertia.SGD), "legacy", "mlx"
    settings: dict
    entry: str  # apply, apply_gradients, minimize, stateless_jit (a user's jax.jit), or
    # apply_on_jax_default (INERTIA_BACKEND=jax: the counters start on JAX's default device)
    mesh: str = "auto"  # the mesh's axis types: "auto" or "explicit" (sharding in the types)
    gradients: str = "like_weights"  # or "elsewhere" (ELSEWHERE)


SCENARIOS: dict[str, Scenario] = {f"keras_{name}": Scenario("keras", settings, "apply") for name, settings in KERAS.items()}
SCENARIOS.update({
    "keras_everything_apply_gradients": Scenario("keras", EVERYTHING, "apply_gradients"),
    "keras_everything_minimize": Scenario("keras", EVERYTHING, "minimize"),
    "keras_everything_explicit_mesh": Scenario("keras", EVERYTHING, "apply", mesh="explicit"),
    "keras_everything_gradients_elsewhere": Scenario("keras", EVERYTHING, "apply", gradients="elsewhere"),
    "keras_everything_stateless_jit": Scenario("keras", EVERYTHING, "stateless_jit"),
    "keras_momentum_jax_default_backend": Scenario("keras", KERAS["momentum"], "apply_on_jax_default"),
    "legacy": Scenario("legacy", dict(momentum=0.9, nesterov=True, clipvalue=0.05, global_clipnorm=1.0), "apply_gradients"),
    "mlx": Scenario("mlx", dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01, nesterov=True), "apply_gradients"),
})
# Where norms are taken: a sharded step sums each shard's squares, then the shards' sums, an
# order of additions that differs from one device's; everything else is elementwise.
NORMS = ("clipnorm", "global_clipnorm")


def takes_norms(name: str) -> bool:
    return any(SCENARIOS[name].settings.get(key) for key in NORMS)


def _mesh(axis_types: str) -> Any:
    import jax

    kinds = jax.sharding.AxisType.Explicit if axis_types == "explicit" else jax.sharding.AxisType.Auto
    return jax.sharding.Mesh(np.array(jax.devices()[:DEVICES]).reshape(2, 2), ("rows", "cols"), axis_types=(kinds, kinds))


def _initial_weights() -> dict:
    rng = np.random.default_rng(16)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape, _ in PARAMETERS}


def _gradients(step: int) -> dict:
    rng = np.random.default_rng(1000 + step)
    return {name: (0.1 * rng.normal(size=shape)).astype(np.float32) for name, shape, _ in PARAMETERS}


def _placer(mesh: Any, gradients: str = "like_weights") -> Callable[..., Any]:
    """NumPy -> JAX array: sharded over ``mesh`` as PARAMETERS (or, for gradients placed
    "elsewhere", ELSEWHERE) say, or on one device when ``mesh`` is None."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    specs = {name: PartitionSpec(*spec) for name, _, spec in PARAMETERS}
    gradient_specs = {name: PartitionSpec(*spec) for name, spec in ELSEWHERE.items()} if gradients == "elsewhere" else specs

    def place(name: str, array: np.ndarray, gradient: bool = False) -> Any:
        if mesh is None:
            return jnp.asarray(array)
        return jax.device_put(array, NamedSharding(mesh, (gradient_specs if gradient else specs)[name]))

    return place


def _keras_optimizer(face: str, settings: dict) -> Any:
    import inertia
    import inertia.legacy

    if face == "legacy":
        return inertia.legacy.SGD(learning_rate=0.05, **settings)
    return inertia.SGD(learning_rate=0.05, **settings)


def _optimizer_variables(optimizer: Any) -> list:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)  # tf.keras legacy: a method


def _run_keras(face: str, settings: dict, entry: str, place: Callable) -> tuple[dict, dict, list]:
    """Train; return the final arrays by name (weights and optimizer variables), the
    optimizer's compiled step programs (HLO text) and the arrays' shardings."""
    import jax
    import jax.numpy as jnp

    import inertia

    variables = [inertia.Variable(place(name, value), name=name) for name, value in _initial_weights().items()]
    optimizer = _keras_optimizer(face, settings)
    programs: list[str] = []
    if entry == "stateless_jit":
        optimizer.build(variables)
        state = [v.value for v in _optimizer_variables(optimizer)]
        weights = [v.value for v in variables]
        step = jax.jit(optimizer.stateless_apply)
        for index in range(STEPS):
            grads = [place(name, g, True) for name, g in _gradients(index).items()]
            weights, state = step(state, grads, weights)
        programs.append(step.lower(state, grads, weights).compile().as_text())
        arrays = {v.name: w for v, w in zip(variables, weights)}
        arrays.update({v.name: s for v, s in zip(_optimizer_variables(optimizer), state)})
        return arrays, {}, programs
    for index in range(STEPS):
        gradients = _gradients(index)
        if entry == "minimize":
            targets = {name: place(name, g, True) for name, g in gradients.items()}

            def loss(targets=targets) -> Any:  # gradient: target + 0.01 * w, elementwise
                return sum(jnp.sum(targets[v.name] * v.value + 0.005 * v.value * v.value) for v in variables)

            optimizer.minimize(loss, variables)
        elif entry == "apply_gradients":
            optimizer.apply_gradients([(place(name, g, True), v) for (name, g), v in zip(gradients.items(), variables)])
        else:  # apply, on either default backend
            optimizer.apply([place(name, g, True) for name, g in gradients.items()], variables)
    arrays = {v.name: v.value for v in variables}
    arrays.update({v.name: v.value for v in _optimizer_variables(optimizer)})
    compiled = optimizer._compiled
    if compiled.last is not None:  # the last step's program, lowered again for its HLO
        compiled._retrace_allowed = True
        try:
            grads = [place(name, g, True) for name, g in _gradients(0).items()]
            if entry == "minimize":
                grads = [g + 0.01 * v.value for g, v in zip(grads, variables)]
            programs.append(
                compiled.last.step.lower([v._value for v in compiled.last.own], [v._value for v in compiled.last.trainables], grads)
                .compile().as_text()
            )
        finally:
            compiled._retrace_allowed = False
    return arrays, {"compiled_steps": len(compiled.steps)}, programs


def _run_mlx(settings: dict, place: Callable) -> tuple[dict, dict, list]:
    import inertia.mlx

    optimizer = inertia.mlx.SGD(**settings)
    parameters = {name: place(name, value) for name, value in _initial_weights().items()}
    for index in range(STEPS):
        parameters = optimizer.apply_gradients({name: place(name, g, True) for name, g in _gradients(index).items()}, parameters)
    arrays = dict(parameters)
    for key, value in optimizer.state.items():
        if isinstance(value, dict):
            arrays.update({f"{key}_{slot}": array for slot, array in value.items()})
        else:
            arrays[key] = value
    return arrays, {}, []


def _run(name: str, sharded: bool, fused: bool = True) -> tuple[dict, dict, list, list]:
    from inertia.engine import host

    face, settings, entry, mesh, gradients = SCENARIOS[name]
    place = _placer(_mesh(mesh) if sharded else None, gradients)
    os.environ["INERTIA_BACKEND"] = "jax" if entry == "apply_on_jax_default" else "numpy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with (host.disabled() if not fused else _nothing()):
            if face == "mlx":
                arrays, facts, programs = _run_mlx(settings, place)
            else:
                arrays, facts, programs = _run_keras(face, settings, entry, place)
    donation = [str(w.message) for w in caught if "donat" in str(w.message).lower()]
    return arrays, facts, programs, donation


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _expected_sharding(name: str, mesh_shardings: dict) -> Any:
    """The sharding an array named ``name`` must keep: its parameter's (a weight, or a slot
    named after it: ``kernel_momentum``, legacy's ``kernel/momentum``) or, for a counter or
    the learning rate, replicated (None here)."""
    for parameter, _, _ in PARAMETERS:
        if name == parameter or name.startswith((parameter + "_", parameter + "/")):
            return mesh_shardings[parameter]
    return None


def _placement_report(face: str, arrays: dict, parameters: dict) -> tuple[dict, list]:
    placements, wrong = {}, []
    for name, array in arrays.items():
        sharding = array.sharding
        placements[name] = str(getattr(sharding, "spec", sharding))
        expected = _expected_sharding(name, parameters)
        if expected is None and face == "mlx":
            # The MLX face runs eagerly, op by op; its 0-d step and learning rate stay on JAX's
            # default device (uncommitted: JAX moves them to the parameters' devices per op).
            kept = len(sharding.device_set) == 1 and not array.committed
        elif expected is None:
            kept = sharding.is_fully_replicated and len(sharding.device_set) == DEVICES
        else:
            kept = sharding.is_equivalent_to(expected, array.ndim)
        if not kept:
            wrong.append(f"{name}: {sharding} (expected {expected or 'replicated over the mesh'})")
    return placements, wrong


def _difference(arrays: dict, reference: dict) -> dict:
    """Bitwise equality, and the largest absolute difference and largest normwise one
    (an element's difference over its array's largest magnitude) over all arrays."""
    largest_abs = largest_rel = 0.0
    equal = sorted(arrays) == sorted(reference)
    for name, value in arrays.items():
        if name not in reference:
            continue
        a, b = np.asarray(value).astype(np.float64), np.asarray(reference[name]).astype(np.float64)
        equal = equal and np.array_equal(np.asarray(value), np.asarray(reference[name]))
        if a.size:
            gap = np.abs(a - b)
            largest_abs = max(largest_abs, float(gap.max()))
            largest_rel = max(largest_rel, float(gap.max() / max(np.abs(b).max(), 1e-30)))
    return {"max_abs": largest_abs, "max_normwise": largest_rel, "bit_equal": bool(equal)}


def run_scenario(name: str) -> dict:
    import jax

    face, settings, entry, mesh_kind, _ = SCENARIOS[name]
    mesh = _mesh(mesh_kind)
    from jax.sharding import NamedSharding, PartitionSpec

    parameters = {p: NamedSharding(mesh, PartitionSpec(*spec)) for p, _, spec in PARAMETERS}
    first, facts, programs, donation = _run(name, sharded=True)
    second, _, _, donation_again = _run(name, sharded=True)
    placements, wrong = _placement_report(face, first, parameters)
    as_numpy = lambda arrays: {k: np.asarray(jax.device_get(v)) for k, v in arrays.items()}  # noqa: E731
    first_np, second_np = as_numpy(first), as_numpy(second)
    reference, _, _, _ = _run(name, sharded=False, fused=False)
    fused, _, fused_programs, _ = _run(name, sharded=False, fused=True)
    return {
        "placements": placements,
        "wrong_placements": wrong,
        "deterministic": _difference(first_np, second_np)["bit_equal"],
        "versus_reference": _difference(first_np, as_numpy(reference)),
        "versus_fused": _difference(first_np, as_numpy(fused)),
        "donation_warnings": donation + donation_again,
        "all_gather": any("all-gather" in p for p in programs),
        "all_reduce": any("all-reduce" in p for p in programs),
        "custom_call_sharded": any("inertia_sgd_step" in p for p in programs),
        "custom_call_unsharded": any("inertia_sgd_step" in p for p in fused_programs),
        "programs": len(programs),
        **facts,
    }


def _data_mesh() -> Any:
    import jax

    return jax.sharding.Mesh(np.array(jax.devices()[:DEVICES]), ("data",))


def _per_device_gradients(seed: int, shape: tuple) -> np.ndarray:
    """One gradient per device, stacked; multiples of 1/64 under 1/8, so that sums over the
    devices and halvings are exact and a mean by hand is the mean any order gives."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-8, 9, size=(DEVICES,) + shape) / 64).astype(np.float32)


def run_pmean() -> dict:
    """``pmean("data")`` inside shard_map, on a list and on (gradient, variable) pairs."""
    import jax
    from jax.sharding import PartitionSpec

    from inertia.distributed.jax import pmean

    stacked = [_per_device_gradients(7, (5, 3)), _per_device_gradients(8, (4,))]
    aggregator = pmean("data")

    def on_each_device(first: Any, second: Any) -> tuple:
        reduced = aggregator.reduce([first[0], None, second[0]])  # None: a missing gradient passes through
        assert reduced[1] is None
        pairs = aggregator([(first[0], "kernel"), (second[0], "bias")])
        assert [name for _, name in pairs] == ["kernel", "bias"]
        return reduced[0][None], reduced[2][None], pairs[0][0][None], pairs[1][0][None]

    spec = PartitionSpec("data")
    results = jax.jit(jax.shard_map(on_each_device, mesh=_data_mesh(), in_specs=(spec, spec), out_specs=(spec,) * 4))(*stacked)
    by_hand = [g.sum(axis=0) / DEVICES for g in stacked]
    expected = [by_hand[0], by_hand[1], by_hand[0], by_hand[1]]
    return {
        "per_device_equal_to_mean_by_hand": [
            bool(np.array_equal(np.asarray(r)[d], e)) for r, e in zip(results, expected) for d in range(DEVICES)
        ],
        "mean_by_hand_first_elements": [float(by_hand[0].ravel()[0]), float(by_hand[1].ravel()[0])],
        "devices_first_elements": [float(np.asarray(results[0])[d].ravel()[0]) for d in range(DEVICES)],
    }


def run_data_parallel() -> dict:
    """Data-parallel ``stateless_apply`` inside shard_map over the 4-device "data" axis:
    each device its own gradients, ``aggregate_gradients = pmean("data")``, gradient
    accumulation over 2 steps and a global norm clip; against one device stepping on the
    mean gradients. Needs ``aggregate_gradients`` to run as a stage in ``stateless_apply``."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    import inertia
    from inertia.distributed.jax import pmean

    os.environ["INERTIA_BACKEND"] = "numpy"
    shapes = {"kernel": (64, 32), "bias": (32,)}
    settings = dict(learning_rate=0.25, momentum=0.5, gradient_accumulation_steps=2, global_clipnorm=0.5)
    steps = [{name: _per_device_gradients(100 + 10 * step + k, shape) for k, (name, shape) in enumerate(shapes.items())} for step in range(4)]
    initial = {name: (np.random.default_rng(3).integers(-8, 9, size=shape) / 8).astype(np.float32) for name, shape in shapes.items()}

    def build() -> tuple:
        variables = [inertia.Variable(jnp.asarray(value), name=name) for name, value in initial.items()]
        optimizer = inertia.SGD(**settings)
        optimizer.build(variables)
        return optimizer, variables

    parallel, variables = build()
    parallel.aggregate_gradients = pmean("data")

    def on_each_device(state: list, grads: list, weights: list) -> tuple:
        new_weights, new_state = parallel.stateless_apply([s[0] for s in state], [g[0] for g in grads], [w[0] for w in weights])
        return [w[None] for w in new_weights], [s[None] for s in new_state]

    # Every device keeps its own copy of everything (its accumulators differ: each sums its
    # own micro-batches), stacked along the "data" axis.
    split = PartitionSpec("data")
    step = jax.jit(jax.shard_map(on_each_device, mesh=_data_mesh(), in_specs=(split, split, split), out_specs=(split, split)))
    copies = lambda values: [jnp.stack([v] * DEVICES) for v in values]  # noqa: E731
    state, weights = copies([v.value for v in parallel.variables]), copies([v.value for v in variables])
    for gradients in steps:
        weights, state = step(state, [jnp.asarray(gradients[name]) for name in shapes], weights)
    per_device = [np.asarray(a) for a in list(weights) + list(state)]

    single, single_variables = build()  # one device, the mean gradients by hand
    for gradients in steps:
        single.apply([jnp.asarray(gradients[name].sum(axis=0) / DEVICES) for name in shapes], single_variables)
    expected = [np.asarray(v.value) for v in single_variables] + [np.asarray(v.value) for v in single.variables]
    # 4 steps, 2 per update: the accumulators end reset, so every array is comparable.
    return {
        "bit_equal_to_single_device": [bool(np.array_equal(a[d], e)) for a, e in zip(per_device, expected) for d in range(DEVICES)],
        "max_abs": max(float(np.abs(a.astype(np.float64) - e).max()) for a, e in zip(per_device, expected)),
        "kernel_moved": bool(not np.array_equal(expected[0], initial["kernel"])),
    }


def run_resharded_between_steps() -> dict:
    """A variable assigned an array of another sharding between two steps keeps the new
    one: the step compiled for the old layout is not repeated for it."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    import inertia

    os.environ["INERTIA_BACKEND"] = "numpy"
    mesh = _mesh("auto")
    place = _placer(mesh)
    variables = [inertia.Variable(place(name, value), name=name) for name, value in _initial_weights().items()]
    optimizer = inertia.SGD(learning_rate=0.05, momentum=0.9)
    transposed = NamedSharding(mesh, PartitionSpec("cols", "rows"))
    for index in range(4):
        if index == 2:
            variables[0].assign(jax.device_put(variables[0].value, transposed))
        optimizer.apply([place(name, g) for name, g in _gradients(index).items()], variables)
    return {
        "kernel_keeps_the_new_sharding": bool(variables[0].value.sharding.is_equivalent_to(transposed, 2)),
        "compiled_steps": len(optimizer._compiled.steps),
    }


EXTRA = {"pmean": run_pmean, "data_parallel": run_data_parallel, "resharded_between_steps": run_resharded_between_steps}


def main(argv: list[str]) -> None:
    import jax

    if jax.device_count() < DEVICES:
        raise SystemExit(f"needs {DEVICES} devices (XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}); found {jax.device_count()}")
    out, names = argv[0], argv[1:] or list(SCENARIOS) + list(EXTRA)
    results = {}
    for name in names:
        if name in EXTRA:
            try:
                results[name] = EXTRA[name]()
            except Exception as error:  # reported, so that the other scenarios still count
                results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        else:
            results[name] = run_scenario(name)
    with open(out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
