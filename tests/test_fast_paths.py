"""The host kernel fast path of every face against that face's reference path.

The engine's fast path (``inertia/engine/host.py``, ``engine/optimizer_host.py``, the C kernel
``_sgd_core.h`` / ``_kernels.c``) runs a whole step of any face in one C call on NumPy arrays
and CPU torch tensors. It must give the reference path's numbers exactly (bit for bit), or
decline and let the reference path run, which then also raises every error. Only steps that
clip by a norm are compared with a tight tolerance where the gradients are random: the kernel
sums squares in double and takes a correctly rounded square root, the reference sums in the
dtype (and torch's float32 ``sqrt`` on the CPU is not always correctly rounded). With
gradients whose norms are exact, those steps are compared bit for bit too.

The reference side of every comparison runs under ``host.disabled()`` (every fast path
declines there); a spy on the kernel module checks that the fast side really ran the kernel
where it covers the step (so no test passes vacuously) and that it did not where it must
decline.

1. Randomized differential runs (fixed seeds; the drawn configuration is in every message):
   the Keras face on NumPy Variables and bare torch tensors, the legacy face, the torch face
   and the MLX face (NumPy and torch trees).
2. What a user can change between steps (read-only arrays, moved or reshaped memory,
   overlapping variables, gradients aliasing weights, torch's version counters, transposed
   or negative-bit or misaligned tensors, subclasses): the reference path's result or error.
3. Each face on its own: the legacy face's combinations (clipvalue with a norm clip,
   ``decay``, float64), everything at once for the other faces, and every norm clip bit for
   bit on exactly summable gradients.
"""

from __future__ import annotations

import contextlib
import re
import warnings

import numpy as np
import pytest

import inertia
import inertia.legacy
import inertia.mlx
from conftest import requires
from inertia import backend as backends
from inertia import kernels, schedules
from inertia.engine import host
from inertia.variable import Variable

SEED = 20_260_611
CHUNK = 65536  # the kernel's chunk (_sgd_core.h): bigger tensors are cut into chunks
# One tensor past CHUNK (chunked), one past 4 * CHUNK (chunked and threaded when threads > 1).
BIG_SIZES = (CHUNK + 1, 2 * CHUNK + 4099, 4 * CHUNK + 17)
SMALL_SHAPES = ((), (1,), (7,), (3, 4), (2, 3, 5), (16,), (33,), (0,))
DTYPES = ("float32", "float64")
STEPS = 4
# Norm clipping on random gradients: the kernel sums squares in double, the reference in the
# dtype (and torch's float32 sqrt is not always correctly rounded).
NORM_TOLERANCES = {"float32": dict(rtol=1e-6, atol=1e-7), "float64": dict(rtol=1e-14, atol=1e-15)}
RUNS_PER_FACE = 16


# ----------------------------------------------------------------------------------------
# the kernel spy
# ----------------------------------------------------------------------------------------
class KernelSpy:
    """Stands in for the kernel module and records every answer of ``step`` and
    ``accumulate`` (``host.DONE``: it did the step; ``DECLINED`` / ``MOVED``: it did not)."""

    COUNTED = ("step", "accumulate")

    def __init__(self, module):
        self._module = module
        self.answers: list[tuple[str, int]] = []

    def __getattr__(self, name):
        function = getattr(self._module, name)
        if name not in self.COUNTED:
            return function

        def recorded(*args):
            answer = function(*args)
            self.answers.append((name, answer))
            return answer

        return recorded

    def mark(self) -> int:
        return len(self.answers)

    def since(self, mark: int) -> list:
        return self.answers[mark:]


def _kernel_module():
    module = kernels.load()
    if isinstance(module, KernelSpy):
        module = module._module
    if module is None:
        reason = kernels.unavailable_reason()
        if backends.required():  # CI: a C compiler is part of the test environment
            pytest.fail(f"the host kernel is unavailable: {reason}")
        pytest.skip(f"the host kernel is unavailable: {reason}")
    return module


@pytest.fixture
def spy(monkeypatch):
    spy = KernelSpy(_kernel_module())
    monkeypatch.setattr(kernels, "_loaded", spy)
    return spy


@contextlib.contextmanager
def reference_path(spy):
    """Every fast path declines inside; the kernel is never called."""
    mark = spy.mark()
    with host.disabled():
        yield
    assert spy.since(mark) == [], "the reference path called the kernel"


def _torch():
    return requires("torch")


# ----------------------------------------------------------------------------------------
# comparison helpers
# ----------------------------------------------------------------------------------------
def to_numpy(value) -> np.ndarray:
    if isinstance(value, Variable):
        return np.array(value.numpy(), copy=True)
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return np.array(value, copy=True)
    return value.detach().cpu().resolve_neg().resolve_conj().numpy().copy()


def assert_same(reference: list, fast: list, where: str, tolerances=None) -> None:
    """``[(name, array)]`` lists: equal names, dtypes and shapes; values bit for bit (NaNs
    in the same places), or within ``tolerances``."""
    assert [n for n, _ in reference] == [n for n, _ in fast], where
    for (name, r), (_, f) in zip(reference, fast):
        assert r.dtype == f.dtype and r.shape == f.shape, f"{where}: {name}: {r.dtype}{r.shape} vs {f.dtype}{f.shape}"
        if tolerances is None or r.dtype.kind not in "fc":
            if not np.array_equal(r, f, equal_nan=r.dtype.kind in "fc"):
                diff = np.max(np.abs(r.astype(np.float64) - f.astype(np.float64)), initial=0)
                raise AssertionError(f"{where}: {name} differs (max |diff| {diff!r})\nreference {r!r}\nfast {f!r}")
        else:
            np.testing.assert_allclose(f, r, err_msg=f"{where}: {name}", equal_nan=True, **tolerances)


def outcome(function) -> tuple:
    """("ok",) or (error type, message) of ``function()``."""
    try:
        function()
    except Exception as error:  # noqa: BLE001 - compared, not swallowed
        return type(error), str(error)
    return ("ok",)


class HeldRate:
    """A plain zero-argument callable learning rate reading state the test changes."""

    def __init__(self):
        self.value = 0.1

    def __call__(self):
        return self.value


def draw_shapes(rng, big_probability: float = 0.35) -> list:
    count = int(rng.integers(1, 5))
    shapes = [SMALL_SHAPES[int(i)] for i in rng.integers(0, len(SMALL_SHAPES), count)]
    if rng.random() < big_probability:
        shapes.insert(int(rng.integers(0, len(shapes) + 1)), (int(rng.choice(BIG_SIZES)),))
    return shapes


def draw_values(rng, shapes, dtype) -> list:
    return [np.asarray(rng.standard_normal(shape), dtype=dtype) for shape in shapes]


def draw_gradients(rng, shapes, dtype, steps=STEPS, exact=False) -> list:
    """``steps`` lists of gradients; now and then one is all zeros (a zero norm).

    ``exact`` ("per-tensor" or "global"): gradients whose norms are exact in every dtype and
    every order of summation: entries of one magnitude (1, or 1/16 every other step) with
    random signs, and zeros, placed so that the count of nonzeros (of each tensor, or of all)
    is a perfect square. The kernel's norms then equal the reference's even where the
    reference's square root is not correctly rounded (torch's float32 sqrt on the CPU is not).
    """
    if exact:
        stream = []
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
        for k in range(steps):
            magnitude = 1.0 if k % 2 == 0 else 1.0 / 16
            if exact == "per-tensor":
                counts = [int(np.sqrt(size)) ** 2 for size in sizes]
            else:
                left, counts = int(np.sqrt(sum(sizes))) ** 2, []
                for size in sizes:
                    counts.append(min(size, left))
                    left -= counts[-1]
            grads = []
            for shape, size, count in zip(shapes, sizes, counts):
                flat = np.zeros(size)
                flat[rng.permutation(size)[:count]] = rng.choice([-magnitude, magnitude], count)
                grads.append(np.asarray(flat.reshape(shape), dtype=dtype))
            stream.append(grads)
        return stream
    stream = []
    for _ in range(steps):
        scale = rng.uniform(0.25, 3.0)
        grads = [np.asarray(rng.standard_normal(shape) * scale, dtype=dtype) for shape in shapes]
        if rng.random() < 0.15:
            grads[int(rng.integers(0, len(grads)))][...] = 0
        stream.append(grads)
    return stream


