"""``inertia.torch.SGD`` where torch.optim.SGD goes beyond dense real parameters: sparse
gradients, complex parameters, ``differentiable=True`` and ``torch.compile``.

What this file proves:

* Sparse gradients (``nn.Embedding(sparse=True)``): parameters, and the sparse momentum
  buffer's indices and values, bit for bit torch.optim.SGD's, with momentum, dampening,
  Nesterov and maximize; the buffer's state dict goes into torch.optim.SGD and back. L2
  weight decay, clipping and accumulation are refused before anything changes.
* Complex parameters: torch's complex arithmetic, bit for bit, in complex64 and complex128;
  clipping by the complex modulus (hand-computed); the EMA and accumulation on the real
  view; clipvalue refused.
* ``differentiable=True``: ``torch.autograd.gradcheck`` through the step in the weights, the
  gradient, the buffer, and a learning rate and weight decay that require grad; the values
  are torch's differentiable step's, bit for bit.
* ``torch.compile``: a tensor learning rate with schedulers traces one graph (a float one
  two: torch.compile takes a changing float as an input from its second trace), with
  ``fullgraph=True`` from the first step, within inductor's rounding of the eager numbers;
  the counters count compiled steps; steps the compiled path does not cover run eagerly.
"""

from __future__ import annotations

import warnings

import pytest
from conftest import requires

torch = requires("torch")

from inertia.torch import SGD, ConflictingOptionsError  # noqa: E402


# --- sparse gradients ---------------------------------------------------------------------
SPARSE_SETTINGS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.5, maximize=True),
]


def embedding_run(optimizer_class, settings, steps=6, **extra):
    """An embedding with sparse gradients and a dense layer after it, trained for ``steps``."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(50, 4, sparse=True)
    head = torch.nn.Linear(4, 1)
    optimizer = optimizer_class(
        [{"params": embedding.parameters()}, {"params": head.parameters(), "weight_decay": 0.01}], lr=0.1, **settings, **extra
    )
    rows = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        head(embedding(torch.randint(0, 50, (20,), generator=rows))).pow(2).sum().backward()
        optimizer.step()
    return embedding, head, optimizer


def assert_same_sparse(actual, expected):
    assert actual.is_sparse and expected.is_sparse
    assert torch.equal(actual._indices(), expected._indices())
    assert torch.equal(actual._values(), expected._values())


@pytest.mark.parametrize("settings", SPARSE_SETTINGS, ids=lambda s: ",".join(s) or "plain")
@pytest.mark.parametrize("foreach", [None, False])
def test_sparse_gradients_give_torchs_parameters_and_sparse_buffer(settings, foreach):
    ours = embedding_run(SGD, settings, foreach=foreach)
    theirs = embedding_run(torch.optim.SGD, settings, foreach=foreach)
    for mine, reference in zip((ours[0], ours[1]), (theirs[0], theirs[1])):
        for p, q in zip(mine.parameters(), reference.parameters()):
            assert torch.equal(p, q)
    buffer = ours[2].state[ours[0].weight].get("momentum_buffer")
    if "momentum" in settings:
        assert_same_sparse(buffer, theirs[2].state[theirs[0].weight]["momentum_buffer"])
    else:
        assert buffer is None


def test_a_sparse_buffer_goes_into_torch_sgd_and_back():
    embedding, head, ours = embedding_run(SGD, dict(momentum=0.9))
    theirs = torch.optim.SGD([{"params": embedding.parameters()}, {"params": head.parameters()}], lr=0.1, momentum=0.9)
    theirs.load_state_dict(ours.state_dict())
    assert_same_sparse(theirs.state[embedding.weight]["momentum_buffer"], ours.state[embedding.weight]["momentum_buffer"])
    again = SGD([{"params": embedding.parameters()}, {"params": head.parameters()}], lr=0.1, momentum=0.9)
    again.load_state_dict(theirs.state_dict())
    assert_same_sparse(again.state[embedding.weight]["momentum_buffer"], ours.state[embedding.weight]["momentum_buffer"])


def sparse_case(**options):
    """One dense and one embedding parameter with a first step taken, the second step's
    gradients set (the embedding's sparse)."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    dense = torch.nn.Parameter(torch.ones(3))
    optimizer = SGD([dense, embedding.weight], lr=0.1, momentum=0.9, **options)
    dense.grad = torch.ones(3)
    optimizer.step()
    dense.grad = torch.full((3,), 0.5)
    embedding(torch.tensor([1, 3])).sum().backward()
    return optimizer, [dense, embedding.weight]


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"weight_decay": 0.1}, RuntimeError, r"weight_decay does not apply to a sparse gradient \(parameter of shape \(5, 2\)\).*weight_decay=0\.1"),
        ({"clipnorm": 1.0}, ValueError, r"clipnorm does not support a sparse gradient.*clipnorm=1\.0"),
        ({"global_clipnorm": 1.0}, ValueError, r"global_clipnorm does not support a sparse gradient.*global_clipnorm=1\.0"),
        ({"gradient_accumulation_steps": 2}, ValueError, r"gradient_accumulation_steps does not support a sparse gradient.*=2"),
    ],
)
def test_what_a_sparse_gradient_cannot_take_is_refused_before_any_change(options, error, message):
    optimizer, params = sparse_case(**options)
    before = [p.detach().clone() for p in params], (optimizer._micro_steps, optimizer.updates)
    buffer = optimizer.state[params[0]].get("momentum_buffer")
    held = None if buffer is None else buffer.clone()
    with pytest.raises(error, match=message):
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before[0]))
    assert optimizer.state[params[1]] == {} and (optimizer._micro_steps, optimizer.updates) == before[1]
    if held is not None:
        assert torch.equal(optimizer.state[params[0]]["momentum_buffer"], held)


