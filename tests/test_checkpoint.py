"""``inertia.save`` / ``inertia.load``: one checkpoint file of an optimizer's state, every face.

What this file proves:

* Resuming is bit-exact. For each face and backend (Keras face and legacy face on NumPy,
  torch and JAX; the MLX face on NumPy, MLX, torch and JAX; the torch face with param groups,
  with FlatParameters and on its reference path), K uninterrupted steps equal k steps, a save
  (the optimizer by ``inertia.save``, the weights by the test), a fresh optimizer and fresh
  weights, a load and K-k more steps: every weight and every state array at rtol 0, dtypes
  included. The points chosen are the hard ones: mid-accumulation (a micro-step pending),
  after a skipped loss-scale step, mid-EMA (before an overwrite), with a schedule, momentum,
  Nesterov, weight decay and clipping, float16 and bfloat16 state. Two cases resume in a
  fresh Python process.
* The file: a safetensors file any reader opens without inertia (metadata JSON, arrays,
  bfloat16 / float16 kept), tensors under stable names, the same bytes for the same state.
* Loading checks everything first: format and version (a newer major refused, a newer minor
  read), not-a-checkpoint files (empty, garbage, truncated, plain safetensors), face and
  class, configuration (structural options always, the others unless accepted), names,
  shapes, dtypes, counter ranges, learning rates and loss scales; every refused load leaves
  the optimizer exactly as it was (built or not).
* Writing is atomic: a subprocess saving in a loop is killed with SIGKILL 50 times at
  seeded random moments; after each kill the file is a whole, loadable checkpoint equal to
  one of those written (the newest that completed). Temporary files of dead processes are
  removed, live ones kept; the data is synced before the rename, the directory after (where
  the system can: a directory it will not open or sync fails no save). The file is opened in
  binary mode, a file held open elsewhere (Windows) is replaced once free or named, a
  symbolic link stays a link, a replaced file keeps its permissions, and a path that cannot
  name a file is refused before any work.
* A save is a snapshot: a step another thread runs before the file is made changes nothing
  in it. Malformed metadata is a ValueError naming the file, never a crash deep inside.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import load_backend, requires

import inertia
from inertia import backend as backends
from inertia.schedules import ExponentialDecay

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def gradient_values(step: int, shape: tuple, seed: int = 0) -> np.ndarray:
    """The same numbers in every process: a function of (seed, step) only."""
    return np.random.default_rng([seed, step]).standard_normal(shape)


# ----------------------------------------------------------------------------------------
# the Keras faces: inertia.SGD, inertia.LossScaleOptimizer, inertia.legacy.SGD
# ----------------------------------------------------------------------------------------
def _everything_sgd():
    # Mid-accumulation at 4 (3 micro-steps per update), before the 3-update EMA overwrite.
    return inertia.SGD(
        learning_rate=ExponentialDecay(0.1, 3, 0.7), momentum=0.9, nesterov=True, weight_decay=0.01,
        global_clipnorm=1.0, use_ema=True, ema_overwrite_frequency=3, gradient_accumulation_steps=3, name="opt",
    )


def _loss_scaled():
    inner = inertia.SGD(0.05, momentum=0.9, clipnorm=0.5, use_ema=True, name="inner")
    return inertia.LossScaleOptimizer(inner, initial_scale=2.0**10, dynamic_growth_steps=3, name="scaled")


def _half_precision():
    return inertia.SGD(0.1, momentum=0.9, nesterov=True, clipvalue=0.5, name="half")


def _legacy():
    import inertia.legacy

    return inertia.legacy.SGD(learning_rate=0.1, momentum=0.9, nesterov=True, decay=0.05, clipvalue=0.5, clipnorm=1.0)


# name: (make, dtypes of the two variables, steps, save after, steps whose gradient is inf)
KERAS_CASES = {
    "momentum-nesterov-decay-clip-ema-accumulation-schedule": (_everything_sgd, ("float32", "float64"), 11, 4, ()),
    "loss-scale-after-a-skipped-step": (_loss_scaled, ("float32", "float32"), 9, 3, (2, 6)),
    "float16-and-bfloat16-state": (_half_precision, ("float16", "bfloat16"), 6, 3, ()),
    "legacy-nesterov-decay-clipvalue-clipnorm": (_legacy, ("float32", "float32"), 7, 3, ()),
}
SHAPES = {"kernel": (3, 2), "bias": (2,)}


def keras_weights(backend: str, dtypes: tuple, values: dict | None = None) -> list:
    ops = backends.get(backend)
    weights = []
    for (name, shape), dtype in zip(SHAPES.items(), dtypes):
        value = values[name] if values is not None else np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
        array = np.asarray(value)
        if array.dtype.name == "bfloat16":
            array = array.astype(np.float32)  # exact; every backend reads float32
        weights.append(inertia.Variable(ops.asarray(array, dtype=dtype), name=name))
    return weights


def keras_steps(opt, weights: list, start: int, stop: int, nonfinite=()) -> None:
    ops = weights[0].backend
    scale = 1000.0 if isinstance(opt, inertia.LossScaleOptimizer) else 1.0
    for step in range(start, stop):
        grads = []
        for index, w in enumerate(weights):
            g = gradient_values(step, w.shape, seed=index) * scale
            if step in nonfinite and index == 0:
                g.reshape(-1)[0] = np.inf
            grads.append(ops.asarray(g, dtype=w.dtype))
        opt.apply_gradients(list(zip(grads, weights)))


def keras_state(opt) -> dict:
    variables = opt.variables() if callable(opt.variables) else opt.variables
    state = {v.path: v.numpy() for v in variables}
    state["(learning rate)"] = np.asarray(opt._learning_rate.numpy()) if hasattr(opt._learning_rate, "numpy") else None
    return state


def assert_same_arrays(expected: dict, actual: dict) -> None:
    assert list(expected) == list(actual)
    for key in expected:
        if expected[key] is None:
            assert actual[key] is None, key
            continue
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key, strict=True)


@pytest.mark.parametrize("backend_name", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("case", list(KERAS_CASES))
def test_keras_faces_resume_bit_exact(tmp_path, case, backend_name):
    load_backend(backend_name)
    make, dtypes, steps, cut, nonfinite = KERAS_CASES[case]
    full, full_weights = make(), keras_weights(backend_name, dtypes)
    keras_steps(full, full_weights, 0, steps, nonfinite)

    opt, weights = make(), keras_weights(backend_name, dtypes)
    keras_steps(opt, weights, 0, cut, nonfinite)
    path = tmp_path / "opt.safetensors"
    inertia.save(opt, path)
    saved = {w.name: w.numpy() for w in weights}  # the weights are the test's to save
    if case.startswith("momentum"):
        assert int(opt._iterations.numpy()) % 3 != 0  # a micro-step is pending
    if case.startswith("loss-scale"):
        assert float(opt.dynamic_scale.numpy()) == 2.0**9  # the skipped step halved it
    del opt, weights

    resumed, resumed_weights = make(), keras_weights(backend_name, dtypes, saved)
    inertia.load(resumed, path, var_list=resumed_weights)
    keras_steps(resumed, resumed_weights, cut, steps, nonfinite)
    assert_same_arrays(keras_state(full), keras_state(resumed))
    assert_same_arrays({w.name: w.numpy() for w in full_weights}, {w.name: w.numpy() for w in resumed_weights})


def test_half_precision_state_keeps_its_dtypes_in_the_file(tmp_path):
    import safetensors

    opt, weights = _half_precision(), keras_weights("numpy", ("float16", "bfloat16"))
    keras_steps(opt, weights, 0, 2)
    path = tmp_path / "half.safetensors"
    inertia.save(opt, path)
    header = dict(safetensors.deserialize(path.read_bytes()))
    assert {name: header[name]["dtype"] for name in ("kernel_momentum", "bias_momentum", "iteration", "learning_rate")} == {
        "kernel_momentum": "F16", "bias_momentum": "BF16", "iteration": "I32", "learning_rate": "F32",
    }


# ----------------------------------------------------------------------------------------
# the torch face
# ----------------------------------------------------------------------------------------
TORCH_CASES = ("groups", "groups-reference-path", "flat-parameters")


def torch_setup(case: str):
    torch = requires("torch")
    import inertia.torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    common = dict(lr=0.1, momentum=0.9, nesterov=True, use_ema=True, ema_overwrite_frequency=3, gradient_accumulation_steps=2)
    if case == "flat-parameters":
        params = inertia.torch.FlatParameters(model.parameters())
        opt = inertia.torch.SGD(params, weight_decay=0.01, global_clipnorm=1.0, **common)
    else:
        kernels = [p for n, p in model.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        groups = [{"params": kernels, "weight_decay": 0.01}, {"params": biases, "clipnorm": 0.5}]
        opt = inertia.torch.SGD(groups, foreach=False if case.endswith("reference-path") else None, **common)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, scheduler


def torch_steps(model, opt, scheduler, start: int, stop: int) -> None:
    import torch

    for step in range(start, stop):
        x = torch.from_numpy(gradient_values(step, (5, 3))).float()
        y = torch.from_numpy(gradient_values(step, (5, 1), seed=1)).float()
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        scheduler.step()


def torch_state(opt) -> dict:
    ops = backends.get("torch")
    state_dict = opt.state_dict()
    flat = {}
    for index, entries in sorted(state_dict["state"].items()):
        for key, value in sorted(entries.items()):
            flat[f"state.{index}.{key}"] = ops.to_numpy(value)
    for number, group in enumerate(state_dict["param_groups"]):
        for key, value in sorted(group.items()):
            flat[f"group.{number}.{key}"] = np.asarray(value if not hasattr(value, "numpy") else ops.to_numpy(value))
    flat["counters"] = np.asarray([opt._micro_steps, opt._updates])
    return flat


def torch_weights(model) -> dict:
    ops = backends.get("torch")
    return {name: ops.to_numpy(value) for name, value in model.state_dict().items()}


def torch_resume(case: str, workdir: Path, stop: int) -> tuple:
    """The second half of a torch run: fresh model, optimizer and scheduler, state loaded."""
    import torch

    model, opt, scheduler = torch_setup(case)
    model.load_state_dict(torch.load(workdir / "model.pt"))
    scheduler.load_state_dict(torch.load(workdir / "scheduler.pt"))
    inertia.load(opt, workdir / "opt.safetensors")
    torch_steps(model, opt, scheduler, stop // 2 + 1, stop)
    return model, opt


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_face_resumes_bit_exact(tmp_path, case):
    import torch

    steps, cut = 9, 5  # 5 micro-steps with 2 per update: one pending; 2 updates: EMA overwrite at 3
    model, opt, scheduler = torch_setup(case)
    torch_steps(model, opt, scheduler, 0, steps)

    half_model, half_opt, half_scheduler = torch_setup(case)
    torch_steps(half_model, half_opt, half_scheduler, 0, cut)
    assert (half_opt._micro_steps, half_opt._updates) == (5, 2)
    inertia.save(half_opt, tmp_path / "opt.safetensors")
    torch.save(half_model.state_dict(), tmp_path / "model.pt")
    torch.save(half_scheduler.state_dict(), tmp_path / "scheduler.pt")
    del half_model, half_opt, half_scheduler

    resumed_model, resumed_opt = torch_resume(case, tmp_path, steps)
    assert_same_arrays(torch_state(opt), torch_state(resumed_opt))
    assert_same_arrays(torch_weights(model), torch_weights(resumed_model))
    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.1 * 0.5**4


def test_torch_face_keeps_bfloat16_buffers_and_tensor_learning_rates(tmp_path):
    import safetensors
    import torch

    import inertia.torch

    def make():
        w = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.bfloat16))
        return w, inertia.torch.SGD([w], lr=torch.tensor(0.25, dtype=torch.float64), momentum=0.9, dampening=0.1)

    w, opt = make()
    for step in range(3):
        w.grad = torch.from_numpy(gradient_values(step, (6,))).to(torch.bfloat16)
        opt.step()
    path = tmp_path / "bf16.safetensors"
    inertia.save(opt, path)
    header = dict(safetensors.deserialize(path.read_bytes()))
    assert header["state.0.momentum_buffer"]["dtype"] == "BF16"
    assert header["param_groups.0.lr"]["dtype"] == "F64"
    w2, opt2 = make()
    inertia.load(opt2, path)
    assert opt2.state[w2]["momentum_buffer"].dtype == torch.bfloat16
    assert torch.equal(opt2.state[w2]["momentum_buffer"], opt.state[w]["momentum_buffer"])
    assert opt2.param_groups[0]["lr"].dtype == torch.float64


def test_torch_state_is_written_whatever_its_memory_layout(tmp_path):
    """Non-contiguous, channels-last, offset and negated-view tensors are written as their
    values, row-major (a GPU tensor takes the same copy to the host)."""
    import safetensors.numpy
    import torch

    import inertia.torch

    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((3, 2), (2, 3, 4, 5), (4,), (2, 3))]
    opt = inertia.torch.SGD(params, lr=0.1, momentum=0.9)
    base = torch.arange(24, dtype=torch.float32)
    buffers = [
        base[:6].reshape(2, 3).t(),  # transposed
        torch.arange(120, dtype=torch.float32).reshape(2, 3, 4, 5).to(memory_format=torch.channels_last),
        base[10:14],  # an offset into a larger storage
        base[:6].reshape(2, 3)._neg_view(),  # torch's lazy negation
    ]
    for param, buffer in zip(params, buffers):
        opt.state[param]["momentum_buffer"] = buffer
    inertia.save(opt, tmp_path / "c")
    arrays = safetensors.numpy.load_file(str(tmp_path / "c"))
    for index, buffer in enumerate(buffers):
        np.testing.assert_array_equal(arrays[f"state.{index}.momentum_buffer"], buffer.resolve_neg().numpy(), strict=True)
    fresh = inertia.torch.SGD([torch.nn.Parameter(torch.zeros(p.shape)) for p in params], lr=0.1, momentum=0.9)
    inertia.load(fresh, tmp_path / "c")
    for index, buffer in enumerate(buffers):
        assert torch.equal(fresh.state_dict()["state"][index]["momentum_buffer"], buffer)


# ----------------------------------------------------------------------------------------
# the MLX face
# ----------------------------------------------------------------------------------------
def _mlx_scheduled():
    import inertia.mlx

    return inertia.mlx.SGD(learning_rate=lambda step: 0.1 * 0.8**step, momentum=0.9, weight_decay=0.01, dampening=0.1)


def _mlx_nesterov():
    import inertia.mlx

    return inertia.mlx.SGD(learning_rate=0.05, momentum=0.9, nesterov=True)


MLX_CASES = {"schedule-decay-dampening": (_mlx_scheduled, "float32"), "nesterov-float16": (_mlx_nesterov, "float16")}


def mlx_ops(backend: str):
    if backend == "mlx":
        requires("mlx.core")
    else:
        load_backend(backend)
    return backends.get(backend)


def mlx_params(ops, dtype: str, values: dict | None = None) -> dict:
    shapes = {"layer.w": (3, 2), "layer.b": (2,), "scale.0": ()}
    arrays = {
        key: ops.asarray(values[key] if values else np.linspace(-1, 1, int(np.prod(shape))).reshape(shape), dtype=dtype)
        for key, shape in shapes.items()
    }
    return {"layer": {"w": arrays["layer.w"], "b": arrays["layer.b"]}, "scale": [arrays["scale.0"]]}


def mlx_leaves(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in mlx_leaves(value, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in mlx_leaves(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: backends.of(tree).to_numpy(tree)}


def mlx_steps(opt, params: dict, ops, start: int, stop: int) -> dict:
    for step in range(start, stop):
        leaves = mlx_leaves(params)
        grads = {key: ops.asarray(gradient_values(step, value.shape, seed=i), dtype=ops.dtype_name(params["layer"]["w"]))
                 for i, (key, value) in enumerate(leaves.items())}
        tree = {"layer": {"w": grads["layer.w"], "b": grads["layer.b"]}, "scale": [grads["scale.0"]]}
        params = opt.apply_gradients(tree, params)
    return params


@pytest.mark.parametrize("backend_name", ["numpy", "mlx", "torch", "jax"])
@pytest.mark.parametrize("case", list(MLX_CASES))
def test_mlx_face_resumes_bit_exact(tmp_path, case, backend_name):
    ops = mlx_ops(backend_name)
    make, dtype = MLX_CASES[case]
    steps, cut = 7, 3
    full = make()
    full_params = mlx_steps(full, mlx_params(ops, dtype), ops, 0, steps)

    half = make()
    half_params = mlx_steps(half, mlx_params(ops, dtype), ops, 0, cut)
    inertia.save(half, tmp_path / "opt.safetensors")
    saved = mlx_leaves(half_params)
    del half, half_params

    resumed, params = make(), mlx_params(ops, dtype, saved)
    if backend_name in ("torch", "jax"):
        resumed.init(params)  # checked against the parameters; the other backends take the file's tree
    inertia.load(resumed, tmp_path / "opt.safetensors")
    params = mlx_steps(resumed, params, ops, cut, steps)
    assert_same_arrays(mlx_leaves(full.state), mlx_leaves(resumed.state))
    assert_same_arrays(mlx_leaves(full_params), mlx_leaves(params))
    assert type(resumed.state["scale"]) is list


def test_state_moves_between_array_libraries(tmp_path):
    torch = requires("torch")
    import inertia.mlx

    mlx_opt = inertia.mlx.SGD(0.1, momentum=0.9)
    mlx_steps(mlx_opt, mlx_params(backends.get("numpy"), "float32"), backends.get("numpy"), 0, 2)
    inertia.save(mlx_opt, tmp_path / "mlx.safetensors")
    on_torch = inertia.mlx.SGD(0.1, momentum=0.9)
    on_torch.init(mlx_params(backends.get("torch"), "float32"))
    inertia.load(on_torch, tmp_path / "mlx.safetensors")
    assert on_torch.state["step"].dtype == torch.int64 and int(on_torch.state["step"]) == 2  # uint64 on NumPy
    assert isinstance(on_torch.state["layer"]["w"]["v"], torch.Tensor)
    assert_same_arrays(mlx_leaves(mlx_opt.state["layer"]), mlx_leaves(on_torch.state["layer"]))

    keras_opt, weights = _everything_sgd(), keras_weights("numpy", ("float32", "float32"))
    keras_steps(keras_opt, weights, 0, 4)
    inertia.save(keras_opt, tmp_path / "keras.safetensors")
    torch_weights_ = keras_weights("torch", ("float32", "float32"), {w.name: w.numpy() for w in weights})
    moved = _everything_sgd()
    inertia.load(moved, tmp_path / "keras.safetensors", var_list=torch_weights_)
    assert all(isinstance(v.value, torch.Tensor) for v in moved.variables)
    assert_same_arrays(keras_state(keras_opt), keras_state(moved))


def test_state_an_array_library_cannot_hold_is_refused_not_narrowed(tmp_path):
    """An MLX-face optimizer not yet initialized takes the file's arrays in the library they
    were saved from; JAX without x64 cannot hold float64 (it makes float32 of it, warning)."""
    load_backend("jax")
    import jax
    import jax.numpy as jnp

    import inertia.mlx

    opt = inertia.mlx.SGD(0.1, momentum=0.9)
    opt.apply_gradients({"w": jnp.ones(3, jnp.float64)}, {"w": jnp.ones(3, jnp.float64)})
    inertia.save(opt, tmp_path / "c")
    jax.config.update("jax_enable_x64", False)
    try:
        fresh = inertia.mlx.SGD(0.1, momentum=0.9)
        with pytest.raises(ValueError, match="its tensor 'w.v' is float64, which jax arrays cannot hold here"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # JAX's "float64 is not available"
                inertia.load(fresh, tmp_path / "c")
        assert list(fresh.state) == ["step", "learning_rate"] and int(fresh.step) == 0
    finally:
        jax.config.update("jax_enable_x64", True)


# ----------------------------------------------------------------------------------------
# resuming in a fresh process
# ----------------------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import pickle, sys
    from pathlib import Path
    sys.path[:0] = [{tests!r}, {src!r}]
    import test_checkpoint as t
    workdir = Path(sys.argv[1])
    make, dtypes, steps, cut, nonfinite = t.KERAS_CASES["loss-scale-after-a-skipped-step"]
    opt = make()
    weights = t.keras_weights("numpy", dtypes, pickle.loads((workdir / "weights.pkl").read_bytes()))
    t.inertia.load(opt, workdir / "keras.safetensors", var_list=weights)
    t.keras_steps(opt, weights, cut, steps, nonfinite)
    model, torch_opt = t.torch_resume("groups", workdir, 9)
    result = dict(
        keras_state=t.keras_state(opt), keras_weights={{w.name: w.numpy() for w in weights}},
        torch_state=t.torch_state(torch_opt), torch_weights=t.torch_weights(model),
    )
    (workdir / "result.pkl").write_bytes(pickle.dumps(result))
    """
).format(tests=str(TESTS), src=str(SRC))


