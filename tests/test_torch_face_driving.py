"""``inertia.torch.SGD`` driven the way PyTorch users drive an optimizer, bit for bit with torch.

tests/test_torch_face.py gives every step a fresh ``.grad`` tensor, so it cannot see an
optimizer that keeps a *reference* to a gradient (or to a parameter) where it must keep a
copy. Real training loops reuse gradient memory: ``zero_grad(set_to_none=False)`` zeroes the
same ``.grad`` in place, ``backward`` adds into an existing ``.grad``, users ``copy_`` into a
persistent ``.grad`` or point it at a view of one flat buffer. This file runs inertia and
torch.optim.SGD side by side on identical copies of one small model and one data set, in
each of those driving styles, and after every step checks:

* the parameters and every ``momentum_buffer`` are bitwise equal to torch's (values, dtype,
  strides);
* no optimizer state tensor shares storage with a gradient, a parameter or another state
  tensor, and ``step()`` leaves ``.grad`` untouched (torch's reference for-loop does too).

The hyperparameter grid (momentum 0 / 0.9, dampening 0 / 0.5, nesterov, weight decay,
maximize) sets the first of three param groups; the other two override it with settings of
their own, so every run also mixes groups. inertia's extras where a buffer could alias user
memory are covered too: the gradient accumulator (against torch.optim.SGD fed the mean of
the two micro-step gradients every second step) and the EMA of the weights (against the
average of torch's trajectory computed by hand).
"""

from __future__ import annotations

import copy
import itertools

import pytest
from conftest import requires

torch = requires("torch")

from inertia.torch import SGD  # noqa: E402

STEPS = 4  # aliasing shows from the second step on; four keep the file fast
MICRO_BATCHES = 3  # backward calls per step in the accumulating styles
BATCH_SIZE = 5


# --- the model, the data, the param groups ----------------------------------------------------
def build_model():
    """A two-layer perceptron (2-D weights and 1-D biases) with seeded weights, in float32."""
    with torch.random.fork_rng():  # nn.Linear's own init draws from the global RNG
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return model


def _data():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(STEPS, MICRO_BATCHES, BATCH_SIZE, 4, generator=generator)
    targets = torch.randn(STEPS, MICRO_BATCHES, BATCH_SIZE, 2, generator=generator)
    return [[(inputs[s, m], targets[s, m]) for m in range(MICRO_BATCHES)] for s in range(STEPS)]


BATCHES = _data()  # BATCHES[step][micro_batch] = (inputs, targets)


def batch_loss(model, inputs, targets):
    return ((model(inputs) - targets) ** 2).mean()


# The grid's settings go to the first group through the constructor's defaults; the other two
# groups override them (and inherit what they do not set), as a per-layer setup would.
OTHER_GROUPS = (
    {"lr": 0.03, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.02, "nesterov": False, "maximize": False},
    {"lr": 0.02, "momentum": 0.7, "dampening": 0.0, "nesterov": True},
)


def param_groups(model):
    first, _, last = model
    return [
        {"params": [first.weight, first.bias]},
        {"params": [last.weight], **OTHER_GROUPS[0]},
        {"params": [last.bias], **OTHER_GROUPS[1]},
    ]