def test_the_weight_decay_error_is_a_value_error_and_torchs_runtime_error():
    assert issubclass(ConflictingOptionsError, ValueError) and issubclass(ConflictingOptionsError, RuntimeError)
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError):  # what torch.optim.SGD raises here
        torch.optim.SGD(embedding.parameters(), lr=0.1, weight_decay=0.1).step()


# --- complex parameters -------------------------------------------------------------------
COMPLEX_SETTINGS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3, weight_decay=0.1),
    dict(momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("settings", COMPLEX_SETTINGS, ids=lambda s: ",".join(s) or "plain")
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_parameters_step_as_torchs_complex_arithmetic(settings, dtype):
    results = []
    for optimizer_class in (SGD, torch.optim.SGD):
        torch.manual_seed(0)
        z = torch.randn(40, 7, dtype=dtype, requires_grad=True)
        x = torch.randn(5, dtype=torch.float32 if dtype == torch.complex64 else torch.float64, requires_grad=True)
        optimizer = optimizer_class([z, x], lr=0.1, **settings)
        for _ in range(5):
            z.grad, x.grad = torch.randn(40, 7, dtype=dtype), torch.randn(5, dtype=x.dtype)
            optimizer.step()
        results.append((z.detach().clone(), x.detach().clone(), optimizer.state[z].get("momentum_buffer")))
    (z, x, buffer), (z_ref, x_ref, buffer_ref) = results
    assert torch.equal(z, z_ref) and torch.equal(x, x_ref)
    assert (buffer is None) == (buffer_ref is None)
    if buffer is not None:
        assert buffer.dtype == dtype and torch.equal(buffer, buffer_ref)


@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_complex_gradients_are_clipped_by_their_modulus(option):
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex128))
    optimizer = SGD([z], lr=1.0, **{option: 1.0})
    z.grad = torch.tensor([3 + 4j, 0j], dtype=torch.complex128)  # norm 5: scaled by 1/5
    optimizer.step()
    assert torch.allclose(z.detach(), torch.tensor([-0.6 - 0.8j, 0j], dtype=torch.complex128), rtol=0, atol=1e-15)
    assert torch.isclose(torch.linalg.vector_norm(z.detach()), torch.tensor(1.0, dtype=torch.float64), atol=1e-15)