def test_resuming_in_a_fresh_process_is_bit_exact(tmp_path):
    import torch

    make, dtypes, steps, cut, nonfinite = KERAS_CASES["loss-scale-after-a-skipped-step"]
    full, full_weights = make(), keras_weights("numpy", dtypes)
    keras_steps(full, full_weights, 0, steps, nonfinite)
    opt, weights = make(), keras_weights("numpy", dtypes)
    keras_steps(opt, weights, 0, cut, nonfinite)
    inertia.save(opt, tmp_path / "keras.safetensors")
    (tmp_path / "weights.pkl").write_bytes(pickle.dumps({w.name: w.numpy() for w in weights}))

    model, torch_opt, scheduler = torch_setup("groups")
    torch_steps(model, torch_opt, scheduler, 0, 9)
    half_model, half_opt, half_scheduler = torch_setup("groups")
    torch_steps(half_model, half_opt, half_scheduler, 0, 5)
    inertia.save(half_opt, tmp_path / "opt.safetensors")
    torch.save(half_model.state_dict(), tmp_path / "model.pt")
    torch.save(half_scheduler.state_dict(), tmp_path / "scheduler.pt")

    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    result = pickle.loads((tmp_path / "result.pkl").read_bytes())
    assert_same_arrays(keras_state(full), result["keras_state"])
    assert_same_arrays({w.name: w.numpy() for w in full_weights}, result["keras_weights"])
    assert_same_arrays(torch_state(torch_opt), result["torch_state"])
    assert_same_arrays(torch_weights(model), result["torch_weights"])