def _threads(rng, monkeypatch) -> str:
    threads = str(rng.choice(["1", "2", "3"]))
    monkeypatch.setenv("INERTIA_NUM_THREADS", threads)
    return threads


# ----------------------------------------------------------------------------------------
# 1. randomized differential runs
# ----------------------------------------------------------------------------------------
def _draw_keras(rng) -> dict:
    config: dict = {"dtype": str(rng.choice(DTYPES)), "shapes": draw_shapes(rng)}
    config["lr"] = str(rng.choice(["float", "exponential", "cosine", "callable"]))
    config["momentum"] = float(rng.choice([0.0, 0.9]))
    config["nesterov"] = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        config["weight_decay"] = float(rng.choice([0.01, 0.1]))
        config["exclude_first"] = bool(rng.random() < 0.4)
    clip = rng.choice(["none", "clipnorm", "clipvalue", "global_clipnorm"])
    if clip != "none":
        config[str(clip)] = {"clipnorm": 0.5, "clipvalue": 0.3, "global_clipnorm": 1.5}[str(clip)]
    if rng.random() < 0.4:
        config["use_ema"] = True
        config["ema_momentum"] = float(rng.choice([0.8, 0.99]))
        config["ema_overwrite_frequency"] = rng.choice([None, 2, 3])
    if rng.random() < 0.3:
        config["loss_scale_factor"] = float(rng.choice([64.0, 3.0]))
    if rng.random() < 0.35:
        config["gradient_accumulation_steps"] = int(rng.choice([2, 3]))
    return config


def _keras_optimizer(config: dict, cls=None):
    cls = cls or inertia.SGD
    lr = {
        "float": lambda: 0.05,
        "exponential": lambda: schedules.ExponentialDecay(0.1, 2, 0.5),
        "cosine": lambda: schedules.CosineDecay(0.2, 5),
        "callable": HeldRate,
    }[config["lr"]]()
    keys = ("momentum", "nesterov", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
            "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps")
    return cls(learning_rate=lr, **{k: config[k] for k in keys if k in config})


def _keras_state(optimizer, targets) -> list:
    own = optimizer.variables
    own = own() if callable(own) else own  # inertia.legacy.SGD: a method, as in tf.keras
    return [(f"weight {i}", to_numpy(t)) for i, t in enumerate(targets)] + [(v.path, to_numpy(v)) for v in own]


def _keras_expected(config: dict, number: int) -> list:
    """The kernel's answers on the fast side at step ``number``."""
    steps = config.get("gradient_accumulation_steps")
    if steps and number % steps:
        return [] if config.get("loss_scale_factor") else [("accumulate", host.DONE)]
    return [("step", host.DONE)]


def _run_keras_pair(spy, config: dict, targets_of, convert, *, cls=None, expected=_keras_expected, steps=STEPS):
    """The same steps on a reference and a fast optimizer; compared after every step."""
    rng = np.random.default_rng(config["seed"])
    dtype, shapes = config["dtype"], config["shapes"]
    values = draw_values(rng, shapes, dtype)
    stream = draw_gradients(rng, shapes, dtype, steps, exact=config.get("exact", False))
    norm = not config.get("exact") and any(config.get(k) for k in ("clipnorm", "global_clipnorm"))
    tolerances = NORM_TOLERANCES[dtype] if norm else None
    sides = []
    for _ in range(2):
        optimizer = _keras_optimizer(config, cls)
        targets = targets_of(values)
        if config.get("weight_decay") and config.get("exclude_first"):
            optimizer.exclude_from_weight_decay(var_list=[targets[0]])
        sides.append((optimizer, targets))
    (reference, ref_targets), (fast, fast_targets) = sides
    for number, grads in enumerate(stream, start=1):
        where = f"step {number} of {config}"
        for optimizer, _ in sides:
            if isinstance(optimizer._learning_rate, HeldRate):
                optimizer._learning_rate.value = 0.1 / number
        versions = [getattr(t, "_version", None) for t in ref_targets + fast_targets]
        with reference_path(spy):
            reference.apply([convert(g) for g in grads], ref_targets)
        mark = spy.mark()
        fast.apply([convert(g) for g in grads], fast_targets)
        assert spy.since(mark) == expected(config, number), f"{where}: kernel answers {spy.since(mark)}"
        assert_same(_keras_state(reference, ref_targets), _keras_state(fast, fast_targets), where, tolerances)
        if versions[0] is not None:  # torch: an in-place write bumps the version counter on both paths
            n = len(ref_targets)
            bumped = [t._version > v for t, v in zip(ref_targets + fast_targets, versions)]
            assert bumped[:n] == bumped[n:], f"{where}: version counters bumped {bumped}"
    return sides


def _config(face: str, index: int, draw) -> dict:
    rng = np.random.default_rng([SEED, sum(map(ord, face)), index])
    config = draw(rng)
    config["seed"] = [SEED, sum(map(ord, face)), index, 1]
    return config


@pytest.mark.parametrize("index", range(RUNS_PER_FACE))
@pytest.mark.parametrize("targets", ["numpy-variables", "numpy-bare", "torch-bare"])
def test_keras_face_random_configs(spy, monkeypatch, targets, index):
    config = _config("keras-" + targets, index, _draw_keras)
    config["threads"] = _threads(np.random.default_rng(config["seed"][:3]), monkeypatch)
    config["targets"] = targets
    if targets == "torch-bare":
        torch = _torch()
        parameters = index % 2 == 0  # nn.Parameters or plain tensors, both bare

        def targets_of(values):
            made = [torch.from_numpy(v.copy()) for v in values]
            return [torch.nn.Parameter(t) for t in made] if parameters else made

        convert = lambda g: torch.from_numpy(g.copy())  # noqa: E731
    elif targets == "numpy-bare":
        def targets_of(values):
            return [v.copy() for v in values]

        convert = lambda g: g.copy()  # noqa: E731
    else:
        def targets_of(values):
            return [inertia.Variable(v.copy(), name=f"w{i}") for i, v in enumerate(values)]

        convert = lambda g: g.copy()  # noqa: E731
    _run_keras_pair(spy, config, targets_of, convert)


def _draw_legacy(rng) -> dict:
    config: dict = {"dtype": str(rng.choice(DTYPES)), "shapes": draw_shapes(rng)}
    config["lr"] = str(rng.choice(["float", "exponential", "callable"]))
    config["momentum"] = float(rng.choice([0.0, 0.9]))
    config["nesterov"] = bool(rng.random() < 0.5)
    clip = str(rng.choice(["none", "clipnorm", "clipvalue", "global_clipnorm", "clipvalue+clipnorm",
                           "clipvalue+global_clipnorm"]))
    for part in clip.split("+"):
        if part != "none":
            config[part] = {"clipnorm": 0.7, "clipvalue": 0.4, "global_clipnorm": 1.7}[part]
    if rng.random() < 0.4:
        config["decay"] = float(rng.choice([0.01, 0.3]))
    return config


def _legacy_optimizer(config: dict):
    lr = {
        "float": lambda: 0.05,
        "exponential": lambda: schedules.ExponentialDecay(0.1, 2, 0.5),
        "callable": HeldRate,
    }[config["lr"]]()
    keys = ("momentum", "nesterov", "clipnorm", "clipvalue", "global_clipnorm", "decay")
    return inertia.legacy.SGD(learning_rate=lr, **{k: config[k] for k in keys if k in config})


