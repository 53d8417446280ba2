"""The multi-tensor torch path (``inertia.multi_tensor``), the fast path for CUDA tensors.

It runs here on CPU tensors with the path forced (``_ON_CPU_TOO``) and the fused kernel
switched off, so that every CI machine checks its numbers against the reference path: bitwise,
except where a norm is involved (clipnorm, global_clipnorm), which torch sums in its own order.
On a machine with CUDA, the last test runs it on the GPU against the CPU reference.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest

import inertia
from conftest import requires
from inertia import kernels, multi_tensor, schedules

SHAPES = [(5, 3), (7,), (), (1,), (130,)]
STEPS = 6
NORM_TOLERANCES = {"float64": {"rtol": 1e-12, "atol": 1e-15}, "float32": {"rtol": 1e-6, "atol": 1e-7}}
CASES = {
    "plain": dict(learning_rate=0.05),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay_excluded": dict(momentum=0.9, weight_decay=0.1),
    "clipnorm": dict(momentum=0.9, clipnorm=0.5),
    "global_clipnorm": dict(momentum=0.5, global_clipnorm=1.0),
    "clipvalue": dict(momentum=0.5, clipvalue=0.1),
    "loss_scale": dict(momentum=0.9, loss_scale_factor=64.0),
    "ema_overwrite": dict(momentum=0.9, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3),
    "schedule": dict(learning_rate=schedules.ExponentialDecay(0.1, 2, 0.5), momentum=0.9, nesterov=True),
    "everything": dict(momentum=0.9, nesterov=True, weight_decay=0.05, clipnorm=1.0, use_ema=True,
                       ema_momentum=0.7, ema_overwrite_frequency=4, loss_scale_factor=4.0, learning_rate=0.07),
}


@pytest.fixture
def torch():
    return requires("torch")


def _count_steps(monkeypatch, function: str = "_step") -> list:
    """A one-item list that counts the calls of ``multi_tensor.<function>`` from now on (the
    Keras step by default)."""
    count = [0]
    original = getattr(multi_tensor, function)

    def counted(*args):
        count[0] += 1
        return original(*args)

    monkeypatch.setattr(multi_tensor, function, counted)
    return count


@pytest.fixture
def steps_taken(monkeypatch, torch):
    """Forces the path on CPU tensors, keeps the fused kernel out, counts the path's steps."""
    monkeypatch.setattr(multi_tensor, "_ON_CPU_TOO", True)
    monkeypatch.setattr(kernels, "_tried", True)
    monkeypatch.setattr(kernels, "_loaded", None)
    return _count_steps(monkeypatch)


def _data(dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(s), dtype) for s in SHAPES] for _ in range(STEPS)]
    return weights, grads


def _run(torch, settings: dict, jit_compile: bool, weights, grads, device="cpu", exclude=None):
    variables = [inertia.Variable(torch.tensor(w, device=device), name=f"v{i}") for i, w in enumerate(weights)]
    optimizer = inertia.SGD(jit_compile=jit_compile, **settings)
    if exclude:
        optimizer.exclude_from_weight_decay(var_names=exclude)
    history = []
    for step in grads:
        optimizer.apply([torch.tensor(g, device=device) for g in step], variables)
        history.append([np.array(v.numpy(), copy=True) for v in variables + optimizer.variables])
    return history