# ----------------------------------------------------------------------------------------
# the file
# ----------------------------------------------------------------------------------------
def test_the_file_opens_without_inertia(tmp_path):
    import ml_dtypes  # noqa: F401  (NumPy learns the name bfloat16)
    import safetensors
    import safetensors.numpy

    opt, weights = _half_precision(), keras_weights("numpy", ("float32", "bfloat16"))
    keras_steps(opt, weights, 0, 2)
    path = tmp_path / "opt.safetensors"
    inertia.save(opt, path)
    with safetensors.safe_open(str(path), "np") as handle:
        document = json.loads(handle.metadata()["inertia"])
    arrays = safetensors.numpy.load_file(str(path))
    assert document["format"] == "inertia.optimizer-checkpoint" and document["format_version"] == "1.0"
    assert document["face"] == "keras" and document["class"] == "inertia.sgd.SGD" and document["backend"] == "numpy"
    assert document["config"]["momentum"] == 0.9 and document["config"]["nesterov"] is True
    assert document["counters"] == {"iteration": 2} and document["scalars"] == {"learning_rate": float(np.float32(0.1))}
    assert document["tensors"]["kernel_momentum"] == {"role": "momentum", "variable": "kernel"}
    assert sorted(arrays) == sorted(document["tensors"]) == ["bias_momentum", "iteration", "kernel_momentum", "learning_rate"]
    np.testing.assert_array_equal(arrays["kernel_momentum"], opt.momentums[0].numpy(), strict=True)
    np.testing.assert_array_equal(arrays["bias_momentum"], opt.momentums[1].numpy(), strict=True)
    assert arrays["bias_momentum"].dtype.name == "bfloat16"


