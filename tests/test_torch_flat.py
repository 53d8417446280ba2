"""``inertia.torch.FlatParameters``: a model's parameters and gradients in one buffer.

The flat step is element-wise the same step as torch.optim.SGD over the model's own
parameters, so every trajectory here is compared bit for bit (rtol 0) with torch.optim.SGD
run on an identical copy of the model, on inertia's fast path and on its reference path.
The documented trade-offs are pinned too: gradients are zeroed, never None; a parameter that
leaves its buffer stops the step before anything changes; gradients put elsewhere are copied
in, never lost.
"""

from __future__ import annotations

import copy

import pytest
from conftest import requires

torch = requires("torch")

from inertia.engine import host  # noqa: E402
from inertia.torch import SGD, FlatParameters  # noqa: E402

SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.02, maximize=True),
]


def model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    # odd sizes, so that slices start mid cache line before alignment, and a 0-d parameter
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 1))
    net.register_parameter("scale", torch.nn.Parameter(torch.tensor(1.5)))
    return net.to(dtype)


def loss_of(net: torch.nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(4, 7, generator=generator, dtype=net[0].weight.dtype)
    return (net(x) * net.scale).pow(2).mean()


def assert_same(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "reference path"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_flat_steps_equal_torch_optim_on_the_model(settings, fast):
    net, twin = model(), model()
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, **settings)
    reference = torch.optim.SGD(twin.parameters(), **settings)
    for step in range(4):
        loss_of(net, step).backward()
        loss_of(twin, step).backward()
        if fast:
            optimizer.step()
        else:
            with host.disabled():
                optimizer.step()
        reference.step()
        optimizer.zero_grad()
        reference.zero_grad()
        assert_same(net, twin)


def test_parameters_become_views_of_one_buffer_with_values_and_gradients_kept():
    net = model()
    before = [p.detach().clone() for p in net.parameters()]
    net[0].weight.grad = torch.full_like(net[0].weight, 0.25)
    flat = FlatParameters(net.parameters())
    (buffer,) = flat.parameters()
    storage = buffer.untyped_storage().data_ptr()
    for p, value in zip(net.parameters(), before):
        assert p.untyped_storage().data_ptr() == storage
        assert p.data_ptr() % 64 == 0  # each slice starts on a cache line
        torch.testing.assert_close(p.detach(), value, rtol=0, atol=0)
        assert p.grad is not None and p.grad.untyped_storage().data_ptr() == buffer.grad.untyped_storage().data_ptr()
    assert bool((net[0].weight.grad == 0.25).all()) and bool((net[2].weight.grad == 0).all())
    assert buffer.numel() == 144  # 35, 5, 15, 3, 3, 1 and 1 elements, each padded to a multiple of 16


def test_zero_grad_zeroes_in_place_and_a_parameter_without_gradient_still_moves():
    """The trade-off: gradients are zeros, never None, so momentum moves a parameter that got
    no gradient this step, as torch.optim.SGD after zero_grad(set_to_none=False) does."""
    net, twin = model(), model()
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1, momentum=0.9)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    loss_of(net, 0).backward()
    loss_of(twin, 0).backward()
    optimizer.step()
    reference.step()
    views = [p.grad for p in net.parameters()]
    optimizer.zero_grad()  # set_to_none=True by default: the views stay, zeroed
    reference.zero_grad(set_to_none=False)
    assert all(p.grad is view and not bool(view.any()) for p, view in zip(net.parameters(), views))
    before = net[0].weight.detach().clone()
    (net[3].weight * 0).sum().backward()  # a step in which only one parameter gets a (zero) gradient
    (twin[3].weight * 0).sum().backward()
    assert twin[0].weight.grad is not None  # the reference keeps zeros too: not None, not skipped
    optimizer.step()
    reference.step()
    assert_same(net, twin)
    assert not torch.equal(net[0].weight.detach(), before)  # it moved, by momentum


def test_gradients_put_elsewhere_are_copied_in():
    """model.zero_grad() sets the views to None; the next backward makes new gradients, a
    user assigns one, another is transposed in place: each reaches the step by its values."""
    net, twin = model(), model()
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1, momentum=0.9)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        net.zero_grad()
        twin.zero_grad()
        loss_of(net, step).backward()
        loss_of(twin, step).backward()
        net[3].weight.grad = torch.full((1, 3), 0.5)  # assigned: a tensor of its own
        twin[3].weight.grad = torch.full((1, 3), 0.5)
        if step == 2:  # a gradient dropped after backward: zeros in the flat step (None is zeros here)
            net[2].weight.grad = None
            twin[2].weight.grad = torch.zeros(3, 5)
        optimizer.step()
        reference.step()
        assert_same(net, twin)
        assert net[3].weight.grad.untyped_storage().data_ptr() == flat.parameters()[0].grad.untyped_storage().data_ptr()