def _run_legacy_pair(spy, config: dict, targets_of, convert, steps=STEPS):
    rng = np.random.default_rng(config["seed"])
    dtype, shapes = config["dtype"], config["shapes"]
    values = draw_values(rng, shapes, dtype)
    stream = draw_gradients(rng, shapes, dtype, steps, exact=config.get("exact", False))
    norm = not config.get("exact") and any(config.get(k) for k in ("clipnorm", "global_clipnorm"))
    tolerances = NORM_TOLERANCES[dtype] if norm else None
    sides = [(_legacy_optimizer(config), targets_of(values)) for _ in range(2)]
    (reference, ref_targets), (fast, fast_targets) = sides
    for number, grads in enumerate(stream, start=1):
        where = f"step {number} of {config}"
        for optimizer, _ in sides:
            if isinstance(optimizer._learning_rate, HeldRate):
                optimizer._learning_rate.value = 0.1 / number
        with reference_path(spy):
            reference.apply_gradients(zip([convert(g) for g in grads], ref_targets))
        mark = spy.mark()
        fast.apply_gradients(zip([convert(g) for g in grads], fast_targets))
        assert spy.since(mark) == [("step", host.DONE)], f"{where}: kernel answers {spy.since(mark)}"
        assert_same(_keras_state(reference, ref_targets), _keras_state(fast, fast_targets), where, tolerances)
        assert_same([("get_weights", np.concatenate([np.ravel(w).astype(np.float64) for w in reference.get_weights()]))],
                    [("get_weights", np.concatenate([np.ravel(w).astype(np.float64) for w in fast.get_weights()]))],
                    where, tolerances)
    return sides


@pytest.mark.parametrize("index", range(RUNS_PER_FACE))
@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_legacy_face_random_configs(spy, monkeypatch, backend_name, index):
    config = _config("legacy-" + backend_name, index, _draw_legacy)
    config["threads"] = _threads(np.random.default_rng(config["seed"][:3]), monkeypatch)
    config["backend"] = backend_name
    if backend_name == "torch":
        torch = _torch()
        convert = lambda g: torch.from_numpy(g.copy())  # noqa: E731
    else:
        convert = lambda g: g.copy()  # noqa: E731

    def targets_of(values):
        return [inertia.Variable(convert(v), name=f"w{i}") for i, v in enumerate(values)]

    _run_legacy_pair(spy, config, targets_of, convert)


def _draw_torch(rng) -> dict:
    config: dict = {"dtype": str(rng.choice(DTYPES)), "shapes": draw_shapes(rng, big_probability=0.3)}
    with_momentum = bool(rng.random() < 0.6)
    groups = int(rng.choice([1, 1, 2, 3]))
    config["groups"] = []
    for _ in range(groups):  # momentum in every group or in none (mixed ones take the reference path)
        momentum = float(rng.choice([0.5, 0.9])) if with_momentum else 0.0
        nesterov = bool(momentum and rng.random() < 0.5)
        group = {"lr": float(rng.choice([0.05, 0.1, 0.3])), "momentum": momentum, "nesterov": nesterov}
        if not nesterov and rng.random() < 0.4:
            group["dampening"] = float(rng.choice([0.1, 0.5]))
        if rng.random() < 0.5:
            group["weight_decay"] = float(rng.choice([0.01, 0.2]))
        if rng.random() < 0.3:
            group["maximize"] = True
        config["groups"].append(group)
    clip = str(rng.choice(["none", "clipnorm", "clipvalue", "global_clipnorm", "per-group"]))
    if clip in ("clipnorm", "clipvalue"):
        config[clip] = {"clipnorm": 0.5, "clipvalue": 0.3}[clip]
    elif clip == "global_clipnorm":
        config["global_clipnorm"] = 1.5
    elif clip == "per-group":
        for group in config["groups"]:
            key = str(rng.choice(["clipnorm", "clipvalue", "none"]))
            if key != "none":
                group[key] = {"clipnorm": 0.4, "clipvalue": 0.2}[key]
    if rng.random() < 0.4:
        config["use_ema"] = True
        config["ema_momentum"] = float(rng.choice([0.8, 0.99]))
        config["ema_overwrite_frequency"] = rng.choice([None, 2, 3])
    config["scheduler"] = bool(rng.random() < 0.3)
    if rng.random() < 0.3:
        config["gradient_accumulation_steps"] = int(rng.choice([2, 3]))
    # now and then a parameter without a gradient (skipped; its buffer starts later)
    config["missing"] = {int(step): int(rng.integers(0, len(config["shapes"])))
                         for step in rng.integers(1, STEPS + 1, 2) if rng.random() < 0.5 and len(config["shapes"]) > 1}
    return config


def _torch_pair(config: dict, values: list):
    """Two identical (params, optimizer, scheduler) triples from ``config``."""
    torch = _torch()
    import inertia.torch

    keys = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency",
            "gradient_accumulation_steps")
    made = []
    for _ in range(2):
        params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
        groups = [{"params": params[k::len(config["groups"])], **group} for k, group in enumerate(config["groups"])]
        groups = [group for group in groups if group["params"]]
        optimizer = inertia.torch.SGD(groups, lr=0.01, **{k: config[k] for k in keys if k in config})
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.7) if config.get("scheduler") else None
        made.append((params, optimizer, scheduler))
    return made


def _torch_state(params, optimizer) -> list:
    out = []
    for i, p in enumerate(params):
        out.append((f"param {i}", to_numpy(p)))
        out.append((f"param {i} version", np.array(p._version)))
        for key in sorted(optimizer.state.get(p, {})):
            out.append((f"param {i} {key}", to_numpy(optimizer.state[p][key])))
    out.append(("updates, micro_steps", np.array([optimizer._updates, optimizer._micro_steps])))
    out.append(("lr", np.array([g["lr"] for g in optimizer.param_groups])))
    return out


def _torch_face_expected(config: dict, optimizer, params: list, number: int, missing) -> list:
    """The kernel's answers for the torch face's step ``number`` (before it runs)."""
    steps = config.get("gradient_accumulation_steps")
    if steps and number % steps:
        return [("accumulate", host.DONE)]  # a micro-step
    if missing is not None:
        if config.get("use_ema"):
            return []  # the EMA covers every parameter: the reference path
        accumulator = optimizer.state.get(params[missing], {}).get("gradient_accumulator")
        if steps and accumulator is not None and bool(accumulator.any()):
            return []  # the mean of earlier micro-steps for a parameter without a gradient now
    return [("step", host.DONE)]


def _run_torch_pair(spy, config: dict, steps=STEPS, expected=None):
    torch = _torch()
    rng = np.random.default_rng(config["seed"])
    dtype, shapes = config["dtype"], config["shapes"]
    values = draw_values(rng, shapes, dtype)
    stream = draw_gradients(rng, shapes, dtype, steps, exact=config.get("exact", False))
    norm = not config.get("exact") and bool(config.get("clipnorm") or config.get("global_clipnorm")
                or any(g.get("clipnorm") for g in config["groups"]))
    tolerances = NORM_TOLERANCES[dtype] if norm else None
    (ref_params, reference, ref_scheduler), (fast_params, fast, fast_scheduler) = _torch_pair(config, values)
    for number, grads in enumerate(stream, start=1):
        where = f"step {number} of {config}"
        missing = config.get("missing", {}).get(number)
        for params in (ref_params, fast_params):
            for k, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if k == missing else torch.from_numpy(g.copy())
        torch_expected = _torch_face_expected(config, fast, fast_params, number, missing)
        with reference_path(spy):
            reference.step()
            if ref_scheduler is not None:
                ref_scheduler.step()
        mark = spy.mark()
        fast.step()
        if fast_scheduler is not None:
            fast_scheduler.step()
        answers = spy.since(mark)
        assert answers == (expected or torch_expected), f"{where}: kernel answers {answers}"
        assert_same(_torch_state(ref_params, reference), _torch_state(fast_params, fast), where, tolerances)
    return ref_params, fast_params


@pytest.mark.parametrize("index", range(2 * RUNS_PER_FACE))
def test_torch_face_random_configs(spy, monkeypatch, index):
    _torch()
    config = _config("torch", index, _draw_torch)
    config["threads"] = _threads(np.random.default_rng(config["seed"][:3]), monkeypatch)
    _run_torch_pair(spy, config)