def hyperparameter_grid():
    for momentum, dampening, nesterov, weight_decay, maximize in itertools.product(
        (0.0, 0.9), (0.0, 0.5), (False, True), (0.0, 0.01), (False, True)
    ):
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # torch refuses these
        settings = dict(lr=0.1, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        kind, direction = "nesterov" if nesterov else "heavyball", "maximize" if maximize else "minimize"
        name = f"momentum{momentum}-dampening{dampening}-{kind}-wd{weight_decay}-{direction}"
        yield pytest.param(settings, id=name)


GRID = list(hyperparameter_grid())

# torch.optim.SGD's implementations. On a CPU, foreach=None (the default) picks the for-loop;
# foreach=True forces the multi-tensor path. On the same operations in the same order they
# give the same numbers, and inertia must give them too.
FOR_LOOP = {"torch default (foreach=None)": {}, "torch foreach=False": {"foreach": False}}
ALL_IMPLEMENTATIONS = {**FOR_LOOP, "torch foreach=True": {"foreach": True}}


# --- how users produce gradients ----------------------------------------------------------------
# Each style leaves the gradients of one step on the model; ``memory`` persists across the
# steps of one run (one per model), for styles that keep their own gradient tensors.
def _parameters(model):
    return list(model.parameters())


def _own_gradients(model, batches):
    """The step's gradients by torch.autograd.grad (fresh tensors; ``.grad`` untouched)."""
    return torch.autograd.grad(batch_loss(model, *batches[0]), _parameters(model))


def _assert_grad_objects_reused(model, memory):
    """From the second step on, every ``.grad`` must be the very tensor of the first step:
    the style is meant to reuse gradient memory, and this proves it does."""
    grads = [p.grad for p in model.parameters()]
    if "grads" in memory:
        assert all(g is kept for g, kept in zip(grads, memory["grads"])), "the style did not reuse the .grad tensors"
    memory["grads"] = grads


def zero_grad_default_then_backward(model, optimizer, batches, memory):
    optimizer.zero_grad()  # set_to_none=True: backward makes new .grad tensors
    batch_loss(model, *batches[0]).backward()


def zero_grad_in_place_then_backward(model, optimizer, batches, memory):
    optimizer.zero_grad(set_to_none=False)  # the same .grad, zeroed, then filled by backward
    batch_loss(model, *batches[0]).backward()
    _assert_grad_objects_reused(model, memory)


def accumulate_backwards_zeroed_in_place(model, optimizer, batches, memory):
    optimizer.zero_grad(set_to_none=False)
    for inputs, targets in batches:  # several backward calls add into one .grad before a step
        batch_loss(model, inputs, targets).backward()
    _assert_grad_objects_reused(model, memory)


def accumulate_backwards_set_to_none(model, optimizer, batches, memory):
    optimizer.zero_grad()
    for inputs, targets in batches:
        batch_loss(model, inputs, targets).backward()


def never_zero_grad(model, optimizer, batches, memory):
    batch_loss(model, *batches[0]).backward()  # .grad sums the gradients of all steps so far
    _assert_grad_objects_reused(model, memory)


def copy_into_persistent_grad(model, optimizer, batches, memory):
    for p, g in zip(_parameters(model), _own_gradients(model, batches)):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(g)  # written in place: the optimizer sees the same tensor every step
    _assert_grad_objects_reused(model, memory)


def assign_fresh_grad(model, optimizer, batches, memory):
    for p, g in zip(_parameters(model), _own_gradients(model, batches)):
        p.grad = g  # a new tensor replaces .grad every step


def assign_views_of_one_flat_buffer(model, optimizer, batches, memory):
    """Every ``.grad`` a view into one flat buffer written in place every step (as DDP's
    gradient_as_bucket_view does), re-assigned each step as a new view object."""
    params = _parameters(model)
    flat = memory.setdefault("flat", torch.empty(sum(p.numel() for p in params)))
    offset = 0
    for p, g in zip(params, _own_gradients(model, batches)):
        view = flat[offset : offset + p.numel()].view(p.shape)
        view.copy_(g)
        p.grad = view
        offset += p.numel()


def assign_non_contiguous_grad(model, optimizer, batches, memory):
    """Non-contiguous ``.grad`` over memory reused every step: a transposed matrix for the
    weights (dense, other strides), every other element of a longer vector for the biases
    (not dense)."""
    for i, (p, g) in enumerate(zip(_parameters(model), _own_gradients(model, batches))):
        if g.dim() == 2:
            holder = memory.setdefault(i, torch.empty(g.shape[::-1]))
            holder.copy_(g.t())
            p.grad = holder.t()
        else:
            holder = memory.setdefault(i, torch.empty(2 * g.numel()))
            holder[::2].copy_(g)
            p.grad = holder[::2]
        assert not p.grad.is_contiguous()


# torch 2.13's foreach path, with nesterov and neither maximize nor weight decay, adds
# momentum*buffer into the caller's .grad tensors (`torch._foreach_add_(device_grads, bufs,
# ...)` on the grads themselves), although pytorch/pytorch#92706 ("Do NOT inplace modify
# gradients") set out to keep foreach optimizers off the caller's gradients.
# Where .grad is never cleared, that change feeds the next step, so torch's own two
# implementations part ways. The reference is the for-loop, which torch's docs present as the
# straightforward implementation (foreach and fused being faster variants of it) and picks by
# default on a CPU; it leaves .grad alone, and so does inertia (checked after every step).
STYLES = {
    zero_grad_default_then_backward: ALL_IMPLEMENTATIONS,
    zero_grad_in_place_then_backward: ALL_IMPLEMENTATIONS,
    accumulate_backwards_zeroed_in_place: ALL_IMPLEMENTATIONS,
    accumulate_backwards_set_to_none: ALL_IMPLEMENTATIONS,
    never_zero_grad: FOR_LOOP,
    copy_into_persistent_grad: ALL_IMPLEMENTATIONS,
    assign_fresh_grad: ALL_IMPLEMENTATIONS,
    assign_views_of_one_flat_buffer: ALL_IMPLEMENTATIONS,
    assign_non_contiguous_grad: ALL_IMPLEMENTATIONS,
}


# --- checks ------------------------------------------------------------------------------------
def storage_address(tensor):
    return tensor.untyped_storage().data_ptr()


def assert_state_owns_its_memory(optimizer, model, when):
    """No state tensor (momentum buffer, accumulator, average) shares storage with any
    gradient or parameter of the model, nor with another state tensor."""
    named = list(model.named_parameters())
    user_memory = {storage_address(p): f"parameter {n}" for n, p in named}
    user_memory.update({storage_address(p.grad): f"the .grad of {n}" for n, p in named if p.grad is not None})
    seen = {}
    for name, p in named:
        for key, value in optimizer.state.get(p, {}).items():
            if not isinstance(value, torch.Tensor):
                continue
            address = storage_address(value)
            label = f"state[{name}][{key!r}]"
            assert address not in user_memory, f"{when}: {label} shares memory with {user_memory[address]}"
            assert address not in seen, f"{when}: {label} shares memory with {seen[address]}"
            seen[address] = label


def assert_same_as_reference(ours, our_model, reference, reference_model, when):
    for (name, p), q in zip(our_model.named_parameters(), reference_model.parameters()):
        assert torch.equal(p, q), f"{when}: parameter {name} differs:\n{p.detach()}\nvs\n{q.detach()}"
        mine = ours.state.get(p, {}).get("momentum_buffer")
        theirs = reference.state.get(q, {}).get("momentum_buffer")
        assert (mine is None) == (theirs is None), f"{when}: momentum buffer of {name}: {mine} vs {theirs}"
        if mine is not None:
            assert (mine.dtype, mine.stride()) == (theirs.dtype, theirs.stride()), f"{when}: momentum buffer of {name}"
            assert torch.equal(mine, theirs), f"{when}: momentum buffer of {name} differs:\n{mine}\nvs\n{theirs}"


def gradients_of(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def assert_grads_untouched(model, before, when):
    for (name, p), g in zip(model.named_parameters(), before):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g)), f"{when}: step() changed the .grad of {name}"