def test_complex_ema_and_accumulation_by_hand():
    z = torch.nn.Parameter(torch.tensor([1 + 1j], dtype=torch.complex128))
    optimizer = SGD([z], lr=0.5, use_ema=True, ema_momentum=0.5, gradient_accumulation_steps=2)
    for grad in ([2 + 0j], [0 + 2j]):  # mean 1 + 1j: w = 1+1j - 0.5*(1+1j) = 0.5+0.5j
        z.grad = torch.tensor(grad, dtype=torch.complex128)
        optimizer.step()
    assert torch.equal(z.detach(), torch.tensor([0.5 + 0.5j], dtype=torch.complex128))
    assert torch.equal(optimizer.state[z]["average"], torch.tensor([0.5 + 0.5j], dtype=torch.complex128))
    for grad in ([1 + 0j], [1 + 0j]):  # w = 0.5+0.5j - 0.5 = 0+0.5j; average 0.5*(0.5+0.5j) + 0.5*(0.5j) = 0.25+0.5j
        z.grad = torch.tensor(grad, dtype=torch.complex128)
        optimizer.step()
    assert torch.equal(z.detach(), torch.tensor([0 + 0.5j], dtype=torch.complex128))
    assert torch.equal(optimizer.state[z]["average"], torch.tensor([0.25 + 0.5j], dtype=torch.complex128))


def test_clipvalue_on_a_complex_parameter_is_refused_before_any_change():
    z = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    optimizer = SGD([z], lr=0.1, momentum=0.9, clipvalue=1.0)
    z.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"`clipvalue` clips real numbers.*complex64.*clipvalue=1\.0"):
        optimizer.step()
    assert torch.equal(z.detach(), torch.ones(2, dtype=torch.complex64)) and optimizer.state[z] == {}


def test_a_complex_parameter_with_a_real_gradient_is_a_type_error():
    z = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    optimizer = SGD([z], lr=0.1)
    z.grad_dtype = None
    z.grad = torch.ones(2)
    with pytest.raises(TypeError, match=r"both complex.*complex64 with a gradient of dtype torch\.float32"):
        optimizer.step()


# --- differentiable=True ------------------------------------------------------------------
def stepped(optimizer_class, settings, hyperparameters=()):
    """A function of (weights, gradient, buffer, *hyperparameters) returning the weights and
    buffer after one step, built as torch's differentiable tests build theirs."""

    def step(weights, gradient, buffer, *values):
        weights = weights.clone()
        weights.grad = gradient.clone()
        options = dict(settings, **dict(zip(hyperparameters, values)))
        optimizer = optimizer_class([weights], differentiable=True, **options)
        optimizer.state[weights]["momentum_buffer"] = buffer.clone()
        optimizer.step()
        return weights, optimizer.state[weights]["momentum_buffer"]

    return step


DIFFERENTIABLE_CASES = [
    (dict(lr=0.9, momentum=0.9), ()),
    (dict(momentum=0.9, nesterov=True), ("lr",)),
    (dict(momentum=0.9, dampening=0.2, maximize=True), ("lr", "weight_decay")),
    (dict(lr=0.5, momentum=0.8, nesterov=True), ("weight_decay",)),
]


@pytest.mark.parametrize("settings, hyperparameters", DIFFERENTIABLE_CASES)
def test_gradcheck_through_the_step(settings, hyperparameters):
    torch.manual_seed(0)
    inputs = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    inputs += [torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in (0.7, 0.1)[: len(hyperparameters)]]
    assert torch.autograd.gradcheck(stepped(SGD, settings, hyperparameters), tuple(inputs))
    ours = stepped(SGD, settings, hyperparameters)(*inputs)
    theirs = stepped(torch.optim.SGD, settings, hyperparameters)(*inputs)
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine, reference) and mine.requires_grad