def _draw_mlx(rng) -> dict:
    config: dict = {"dtype": str(rng.choice(DTYPES)), "shapes": draw_shapes(rng)}
    config["momentum"] = float(rng.choice([0.0, 0.9]))
    config["nesterov"] = bool(config["momentum"] and rng.random() < 0.5)
    if not config["nesterov"] and rng.random() < 0.4:
        config["dampening"] = float(rng.choice([0.1, 0.5]))
    if rng.random() < 0.5:
        config["weight_decay"] = float(rng.choice([0.01, 0.2]))
    config["schedule"] = bool(rng.random() < 0.4)
    return config


def _mlx_tree(leaves: list) -> dict:
    """A nested tree of the leaves: dicts and a list, as model parameters are."""
    half = (len(leaves) + 1) // 2
    return {"layer": {f"w{i}": leaf for i, leaf in enumerate(leaves[:half])}, "rest": list(leaves[half:])}


def _tree_leaves(tree, path=""):
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from _tree_leaves(tree[key], f"{path}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tree_leaves(value, f"{path}/{i}")
    else:
        yield path, tree


def _mlx_optimizer(config: dict, cls=None):
    cls = cls or inertia.mlx.SGD
    rate = (lambda step: 0.2 * 0.8 ** step) if config["schedule"] else 0.1
    keys = ("momentum", "nesterov", "dampening", "weight_decay")
    return cls(rate, **{k: config[k] for k in keys if k in config})


def _run_mlx_pair(spy, config: dict, convert, steps=STEPS, cls=None, expected=None):
    rng = np.random.default_rng(config["seed"])
    dtype, shapes = config["dtype"], config["shapes"]
    values = draw_values(rng, shapes, dtype)
    stream = draw_gradients(rng, shapes, dtype, steps)
    ref_params = _mlx_tree([convert(v) for v in values])
    fast_params = _mlx_tree([convert(v) for v in values])
    reference, fast = _mlx_optimizer(config, cls), _mlx_optimizer(config, cls)
    for number, grads in enumerate(stream, start=1):
        where = f"step {number} of {config}"
        given = [to_numpy(leaf) for _, leaf in _tree_leaves(fast_params)]
        with reference_path(spy):
            ref_params = reference.apply_gradients(_mlx_tree([convert(g) for g in grads]), ref_params)
        mark = spy.mark()
        previous = fast_params
        fast_params = fast.apply_gradients(_mlx_tree([convert(g) for g in grads]), fast_params)
        answers = spy.since(mark)
        assert answers == (expected if expected is not None else [("step", host.DONE)]), f"{where}: kernel answers {answers}"
        assert_same([(p, to_numpy(v)) for p, v in _tree_leaves(ref_params)],
                    [(p, to_numpy(v)) for p, v in _tree_leaves(fast_params)], where)
        assert_same([(p, to_numpy(v)) for p, v in _tree_leaves(reference.state)],
                    [(p, to_numpy(v)) for p, v in _tree_leaves(fast.state)], where)
        # MLX's arrays are immutable: the step's inputs are only read
        assert_same([(p, to_numpy(v)) for p, v in _tree_leaves(previous)],
                    [(p, v) for (p, _), v in zip(_tree_leaves(previous), given)], f"{where}: inputs")


@pytest.mark.parametrize("index", range(RUNS_PER_FACE))
@pytest.mark.parametrize("trees", ["numpy", "torch"])
def test_mlx_face_random_configs(spy, monkeypatch, trees, index):
    config = _config("mlx-" + trees, index, _draw_mlx)
    config["threads"] = _threads(np.random.default_rng(config["seed"][:3]), monkeypatch)
    config["trees"] = trees
    if trees == "torch":
        torch = _torch()
        convert = lambda a: torch.from_numpy(np.array(a, copy=True))  # noqa: E731
    else:
        convert = lambda a: np.array(a, copy=True)  # noqa: E731
    _run_mlx_pair(spy, config, convert)


def test_the_random_draws_cover_every_option():
    """The seeded draws above do reach every option (so equality means something)."""
    keras = [_config("keras-" + t, i, _draw_keras) for t in ("numpy-variables", "numpy-bare", "torch-bare")
             for i in range(RUNS_PER_FACE)]
    legacy = [_config("legacy-" + b, i, _draw_legacy) for b in ("numpy", "torch") for i in range(RUNS_PER_FACE)]
    torch_face = [_config("torch", i, _draw_torch) for i in range(2 * RUNS_PER_FACE)]
    mlx = [_config("mlx-" + t, i, _draw_mlx) for t in ("numpy", "torch") for i in range(RUNS_PER_FACE)]
    for configs, keys in (
        (keras, ("weight_decay", "exclude_first", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                 "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps")),
        (legacy, ("clipnorm", "clipvalue", "global_clipnorm", "decay")),
        (torch_face, ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_overwrite_frequency", "scheduler",
                      "gradient_accumulation_steps")),
        (mlx, ("dampening", "weight_decay", "schedule")),
    ):
        for key in keys:
            assert any(c.get(key) for c in configs), key
        assert {c["dtype"] for c in configs} == set(DTYPES)
        assert any(c["momentum"] if "momentum" in c else c["groups"][0]["momentum"] for c in configs)
        assert any((0,) in c["shapes"] for c in configs)
        assert any(c.get("nesterov") or (c.get("groups") or [{}])[0].get("nesterov") for c in configs)
        assert any(any(int(np.prod(s)) > CHUNK for s in c["shapes"]) for c in configs)
        assert any(any(int(np.prod(s)) > 4 * CHUNK for s in c["shapes"]) for c in configs + keras)
        assert any(() in c["shapes"] for c in configs)
    assert any(c.get("clipvalue") and c.get("clipnorm") for c in legacy)
    assert any(c.get("clipvalue") and c.get("global_clipnorm") for c in legacy)
    assert {c["lr"] for c in keras} == {"float", "exponential", "cosine", "callable"}
    assert any(len(c["groups"]) > 1 for c in torch_face)
    assert any(any(g.get(k) for g in c["groups"]) for c in torch_face for k in ("dampening", "maximize", "weight_decay"))
    assert any(any(g.get("clipnorm") for g in c["groups"]) for c in torch_face)
    assert any(len({g["momentum"] for g in c["groups"]}) > 1 for c in torch_face)
    assert any(len({g["nesterov"] for g in c["groups"]}) > 1 for c in torch_face)
    assert any(c["missing"] and not c.get("use_ema") and c["groups"][0]["momentum"] for c in torch_face)
    assert any(c["missing"] and c.get("use_ema") for c in torch_face)


# ----------------------------------------------------------------------------------------
# 2. what a user changes between steps: the reference path's result, or its error
# ----------------------------------------------------------------------------------------
def _numpy_pair(spy, values, grads_of, make_optimizer, between=None, steps=3):
    """Steps a bare-ndarray target list on the reference path and on the fast path;
    ``between(arrays, number)`` runs before step ``number`` (both sides). Returns the
    outcomes, the final (state, arrays) of both sides, and the fast side's kernel answers per
    step."""
    results, answers = [], []
    for disabled in (True, False):
        arrays = [np.array(v, copy=True) for v in values]
        optimizer = make_optimizer()
        outcomes, answers = [], []
        for number in range(1, steps + 1):
            if between is not None:
                between(arrays, number)
            before = [a.copy() for a in arrays]
            mark = spy.mark()
            with host.disabled() if disabled else contextlib.nullcontext():
                result = outcome(lambda: optimizer.apply(grads_of(arrays, number), arrays))
            answers.append(spy.since(mark))
            if result != ("ok",):  # an error changes nothing
                assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(arrays, before)), f"step {number}: {result}"
            outcomes.append(result)
        results.append((outcomes, _keras_state(optimizer, arrays), arrays))
    (ref_outcomes, ref_state, _), (fast_outcomes, fast_state, _) = results
    assert fast_outcomes == ref_outcomes
    assert_same(ref_state, fast_state, "final state")
    return results, answers