def test_tensor_names_are_the_faces_own(tmp_path):
    torch = requires("torch")
    import inertia.mlx
    import inertia.torch

    w = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(3))
    torch_opt = inertia.torch.SGD([{"params": [w]}, {"params": [b]}], lr=0.1, momentum=0.9, use_ema=True)
    w.grad, b.grad = torch.ones(2), torch.ones(3)
    torch_opt.step()
    inertia.save(torch_opt, tmp_path / "torch.safetensors")
    mlx_opt = inertia.mlx.SGD(0.1, momentum=0.9)
    mlx_opt.apply_gradients({"layer": {"w": np.ones(2, np.float32)}}, {"layer": {"w": np.ones(2, np.float32)}})
    inertia.save(mlx_opt, tmp_path / "mlx.safetensors")
    scaled = _loss_scaled()
    scaled.build(keras_weights("numpy", ("float32", "float32")))
    inertia.save(scaled, tmp_path / "keras.safetensors")

    def table(name):
        return inertia.checkpoint.read_metadata(tmp_path / name)["tensors"]

    assert table("torch.safetensors") == {
        "state.0.momentum_buffer": {"role": "momentum", "param": 0}, "state.0.average": {"role": "ema_average", "param": 0},
        "state.1.momentum_buffer": {"role": "momentum", "param": 1}, "state.1.average": {"role": "ema_average", "param": 1},
    }
    assert table("mlx.safetensors") == {
        "step": {"role": "step"}, "learning_rate": {"role": "learning_rate"},
        "layer.w.v": {"role": "velocity", "parameter": "layer.w"},
    }
    assert list(table("keras.safetensors")) == [
        "iteration", "learning_rate", "step_counter", "dynamic_scale", "inner_optimizer/iteration",
        "inner_optimizer/learning_rate", "inner_optimizer/kernel_average", "inner_optimizer/bias_average",
        "inner_optimizer/kernel_momentum", "inner_optimizer/bias_momentum",
    ]