# --- 1. every driving style over the hyperparameter grid ------------------------------------------
@pytest.mark.parametrize("settings", GRID)
@pytest.mark.parametrize("drive", list(STYLES), ids=lambda style: style.__name__)
def test_matches_torch_sgd_bit_for_bit_however_the_gradients_are_produced(drive, settings):
    our_model = build_model()
    ours = SGD(param_groups(our_model), **settings)
    references = {}
    for name, options in STYLES[drive].items():
        model = copy.deepcopy(our_model)
        references[name] = (model, torch.optim.SGD(param_groups(model), **settings, **options))
    memories = {name: {} for name in ["inertia", *references]}

    for step in range(STEPS):
        drive(our_model, ours, BATCHES[step], memories["inertia"])
        for name, (model, reference) in references.items():
            drive(model, reference, BATCHES[step], memories[name])
        grads_before = gradients_of(our_model)
        ours.step()
        for model, reference in references.values():
            reference.step()

        when = f"after step {step + 1}"
        for name, (model, reference) in references.items():
            assert_same_as_reference(ours, our_model, reference, model, f"{when} vs {name}")
        assert_state_owns_its_memory(ours, our_model, when)
        assert_grads_untouched(our_model, grads_before, when)


@pytest.mark.parametrize("settings", [{}, {"maximize": True}, {"weight_decay": 0.01}], ids=["plain", "maximize", "weight_decay"])
def test_writing_into_grad_after_a_step_leaves_the_momentum_buffer_alone(settings):
    # The first momentum step stores the (possibly negated / decayed) gradient as the buffer;
    # without maximize or decay that is the .grad tensor itself unless it is copied.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    ours = SGD([w], lr=0.1, momentum=0.9, **settings)
    w.grad = torch.tensor([0.5, 0.25, -1.0])
    ours.step()
    buffer = ours.state[w]["momentum_buffer"]
    kept = buffer.clone()
    w.grad.mul_(-3.0).add_(7.0)
    assert torch.equal(buffer, kept)
    w.grad.zero_()  # what zero_grad(set_to_none=False) does
    assert torch.equal(buffer, kept)