def test_numpy_target_made_read_only_is_not_written(spy):
    rng = np.random.default_rng([SEED, 1])
    values = [rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(70_000).astype(np.float32)]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values] for _ in range(3)]
    frozen = {}

    def between(arrays, number):
        if number == 2:
            arrays[1].flags.writeable = False
            frozen[len(frozen)] = arrays[1].copy()

    results, answers = _numpy_pair(
        spy, values, lambda arrays, number: [g.copy() for g in grads[number - 1]],
        lambda: inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01), between,
    )
    ref_outcomes = results[0][0]
    assert ref_outcomes[0] == ("ok",)
    assert ref_outcomes[1][0] is TypeError and "mutable arrays" in ref_outcomes[1][1], ref_outcomes
    for k, (_, _, arrays) in enumerate(results):
        assert np.array_equal(arrays[1], frozen[k]), "a read-only array was written"
    assert answers[0] == [("step", host.DONE)]
    assert all(answer != host.DONE for a in answers[1:] for _, answer in a), answers


def move_memory(array: np.ndarray) -> bool:
    """Moves ``array``'s memory with ``ndarray.resize`` (grown, then back to its shape; a
    block grown in place does not move, so it grows further until it does)."""
    address, shape = array.ctypes.data, array.shape
    for k in range(6):
        array.resize((1 << (20 + k),), refcheck=False)
        array.resize(shape, refcheck=False)
        if array.ctypes.data != address:
            return True
    return False


def test_numpy_target_resized_in_place_is_written_where_it_now_is(spy):
    """``ndarray.resize`` moves an array's memory while the optimizer holds the same object:
    the kernel must find the move (and write the array's current memory), not write the freed
    one."""
    rng = np.random.default_rng([SEED, 2])
    n = 3000
    values = [rng.standard_normal(n).astype(np.float64), rng.standard_normal((4, 4)).astype(np.float64)]
    grads = [[rng.standard_normal(v.shape) for v in values] for _ in range(4)]
    moved = []

    def between(arrays, number):
        if number in (2, 4):
            moved.append(move_memory(arrays[0]))

    results, answers = _numpy_pair(
        spy, values, lambda arrays, number: [g.copy() for g in grads[number - 1]],
        lambda: inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True, weight_decay=0.05), between, steps=4,
    )
    assert all(moved), f"resize did not move the memory: {moved}"
    assert all(outcomes == ("ok",) for outcomes in results[0][0])
    assert answers[0] == [("step", host.DONE)] and answers[2] == [("step", host.DONE)]
    assert answers[1] == answers[3] == [("step", host.MOVED), ("step", host.DONE)], answers
    # the values after the steps: also what a by-hand run of the reference gives
    assert not np.array_equal(results[1][2][0], values[0])


def test_numpy_target_reshaped_in_place_gives_the_reference_error(spy):
    """``a.shape = ...`` reshapes a bare ndarray target in place (same memory, same size):
    the reference path then rejects a gradient of the old shape; the fast path must too
    (and must not write the array). The plan is kept (the same array objects): the kernel
    itself compares every array's shape with the plan's (``pointer_of`` in ``_kernels.c``).
    """
    rng = np.random.default_rng([SEED, 3])
    values = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(6).astype(np.float32)]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values] for _ in range(3)]

    def between(arrays, number):
        if number == 2:
            arrays[0].shape = (4, 3)

    results, answers = _numpy_pair(
        spy, values, lambda arrays, number: [g.copy() for g in grads[number - 1]],
        lambda: inertia.SGD(learning_rate=0.1, momentum=0.9), between,
    )
    assert results[0][0][1][0] is ValueError and "has shape (3, 4) but the variable has shape (4, 3)" in results[0][0][1][1]


@pytest.mark.parametrize("accumulation", [None, 2])
@pytest.mark.parametrize("targets", ["numpy-bare", "numpy-variables", "torch-bare"])
def test_gradient_of_the_right_size_but_another_shape_gives_the_reference_error(spy, targets, accumulation):
    rng = np.random.default_rng([SEED, 23])
    values = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values] for _ in range(4)]
    convert, make = (lambda a: np.array(a, copy=True)), (lambda a: np.array(a, copy=True))
    if targets == "torch-bare":
        torch = _torch()
        convert = make = lambda a: torch.from_numpy(np.array(a, copy=True))  # noqa: E731
    elif targets == "numpy-variables":
        make = lambda a: inertia.Variable(np.array(a, copy=True), name=f"w{a.ndim}")  # noqa: E731
    results = []
    for disabled in (True, False):
        variables = [make(v) for v in values]
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, gradient_accumulation_steps=accumulation)
        mark = spy.mark()
        outcomes = []
        for number, step in enumerate(grads, start=1):
            chosen = [convert(g) for g in step]
            if number >= 3:
                chosen[0] = chosen[0].reshape(4, 3)  # the same memory and size, another shape
            with host.disabled() if disabled else contextlib.nullcontext():
                outcomes.append(outcome(lambda: optimizer.apply(chosen, variables)))
        results.append((outcomes, _keras_state(optimizer, variables), spy.since(mark)))
    (ref_outcomes, ref_state, _), (fast_outcomes, fast_state, answers) = results
    assert ref_outcomes[2][0] is ValueError and "has shape (4, 3)" in ref_outcomes[2][1], ref_outcomes
    assert fast_outcomes == ref_outcomes
    assert_same(ref_state, fast_state, targets)
    assert len([a for a in answers if a[1] == host.DONE]) == 2, answers


@pytest.mark.parametrize("overlap", ["same-memory", "partial"])
def test_overlapping_numpy_targets_take_the_reference_path(spy, overlap):
    rng = np.random.default_rng([SEED, 4])
    base = rng.standard_normal(12).astype(np.float32)
    grads = [[rng.standard_normal(8).astype(np.float32) for _ in range(2)] for _ in range(3)]

    def run(disabled):
        if overlap == "same-memory":  # two distinct ndarray objects over the same memory
            b = base[:8].copy()
            targets = [b, b[:]]
        else:
            b = base.copy()
            targets = [b[:8], b[4:]]
        assert targets[0] is not targets[1] and np.shares_memory(*targets)
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1, use_ema=True)
        mark = spy.mark()
        with host.disabled() if disabled else contextlib.nullcontext():
            for step in grads:
                optimizer.apply([g.copy() for g in step], targets)
        return b, _keras_state(optimizer, targets), spy.since(mark)

    ref_b, ref_state, _ = run(True)
    fast_b, fast_state, answers = run(False)
    assert all(answer != host.DONE for _, answer in answers), answers
    assert_same([("b", ref_b)] + ref_state, [("b", fast_b)] + fast_state, overlap)


def test_gradient_aliasing_its_weight_gives_the_reference_result(spy):
    """``opt.apply([w], [w])``: the decay writes the weight, which is also the gradient."""
    rng = np.random.default_rng([SEED, 5])
    values = [rng.standard_normal(9).astype(np.float64), rng.standard_normal((2, 2)).astype(np.float64)]
    results, answers = _numpy_pair(
        spy, values, lambda arrays, number: [arrays[0], arrays[1] * 0.5],
        lambda: inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1),
    )
    assert all(answer != host.DONE for step in answers for _, answer in step), answers
    # ... while a copy of the same gradient does run in the kernel
    results, answers = _numpy_pair(
        spy, values, lambda arrays, number: [arrays[0].copy(), arrays[1] * 0.5],
        lambda: inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1),
    )
    assert answers == [[("step", host.DONE)]] * 3


def test_gradient_aliasing_a_slot_gives_the_reference_result(spy):
    rng = np.random.default_rng([SEED, 6])
    values = [rng.standard_normal(9).astype(np.float32)]
    holder = {}

    def make():
        holder["optimizer"] = inertia.SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
        return holder["optimizer"]

    def grads_of(arrays, number):
        optimizer = holder["optimizer"]
        if not optimizer.built:
            return [np.ones_like(arrays[0])]
        return [optimizer.momentums[0].value if number == 2 else optimizer._model_variables_moving_average[0].value]

    _, answers = _numpy_pair(spy, values, grads_of, make)
    assert answers[0] == [("step", host.DONE)]
    assert all(answer != host.DONE for step in answers[1:] for _, answer in step), answers