def test_the_same_state_gives_the_same_bytes(tmp_path):
    opt, weights = _everything_sgd(), keras_weights("numpy", ("float32", "float32"))
    keras_steps(opt, weights, 0, 4)
    inertia.save(opt, tmp_path / "a")
    inertia.save(opt, tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_an_unbuilt_optimizer_round_trips_without_variables(tmp_path):
    opt = inertia.SGD(0.25, momentum=0.9)
    opt.learning_rate = 0.125  # state: restored from the file
    inertia.save(opt, tmp_path / "c")
    fresh = inertia.SGD(0.25, momentum=0.9)
    inertia.load(fresh, tmp_path / "c")
    assert not fresh.built and float(fresh.learning_rate) == 0.125


# ----------------------------------------------------------------------------------------
# loading checks everything first
# ----------------------------------------------------------------------------------------
def rewrite(source: Path, target: Path, *, tensors=None, document=None) -> Path:
    """A copy of a (float32) checkpoint with tensors replaced / removed (None) and the metadata edited."""
    import safetensors
    import safetensors.numpy

    with safetensors.safe_open(str(source), "np") as handle:
        doc = json.loads(handle.metadata()["inertia"])
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, value in (tensors or {}).items():
        if value is None:
            arrays.pop(name)
            doc["tensors"].pop(name)
        else:
            arrays[name] = np.asarray(value)
            doc["tensors"].setdefault(name, {"role": "variable"})
    if document is not None:
        document(doc)
    safetensors.numpy.save_file(arrays, str(target), metadata={"inertia": json.dumps(doc)})
    return target


@pytest.fixture
def saved_keras(tmp_path):
    """A checkpoint of a 3-step SGD, and a built optimizer in another state (1 step)."""
    opt, weights = inertia.SGD(0.1, momentum=0.9, name="opt"), keras_weights("numpy", ("float32", "float32"))
    keras_steps(opt, weights, 0, 3)
    path = tmp_path / "opt.safetensors"
    inertia.save(opt, path)
    target, target_weights = inertia.SGD(0.1, momentum=0.9, name="opt"), keras_weights("numpy", ("float32", "float32"))
    keras_steps(target, target_weights, 5, 6)
    return path, target


def _set(key, value):
    return lambda doc: doc.__setitem__(key, value)


def _set_config(key, value):
    return lambda doc: doc["config"].__setitem__(key, value)


KERAS_REFUSALS = {
    "newer major version": (dict(document=_set("format_version", "2.0")), "was written in checkpoint format 2.0"),
    "another format": (dict(document=_set("format", "something-else")), "names the format 'something-else'"),
    "another face": (dict(document=_set("face", "torch")), "state of a torch optimizer"),
    "another class": (dict(document=_set("class", "inertia.legacy.SGD")), "of class inertia.legacy.SGD; this optimizer's class is inertia.sgd.SGD"),
    "metadata lists an absent tensor": (
        dict(document=lambda d: d["tensors"].__setitem__("ghost", {"role": "momentum"})), "lists the tensors ['ghost']",
    ),
    "missing tensor": (dict(tensors={"kernel_momentum": None}), "Missing from the checkpoint: ['kernel_momentum']"),
    "unexpected tensor": (dict(tensors={"extra": np.zeros(2, np.float32)}), "not in the optimizer: ['extra']"),
    "wrong shape": (dict(tensors={"bias_momentum": np.zeros(3, np.float32)}), "'bias_momentum' has shape (3,) in the checkpoint, (2,)"),
    "wrong dtype": (dict(tensors={"bias_momentum": np.zeros(2, np.float64)}), "'bias_momentum' has dtype float64 in the checkpoint, float32"),
    "negative counter": (
        dict(tensors={"iteration": np.array(-1, np.int32)}, document=lambda d: d["counters"].__setitem__("iteration", -1)),
        "counter 'iteration' is -1",
    ),
    "counter beyond its dtype": (
        dict(tensors={"iteration": np.array(2**40, np.int64)}, document=lambda d: d["counters"].__setitem__("iteration", 2**40)),
        "< 2147483647 (the range of int32",
    ),
    "counter at its dtype's maximum": (
        dict(tensors={"iteration": np.array(2**31 - 1, np.int32)}, document=lambda d: d["counters"].__setitem__("iteration", 2**31 - 1)),
        "(the range of int32, less one step)",
    ),
    "float counter": (dict(tensors={"iteration": np.array(3.0, np.float32)}), "must be an integer scalar"),
    "counter unlike its metadata": (dict(document=lambda d: d["counters"].__setitem__("iteration", 7)), "the file is inconsistent"),
    "non-finite learning rate": (dict(tensors={"learning_rate": np.array(np.nan, np.float32)}), "'learning_rate' must be finite and >= 0"),
    "negative learning rate": (dict(tensors={"learning_rate": np.array(-0.1, np.float32)}), "'learning_rate' must be finite and >= 0"),
    "structural option": (dict(document=_set_config("nesterov", True)), "which must match: nesterov: checkpoint True, optimizer False"),
    "momentum switched off": (dict(document=_set_config("momentum", 0.0)), "momentum_enabled: checkpoint False, optimizer True"),
    "hyperparameter": (
        dict(document=_set_config("weight_decay", 0.5)),
        "hyperparameters differ from the checkpoint's: weight_decay: checkpoint 0.5, optimizer None. To load the state and "
        "keep the optimizer's own values, pass allow_config_changes=['weight_decay'] (or True).",
    ),
}


@pytest.mark.parametrize("case", list(KERAS_REFUSALS))
def test_a_refused_load_names_the_problem_and_changes_nothing(saved_keras, tmp_path, case):
    path, target = saved_keras
    edits, message = KERAS_REFUSALS[case]
    bad = rewrite(path, tmp_path / "bad.safetensors", **edits)
    before = keras_state(target)
    with pytest.raises(ValueError) as error:
        inertia.load(target, bad)
    assert message in str(error.value)
    assert repr(str(bad)) in str(error.value)
    assert_same_arrays(before, keras_state(target))
    inertia.load(target, path)  # the untouched file still loads
    assert int(target.iterations.numpy()) == 3


def test_a_newer_minor_version_loads(saved_keras, tmp_path):
    path, target = saved_keras
    newer = rewrite(path, tmp_path / "newer.safetensors", document=lambda d: d.update(format_version="1.9", added_later={"x": 1}))
    inertia.load(target, newer)
    assert int(target.iterations.numpy()) == 3


def test_a_counter_moves_to_another_integer_dtype_when_it_fits(saved_keras, tmp_path):
    path, target = saved_keras
    wide = rewrite(path, tmp_path / "wide.safetensors", tensors={"iteration": np.array(3, np.int64)})
    inertia.load(target, wide)
    assert target._iterations.numpy().dtype == np.int32 and int(target._iterations.numpy()) == 3


def test_accepted_hyperparameter_changes_keep_the_optimizers_values(saved_keras, tmp_path):
    path, _ = saved_keras
    weights = keras_weights("numpy", ("float32", "float32"))
    other = inertia.SGD(0.1, momentum=0.5, weight_decay=0.01, name="opt")
    with pytest.raises(ValueError, match="weight_decay: checkpoint None, optimizer 0.01; momentum: checkpoint 0.9, optimizer 0.5"):
        inertia.load(other, path, var_list=weights)
    assert not other.built
    with pytest.raises(ValueError, match="weight_decay: checkpoint None"):
        inertia.load(other, path, var_list=weights, allow_config_changes=["momentum"])
    inertia.load(other, path, var_list=weights, allow_config_changes=["momentum", "weight_decay"])
    assert other.built and other.momentum == 0.5 and other.weight_decay == 0.01
    assert int(other.iterations.numpy()) == 3
    again = inertia.SGD(0.1, momentum=0.5, weight_decay=0.01, name="opt")
    inertia.load(again, path, var_list=weights, allow_config_changes=True)
    assert_same_arrays(keras_state(other), keras_state(again))


def test_the_learning_rate_value_is_state_and_a_schedule_is_config(tmp_path):
    opt, weights = inertia.SGD(0.1, name="opt"), keras_weights("numpy", ("float32", "float32"))
    keras_steps(opt, weights, 0, 1)
    opt.learning_rate = 0.02  # as ReduceLROnPlateau does
    inertia.save(opt, tmp_path / "c")
    fresh = inertia.SGD(0.1, name="opt")
    inertia.load(fresh, tmp_path / "c", var_list=weights)
    assert float(fresh.learning_rate) == np.float32(0.02)
    scheduled = inertia.SGD(ExponentialDecay(0.1, 3, 0.7), name="opt")
    with pytest.raises(ValueError, match="learning_rate_kind: checkpoint 'variable', optimizer 'schedule'"):
        inertia.load(scheduled, tmp_path / "c", var_list=weights, allow_config_changes=True)
    decay = inertia.SGD(ExponentialDecay(0.1, 3, 0.7), name="opt")
    inertia.save(decay, tmp_path / "s")
    with pytest.raises(ValueError, match="learning_rate: checkpoint .*'decay_rate': 0.7.*optimizer .*'decay_rate': 0.5"):
        inertia.load(inertia.SGD(ExponentialDecay(0.1, 3, 0.5), name="opt"), tmp_path / "s")


def test_bad_arguments_are_named(saved_keras, tmp_path):
    path, target = saved_keras
    with pytest.raises(TypeError, match="allow_config_changes"):
        inertia.load(target, path, allow_config_changes=3)
    with pytest.raises(ValueError, match=r"must match the checkpoint.*\['use_ema'\]"):
        inertia.load(target, path, allow_config_changes=["use_ema"])
    with pytest.raises(ValueError, match=r"does not have: \['momentun'\]"):
        inertia.load(target, path, allow_config_changes=["momentun"])
    with pytest.raises(TypeError, match="var_list` is for building an unbuilt optimizer"):
        inertia.load(target, path, var_list=keras_weights("numpy", ("float32", "float32")))
    with pytest.raises(TypeError, match="Argument `optimizer` must be an inertia optimizer"):
        inertia.save(object(), tmp_path / "x")
    with pytest.raises(TypeError, match="Argument `path`"):
        inertia.save(target, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inertia.save(target, tmp_path / "no-such-directory" / "x")
    with pytest.raises(IsADirectoryError):
        inertia.save(target, tmp_path)
    with pytest.raises(FileNotFoundError):
        inertia.load(target, tmp_path / "absent")


def test_an_unbuilt_optimizer_needs_its_variables(saved_keras):
    path, _ = saved_keras
    fresh = inertia.SGD(0.1, momentum=0.9, name="opt")
    with pytest.raises(ValueError, match=r"Missing from the checkpoint: \[\].*pass var_list=\[\.\.\.\] to inertia.load"):
        inertia.load(fresh, path)
    assert not fresh.built
    renamed = [inertia.Variable(np.zeros(s, np.float32), name=f"other_{n}") for n, s in SHAPES.items()]
    with pytest.raises(ValueError, match="give the variables the names they had when saved"):
        inertia.load(fresh, path, var_list=renamed)
    assert not fresh.built and fresh.variables[0].numpy() == 0


NOT_CHECKPOINTS = {
    "empty": (lambda good: b"", "the file is empty"),
    "garbage": (lambda good: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a whole safetensors file"),
    "header only": (lambda good: good[:8], "not a whole safetensors file"),
    "cut in the header": (lambda good: good[:100], "not a whole safetensors file"),
    "cut in the data": (lambda good: good[:-1], "not a whole safetensors file"),
    "half": (lambda good: good[: len(good) // 2], "not a whole safetensors file"),
}


@pytest.mark.parametrize("case", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_is_named(saved_keras, tmp_path, case):
    path, target = saved_keras
    make, message = NOT_CHECKPOINTS[case]
    bad = tmp_path / "bad"
    bad.write_bytes(make(path.read_bytes()))
    before = keras_state(target)
    with pytest.raises(ValueError, match=message) as error:
        inertia.load(target, bad)
    assert f"{str(bad)!r} is not an inertia checkpoint" in str(error.value)
    assert_same_arrays(before, keras_state(target))


def test_a_plain_safetensors_file_is_not_a_checkpoint(saved_keras, tmp_path):
    import safetensors.numpy

    _, target = saved_keras
    plain = tmp_path / "model.safetensors"
    safetensors.numpy.save_file({"kernel": np.zeros((3, 2), np.float32)}, str(plain))
    with pytest.raises(ValueError, match=r"is not an inertia checkpoint: it is a safetensors file without inertia's metadata"):
        inertia.load(target, plain)
    safetensors.numpy.save_file({"kernel": np.zeros(2, np.float32)}, str(plain), metadata={"inertia": "{not json"})
    with pytest.raises(ValueError, match="its metadata is not JSON"):
        inertia.load(target, plain)


def test_loss_scale_state_is_range_checked(tmp_path):
    opt, weights = _loss_scaled(), keras_weights("numpy", ("float32", "float32"))
    keras_steps(opt, weights, 0, 3, nonfinite=(2,))
    path = tmp_path / "scaled.safetensors"
    inertia.save(opt, path)
    target, target_weights = _loss_scaled(), keras_weights("numpy", ("float32", "float32"))
    keras_steps(target, target_weights, 0, 1)
    before = keras_state(target)
    cases = {
        "zero scale": ({"dynamic_scale": np.array(0.0, np.float32)}, None, "'dynamic_scale' must be finite and > 0"),
        "infinite scale": ({"dynamic_scale": np.array(np.inf, np.float32)}, None, "'dynamic_scale' must be finite and > 0"),
        "step counter at the growth steps": (
            {"step_counter": np.array(3, np.int32)}, lambda d: d["counters"].__setitem__("step_counter", 3), "it must be >= 0 and < 3",
        ),
        "inner hyperparameter": (None, lambda d: d["config"]["inner_optimizer"].__setitem__("clipnorm", 0.7), "inner_optimizer.clipnorm"),
    }
    for name, (tensors, document, message) in cases.items():
        bad = rewrite(path, tmp_path / f"{name}.safetensors", tensors=tensors, document=document)
        with pytest.raises(ValueError, match=message):
            inertia.load(target, bad)
        assert_same_arrays(before, keras_state(target))
    inertia.load(target, path)
    assert float(target.dynamic_scale.numpy()) == 2.0**9


def test_the_torch_face_refuses_what_does_not_fit(tmp_path):
    torch = requires("torch")
    import inertia.torch

    model, opt, scheduler = torch_setup("groups")
    torch_steps(model, opt, scheduler, 0, 4)
    path = tmp_path / "opt.safetensors"
    inertia.save(opt, path)
    target_model, target, target_scheduler = torch_setup("groups")
    torch_steps(target_model, target, target_scheduler, 0, 1)
    before = torch_state(target)

    def refused(make_optimizer, message, file=path, **kwargs):
        optimizer = make_optimizer() if callable(make_optimizer) else make_optimizer
        state = torch_state(optimizer)
        with pytest.raises(ValueError, match=message):
            inertia.load(optimizer, file, **kwargs)
        assert_same_arrays(state, torch_state(optimizer))

    params = list(target_model.parameters())
    refused(lambda: inertia.torch.SGD(params, lr=0.1, momentum=0.9, nesterov=True, use_ema=True, ema_overwrite_frequency=3,
                                      gradient_accumulation_steps=2), r"param groups hold \[2, 2\] parameters, the optimizer's \[4\]")
    kernels, biases = params[0::2], params[1::2]
    refused(lambda: inertia.torch.SGD([{"params": kernels}, {"params": biases}], lr=0.1, momentum=0.9, nesterov=True,
                                      ema_overwrite_frequency=3, gradient_accumulation_steps=2),
            "which must match: use_ema: checkpoint True, optimizer False")
    other = torch.nn.Linear(5, 1)
    refused(lambda: inertia.torch.SGD([{"params": kernels[:1] + [other.weight], "weight_decay": 0.01}, {"params": biases, "clipnorm": 0.5}],
                                      lr=0.1, momentum=0.9, nesterov=True, use_ema=True, ema_overwrite_frequency=3,
                                      gradient_accumulation_steps=2),
            r"param 1 is float32 of shape \(1, 4\) in the checkpoint, float32 of shape \(1, 5\) in the optimizer")
    refused(target, "hyperparameters differ from the checkpoint's: param_groups.0.weight_decay: checkpoint 0.02, optimizer 0.01",
            file=rewrite(path, tmp_path / "wd.safetensors", document=lambda d: d["param_groups"][0].__setitem__("weight_decay", 0.02)))
    refused(target, "momentum_enabled: checkpoint False, optimizer True",
            file=rewrite(path, tmp_path / "m0.safetensors", document=lambda d: d["param_groups"][1].__setitem__("momentum", 0)))
    refused(target, r"counter 'updates' must be an integer in \[0, 2\*\*63 - 1\]",
            file=rewrite(path, tmp_path / "c.safetensors", document=lambda d: d["counters"].__setitem__("updates", -1)))
    refused(target, r"param group 0: Invalid learning rate: -0.5",
            file=rewrite(path, tmp_path / "lr.safetensors", document=lambda d: d["param_groups"][0].__setitem__("lr", -0.5)))
    refused(target, "'state.0.average' has dtype float64 in the checkpoint, float32",
            file=rewrite(path, tmp_path / "dt.safetensors", tensors={"state.0.average": np.zeros((4, 3), np.float64)}))
    refused(target, r"its metadata gives the tensors \['state.0.average'\] no role",
            file=rewrite(path, tmp_path / "role.safetensors", document=lambda d: d["tensors"].__setitem__("state.0.average", "ema")))
    refused(target, "is state inertia.torch.SGD does not keep \\('exp_avg'\\)",
            file=rewrite(path, tmp_path / "adam.safetensors", tensors={"state.0.exp_avg": np.zeros((4, 3), np.float32)},
                         document=lambda d: d["tensors"]["state.0.exp_avg"].update(param=0)))
    assert_same_arrays(before, torch_state(target))

    # lr and momentum are state (LR schedulers move them); accepted differences keep the optimizer's values.
    target.param_groups[0]["lr"] = 7.0
    inertia.load(target, rewrite(path, tmp_path / "wd.safetensors", document=lambda d: d["param_groups"][0].__setitem__("weight_decay", 0.02)),
                 allow_config_changes=["weight_decay"])
    assert target.param_groups[0]["weight_decay"] == 0.01 and target.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert (target._micro_steps, target._updates) == (4, 2)

    with target.ema_weights():
        with pytest.raises(ValueError, match="EMA weights are swapped in"):
            inertia.save(target, tmp_path / "swapped.safetensors")
        with pytest.raises(ValueError, match="EMA weights are swapped in"):
            inertia.load(target, path)
    assert not (tmp_path / "swapped.safetensors").exists()
    with pytest.raises(TypeError, match="var_list` is for the Keras faces"):
        inertia.load(target, path, var_list=params)
    with pytest.raises(ValueError, match="state of a torch optimizer"):
        inertia.load(inertia.SGD(0.1), path)


def test_the_mlx_face_checks_its_tree(tmp_path):
    import inertia.mlx

    opt = inertia.mlx.SGD(0.1, momentum=0.9)
    params = {"w": np.ones(3, np.float32)}
    opt.apply_gradients({"w": np.ones(3, np.float32)}, params)
    path = tmp_path / "mlx.safetensors"
    inertia.save(opt, path)

    other = inertia.mlx.SGD(0.1, momentum=0.9)
    other.init({"u": np.ones(3, np.float32)})
    before = mlx_leaves(other.state)
    with pytest.raises(ValueError, match=r"Missing from the checkpoint: \['u.v'\]; in the checkpoint but not in the optimizer: \['w.v'\]"):
        inertia.load(other, path)
    assert_same_arrays(before, mlx_leaves(other.state))
    shaped = inertia.mlx.SGD(0.1, momentum=0.9)
    shaped.init({"w": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=r"'w.v' has shape \(3,\) in the checkpoint, \(4,\)"):
        inertia.load(shaped, path)
    for name, edits, message in (
        ("lr", dict(tensors={"learning_rate": np.array(np.inf, np.float32)}), "'learning_rate' must be finite"),
        ("backend", dict(document=_set("backend", "nowhere")), "lives in nowhere arrays"),
        ("nesterov", dict(document=_set_config("nesterov", True)), "nesterov: checkpoint True, optimizer False"),
        ("dampening", dict(document=_set_config("dampening", 0.5)), "dampening: checkpoint 0.5, optimizer 0.0"),
    ):
        fresh = inertia.mlx.SGD(0.1, momentum=0.9)
        with pytest.raises(ValueError, match=message):
            inertia.load(fresh, rewrite(path, tmp_path / f"{name}.safetensors", **edits))
        assert list(fresh.state) == ["step", "learning_rate"] and int(fresh.step) == 0
    scheduled = inertia.mlx.SGD(lambda step: 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="learning_rate_kind: checkpoint 'value', optimizer 'schedule'"):
        inertia.load(scheduled, path)


def _edit(*keys, value):
    def edit(doc):
        for key in keys[:-1]:
            doc = doc[key]
        doc[keys[-1]] = value

    return edit


MALFORMED = {
    "torch: a group's params not a list": ("torch", _edit("param_groups", 0, "params", value=None), "'param_groups' .* are malformed"),
    "torch: a param index not an int": ("torch", _edit("param_groups", 0, "params", 0, value="0"), "'param_groups' .* are malformed"),
    "torch: a param not a dict": ("torch", _edit("params", 0, value=[2]), "'params' .* are malformed"),
    "torch: a shape not a list": ("torch", _edit("params", 0, "shape", value=2), "'params' .* are malformed"),
    "torch: a tensor reference not a name": (
        "torch", _edit("param_groups", 0, "lr", value={"__tensor__": ["lr"]}), r"refers to a tensor \['lr'\] that it does not hold",
    ),
    "mlx: a dict's items not pairs": ("mlx", _edit("tree", "dict", 2, value=[["w"]]), "state tree is malformed at 'the top'"),
    "mlx: a list not a list": ("mlx", _edit("tree", "dict", 2, 1, value={"list": None}), "state tree is malformed at 'w'"),
    "mlx: a tensor name not a string": ("mlx", _edit("tree", "dict", 2, 1, "dict", 0, 1, value={"tensor": ["w.v"]}), "refers to a tensor"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_is_refused_with_the_path_named(tmp_path, case):
    """A hand-edited or damaged document raises a ValueError naming the file (not a TypeError
    or AttributeError from deep inside), and changes nothing."""
    torch = requires("torch")
    import inertia.mlx
    import inertia.torch

    face, edit, message = MALFORMED[case]
    if face == "torch":
        def make():
            w = torch.nn.Parameter(torch.ones(2))
            return inertia.torch.SGD([w], lr=torch.tensor(0.5), momentum=0.9), w

        opt, w = make()
        w.grad = torch.ones(2)
        opt.step()
        target, _ = make()
    else:
        opt, target = inertia.mlx.SGD(0.1, momentum=0.9), inertia.mlx.SGD(0.1, momentum=0.9)
        opt.apply_gradients({"w": np.ones(2, np.float32)}, {"w": np.ones(2, np.float32)})
    inertia.save(opt, tmp_path / "c")
    bad = rewrite(tmp_path / "c", tmp_path / "bad", document=edit)
    with pytest.raises(ValueError, match=message) as error:
        inertia.load(target, bad)
    assert f"Cannot load checkpoint {str(bad)!r}" in str(error.value)
    assert not target.state or list(target.state) == ["step", "learning_rate"]
    inertia.load(target, tmp_path / "c")


# ----------------------------------------------------------------------------------------
# atomic writing
# ----------------------------------------------------------------------------------------
# The saving loop, run by the killed processes and (for the expected files) by the test.
KILL_LOOP = textwrap.dedent(
    """
    import numpy as np
    import inertia

    SIZE = 1 << 20  # float32: a 4 MiB momentum, a checkpoint of 4 MiB


    def kill_test_optimizer():
        w = inertia.Variable(np.zeros(SIZE, np.float32), name="w")
        opt = inertia.SGD(0.01, momentum=0.9, name="opt")
        opt.build([w])
        return opt, w


    def kill_test_step(opt, w, step):
        opt.apply([np.full(SIZE, 1.0 + step % 7, np.float32)], [w])
    """
)
_KILL_NAMESPACE: dict = {}
exec(KILL_LOOP, _KILL_NAMESPACE)  # the test runs the very code the killed processes run
kill_test_optimizer = _KILL_NAMESPACE["kill_test_optimizer"]
kill_test_step = _KILL_NAMESPACE["kill_test_step"]
# One subprocess imports once (ml_dtypes alone takes half a second) and forks a fresh saving
# process per kill; the test kills that process and learns from the server when it is reaped.
FORK_SERVER = (
    f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
    + KILL_LOOP
    + textwrap.dedent(
        """
        import os
        path = sys.argv[1]
        inertia.load(kill_test_optimizer()[0], path)  # the lazy imports, made once, before any fork
        for command in sys.stdin:
            pid = os.fork()
            if pid == 0:
                try:
                    opt, w = kill_test_optimizer()
                    inertia.load(opt, path)  # resume: the momentum depends on the steps only
                    step = int(opt.iterations.numpy())
                    print(f"ready {os.getpid()}", flush=True)
                    while True:
                        kill_test_step(opt, w, step)
                        inertia.save(opt, path)
                        step += 1
                finally:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            print(f"reaped {os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1}", flush=True)
        """
    )
)
KILLS = 80


def test_a_checkpoint_survives_every_kill_at_random_moments(tmp_path):
    path = tmp_path / "opt.safetensors"
    reference, reference_w = kill_test_optimizer()
    scratch = tmp_path / "scratch" / "reference.safetensors"
    scratch.parent.mkdir()
    expected: dict[int, str] = {}

    def expected_hash(iteration: int) -> str:
        """The checkpoint the run writes after ``iteration`` steps (the run is deterministic)."""
        while not expected or max(expected) < iteration:
            if expected:
                kill_test_step(reference, reference_w, max(expected))
            inertia.save(reference, scratch)
            expected[int(reference.iterations.numpy())] = hashlib.sha256(scratch.read_bytes()).hexdigest()
        return expected[iteration]

    inertia.save(reference, path)  # iteration 0: the first "previous checkpoint"
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=str(SRC), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    kills, mid_write, last = 0, 0, 0
    try:
        for _ in range(KILLS):
            server.stdin.write(b"go\n")
            server.stdin.flush()
            ready = server.stdout.readline().split()
            assert ready[:1] == [b"ready"], ready
            time.sleep(rng.uniform(0.0, 0.04))
            os.kill(int(ready[1]), signal.SIGKILL)
            assert server.stdout.readline() == f"reaped {int(signal.SIGKILL)}\n".encode()  # its pid is gone now
            kills += 1
            mid_write += any(p.name.startswith(".opt.safetensors.") for p in tmp_path.iterdir())
            data = path.read_bytes()
            iteration = inertia.checkpoint.read_metadata(path)["counters"]["iteration"]
            assert iteration >= last, f"kill {kills}: the checkpoint of step {last} was lost (now {iteration})"
            assert hashlib.sha256(data).hexdigest() == expected_hash(iteration), f"kill {kills}: iteration {iteration}"
            loaded, _ = kill_test_optimizer()
            inertia.load(loaded, path)
            assert int(loaded.iterations.numpy()) == iteration
            last = iteration
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert kills == KILLS >= 50
    assert mid_write >= 5, f"only {mid_write} of {kills} kills landed while a checkpoint was being written"
    assert last >= KILLS // 2, f"the killed processes completed only {last} saves"
    inertia.save(reference, path)  # the temporary files of the killed processes are removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.safetensors", "scratch"]


def test_temporaries_are_removed_only_when_their_process_is_gone(tmp_path):
    from inertia.checkpoint.file import host_tag

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = host_tag()
        names = {
            "dead": f".c.{host}.{gone.pid}.0123abcd.tmp",
            "alive": f".c.{host}.{alive.pid}.0123abcd.tmp",
            "own": f".c.{host}.{os.getpid()}.0123abcd.tmp",
            "other host": f".c.elsewhere{host}.{gone.pid}.0123abcd.tmp",
            "other file": f".d.{host}.{gone.pid}.0123abcd.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        inertia.save(inertia.SGD(0.1), tmp_path / "c")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"c"} | {names[k] for k in ("alive", "own", "other host", "other file")}
    finally:
        alive.kill()
        alive.wait()


def test_a_failing_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    opt, weights = inertia.SGD(0.1, momentum=0.9, name="opt"), keras_weights("numpy", ("float32", "float32"))
    keras_steps(opt, weights, 0, 1)
    path = tmp_path / "c"
    inertia.save(opt, path)
    good = path.read_bytes()
    keras_steps(opt, weights, 1, 2)

    def disk_full(descriptor):  # the write got half-way: the disk filled up
        os.ftruncate(descriptor, 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        inertia.save(opt, path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_the_data_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        target = os.readlink(f"/proc/self/fd/{descriptor}") if os.path.exists("/proc/self/fd") else "?"
        calls.append(("fsync", os.path.basename(target)))
        return real_fsync(descriptor)

    def replace(source, target):
        calls.append(("replace", os.path.basename(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    inertia.save(inertia.SGD(0.1), tmp_path / "c")
    assert [kind for kind, _ in calls] == ["fsync", "replace", "fsync"]
    if os.path.exists("/proc/self/fd"):  # which file each fsync synced: the temporary, then the directory
        assert calls[0][1].startswith(".c.") and calls[0][1].endswith(".tmp")
        assert calls[1][1] == "c" and calls[2][1] == tmp_path.name


def test_a_directory_that_cannot_be_synced_does_not_fail_the_save(tmp_path, monkeypatch):
    """The file is in place once renamed: a directory the system will not open or sync (one
    that may be written but not read, a file system without directory sync) skips the sync."""
    real_open, real_fsync = os.open, os.fsync

    def open_(name, flags, *args, **kwargs):
        if os.path.isdir(name):
            raise PermissionError(13, "Permission denied", name)  # e.g. mode 0o300
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    inertia.save(inertia.SGD(0.1), tmp_path / "c")
    assert inertia.checkpoint.read_metadata(tmp_path / "c")["counters"] == {"iteration": 0}
    monkeypatch.setattr(os, "open", real_open)

    def fsync(descriptor):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{descriptor}")) if os.path.exists("/proc/self/fd") else False:
            raise OSError(38, "Function not implemented")  # ENOSYS: a file system without directory sync
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    inertia.save(inertia.SGD(0.2), tmp_path / "c")
    assert inertia.checkpoint.read_metadata(tmp_path / "c")["scalars"]["learning_rate"] == float(np.float32(0.2))


def test_the_file_is_written_in_binary_mode_where_the_system_has_a_text_mode(tmp_path, monkeypatch):
    """Windows opens a descriptor in text mode unless asked for O_BINARY (each \\n written as \\r\\n)."""
    binary = 1 << 28  # a flag no POSIX system uses, standing in for Windows' O_BINARY
    flags = []
    real_open = os.open

    def open_(name, flag, *args, **kwargs):
        flags.append(flag)
        return real_open(name, flag & ~binary, *args, **kwargs)

    monkeypatch.setattr(os, "O_BINARY", binary, raising=False)
    monkeypatch.setattr(os, "open", open_)
    inertia.save(inertia.SGD(0.1), tmp_path / "c")
    assert flags and flags[0] & binary and flags[0] & os.O_EXCL  # the temporary file's open


def test_a_file_held_open_elsewhere_is_replaced_once_free_on_windows(tmp_path, monkeypatch):
    """Windows refuses to replace a file another program holds open: the rename is tried again
    for a while; then a PermissionError names the path, and the previous checkpoint stays."""
    from inertia.checkpoint import file

    monkeypatch.setattr(file, "_POSIX", False)
    monkeypatch.setattr(file, "_REPLACE_WAITS", (0.0,) * 3)
    path = tmp_path / "c"
    inertia.save(inertia.SGD(0.1), path)
    good = path.read_bytes()
    real_replace, refusals = os.replace, []

    def busy(times):
        def replace(source, target):
            if len(refusals) < times:
                refusals.append(target)
                raise PermissionError(13, "The process cannot access the file because it is being used by another process")
            return real_replace(source, target)

        return replace

    monkeypatch.setattr(os, "replace", busy(2))
    inertia.save(inertia.SGD(0.2), path)
    assert len(refusals) == 2 and path.read_bytes() != good
    good = path.read_bytes()
    refusals.clear()
    monkeypatch.setattr(os, "replace", busy(100))
    with pytest.raises(PermissionError, match=rf"Cannot save to path={str(path)!r}: the file could not be replaced .* hold it open"):
        inertia.save(inertia.SGD(0.3), path)
    assert len(refusals) == 4 and path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_symbolic_link_is_saved_through(tmp_path):
    """A link at `path` stays a link; the file it points to is replaced (its temporary file is
    made beside that file, on its file system, so the rename is atomic)."""
    real = tmp_path / "runs" / "opt.safetensors"
    real.parent.mkdir()
    link = tmp_path / "latest.safetensors"
    link.symlink_to(real)  # dangling until the first save
    inertia.save(inertia.SGD(0.1), link)
    assert link.is_symlink() and real.is_file()
    inertia.save(inertia.SGD(0.2), link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert inertia.checkpoint.read_metadata(real)["scalars"]["learning_rate"] == float(np.float32(0.2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors", "runs"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["opt.safetensors"]
    nowhere = tmp_path / "nowhere.safetensors"
    nowhere.symlink_to(tmp_path / "missing" / "opt.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"path={str(nowhere)!r} \(a symbolic link to .*missing.*\): its directory .* does not exist"):
        inertia.save(inertia.SGD(0.1), nowhere)


def test_a_path_that_cannot_name_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    opt = inertia.SGD(0.1)
    with pytest.raises(IsADirectoryError, match=r"it names a directory \(it ends in a separator\)"):
        inertia.save(opt, str(tmp_path / "new") + os.sep)
    assert not (tmp_path / "new").exists()  # not a file named "new"
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=rf"Cannot save to path={str(tmp_path / 'file' / 'c')!r}: .* is not a directory"):
        inertia.save(opt, tmp_path / "file" / "c")
    from inertia.checkpoint import keras

    monkeypatch.setattr(keras, "save", lambda optimizer: pytest.fail("the state was read before the path was checked"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inertia.save(opt, tmp_path / "missing" / "c")
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        inertia.save(opt, tmp_path)


# ----------------------------------------------------------------------------------------
# saving while another thread steps
# ----------------------------------------------------------------------------------------
def _stepping(face: str):
    """An optimizer of ``face`` after 3 steps, a function that runs its 4th step, a function
    that reads an optimizer's state, a fresh optimizer of the same kind and load's keywords."""
    import inertia.mlx

    if face == "keras":
        opt, w = inertia.SGD(0.1, momentum=0.9), inertia.Variable(np.ones(4, np.float32), name="w")
        keras_steps(opt, [w], 0, 3)
        return opt, lambda: keras_steps(opt, [w], 3, 4), keras_state, inertia.SGD(0.1, momentum=0.9), {"var_list": [w]}
    if face == "torch":
        torch = requires("torch")
        from inertia.torch import SGD

        param = torch.nn.Parameter(torch.ones(4))
        opt = SGD([param], lr=0.1, momentum=0.9)

        def step(number):
            param.grad = torch.from_numpy(gradient_values(number, (4,))).float()
            opt.step()

        for number in range(3):
            step(number)
        return opt, lambda: step(3), torch_state, SGD([torch.nn.Parameter(torch.ones(4))], lr=0.1, momentum=0.9), {}
    opt, params = inertia.mlx.SGD(0.1, momentum=0.9), [{"w": np.ones(4, np.float32)}]

    def step(number):
        params[0] = opt.apply_gradients({"w": gradient_values(number, (4,)).astype(np.float32)}, params[0])

    for number in range(3):
        step(number)
    return opt, lambda: step(3), lambda o: mlx_leaves(o.state), inertia.mlx.SGD(0.1, momentum=0.9), {}


@pytest.mark.parametrize("face", ["keras", "torch", "mlx"])
def test_a_save_holds_the_state_it_was_called_with_when_another_thread_steps(tmp_path, monkeypatch, face):
    """A step that runs between the save's reading of the state and its writing of the file
    (another thread's) changes nothing in the file: the state is copied at once, and each
    counter in the metadata is its tensor's value, so the file loads, as the state it was."""
    import safetensors

    opt, step, state, fresh, load_keywords = _stepping(face)
    before = state(opt)
    real_serialize = safetensors.serialize

    def serialize(*args, **kwargs):
        step()  # another thread's step, at the worst moment
        return real_serialize(*args, **kwargs)

    monkeypatch.setattr(safetensors, "serialize", serialize)
    inertia.save(opt, tmp_path / "c")
    inertia.load(fresh, tmp_path / "c", **load_keywords)
    assert_same_arrays(before, state(fresh))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_replaced_checkpoint_keeps_its_permissions(tmp_path, monkeypatch):
    """The new file replaces the old one under its name; it takes the old one's mode, as
    writing into the file would (a checkpoint made private stays private). A file system
    without POSIX modes fails no save."""
    path = tmp_path / "c"
    inertia.save(inertia.SGD(0.1), path)
    os.chmod(path, 0o600)
    inertia.save(inertia.SGD(0.2), path)
    assert (path.stat().st_mode & 0o777) == 0o600
    os.chmod(path, 0o640)
    inertia.save(inertia.SGD(0.3), path)
    assert (path.stat().st_mode & 0o777) == 0o640

    def fchmod(descriptor, mode):
        raise PermissionError(1, "Operation not permitted")  # as on a FAT or SMB mount

    monkeypatch.setattr(os, "fchmod", fchmod)
    inertia.save(inertia.SGD(0.4), path)
    assert inertia.checkpoint.read_metadata(path)["scalars"]["learning_rate"] == float(np.float32(0.4))


@pytest.mark.parametrize("face", ["keras", "torch", "mlx", "loss scale inner"])
def test_save_and_load_wait_for_a_step_in_progress(tmp_path, face):
    """A step holds the optimizer's lock (the inner optimizer's too, under a loss-scale one):
    a save or load from another thread waits for it, so it never reads or writes half a step."""
    import threading

    if face == "loss scale inner":
        opt = inertia.LossScaleOptimizer(inertia.SGD(0.1, momentum=0.9))
        w = inertia.Variable(np.ones(3, np.float32), name="w")
        opt.apply([np.ones(3, np.float32)], [w])
        lock, fresh, load_keywords = opt.inner_optimizer._lock, None, {}
    else:
        opt, _, _, fresh, load_keywords = _stepping(face)
        lock = opt._lock
    inertia.save(opt, tmp_path / "c")
    for action in ("save", "load"):
        done = threading.Event()

        def work():
            if action == "save":
                inertia.save(opt, tmp_path / "d")
            else:
                inertia.load(opt, tmp_path / "c", **(load_keywords if fresh is not None else {}))
            done.set()

        with lock:  # a step in progress
            worker = threading.Thread(target=work)
            worker.start()
            assert not done.wait(0.3), f"{action} ran while a step held the lock"
        assert done.wait(30), f"{action} never finished"
        worker.join()


def test_a_refused_load_leaves_an_unbuilt_optimizer_unbuilt(tmp_path):
    """With `var_list`, an unbuilt optimizer is built only once every check passes: a counter
    at its dtype's maximum (which the face's own loader refuses too) leaves it unbuilt."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    w = inertia.Variable(np.ones(2, np.float32), name="w")
    opt = inertia.SGD(0.1, momentum=0.9)
    opt.apply([np.ones(2, np.float32)], [w])
    inertia.save(opt, tmp_path / "c")
    tensors = load_file(tmp_path / "c")
    with safe_open(tmp_path / "c", "np") as handle:
        metadata = handle.metadata()
    document = json.loads(metadata["inertia"])
    tensors["iteration"] = np.array(2**31 - 1, np.int32)
    document["counters"]["iteration"] = 2**31 - 1
    save_file(tensors, tmp_path / "edge", metadata={**metadata, "inertia": json.dumps(document)})
    fresh = inertia.SGD(0.1, momentum=0.9)
    with pytest.raises(ValueError, match="counter 'iteration' is 2147483647"):
        inertia.load(fresh, tmp_path / "edge", var_list=[w])
    assert not fresh.built