def test_a_gradient_view_transposed_in_place_is_applied_as_torch_applies_it():
    net = torch.nn.Linear(3, 3, bias=False)
    twin = copy.deepcopy(net)
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1)
    gradient = torch.arange(9.0).reshape(3, 3)
    net.weight.grad.copy_(gradient)
    net.weight.grad.t_()
    twin.weight.grad = gradient.t()
    optimizer.step()
    reference.step()
    torch.testing.assert_close(net.weight.detach(), twin.weight.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("move", ["p.data replaced", "model.double()", "t_() in place", "narrowed", "negative view"])
def test_a_parameter_that_left_its_buffer_stops_the_step_before_anything_changes(move):
    net = torch.nn.Linear(4, 4)
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1, momentum=0.9)
    net(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    buffer = flat.parameters()[0]
    saved = (buffer.detach().clone(), optimizer.state[buffer]["momentum_buffer"].clone())
    with torch.no_grad():
        if move == "p.data replaced":
            net.weight.data = net.weight.data.clone()
        elif move == "model.double()":
            net.double()
        elif move == "t_() in place":
            net.weight.t_()
        elif move == "negative view":  # same address, size and strides; the memory holds the other sign
            net.weight.data = net.weight.data._neg_view()
        else:
            net.bias.data = net.bias.data[:2]
    with pytest.raises(RuntimeError, match="no longer lives in the buffer"):
        optimizer.step()
    assert torch.equal(buffer.detach(), saved[0]) and torch.equal(optimizer.state[buffer]["momentum_buffer"], saved[1])
    assert optimizer.updates == 1


def test_param_groups_keep_their_options_and_dtypes_get_buffers_of_their_own():
    net = model()
    half = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    flat = FlatParameters([
        {"params": [net[0].weight, net[0].bias, half], "lr": 0.5},
        {"params": [p for name, p in net.named_parameters() if not name.startswith("0.")], "weight_decay": 0.1},
    ])
    groups = flat.param_groups()
    assert [g["lr"] if "lr" in g else None for g in groups] == [0.5, None]
    assert [[p.dtype for p in g["params"]] for g in groups] == [[torch.float32, torch.float64], [torch.float32]]
    optimizer = SGD(flat, lr=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.1]
    assert optimizer.param_groups[1]["weight_decay"] == 0.1


def test_frozen_parameters_stay_out_of_the_buffer():
    net = model()
    net[0].weight.requires_grad_(False)
    address = net[0].weight.data_ptr()
    flat = FlatParameters(net.parameters())
    assert net[0].weight.data_ptr() == address
    assert flat.parameters()[0].numel() == 96


@pytest.mark.parametrize(
    "params, error, fragment",
    [
        (lambda: torch.nn.Parameter(torch.ones(2)), TypeError, "not a tensor"),
        (lambda: [], ValueError, "empty"),
        (lambda: [torch.nn.Parameter(torch.ones(2))] * 2, ValueError, "appears twice"),
        (lambda: [torch.nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False), "w"], TypeError, "is a str"),
        (lambda: [torch.nn.Parameter(torch.ones(2).to_sparse())], TypeError, "dense floating-point"),
        (lambda: [{"params": [torch.nn.Parameter(torch.ones(2))]}, torch.nn.Parameter(torch.ones(2))], TypeError, "mix"),
    ],
    ids=["a bare tensor", "empty", "duplicate", "not a tensor", "sparse", "groups and tensors mixed"],
)
def test_bad_input_is_named(params, error, fragment):
    with pytest.raises(error, match=fragment):
        FlatParameters(params())


def test_deepcopy_of_the_optimizer_steps_its_own_copy():
    net = model()
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1, momentum=0.9)
    loss_of(net, 0).backward()
    optimizer.step()
    twin = copy.deepcopy(optimizer)
    loss_of(net, 1).backward()
    optimizer.step()
    (copied,) = twin.param_groups[0]["params"]
    assert copied is not flat.parameters()[0]
    saved = flat.parameters()[0].detach().clone()
    twin.step()  # the copy's own buffer, gradient and model copy
    assert torch.equal(flat.parameters()[0].detach(), saved)
    assert not torch.equal(copied.detach(), saved)


def test_the_flat_gradient_is_always_the_gradient_buffer():
    """A flat parameter's ``.grad`` set to None by hand is the buffer again at the step: the
    model's gradients (views of the buffer) are what the step applies."""
    net, twin = model(), model()
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1, momentum=0.9)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    loss_of(net, 0).backward()
    loss_of(twin, 0).backward()
    flat.parameters()[0].grad = None
    optimizer.step()
    reference.step()
    assert_same(net, twin)