def _compare(got_history, want_history, tolerances):
    for number, (got, want) in enumerate(zip(got_history, want_history), start=1):
        assert len(got) == len(want)
        for index, (a, b) in enumerate(zip(got, want)):
            assert a.dtype == b.dtype and a.shape == b.shape
            if tolerances is None:
                assert np.array_equal(a, b), f"step {number}, variable {index}: max diff {np.max(np.abs(a - b))}"
            else:
                np.testing.assert_allclose(a, b, err_msg=f"step {number}, variable {index}", **tolerances)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_multi_tensor_path_equals_reference(torch, steps_taken, case, dtype):
    settings = CASES[case]
    weights, grads = _data(dtype)
    exclude = ["v1", "v3"] if settings.get("weight_decay") else None
    fast = _run(torch, settings, True, weights, grads, exclude=exclude)
    assert steps_taken[0] == STEPS - 1  # the first step builds through the reference path
    reference = _run(torch, settings, False, weights, grads, exclude=exclude)
    assert steps_taken[0] == STEPS - 1
    norm = settings.get("clipnorm") or settings.get("global_clipnorm")
    _compare(fast, reference, NORM_TOLERANCES[dtype] if norm else None)


def test_the_settings_change_the_numbers(torch, steps_taken):
    """Equality above means something: each feature moves the weights on this path."""
    weights, grads = _data("float32")
    plain = _run(torch, dict(momentum=0.9), True, weights, grads)[-1][:len(SHAPES)]
    for settings in (dict(nesterov=True), dict(weight_decay=0.1), dict(clipnorm=0.5), dict(global_clipnorm=1.0),
                     dict(clipvalue=0.1), dict(loss_scale_factor=4.0)):
        other = _run(torch, dict(momentum=0.9, **settings), True, weights, grads)[-1][:len(SHAPES)]
        assert not np.array_equal(other[-1], plain[-1]), settings


def test_a_new_learning_rate_takes_effect(torch, steps_taken):
    weights, grads = _data("float64")
    histories = []
    for jit_compile in (True, False):
        variables = [inertia.Variable(torch.tensor(w)) for w in weights]
        optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, jit_compile=jit_compile)
        for number, step in enumerate(grads):
            if number == 3:
                optimizer.learning_rate = 0.01
            optimizer.apply([torch.tensor(g) for g in step], variables)
        histories.append([v.numpy() for v in variables])
    assert steps_taken[0] == STEPS - 1
    for a, b in zip(*histories):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "problem", ["accumulation", "constraint", "missing_gradient", "float16", "dtype_mismatch", "subset_with_ema"]
)
def test_what_the_path_does_not_cover_takes_the_reference_path(torch, steps_taken, problem):
    dtype = "float16" if problem == "float16" else "float32"
    weights, grads = _data(dtype)
    settings = dict(momentum=0.9)
    if problem == "accumulation":
        settings["gradient_accumulation_steps"] = 2
    if problem == "subset_with_ema":
        settings["use_ema"] = True
    results = []
    for jit_compile in (True, False):
        variables = [inertia.Variable(torch.tensor(w), name=f"v{i}") for i, w in enumerate(weights)]
        if problem == "constraint":
            variables[1].constraint = lambda v: v * 0.5
        optimizer = inertia.SGD(jit_compile=jit_compile, **settings)
        optimizer.build(variables)
        for step in grads:
            tensors = [torch.tensor(g) for g in step]
            targets = variables
            if problem == "missing_gradient":
                tensors[2] = None
            if problem == "dtype_mismatch":
                tensors[0] = tensors[0].double()
            if problem == "subset_with_ema":
                tensors, targets = tensors[:2], variables[:2]
            with pytest.warns(UserWarning) if problem == "missing_gradient" else nullcontext():
                optimizer.apply(tensors, targets)
        results.append([v.numpy() for v in variables + optimizer.variables])
    assert steps_taken[0] == 0
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_on_cuda_it_equals_the_cpu_reference(torch, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    count = _count_steps(monkeypatch)
    for case in ("nesterov", "everything", "global_clipnorm"):
        for dtype in ("float32", "float64"):
            weights, grads = _data(dtype, seed=3)
            before = count[0]
            fast = _run(torch, CASES[case], True, weights, grads, device="cuda")
            assert count[0] - before >= STEPS - 1, case
            reference = _run(torch, CASES[case], False, weights, grads, device="cpu")
            _compare(fast, reference, NORM_TOLERANCES[dtype])


def test_cpu_tensors_stay_off_the_path_unless_forced(torch, monkeypatch):
    """On the CPU the fused kernel is the fast path; steps it declines (here: no kernel)
    take the reference path, not this one."""
    monkeypatch.setattr(kernels, "_tried", True)
    monkeypatch.setattr(kernels, "_loaded", None)
    count = _count_steps(monkeypatch)
    weights, grads = _data("float32")
    _run(torch, CASES["everything"], True, weights, grads)
    assert count[0] == 0


def test_ema_on_the_first_step_copies_the_weights_when_built_beforehand(torch, steps_taken):
    # After build(), the very first apply already takes the path: its EMA must copy the new
    # weights (momentum 0 on the first step), as the reference does. From w = 1, g = 1, lr 0.1:
    # w = 0.9 and the average 0.9 (an EMA with 0.8 from the zero slot would give 0.18).
    results = {}
    for jit_compile in (True, False):
        w = inertia.Variable(torch.tensor([1.0]), name="w")
        optimizer = inertia.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.8, jit_compile=jit_compile)
        optimizer.build([w])
        optimizer.apply([torch.tensor([1.0])], [w])
        average = next(s for s in optimizer.variables if s.name == "w_average")
        results[jit_compile] = (w.numpy().tolist(), average.numpy().tolist())
    assert steps_taken[0] == 1  # only the compiled run took the path
    assert results[True] == results[False] == ([np.float32(0.9)], [np.float32(0.9)])