def test_misaligned_numpy_gradient_takes_the_reference_path(spy):
    rng = np.random.default_rng([SEED, 7])
    values = [rng.standard_normal(10).astype(np.float32)]
    raw = bytearray(4 * 10 + 1)

    def grads_of(arrays, number):
        misaligned = np.frombuffer(raw, dtype=np.float32, offset=1)
        assert not misaligned.flags.aligned
        misaligned[...] = np.linspace(-1, 1, 10, dtype=np.float32) * number
        return [misaligned]

    _, answers = _numpy_pair(spy, values, grads_of, lambda: inertia.SGD(learning_rate=0.1, momentum=0.9))
    assert all(answer != host.DONE for step in answers for _, answer in step), answers


class DoubledGradientSGD(inertia.SGD):
    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient * 2, variable, learning_rate)


class DoubledGradientLegacySGD(inertia.legacy.SGD):
    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient * 2, variable, learning_rate)


class DoubledGradientMlxSGD(inertia.mlx.SGD):
    def apply_single(self, gradient, parameter, state):
        return super().apply_single(gradient * 2, parameter, state)


@pytest.mark.parametrize("cls", [DoubledGradientSGD, DoubledGradientLegacySGD])
def test_subclass_overriding_update_step_keeps_the_reference_path(spy, cls):
    rng = np.random.default_rng([SEED, 8])
    values = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(CHUNK + 3).astype(np.float32)]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values] for _ in range(3)]
    mark = spy.mark()
    variables = [inertia.Variable(v.copy()) for v in values]
    optimizer = cls(learning_rate=0.1, momentum=0.9)
    for step in grads:
        optimizer.apply([g.copy() for g in step], variables)
    assert spy.since(mark) == []
    plain = inertia.SGD(learning_rate=0.1, momentum=0.9) if cls is DoubledGradientSGD else inertia.legacy.SGD(
        learning_rate=0.1, momentum=0.9)
    doubled = [inertia.Variable(v.copy()) for v in values]
    with reference_path(spy):
        for step in grads:
            plain.apply([g.copy() * 2 for g in step], doubled)
    assert_same([(str(i), v.numpy()) for i, v in enumerate(doubled)], [(str(i), v.numpy()) for i, v in enumerate(variables)], "subclass")


def test_mlx_subclass_overriding_apply_single_keeps_the_reference_path(spy):
    config = {"dtype": "float32", "shapes": [(3,), (CHUNK + 1,)], "momentum": 0.9, "nesterov": False, "schedule": False,
              "seed": [SEED, 9]}
    _run_mlx_pair(spy, config, lambda a: np.array(a, copy=True), cls=DoubledGradientMlxSGD, expected=[])


# --- torch ------------------------------------------------------------------------------
def _torch_face_pair(make_params, make_optimizer, grads_of, between=None, steps=3, spy=None):
    """Runs the torch face on the reference path and on the fast path; returns per side
    (params, optimizer, outcomes) and the fast side's kernel answers per step."""
    sides, answers = [], []
    for disabled in (True, False):
        params = make_params()
        optimizer = make_optimizer(params)
        outcomes, answers = [], []
        for number in range(1, steps + 1):
            if between is not None:
                between(params, number)
            for p, g in zip(params, grads_of(params, number)):
                p.grad = g
            mark = spy.mark()
            with host.disabled() if disabled else contextlib.nullcontext():
                outcomes.append(outcome(optimizer.step))
            answers.append(spy.since(mark))
        sides.append((params, optimizer, outcomes))
    (ref_params, reference, ref_outcomes), (fast_params, fast, fast_outcomes) = sides
    assert fast_outcomes == ref_outcomes
    assert_same(_torch_state(ref_params, reference), _torch_state(fast_params, fast), "torch face")
    return sides, answers


def test_torch_face_bumps_version_counters_as_the_reference_does(spy):
    torch = _torch()
    import inertia.torch

    rng = np.random.default_rng([SEED, 10])
    values = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(CHUNK + 5).astype(np.float32)]
    errors, versions = [], []
    for disabled in (True, False):
        params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
        optimizer = inertia.torch.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, use_ema=True,
                                      ema_overwrite_frequency=2)
        mark = spy.mark()
        history = []
        for _ in range(3):
            loss = sum((p * p).sum() for p in params)
            loss.backward(retain_graph=True)
            with host.disabled() if disabled else contextlib.nullcontext():
                optimizer.step()
            history.append([p._version for p in params])
            with pytest.raises(RuntimeError, match="modified by an inplace operation") as caught:
                loss.backward()  # the graph saved the parameters before the step
            errors.append(re.sub(r"version \d+", "version N", str(caught.value)))
            optimizer.zero_grad()
        answers = spy.since(mark)
        assert answers == ([] if disabled else [("step", host.DONE)] * 3)
        versions.append(history)
    assert versions[0] == versions[1], f"reference {versions[0]} vs fast {versions[1]}"
    assert errors[:3] == errors[3:]


def test_keras_face_on_torch_parameters_invalidates_stale_graphs(spy):
    torch = _torch()
    rng = np.random.default_rng([SEED, 11])
    values = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    for disabled in (True, False):
        params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
        mark = spy.mark()
        for _ in range(2):
            loss = sum((p * p).sum() for p in params)
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            before = [p._version for p in params]
            with host.disabled() if disabled else contextlib.nullcontext():
                optimizer.apply(list(grads), params)
            assert all(p._version > v for p, v in zip(params, before))
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                torch.autograd.grad(loss, params)
        assert spy.since(mark) == ([] if disabled else [("step", host.DONE)] * 2)


@pytest.mark.parametrize("how", ["data-transposed", "t_", "data-transposed-then-contiguous"])
def test_torch_face_transposed_parameter(spy, how):
    torch = _torch()
    import inertia.torch

    rng = np.random.default_rng([SEED, 12])
    values = [rng.standard_normal((5, 5)).astype(np.float64), rng.standard_normal(7).astype(np.float64)]
    grads = [[torch.from_numpy(rng.standard_normal(v.shape)) for v in values] for _ in range(4)]

    def between(params, number):
        if number == 2:
            if how == "t_":
                with torch.no_grad():
                    params[0].t_()
            else:
                params[0].data = params[0].data.t()
            assert not params[0].is_contiguous()
        if number == 3 and how == "data-transposed-then-contiguous":
            params[0].data = params[0].data.contiguous()

    _, answers = _torch_face_pair(
        lambda: [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values],
        lambda params: inertia.torch.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, use_ema=True),
        lambda params, number: [g.clone() for g in grads[number - 1]], between, steps=4, spy=spy,
    )
    assert answers[0] == [("step", host.DONE)]
    assert all(answer != host.DONE for _, answer in answers[1]), answers
    if how == "data-transposed-then-contiguous":  # new contiguous memory: planned again
        assert answers[2][-1] == ("step", host.DONE) and answers[3] == [("step", host.DONE)], answers


@pytest.mark.parametrize("where", ["gradient", "parameter"])
def test_torch_face_negative_bit_tensors(spy, where):
    torch = _torch()
    import inertia.torch

    rng = np.random.default_rng([SEED, 13])
    values = [rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    grads = [[torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32)) for v in values] for _ in range(3)]
    # x.conj().imag has the negative bit too, but it is strided (every other float): the
    # contiguity check alone would refuse it. torch._neg_view gives a contiguous one.
    assert x_conj_imag_is_negative_and_strided(torch)

    def make_params():
        params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
        if where == "parameter":
            params[0] = torch.nn.Parameter(torch._neg_view(torch.from_numpy(-values[0])))
            assert params[0].is_neg() and params[0].is_contiguous()
        return params

    def grads_of(params, number):
        chosen = [g.clone() for g in grads[number - 1]]
        if where == "gradient" and number >= 2:
            chosen[0] = torch._neg_view(-chosen[0])  # the same values, the other sign in memory
            assert chosen[0].is_neg() and chosen[0].is_contiguous()
        return chosen

    _, answers = _torch_face_pair(
        make_params,
        lambda params: inertia.torch.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True),
        grads_of, spy=spy,
    )
    if where == "gradient":
        assert answers[0] == [("step", host.DONE)]
        declined = answers[1:]
    else:
        declined = answers
    assert all(answer != host.DONE for step in declined for _, answer in step), answers


