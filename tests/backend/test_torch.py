"""The PyTorch backend: mixed-backend errors, low and high precision parameters, in-place
updates of ``nn.Parameter``s that leave autograd alone, ``minimize`` on a loss tensor, and
device placement of the slots (CUDA, when there is one)."""

from __future__ import annotations

import numpy as np
import pytest

import inertia
from conftest import load_backend, requires, tensor

FEATURES = dict(
    momentum=0.9, nesterov=True, weight_decay=0.05, clipnorm=1.0, use_ema=True, ema_momentum=0.8,
    ema_overwrite_frequency=2, gradient_accumulation_steps=2,
)


@pytest.fixture
def torch():
    load_backend("torch")  # skips locally, fails in CI when missing
    import torch

    return torch


def slots_of(optimizer):
    """The per-variable slots (momentum, EMA average, accumulator): all but the counters."""
    return [v for v in optimizer.variables if v.name not in ("iteration", "learning_rate")]


# --- mixed backends -------------------------------------------------------------------------
def test_torch_gradient_for_numpy_variable_names_both_backends(torch):
    w = inertia.Variable(np.asarray([1.0, 2.0], "float32"), name="w")
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"gradient for variable 'w' is a torch array but the variable is on numpy"):
        optimizer.apply([torch.ones(2)], [w])
    array = np.asarray([1.0, 2.0], "float32")
    with pytest.raises(TypeError, match=r"numpy\.ndarray of shape \(2,\) is a torch array but the variable is on numpy"):
        optimizer.apply_gradients([(torch.ones(2), array)])
    assert not optimizer.built and int(optimizer.iterations) == 0
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(array, [1.0, 2.0])


def test_numpy_gradient_for_torch_variable_names_both_backends(torch):
    w = inertia.Variable(torch.tensor([1.0, 2.0]), name="w")
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9)
    optimizer.build([w])
    with pytest.raises(TypeError, match=r"gradient for variable 'w' is a numpy array but the variable is on torch"):
        optimizer.apply([np.ones(2, "float32")], [w])
    parameter = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"Parameter of shape \(2,\) is a numpy array but the variable is on torch"):
        inertia.SGD(learning_rate=0.1).apply([np.ones(2, "float32")], [parameter])
    assert int(optimizer.iterations) == 0
    assert w.numpy().tolist() == [1.0, 2.0] and parameter.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("native", [False, True], ids=["variables", "native arrays"])
def test_numpy_and_torch_variables_in_one_optimizer_is_a_value_error_naming_both(torch, native):
    if native:
        on_numpy, on_torch = np.asarray([1.0, 2.0], "float32"), torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        pattern = r"one backend.*numpy\.ndarray of shape \(2,\) on numpy.*Parameter of shape \(2,\) on torch"
    else:
        on_numpy = inertia.Variable(np.asarray([1.0, 2.0], "float32"), name="a")
        on_torch = inertia.Variable(torch.tensor([3.0, 4.0]), name="b")
        pattern = r"one backend.*'a' on numpy.*'b' on torch"
    optimizer = inertia.SGD(learning_rate=0.1)
    with pytest.raises(ValueError, match=pattern):
        optimizer.apply([np.ones(2, "float32"), torch.ones(2)], [on_numpy, on_torch])
    with pytest.raises(ValueError, match=pattern):
        optimizer.build([on_numpy, on_torch])
    assert not optimizer.built
    assert np.asarray(on_numpy).tolist() == [1.0, 2.0]
    assert (on_torch.value if not native else on_torch).tolist() == [3.0, 4.0]


# --- dtypes ---------------------------------------------------------------------------------
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float64": 1e-13}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("native", [False, True], ids=["Variable", "Parameter"])
def test_parameters_keep_their_dtype_and_slots_share_it(torch, dtype, native):
    rng = np.random.default_rng(1)
    init = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(6)]
    value = tensor(init, dtype, backend_name="torch")
    target = torch.nn.Parameter(value) if native else inertia.Variable(value, name="w")
    optimizer = inertia.SGD(learning_rate=0.1, **FEATURES)
    for number, gradient in enumerate(grads):
        # float32 gradients are cast to the parameter's dtype, as in Keras.
        optimizer.apply([tensor(gradient, dtype if number % 2 else "float32", backend_name="torch")], [target])
    weights = target if native else target.value
    assert str(weights.dtype) == f"torch.{dtype}"
    assert [v.dtype for v in optimizer.variables[:2]] == ["int32", "float32"]
    slots = slots_of(optimizer)
    assert sorted(v.name.rsplit("_", 1)[-1] for v in slots) == ["accumulator", "average", "momentum"]
    for slot in slots:
        assert slot.dtype == dtype and str(slot.value.dtype) == f"torch.{dtype}"
        assert not slot.value.requires_grad
    assert torch.isfinite(weights.detach().float()).all()

    # The same steps on the NumPy backend (the reference) give the same numbers.
    if dtype == "bfloat16":
        requires("ml_dtypes")
    reference = inertia.Variable(tensor(init, dtype, backend_name="numpy"), name="w")
    numpy_optimizer = inertia.SGD(learning_rate=0.1, **FEATURES)
    for number, gradient in enumerate(grads):
        numpy_optimizer.apply([tensor(gradient, dtype if number % 2 else "float32", backend_name="numpy")], [reference])
    pairs = [(weights.detach().double().numpy(), reference.numpy().astype(np.float64))]
    pairs += [(a.value.double().numpy(), b.numpy().astype(np.float64)) for a, b in zip(optimizer.variables, numpy_optimizer.variables)]
    for got, want in pairs:
        # Reductions (the clipping norm) may add up in another order: a unit or two in the
        # last place, relative to the array's largest value.
        scale = float(np.abs(want).max()) if want.size else 0.0
        np.testing.assert_allclose(got, want, rtol=2 * ULP[dtype], atol=2 * ULP[dtype] * scale)