def test_the_callers_gradients_are_left_as_they_were(torch, steps_taken):
    # The path may scale its own temporaries in place, never the tensors the caller passed.
    w = inertia.Variable(torch.tensor([1.0, 2.0]), name="w")
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    for _ in range(3):
        gradient = torch.tensor([1.0, 2.0])
        optimizer.apply([gradient], [w])
        assert torch.equal(gradient, torch.tensor([1.0, 2.0]))
    assert steps_taken[0] >= 2  # the later steps took the path


# --- inertia.torch.SGD (the heavy-ball step) on the multi-tensor path ------------------------
TORCH_FACE_GROUPS = {  # three param groups each, so every run mixes groups
    "plain": [dict(), dict(lr=0.2), dict(lr=0.05)],
    "momentum, dampening": [dict(momentum=0.9, dampening=0.5), dict(momentum=0.5), dict()],
    "nesterov, decay": [dict(momentum=0.9, nesterov=True, weight_decay=0.1), dict(momentum=0.8, weight_decay=0.01), dict()],
    "maximize": [dict(momentum=0.9, maximize=True, weight_decay=0.05), dict(maximize=True), dict(momentum=0.7)],
    "clipnorm, clipvalue": [dict(momentum=0.9, clipnorm=0.5), dict(momentum=0.9, clipvalue=0.2), dict(momentum=0.9)],
}
TORCH_FACE_WIDE = {  # optimizer-wide extras, over the "nesterov, decay" groups
    "global_clipnorm": dict(global_clipnorm=1.0),
    "ema": dict(use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3),
}


@pytest.fixture
def heavy_ball_steps(monkeypatch, torch):
    """Forces the path on CPU tensors, keeps the fused kernel out, counts the torch face's
    group steps on it."""
    monkeypatch.setattr(multi_tensor, "_ON_CPU_TOO", True)
    monkeypatch.setattr(kernels, "_tried", True)
    monkeypatch.setattr(kernels, "_loaded", None)
    return _count_steps(monkeypatch, "heavy_ball_group")