# --- found in review: copies, gradients read before the step, freezing, versions ----------
@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
def test_a_copy_of_model_and_optimizer_trains_the_copied_model(copy_with):
    import pickle

    net = model()
    optimizer = SGD(FlatParameters(net.parameters()), lr=0.1, momentum=0.9)
    loss_of(net, 0).backward()
    optimizer.step()
    optimizer.zero_grad()
    pair = (net, optimizer)
    copied_net, copied = copy.deepcopy(pair) if copy_with == "deepcopy" else pickle.loads(pickle.dumps(pair))
    (buffer,) = copied.param_groups[0]["params"]
    assert all(p.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr() for p in copied_net.parameters())
    for step in (1, 2):  # the copy and the original take the same steps, each on its own memory
        for n, o in ((net, optimizer), (copied_net, copied)):
            loss_of(n, step).backward()
            o.step()
            o.zero_grad()
    assert_same(copied_net, net)
    assert not any(p.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr() for p in net.parameters())


def test_gradients_replaced_by_backward_are_in_the_buffer_before_the_step():
    """After model.zero_grad() (None gradients), backward's new gradients reach the buffer at
    once: GradScaler's unscale and clip_grad_norm_ over the optimizer's parameters see them."""
    net, twin = model(), model()
    optimizer = SGD(FlatParameters(net.parameters()), lr=0.1, momentum=0.9)
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    for step in range(3):
        for n, o, scaler in ((net, optimizer, scalers[0]), (twin, reference, scalers[1])):
            n.zero_grad()
            scaler.scale(loss_of(n, step)).backward()
            scaler.unscale_(o)
            norm = torch.nn.utils.clip_grad_norm_([p for g in o.param_groups for p in g["params"]], 0.5)
            scaler.step(o)
            scaler.update()
        for a, b in zip(net.parameters(), twin.parameters()):  # one norm over the buffer, or norms of norms
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    assert float(norm) > 0.5  # the clip was active


def test_a_parameter_frozen_or_unfrozen_after_the_buffers_were_made_stops_the_step():
    net = model()
    net[2].weight.requires_grad_(False)
    optimizer = SGD(FlatParameters(net.parameters()), lr=0.1, momentum=0.9)
    loss_of(net, 0).backward()
    optimizer.step()
    buffer = optimizer.param_groups[0]["params"][0]
    saved = buffer.detach().clone()
    net[0].weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match="was frozen"):
        optimizer.step()
    net[0].weight.requires_grad_(True)
    net[2].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="in no buffer"):
        optimizer.step()
    assert torch.equal(buffer.detach(), saved) and optimizer.updates == 1


def test_the_step_bumps_the_model_parameters_versions_as_torch_does():
    lin = torch.nn.Linear(3, 1, bias=False)
    optimizer = SGD(FlatParameters(lin.parameters()), lr=0.5)
    x = torch.ones(1, 3, requires_grad=True)
    out = lin(x).sum()
    out.backward(retain_graph=True)
    optimizer.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_a_parameter_of_a_buffer_cannot_be_added_as_a_group_again():
    net = model()
    optimizer = SGD(FlatParameters(net.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optimizer.add_param_group({"params": [net[0].bias]})
    assert len(optimizer.param_groups) == 1
    extra = torch.nn.Parameter(torch.ones(2))
    optimizer.add_param_group({"params": [extra], "lr": 0.5})  # a parameter outside the buffers is fine
    extra.grad = torch.ones(2)
    optimizer.step()
    optimizer.zero_grad()
    assert torch.equal(extra.detach(), torch.full((2,), 0.5)) and extra.grad is None


def test_zero_grad_after_the_model_moved_raises_before_zeroing():
    net = torch.nn.Linear(2, 2)
    flat = FlatParameters(net.parameters())
    optimizer = SGD(flat, lr=0.1)
    net(torch.ones(1, 2)).sum().backward()
    gradient = flat.parameters()[0].grad.clone()
    net.double()
    with pytest.raises(RuntimeError, match="no longer lives in the buffer"):
        optimizer.zero_grad()
    assert torch.equal(flat.parameters()[0].grad, gradient)


def test_plain_tensors_that_require_grad_are_placed_too():
    t = torch.ones(3, requires_grad=True)
    optimizer = SGD(FlatParameters([t]), lr=0.1)
    (t * 2).sum().backward()
    optimizer.step()
    assert torch.equal(t.detach(), torch.full((3,), 0.8))