# --- 2. gradient accumulation: the accumulator must not alias .grad --------------------------------
ACCUMULATION_SETTINGS = [
    pytest.param({"lr": 0.1, "momentum": 0.9, "dampening": 0.5}, id="heavyball-dampening"),
    pytest.param({"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, id="nesterov-wd"),
    pytest.param({"lr": 0.1, "maximize": True}, id="no-momentum-maximize"),
]


@pytest.mark.parametrize("set_to_none", [False, True], ids=["zero_grad_in_place", "zero_grad_set_to_none"])
@pytest.mark.parametrize("settings", ACCUMULATION_SETTINGS)
def test_accumulating_two_micro_steps_equals_torch_sgd_on_their_mean(settings, set_to_none):
    our_model, reference_model = build_model(), build_model()
    ours = SGD(param_groups(our_model), gradient_accumulation_steps=2, **settings)
    reference = torch.optim.SGD(param_groups(reference_model), foreach=False, **settings)
    our_params, reference_params = _parameters(our_model), _parameters(reference_model)

    for cycle in range(STEPS):
        micro_grads = []
        for micro in range(2):
            inputs, targets = BATCHES[cycle][micro]
            ours.zero_grad(set_to_none=set_to_none)
            when = f"cycle {cycle + 1}, micro-step {micro + 1}"
            if micro == 1:  # zeroing .grad in place must leave the first micro-step's gradient
                for p, g in zip(our_params, micro_grads[0]):
                    assert torch.equal(ours.state[p]["gradient_accumulator"], g), f"{when}: zero_grad reached the accumulator"
            batch_loss(our_model, inputs, targets).backward()
            micro_grads.append(torch.autograd.grad(batch_loss(reference_model, inputs, targets), reference_params))
            grads_before = gradients_of(our_model)
            ours.step()
            assert_grads_untouched(our_model, grads_before, when)
            assert_state_owns_its_memory(ours, our_model, when)
            if micro == 0:  # a micro-step: nothing moves, the accumulator holds a copy
                assert ours.updates == cycle
                for p, q, g in zip(our_params, reference_params, micro_grads[0]):
                    assert torch.equal(p, q)
                    assert torch.equal(ours.state[p]["gradient_accumulator"], g)
        # the hand-built expectation: torch.optim.SGD fed the mean of the two micro-gradients
        for q, first, second in zip(reference_params, *micro_grads):
            q.grad = (first + second) / 2
        reference.step()
        assert ours.updates == cycle + 1
        assert_same_as_reference(ours, our_model, reference, reference_model, f"after update {cycle + 1}")
        for p in our_params:
            assert not ours.state[p]["gradient_accumulator"].any(), "the accumulator is zeroed after an update"


# --- 3. EMA: the average must not alias the parameter -------------------------------------------
@pytest.mark.parametrize("set_to_none", [False, True], ids=["zero_grad_in_place", "zero_grad_set_to_none"])
def test_ema_average_follows_torch_sgds_weights_by_hand_without_aliasing_them(set_to_none):
    settings = {"lr": 0.1, "momentum": 0.9}
    our_model, reference_model = build_model(), build_model()
    ours = SGD(param_groups(our_model), use_ema=True, ema_momentum=0.75, **settings)
    reference = torch.optim.SGD(param_groups(reference_model), foreach=False, **settings)
    our_params, reference_params = _parameters(our_model), _parameters(reference_model)
    expected = None
    for step in range(STEPS):
        for model, optimizer in ((our_model, ours), (reference_model, reference)):
            optimizer.zero_grad(set_to_none=set_to_none)
            batch_loss(model, *BATCHES[step][0]).backward()
        ours.step()
        reference.step()
        when = f"after step {step + 1}"
        assert_same_as_reference(ours, our_model, reference, reference_model, when)  # EMA leaves the weights alone
        assert_state_owns_its_memory(ours, our_model, when)
        weights = [q.detach() for q in reference_params]
        # the first update copies the weights; then avg <- 0.75*avg + 0.25*w (0.75, 0.25 exact)
        expected = [w.clone() for w in weights] if expected is None else [0.75 * a + 0.25 * w for a, w in zip(expected, weights)]
        for p, average in zip(our_params, expected):
            assert torch.equal(ours.state[p]["average"], average), f"{when}: average differs"
    assert not all(torch.equal(p, ours.state[p]["average"]) for p in our_params)  # the check had something to see