def _torch_face_run(torch, groups: list, wide: dict, dtype: str, foreach, missing: bool = False) -> list:
    """Parameters and state after each step of ``inertia.torch.SGD`` over three groups."""
    from inertia.torch import SGD

    weights, grads = _data(dtype)
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    spans = [params[:2], params[2:4], params[4:]]
    optimizer = SGD([{"params": span, **settings} for span, settings in zip(spans, groups)], lr=0.1,
                    foreach=foreach, **wide)
    history = []
    for number, step in enumerate(grads):
        for k, (p, g) in enumerate(zip(params, step)):
            p.grad = None if missing and k == (number % len(params)) else torch.tensor(g)
        optimizer.step()
        state = [t for p in params for t in optimizer.state[p].values()] if optimizer.state else []
        history.append([p.detach().numpy().copy() for p in params] + [t.numpy().copy() for t in state])
    return history


# the optimizer-wide extras run over the "nesterov, decay" groups
TORCH_FACE_RUNS = [(case, None) for case in TORCH_FACE_GROUPS] + [("nesterov, decay", wide) for wide in TORCH_FACE_WIDE]


@pytest.mark.parametrize("missing", [False, True], ids=["every gradient", "one missing each step"])
@pytest.mark.parametrize("case, wide", TORCH_FACE_RUNS, ids=[f"{c}+{w}" if w else c for c, w in TORCH_FACE_RUNS])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_face_multi_tensor_path_equals_its_reference_path(torch, heavy_ball_steps, case, wide, dtype, missing):
    groups, extras = TORCH_FACE_GROUPS[case], TORCH_FACE_WIDE.get(wide, {})
    fast = _torch_face_run(torch, groups, extras, dtype, foreach=None, missing=missing)
    assert heavy_ball_steps[0] >= STEPS  # a call per group with gradients, every step
    taken = heavy_ball_steps[0]
    reference = _torch_face_run(torch, groups, extras, dtype, foreach=False, missing=missing)
    assert heavy_ball_steps[0] == taken  # foreach=False: the per-parameter reference path
    norm = wide == "global_clipnorm" or case == "clipnorm, clipvalue"
    _compare(fast, reference, NORM_TOLERANCES[dtype] if norm else None)


def test_torch_face_multi_tensor_path_equals_torch_foreach(torch, heavy_ball_steps):
    """torch.optim.SGD(foreach=True) itself, on the same groups: the same numbers."""
    for case in ("plain", "momentum, dampening", "nesterov, decay", "maximize"):
        groups = TORCH_FACE_GROUPS[case]
        fast = _torch_face_run(torch, groups, {}, "float32", foreach=None)
        weights, grads = _data("float32")
        params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
        spans = [params[:2], params[2:4], params[4:]]
        optimizer = torch.optim.SGD([{"params": s, **g} for s, g in zip(spans, groups)], lr=0.1, foreach=True)
        for number, step in enumerate(grads):
            for p, g in zip(params, step):
                p.grad = torch.tensor(g)
            optimizer.step()
            for p, got in zip(params, fast[number]):
                assert np.array_equal(p.detach().numpy(), got), (case, number)


def test_torch_face_multi_tensor_path_leaves_gradients_alone_and_bumps_versions(torch, heavy_ball_steps):
    from inertia.torch import SGD

    w = torch.nn.Parameter(torch.ones(4))
    g = torch.full((4,), 0.5)
    optimizer = SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True, clipnorm=0.3)
    w.grad = g
    version = w._version
    optimizer.step()
    optimizer.step()
    assert heavy_ball_steps[0] == 2
    assert torch.equal(g, torch.full((4,), 0.5)) and w.grad is g
    assert w._version > version
    assert optimizer.state[w]["momentum_buffer"].data_ptr() != g.data_ptr()