def test_the_gradient_in_the_learning_rate_is_minus_the_direction():
    weights = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True).clone()
    rate = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    weights.grad = torch.tensor([3.0, -1.0], dtype=torch.float64)
    optimizer = SGD([weights], lr=rate, differentiable=True)
    optimizer.step()
    (gradient,) = torch.autograd.grad(weights.sum(), rate)
    assert gradient.item() == -(3.0 - 1.0)
    assert torch.equal(weights.detach(), torch.tensor([0.7, 2.1], dtype=torch.float64))


# --- torch.compile ------------------------------------------------------------------------
def compiled_run(schedule, lr, steps=8, compiled=True, fullgraph=True, **settings):
    """A small model trained ``steps`` steps by ``torch.compile(optimizer.step)``; returns the
    parameters, the optimizer and the number of graphs torch.compile traced."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = SGD(model.parameters(), lr=lr, **settings)
    step = torch.compile(optimizer.step, fullgraph=fullgraph) if compiled else optimizer.step
    scheduler = schedule(optimizer) if schedule else None
    inputs = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's note on the profiler's record_function
        for _ in range(steps):
            optimizer.zero_grad()
            model(inputs).pow(2).mean().backward()
            step()
            if scheduler is not None:
                scheduler.step()
    return [p.detach().clone() for p in model.parameters()], optimizer, counters["stats"]["unique_graphs"]


SCHEDULES = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: 1 / (1 + epoch)),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=100),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_a_compiled_step_with_a_tensor_learning_rate_traces_one_graph(name):
    settings = dict(momentum=0.9, nesterov=True, weight_decay=0.01)
    compiled, optimizer, graphs = compiled_run(SCHEDULES[name], torch.tensor(0.01), **settings)
    eager, _, _ = compiled_run(SCHEDULES[name], torch.tensor(0.01), compiled=False, **settings)
    # OneCycleLR also cycles the momentum, which it writes into the group as a float (a
    # tensor given is replaced when it is built): its second value is traced once more.
    assert graphs == (2 if name == "OneCycleLR" else 1)
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)  # inductor's rounding, not the eager bits
    assert optimizer.updates == 8 and optimizer.state_dict()["param_groups"][0]["updates"] == 8


def test_a_float_learning_rate_is_traced_again_once_then_never():
    _, _, graphs_for_8 = compiled_run(SCHEDULES["StepLR"], 0.01, steps=8, momentum=0.9)
    _, _, graphs_for_3 = compiled_run(SCHEDULES["StepLR"], 0.01, steps=3, momentum=0.9)
    assert graphs_for_8 == graphs_for_3 == 2  # the first value a constant, later ones an input


@pytest.mark.parametrize(
    "settings",
    [dict(momentum=0.9, global_clipnorm=0.05, use_ema=True), dict(momentum=0.9, clipnorm=0.05), dict(clipvalue=0.01, maximize=True)],
    ids=["global_clipnorm+ema", "clipnorm", "clipvalue"],
)
def test_clipping_and_the_ema_compile_with_the_eager_numbers(settings):
    compiled, optimizer, _ = compiled_run(SCHEDULES["StepLR"], torch.tensor(0.05), **settings)
    eager, reference, _ = compiled_run(SCHEDULES["StepLR"], torch.tensor(0.05), compiled=False, **settings)
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    if settings.get("use_ema"):
        averages = [optimizer.state[p]["average"] for p in optimizer._parameters()]
        expected = [reference.state[p]["average"] for p in reference._parameters()]
        for a, b in zip(averages, expected):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_dampening_traces_a_second_graph_for_the_first_buffers():
    compiled, _, graphs = compiled_run(None, torch.tensor(0.01), momentum=0.9, dampening=0.3)
    eager, _, _ = compiled_run(None, torch.tensor(0.01), compiled=False, momentum=0.9, dampening=0.3)
    assert graphs == 2
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_steps_the_compiled_path_does_not_cover_run_eagerly_with_the_eager_bits():
    settings = dict(momentum=0.9, gradient_accumulation_steps=2, use_ema=True, ema_overwrite_frequency=3)
    compiled, optimizer, _ = compiled_run(SCHEDULES["StepLR"], 0.05, fullgraph=False, **settings)
    eager, _, _ = compiled_run(SCHEDULES["StepLR"], 0.05, compiled=False, **settings)
    assert all(torch.equal(p, q) for p, q in zip(compiled, eager))
    assert optimizer.updates == 4
    with pytest.raises(Exception, match="runs this step eagerly"):
        compiled_run(None, 0.05, fullgraph=True, **settings)


def test_a_scheduler_still_warns_when_stepped_before_the_optimizer():
    for order_is_wrong in (True, False):
        model = torch.nn.Linear(2, 1)
        optimizer = SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
        assert optimizer.step.__func__ is SGD.step  # left as it is: it records its own call
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if order_is_wrong:
                scheduler.step()
            model(torch.ones(1, 2)).sum().backward()
            optimizer.step()
            scheduler.step()
        warned = any("before `optimizer.step()`" in str(w.message) for w in caught)
        assert warned == order_is_wrong


def test_a_compiled_step_without_gradients_leaves_no_ema_state_behind():
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]
    models[1].load_state_dict(models[0].state_dict())
    compiled, eager = (SGD(m.parameters(), lr=0.1, momentum=0.9, use_ema=True) for m in models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.compile(compiled.step)()  # before any backward: nothing to do
    assert compiled.state_dict()["state"] == {} and compiled.updates == 0
    for model, optimizer in zip(models, (compiled, eager)):
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()  # eagerly: the averages start from the weights
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(compiled.state[p]["average"], eager.state[q]["average"]) and torch.equal(p, q)


def test_averages_made_for_a_compiled_step_that_never_ran_are_dropped():
    # What torch.compile runs eagerly while it traces, with no graph run after it (a trace
    # that failed): the zero averages it made must not be taken for averages.
    model = torch.nn.Linear(3, 1)
    optimizer = SGD(model.parameters(), lr=0.1, use_ema=True)
    model(torch.ones(2, 3)).sum().backward()
    assert optimizer._init_group(optimizer.param_groups[0], [], [], [])
    assert torch.equal(optimizer.state[model.weight]["average"], torch.zeros(1, 3))
    optimizer.step()
    assert torch.equal(optimizer.state[model.weight]["average"], model.weight.detach())


def test_a_compiled_step_with_an_invalid_group_raises_before_any_change():
    models = [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]
    optimizer = SGD([{"params": m.parameters()} for m in models], lr=0.1, momentum=0.9, use_ema=True)
    optimizer.param_groups[1]["lr"] = -1.0
    for model in models:
        model(torch.ones(2, 3)).sum().backward()
    before = [p.detach().clone() for m in models for p in m.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=r"Invalid learning rate: -1\.0.*`lr`"):
            torch.compile(optimizer.step)()  # the eager step raises it, outside the compiled code
    assert not any(optimizer.state.values()) and optimizer.updates == 0
    assert all(torch.equal(p, q) for p, q in zip((p for m in models for p in m.parameters()), before))


@pytest.mark.parametrize("with_buffer", [True, False], ids=["buffer", "first step"])
def test_differentiable_gradients_are_torchs_in_momentum_and_on_the_first_step(with_buffer):
    gradients = []
    for optimizer_class in (SGD, torch.optim.SGD):
        weights = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        gradient = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
        momentum = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        stepped = weights.clone()
        stepped.grad = gradient.clone()
        optimizer = optimizer_class([stepped], lr=0.1, momentum=momentum, weight_decay=0.1, differentiable=True)
        if with_buffer:
            optimizer.state[stepped]["momentum_buffer"] = torch.tensor([2.0, 0.0], dtype=torch.float64)
        optimizer.step()
        gradients.append(torch.autograd.grad(stepped.sum(), (weights, gradient, momentum), allow_unused=True))
    for mine, reference in zip(*gradients):
        assert (mine is None) == (reference is None)
        assert mine is None or torch.equal(mine, reference)