def x_conj_imag_is_negative_and_strided(torch) -> bool:
    view = torch.randn(4, dtype=torch.complex64).conj().imag
    return bool(view.is_neg()) and not view.is_contiguous()


@pytest.mark.parametrize("where", ["gradient", "parameter"])
def test_torch_face_misaligned_tensors(spy, where):
    torch = _torch()
    import inertia.torch

    rng = np.random.default_rng([SEED, 14])
    n = 10
    values = [rng.standard_normal(n).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)]
    grads = [[torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32)) for v in values] for _ in range(3)]
    buffers = []

    def misaligned(value):
        raw = bytearray(4 * value.size + 1)
        buffers.append(raw)
        tensor = torch.frombuffer(raw, dtype=torch.float32, offset=1, count=value.size)
        tensor.copy_(torch.from_numpy(np.ravel(value)))
        assert tensor.data_ptr() % 4 != 0 and tensor.is_contiguous()
        return tensor

    def make_params():
        params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
        if where == "parameter":
            params[0] = torch.nn.Parameter(misaligned(values[0]))
        return params

    def grads_of(params, number):
        chosen = [g.clone() for g in grads[number - 1]]
        if where == "gradient":
            chosen[0] = misaligned(chosen[0].numpy())
        return chosen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frombuffer of a writable bytearray
        _, answers = _torch_face_pair(
            make_params, lambda params: inertia.torch.SGD(params, lr=0.1, momentum=0.9, use_ema=True), grads_of, spy=spy,
        )
    assert all(answer != host.DONE for step in answers for _, answer in step), answers


def test_torch_face_overlapping_parameters_take_the_reference_path(spy):
    torch = _torch()
    import inertia.torch

    rng = np.random.default_rng([SEED, 15])
    base = rng.standard_normal(12).astype(np.float32)
    grads = [[torch.from_numpy(rng.standard_normal(8).astype(np.float32)) for _ in range(2)] for _ in range(3)]

    def make_params():
        shared = torch.from_numpy(base.copy())
        return [torch.nn.Parameter(shared[:8]), torch.nn.Parameter(shared[4:])]

    _, answers = _torch_face_pair(
        make_params, lambda params: inertia.torch.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda params, number: [g.clone() for g in grads[number - 1]], spy=spy,
    )
    assert all(answer != host.DONE for step in answers for _, answer in step), answers


def test_torch_face_gradient_aliasing_its_parameter(spy):
    torch = _torch()
    import inertia.torch

    rng = np.random.default_rng([SEED, 16])
    values = [rng.standard_normal(6).astype(np.float64)]
    _, answers = _torch_face_pair(
        lambda: [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values],
        lambda params: inertia.torch.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda params, number: [params[0].detach()], spy=spy,
    )
    assert all(answer != host.DONE for step in answers for _, answer in step), answers


def test_keras_face_on_torch_negative_and_misaligned_gradients(spy):
    torch = _torch()
    rng = np.random.default_rng([SEED, 17])
    values = [rng.standard_normal(10).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values] for _ in range(3)]
    raw = bytearray(4 * 10 + 1)
    results = []
    for disabled in (True, False):
        params = [torch.from_numpy(v.copy()) for v in values]
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
        mark = spy.mark()
        for number, step in enumerate(grads, start=1):
            chosen = [torch.from_numpy(g.copy()) for g in step]
            if number == 2:
                chosen[1] = torch._neg_view(-chosen[1])
            if number == 3:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    misaligned = torch.frombuffer(raw, dtype=torch.float32, offset=1, count=10)
                misaligned.copy_(chosen[0])
                chosen[0] = misaligned
            with host.disabled() if disabled else contextlib.nullcontext():
                optimizer.apply(chosen, params)
        answers = spy.since(mark)
        results.append(_keras_state(optimizer, params))
    assert answers[0] == ("step", host.DONE)
    assert all(answer != host.DONE for _, answer in answers[1:]), answers
    assert_same(results[0], results[1], "keras face on torch")


# ----------------------------------------------------------------------------------------
# 3. each face on its own
# ----------------------------------------------------------------------------------------
LEGACY_CASES = {
    "clipvalue+clipnorm": dict(clipvalue=0.3, clipnorm=0.8),
    "clipvalue+global_clipnorm": dict(clipvalue=0.3, global_clipnorm=1.7),
    "decay": dict(decay=0.2),
    "decay+nesterov+clipvalue": dict(decay=0.05, nesterov=True, clipvalue=0.5),
    "schedule+decay": dict(decay=0.1, lr="exponential"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LEGACY_CASES))
def test_legacy_face_on_its_own(spy, monkeypatch, case, dtype):
    monkeypatch.setenv("INERTIA_NUM_THREADS", "2")
    settings = dict(LEGACY_CASES[case])
    config = {"dtype": dtype, "shapes": [(3, 4), (), (4 * CHUNK + 17,), (5,)], "lr": settings.pop("lr", "float"),
              "momentum": 0.9, "nesterov": False, "seed": [SEED, 18, len(case)], **settings}
    targets_of = lambda values: [inertia.Variable(v.copy(), name=f"w{i}") for i, v in enumerate(values)]  # noqa: E731
    sides = _run_legacy_pair(spy, config, targets_of, lambda g: g.copy(), steps=5)
    # the options did change the numbers: the plain run differs
    plain = {k: v for k, v in config.items() if k not in ("clipvalue", "clipnorm", "global_clipnorm", "decay")}
    plain_sides = _run_legacy_pair(spy, plain, targets_of, lambda g: g.copy(), steps=5)
    assert not np.array_equal(sides[1][1][2].numpy(), plain_sides[1][1][2].numpy())


def test_keras_face_everything_on_its_own(spy, monkeypatch):
    monkeypatch.setenv("INERTIA_NUM_THREADS", "2")
    config = {"dtype": "float64", "shapes": [(3, 4), (), (4 * CHUNK + 17,)], "lr": "cosine", "momentum": 0.9,
              "nesterov": True, "weight_decay": 0.05, "exclude_first": True, "clipvalue": 0.5, "use_ema": True,
              "ema_momentum": 0.8, "ema_overwrite_frequency": 3, "loss_scale_factor": 3.0,
              "gradient_accumulation_steps": 2, "seed": [SEED, 19]}
    _run_keras_pair(spy, config, lambda values: [inertia.Variable(v.copy(), name=f"w{i}") for i, v in enumerate(values)],
                    lambda g: g.copy(), steps=8)


def test_torch_face_everything_on_its_own(spy, monkeypatch):
    _torch()
    monkeypatch.setenv("INERTIA_NUM_THREADS", "2")
    config = {"dtype": "float32", "shapes": [(3, 4), (), (4 * CHUNK + 17,), (9,)], "scheduler": True,
              "groups": [dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05, maximize=True, clipvalue=0.4),
                         dict(lr=0.03, momentum=0.9, nesterov=True, weight_decay=0.2, clipnorm=0.5)],
              "use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 3, "seed": [SEED, 20]}
    _run_torch_pair(spy, config, steps=6)


def test_mlx_face_everything_on_its_own(spy, monkeypatch):
    monkeypatch.setenv("INERTIA_NUM_THREADS", "2")
    for dampening, nesterov in ((0.3, False), (0.0, True)):
        config = {"dtype": "float32", "shapes": [(3, 4), (), (4 * CHUNK + 17,)], "momentum": 0.9, "nesterov": nesterov,
                  "dampening": dampening, "weight_decay": 0.05, "schedule": True, "seed": [SEED, 21]}
        _run_mlx_pair(spy, config, lambda a: np.array(a, copy=True), steps=5)