@pytest.mark.parametrize("problem", ["accumulation", "foreach=False", "mixed dtypes", "sparse gradient"])
def test_torch_face_steps_the_multi_tensor_path_does_not_cover(torch, heavy_ball_steps, problem):
    from inertia.torch import SGD

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    if problem != "mixed dtypes":
        params[1] = torch.nn.Parameter(torch.ones(2))
    options = dict(lr=0.1, momentum=0.9)
    if problem == "accumulation":
        options["gradient_accumulation_steps"] = 2
    if problem == "foreach=False":
        options["foreach"] = False
    optimizer = SGD(params, **options)
    for p in params:
        p.grad = torch.ones_like(p)
    if problem == "sparse gradient":
        params[0].grad = torch.ones(3).to_sparse()
        optimizer.step()
        params[0].grad = torch.ones(3).to_sparse()
        optimizer.step()
        assert torch.equal(params[0].detach(), torch.full((3,), 1 - 0.1 - 0.1 * 1.9))  # torch's numbers, by hand
    else:
        optimizer.step()
        optimizer.step()
    assert heavy_ball_steps[0] == 0


def test_torch_face_on_cuda_equals_the_cpu_reference(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from inertia.torch import SGD

    for dtype in ("float32", "float64"):
        weights, grads = _data(dtype, seed=5)
        results = []
        for device, foreach in (("cuda", None), ("cpu", False)):
            params = [torch.nn.Parameter(torch.tensor(w, device=device)) for w in weights]
            optimizer = SGD([{"params": params[:3], "weight_decay": 0.1, "clipnorm": 0.5}, {"params": params[3:]}],
                            lr=0.1, momentum=0.9, nesterov=True, foreach=foreach, use_ema=True, ema_momentum=0.8)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = torch.tensor(g, device=device)
                optimizer.step()
            results.append([p.detach().cpu().numpy() for p in params])
        for a, b in zip(*results):
            np.testing.assert_allclose(a, b, **NORM_TOLERANCES[dtype])


# --- inertia.legacy.SGD (tf.keras legacy: float32 hyperparameters, its clip order) ----------
LEGACY_CASES = {
    "plain": dict(learning_rate=0.05),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "clipvalue then clipnorm": dict(momentum=0.9, clipvalue=0.3, clipnorm=0.5),
    "clipvalue then global_clipnorm": dict(momentum=0.5, clipvalue=0.3, global_clipnorm=1.7),
    "decay": dict(learning_rate=0.3, momentum=0.9, decay=0.5),
    "schedule": dict(learning_rate=schedules.ExponentialDecay(0.1, 2, 0.5), momentum=0.9, nesterov=True),
}


def _legacy_run(torch, settings: dict, weights, grads) -> list:
    import inertia.legacy

    variables = [inertia.Variable(torch.tensor(w), name=f"v{i}") for i, w in enumerate(weights)]
    optimizer = inertia.legacy.SGD(**settings)
    history = []
    for step in grads:
        optimizer.apply_gradients(zip([torch.tensor(g) for g in step], variables))
        history.append([np.array(v.numpy(), copy=True) for v in variables + optimizer.weights])
    return history


@pytest.mark.parametrize("case", list(LEGACY_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_legacy_multi_tensor_path_equals_its_reference_path(torch, steps_taken, monkeypatch, case, dtype):
    settings = LEGACY_CASES[case]
    weights, grads = _data(dtype)
    fast = _legacy_run(torch, settings, weights, grads)
    assert steps_taken[0] == STEPS - 1  # the first step builds through the reference path
    monkeypatch.setattr(multi_tensor, "_ON_CPU_TOO", False)
    reference = _legacy_run(torch, settings, weights, grads)
    assert steps_taken[0] == STEPS - 1
    norm = "clipnorm" in settings or "global_clipnorm" in settings
    _compare(fast, reference, NORM_TOLERANCES[dtype] if norm else None)


def test_legacy_global_clip_forms_its_reciprocal_in_the_dtype(torch, steps_taken, monkeypatch):
    """1/1.7 in float32 differs from 1/1.7 rounded once from double in the last bit: with
    the gradients' norm under the threshold, the scale is c times that reciprocal."""
    weights = [np.ones(3, np.float32)]
    grads = [[np.full(3, 0.1, np.float32)] for _ in range(STEPS)]
    settings = dict(learning_rate=1.0, global_clipnorm=1.7)
    fast = _legacy_run(torch, settings, weights, grads)
    monkeypatch.setattr(multi_tensor, "_ON_CPU_TOO", False)
    reference = _legacy_run(torch, settings, weights, grads)
    assert steps_taken[0] == STEPS - 1
    _compare(fast, reference, None)


# --- inertia.mlx.SGD (new tensors, two roundings) on torch trees -----------------------------
MLX_CASES = {
    "plain": dict(learning_rate=0.05),
    "momentum": dict(learning_rate=0.1, momentum=0.9),
    "nesterov": dict(learning_rate=0.1, momentum=0.9, nesterov=True),
    "decay, dampening": dict(learning_rate=0.1, momentum=0.8, weight_decay=0.05, dampening=0.3),
    "schedule": dict(learning_rate=lambda step: 0.1 * 0.5 ** step, momentum=0.9, weight_decay=0.01),
}


def _mlx_run(torch, settings: dict, dtype: str) -> list:
    from inertia.mlx import SGD

    weights, grads = _data("float64")
    to = getattr(torch, dtype)
    params = {"layer": {f"w{i}": torch.tensor(w, dtype=to) for i, w in enumerate(weights)}}
    optimizer = SGD(**settings)
    history = []
    for step in grads:
        gradients = {"layer": {f"w{i}": torch.tensor(g, dtype=to) for i, g in enumerate(step)}}
        params = optimizer.apply_gradients(gradients, params)
        leaves = [params["layer"][f"w{i}"] for i in range(len(weights))]
        if "v" in optimizer.state["layer"]["w0"]:
            leaves += [optimizer.state["layer"][f"w{i}"]["v"] for i in range(len(weights))]
        history.append([t.float().numpy().copy() if t.dtype == torch.bfloat16 else t.numpy().copy() for t in leaves])
    return history


@pytest.mark.parametrize("case", list(MLX_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_mlx_face_multi_tensor_path_equals_its_reference_path(torch, monkeypatch, case, dtype):
    monkeypatch.setattr(multi_tensor, "_ON_CPU_TOO", True)
    count = _count_steps(monkeypatch, "heavy_ball_out_of_place")
    fast = _mlx_run(torch, MLX_CASES[case], dtype)
    assert count[0] == STEPS
    from inertia.engine import host

    with host.disabled():
        reference = _mlx_run(torch, MLX_CASES[case], dtype)
    assert count[0] == STEPS
    _compare(fast, reference, None)


def test_mlx_face_gradients_with_autograd_history_keep_the_reference_path(torch, monkeypatch):
    """Gradients made with create_graph=True carry history the reference path keeps (its new
    tensors depend on them); no fast path takes them."""
    from inertia.mlx import SGD

    monkeypatch.setattr(multi_tensor, "_ON_CPU_TOO", True)
    count = _count_steps(monkeypatch, "heavy_ball_out_of_place")
    w = torch.ones(3)
    g = torch.full((3,), 0.5, requires_grad=True)
    new = SGD(learning_rate=0.1, momentum=0.9).apply_gradients({"w": g * 2}, {"w": w})
    assert count[0] == 0 and new["w"].requires_grad


def test_torch_face_half_tensors_keep_the_reference_path(torch, heavy_ball_steps):
    """float16 / bfloat16: torch's in-place multi-tensor ops round their scalars to the dtype,
    where the reference's per-parameter ops compute in float32: the path declines."""
    from inertia.torch import SGD

    for dtype in (torch.float16, torch.bfloat16):
        w = torch.nn.Parameter(torch.ones(4, dtype=dtype))
        optimizer = SGD([w], lr=0.1, momentum=0.9)
        for _ in range(2):
            w.grad = torch.full((4,), 0.3, dtype=dtype)
            optimizer.step()
    assert heavy_ball_steps[0] == 0