# --- nn.Parameter updated in place ----------------------------------------------------------
def test_parameters_are_updated_in_place_and_autograd_is_left_alone(torch):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    parameters = list(model.parameters())
    storage = [p.data_ptr() for p in parameters]
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad for p in parameters]
    grad_values = [g.clone() for g in grads]
    before = [p.detach().clone() for p in parameters]

    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01, clipnorm=0.5, use_ema=True)
    optimizer.exclude_from_weight_decay(var_list=[model.bias])
    optimizer.apply_gradients(zip(grads, parameters))

    assert model.weight is parameters[0] and model.bias is parameters[1]
    for parameter, pointer, gradient, gradient_value, old in zip(parameters, storage, grads, grad_values, before):
        assert isinstance(parameter, torch.nn.Parameter)
        assert parameter.data_ptr() == pointer  # in place: the same storage
        assert parameter.requires_grad and parameter.is_leaf and parameter.grad_fn is None
        assert parameter.grad is gradient and torch.equal(parameter.grad, gradient_value)  # .grad untouched
        assert not torch.equal(parameter.detach(), old)
    # Keras' numbers: clip to norm 0.5, decay the weight (not the bias), v = -lr*g, w += v.
    g = grad_values[0] * 0.5 / torch.clamp(grad_values[0].norm(), min=0.5)
    expected = before[0] - before[0] * 0.01 * 0.1 - 0.1 * g
    torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-6, atol=1e-7)
    for slot in slots_of(optimizer):
        assert not slot.value.requires_grad and slot.value.grad_fn is None

    # Training goes on: a new forward and backward pass works on the updated parameters.
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.apply([p.grad for p in parameters], parameters)
    assert int(optimizer.iterations) == 2 and all(p.data_ptr() == s for p, s in zip(parameters, storage))


def test_minimize_takes_a_loss_tensor_on_parameters(torch):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    optimizer = inertia.SGD(learning_rate=0.1, momentum=0.5)
    velocities = [torch.zeros_like(p) for p in reference.parameters()]
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)  # a tensor, not a callable
        losses.append(loss.item())
        iterations = optimizer.minimize(loss, list(model.parameters()))
        assert iterations is optimizer._iterations
        # The reference: torch.autograd.grad and Keras' momentum rule by hand.
        grads = torch.autograd.grad(torch.nn.functional.mse_loss(reference(x), y), list(reference.parameters()))
        with torch.no_grad():
            for parameter, velocity, gradient in zip(reference.parameters(), velocities, grads):
                velocity.mul_(0.5).sub_(0.1 * gradient)
                parameter.add_(velocity)
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-7)
        assert got.grad is None and got.requires_grad and got.grad_fn is None  # no .grad written
    assert int(optimizer.iterations) == 5 and losses[-1] < losses[0]

    # A tensor loss needs native tensors: with inertia.Variables it must be a callable.
    w = inertia.Variable(torch.tensor([1.0, 2.0]), name="w")
    with pytest.raises(TypeError, match="must be a callable on the torch backend"):
        inertia.SGD(learning_rate=0.1).minimize((w.value**2).sum(), [w])


def test_stateless_apply_never_writes_into_torch_tensors(torch):
    w = inertia.Variable(torch.tensor([1.0, -2.0]), name="w")
    optimizer = inertia.SGD(learning_rate=0.1, **FEATURES)
    optimizer.apply([torch.tensor([0.5, 0.5])], [w])
    state = [v.value for v in optimizer.variables]
    state_values = [s.clone() for s in state]
    weights, weight_values = [w.value], [w.value.clone()]
    gradient = torch.tensor([1.0, 3.0])
    new_weights, new_state = optimizer.stateless_apply(state, [gradient], weights)
    for array, value in zip(state + weights, state_values + weight_values):
        assert torch.equal(array, value)  # the optimizer's own tensors were the inputs
    assert torch.equal(gradient, torch.tensor([1.0, 3.0]))
    assert int(new_state[0]) == 2 and not torch.equal(new_weights[0], weight_values[0])
    assert all(new is not old for new, old in zip(new_weights + new_state, weights + state))


# --- device placement -------------------------------------------------------------------------
def test_cuda_training_keeps_every_slot_on_the_parameter_device(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    cpu_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    cpu_model.load_state_dict(model.state_dict())
    model.to(device)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    settings = dict(learning_rate=0.05, **FEATURES)
    optimizer, cpu_optimizer = inertia.SGD(**settings), inertia.SGD(**settings)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x.to(device)), y.to(device))
        losses.append(loss.item())
        optimizer.minimize(loss, list(model.parameters()))
        cpu_optimizer.minimize(torch.nn.functional.mse_loss(cpu_model(x), y), list(cpu_model.parameters()))
    assert losses[-1] < losses[0]
    for parameter in model.parameters():
        assert parameter.device.type == "cuda" and parameter.requires_grad and parameter.grad is None
    # Every slot (and the counters) lives on the parameters' device.
    slots = slots_of(optimizer)
    assert len(slots) == 3 * len(list(model.parameters()))
    for variable in optimizer.variables:
        assert variable.value.device == model[0].weight.device, variable.name
    # The same numbers as on the CPU (float32; TF32 matmuls are off by default).
    for got, want in zip(model.parameters(), cpu_model.parameters()):
        torch.testing.assert_close(got.detach().cpu(), want.detach(), rtol=1e-4, atol=1e-5)