# Gradients with exact norms (``draw_gradients(exact=...)``): a norm clip's step then equals
# the reference's bit for bit. 1.7 is a threshold whose 1/c in float32 differs between
# rounding it once from double (Keras 3) and forming it in float32 (tf.clip_by_global_norm,
# tf.keras legacy); clipvalue 0.75 clips entries of 1 to 0.75, whose squares stay exact.
EXACT_SHAPES = {"small": [(3, 4), (), (5,)], "chunked": [(CHUNK + 1,), (3,)]}
EXACT_CASES = {
    "keras clipnorm": ("keras", dict(clipnorm=1.7)),
    "keras global_clipnorm": ("keras", dict(global_clipnorm=1.7)),
    "legacy clipnorm": ("legacy", dict(clipnorm=1.7)),
    "legacy global_clipnorm": ("legacy", dict(global_clipnorm=1.7)),
    "legacy clipvalue+clipnorm": ("legacy", dict(clipvalue=0.75, clipnorm=1.7)),
    "legacy clipvalue+global_clipnorm": ("legacy", dict(clipvalue=0.75, global_clipnorm=1.7)),
    "torch clipnorm": ("torch", dict(clipnorm=1.7)),
    "torch global_clipnorm": ("torch", dict(global_clipnorm=1.7)),
}


@pytest.mark.parametrize("layout", list(EXACT_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_norm_clips_are_bitwise_when_the_sums_are_exact(spy, monkeypatch, case, dtype, layout):
    monkeypatch.setenv("INERTIA_NUM_THREADS", "2")
    face, clip = EXACT_CASES[case]
    exact = "global" if "global_clipnorm" in clip else "per-tensor"
    config = {"dtype": dtype, "shapes": EXACT_SHAPES[layout], "exact": exact, "momentum": 0.9, "nesterov": False,
              "lr": "float", "seed": [SEED, 22, len(case)], **clip}
    if face == "keras":
        _run_keras_pair(spy, {**config, "weight_decay": 0.1}, lambda values: [v.copy() for v in values],
                        lambda g: g.copy())
        if dtype == "float32":  # and on torch tensors
            torch = _torch()
            _run_keras_pair(spy, {**config, "nesterov": True}, lambda values: [torch.from_numpy(v.copy()) for v in values],
                            lambda g: torch.from_numpy(g.copy()))
    elif face == "legacy":
        _run_legacy_pair(spy, config, lambda values: [inertia.Variable(v.copy(), name=f"w{i}") for i, v in enumerate(values)],
                         lambda g: g.copy())
    else:
        _torch()
        group = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}
        if "clipnorm" in clip:
            del config["clipnorm"]
            group["clipnorm"] = 1.7
        _run_torch_pair(spy, {**config, "groups": [group, dict(group, lr=0.3)], "scheduler": False})


def test_mlx_face_never_writes_arrays_the_caller_still_holds(spy):
    """MLX arrays are immutable: every tree a step returned (and every velocity it stored)
    keeps its values. The fast path reuses only the arrays nobody else references (a step's
    inputs, once the caller has moved on), so holding each step's tree keeps them all."""
    rng = np.random.default_rng([SEED, 77])
    params = {"w": rng.standard_normal(70_000).astype(np.float32), "b": [rng.standard_normal(5).astype(np.float32)]}
    opt = inertia.mlx.SGD(learning_rate=0.1, momentum=0.9)
    held, copies, velocities = [params], [{"w": params["w"].copy(), "b": [params["b"][0].copy()]}], []
    for step in range(4):
        grads = {"w": np.full(70_000, step + 1.0, np.float32), "b": [np.full(5, step + 1.0, np.float32)]}
        params = opt.apply_gradients(grads, params)
        held.append(params)
        copies.append({"w": params["w"].copy(), "b": [params["b"][0].copy()]})
        velocities.append((opt.state["w"]["v"], opt.state["w"]["v"].copy()))
    assert spy.answers == [("step", host.DONE)] * 4
    for tree, copy in zip(held, copies):
        assert np.array_equal(tree["w"], copy["w"]) and np.array_equal(tree["b"][0], copy["b"][0])
    for velocity, copy in velocities:
        assert np.array_equal(velocity, copy)
    # Dropping them lets the next steps reuse their memory: no new arrays once warm.
    del held, copies, velocities, tree, copy, velocity
    ids = []
    for step in range(4):
        params = opt.apply_gradients({"w": np.ones(70_000, np.float32), "b": [np.ones(5, np.float32)]}, params)
        ids.append(id(params["w"]))
    assert len(set(ids)) == 2  # two arrays take turns


def test_mlx_face_a_read_only_input_is_never_written_when_it_comes_back_as_a_spare(spy):
    """A read-only array the caller dropped after the first step comes back as a spare at
    the second: the kernel refuses to write it (the step takes the reference path, with the
    same numbers), the spares are dropped, and the third step is the kernel's again."""
    rng = np.random.default_rng([SEED, 78])
    start = rng.standard_normal(70_000).astype(np.float32)
    grads = [{"w": np.full(70_000, k + 1.0, np.float32)} for k in range(4)]
    results = []
    for fast in (True, False):
        opt = inertia.mlx.SGD(learning_rate=0.1, momentum=0.9)
        frozen = start.copy()
        frozen.flags.writeable = False
        tree = {"w": frozen}
        del frozen  # only the tree holds it now
        with contextlib.nullcontext() if fast else reference_path(spy):
            for g in grads:
                tree = opt.apply_gradients(g, tree)
        results.append(tree["w"].copy())
    assert np.array_equal(results[0], results[1])
    assert [answer for _, answer in spy.answers] == [host.DONE, host.DECLINED, host.DONE, host.DONE]


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlx_face_streams_big_outputs_with_the_reference_numbers(spy, dtype):
    """Outputs bigger than the caches (over 8 MiB) are stored non-temporally, in blocks, with
    tails shorter than a block and than a vector: the same bits as the reference path."""
    rng = np.random.default_rng([SEED, 91])
    size = 2_100_003 if dtype == "float32" else 1_050_001
    params = {"big": rng.standard_normal(size).astype(dtype), "odd": [rng.standard_normal(7).astype(dtype)]}
    grads = [{"big": rng.standard_normal(size).astype(dtype), "odd": [rng.standard_normal(7).astype(dtype)]} for _ in range(3)]
    results = []
    for fast in (True, False):
        opt = inertia.mlx.SGD(learning_rate=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)
        tree = {"big": params["big"].copy(), "odd": [params["odd"][0].copy()]}
        with contextlib.nullcontext() if fast else host.disabled():
            for g in grads:
                tree = opt.apply_gradients(g, tree)
        results.append((tree, opt.state))
    (fast_tree, fast_state), (ref_tree, ref_state) = results
    assert np.array_equal(fast_tree["big"], ref_tree["big"]) and np.array_equal(fast_tree["odd"][0], ref_tree["odd"][0])
    assert np.array_equal(fast_state["big"]["v"], ref_state["big"]["v"])
    assert spy.answers == [("step", host.DONE)] * 3


def test_mlx_face_pickles_without_its_plans_or_reused_arrays(spy):
    import pickle

    params = {"w": np.ones(70_000, np.float32)}
    opt = inertia.mlx.SGD(learning_rate=0.5, momentum=0.9)
    for _ in range(2):
        params = opt.apply_gradients({"w": np.ones(70_000, np.float32)}, params)
    assert opt._spares[0] is not None
    state = opt.__getstate__()
    assert "_spares" not in state and "_plans" not in state
    copy = pickle.loads(pickle.dumps(opt))
    again = copy.apply_gradients({"w": np.ones(70_000, np.float32)}, {"w": params["w"].copy()})
    ours = opt.apply_gradients({"w": np.ones(70_000, np.float32)}, params)
    assert np.array_equal(again["w"], ours["w"]) and int(copy.step) == int(opt.step) == 3
