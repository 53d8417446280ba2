"""``inertia.torch.SGD`` is a drop-in for ``torch.optim.SGD``, bit for bit, plus inertia's extras.

What this file proves:

* Randomized parity: over many seeded scenarios (float16/32/64, several param groups with
  per-group overrides of every hyperparameter, parameters without gradients on some steps,
  a tensor learning rate), the parameters and momentum buffers after every step are
  bitwise equal to torch.optim.SGD's, and ``state_dict()`` has torch's layout. A coverage
  guard checks that the seeds really draw every feature.
* LR schedulers (StepLR, LambdaLR, CosineAnnealingLR, OneCycleLR, which also drives the
  momentum) give the same trajectories as with torch.optim.SGD, and their state round-trips.
* ``state_dict`` interchange in both directions mid-training, ``copy.deepcopy`` and
  ``pickle`` keep training identical; torch's state dict resets inertia's counters and
  keeps the constructor's clipping options.
* Closures, ``zero_grad`` and ``add_param_group`` behave as torch's.
* The extras match references: clipnorm / clipvalue / global_clipnorm against torch.nn.utils
  clipping then torch.optim.SGD (and hand-computed values), clipping before L2 decay, EMA
  numbers by hand (with overwrite), swapping the EMA weights, gradient accumulation against
  torch.optim.SGD on the mean gradient.
* Errors name the offending argument and value, are raised before anything changes, and
  have torch.optim.SGD's exception types where torch raises too.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import requires

torch = requires("torch")

from inertia.torch import SGD  # noqa: E402

DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
SEEDS = range(48)


# --- helpers --------------------------------------------------------------------------------
def parameters(arrays, dtype=torch.float64):
    """Fresh ``nn.Parameter``s holding ``arrays``."""
    return [torch.nn.Parameter(torch.tensor(np.asarray(a), dtype=dtype)) for a in arrays]


def set_grads(params, grads):
    """Give each parameter its own copy of a gradient (None: no gradient)."""
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.tensor(np.asarray(g), dtype=p.dtype)


def assert_bitwise_equal(actual, expected):
    """Same parameters (or tensors) to the bit, pairwise."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, f"tensor {i}: {a.dtype}{tuple(a.shape)} vs {e.dtype}{tuple(e.shape)}"
        assert torch.equal(a.detach(), e.detach()), f"tensor {i} differs:\n{a.detach()}\nvs\n{e.detach()}"


def assert_same_momentum_buffers(ours, reference, our_params, reference_params):
    for i, (p, q) in enumerate(zip(our_params, reference_params)):
        mine, theirs = ours.state.get(p, {}).get("momentum_buffer"), reference.state.get(q, {}).get("momentum_buffer")
        assert (mine is None) == (theirs is None), f"param {i}: momentum buffer {mine} vs {theirs}"
        if mine is not None:
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), f"param {i}: {mine} vs {theirs}"


def checkpoint(state_dict):
    """A state dict through torch.save / torch.load(weights_only=True), as a real checkpoint
    (torch's ``state_dict()`` shares the state tensors, so loading it directly would share
    the momentum buffers between the two optimizers)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def snapshot(optimizer, params):
    """Clones of the params and of every state tensor, and the counters."""
    state = {i: {k: v.clone() for k, v in optimizer.state[p].items()} for i, p in enumerate(params) if p in optimizer.state}
    return [p.detach().clone() for p in params], state, counters_of(optimizer.state_dict())


def counters_of(state_dict):
    """The step counters a state dict holds: in every param group, the same in each."""
    found = {(g["micro_steps"], g["updates"]) for g in state_dict["param_groups"]}
    assert len(found) == 1, found
    micro_steps, updates = found.pop()
    return {"micro_steps": micro_steps, "updates": updates}


def assert_unchanged(optimizer, params, before):
    weights, state, counters = snapshot(optimizer, params)
    assert_bitwise_equal(weights, before[0])
    assert state.keys() == before[1].keys()
    for i in state:
        assert state[i].keys() == before[1][i].keys()
        assert_bitwise_equal(list(state[i].values()), list(before[1][i].values()))
    assert counters == before[2]


# --- 1. randomized parity with torch.optim.SGD ----------------------------------------------
@dataclass
class Scenario:
    """One seeded draw: parameters, param groups with overrides, and which grads exist."""

    dtype: torch.dtype
    initial: list
    defaults: dict
    groups: list  # each: {"params": [indices], **overrides}
    gradients: list  # steps x params: float64 arrays, or None
    lr_as_tensor: bool
    foreach: object
    features: set = field(default_factory=set)

    def build(self, cls, **extra):
        params = parameters(self.initial, self.dtype)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[i] for i in g["params"]]} for g in self.groups]
        kwargs = dict(self.defaults)
        if self.lr_as_tensor:
            kwargs["lr"] = torch.tensor(kwargs["lr"])
        return params, cls(groups, **kwargs, **extra)

    def effective(self, group):
        return {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}


def draw_hyperparameters(rng):
    momentum = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.1, 0.99))
    dampening = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 0.6))
    return {
        "lr": float(10 ** rng.uniform(-3, -0.5)),
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": 0.0 if rng.random() < 0.4 else float(10 ** rng.uniform(-4, -1)),
        "nesterov": bool(momentum > 0 and dampening == 0 and rng.random() < 0.6),
        "maximize": bool(rng.random() < 0.3),
    }


def draw_scenario(seed):
    rng = np.random.default_rng(seed)
    dtype_name = str(rng.choice(list(DTYPES), p=[0.2, 0.4, 0.4]))
    n_params = int(rng.integers(1, 6))
    shapes = [tuple(int(n) for n in rng.integers(1, 4, size=int(rng.integers(0, 4)))) for _ in range(n_params)]
    initial = [rng.normal(size=shape) for shape in shapes]
    defaults = draw_hyperparameters(rng)
    n_groups = int(rng.integers(1, min(3, n_params) + 1))
    cuts = sorted(rng.choice(np.arange(1, n_params), size=n_groups - 1, replace=False).tolist()) if n_groups > 1 else []
    bounds = [0, *cuts, n_params]
    features = {dtype_name}
    groups = []
    for start, stop in zip(bounds, bounds[1:]):
        fresh = draw_hyperparameters(rng)
        overrides = {k: fresh[k] for k in HYPERPARAMETERS if rng.random() < 0.35}
        merged = {**defaults, **overrides}
        if merged["nesterov"] and not (merged["momentum"] > 0 and merged["dampening"] == 0):
            overrides["nesterov"] = False
        features |= {f"override {k}" for k, v in overrides.items() if v != defaults[k]}
        groups.append({"params": list(range(start, stop)), **overrides})
    steps = int(rng.integers(3, 6))
    present = rng.random((steps, n_params)) > 0.25
    gradients = [[rng.normal(size=shapes[i]) if present[s, i] else None for i in range(n_params)] for s in range(steps)]
    scenario = Scenario(
        DTYPES[dtype_name], initial, defaults, groups, gradients,
        lr_as_tensor=bool(rng.random() < 0.15), foreach=[None, False, True][int(rng.integers(0, 3))],
    )
    for group in groups:
        config = scenario.effective(group)
        features.add("momentum" if config["momentum"] > 0 else "no momentum")
        features |= {k for k in ("nesterov", "maximize", "weight_decay") if config[k]}
        if config["momentum"] > 0 and config["dampening"] > 0:
            features.add("dampening")
    features |= {"several groups"} if n_groups > 1 else set()
    features |= {"missing grad"} if not present.all() else set()
    features |= {"grad appears late"} if any(not present[0, i] and present[1:, i].any() for i in range(n_params)) else set()
    features |= {"scalar param"} if () in shapes else set()
    features |= {"tensor lr"} if scenario.lr_as_tensor else set()
    features |= {f"foreach={scenario.foreach}"}
    scenario.features = features
    return scenario


def test_the_seeds_draw_every_feature():
    drawn = set().union(*(draw_scenario(seed).features for seed in SEEDS))
    expected = {
        "float16", "float32", "float64", "several groups", "momentum", "no momentum", "nesterov", "maximize",
        "weight_decay", "dampening", "missing grad", "grad appears late", "scalar param", "tensor lr",
        "foreach=None", "foreach=False", "foreach=True", *(f"override {k}" for k in HYPERPARAMETERS),
    }
    assert expected <= drawn, f"never drawn: {sorted(expected - drawn)}"


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_torch_sgd_bit_for_bit_after_every_step(seed):
    scenario = draw_scenario(seed)
    our_params, ours = scenario.build(SGD, foreach=scenario.foreach)
    reference_params, reference = scenario.build(torch.optim.SGD, foreach=False)  # torch's single-tensor path
    for grads in scenario.gradients:
        set_grads(our_params, grads)
        set_grads(reference_params, grads)
        assert ours.step() is None
        reference.step()
        assert_bitwise_equal(our_params, reference_params)
        assert_same_momentum_buffers(ours, reference, our_params, reference_params)
        for p, g in zip(our_params, grads):  # the gradients are left alone
            assert (p.grad is None) == (g is None)
            if g is not None:
                assert torch.equal(p.grad, torch.tensor(g, dtype=p.dtype))
    # torch's state_dict layout, plus inertia's counters and per-group clipping options
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert {k: sorted(v) for k, v in mine["state"].items()} == {k: sorted(v) for k, v in theirs["state"].items()}
    counted = sum(any(g is not None for g in grads) for grads in scenario.gradients)
    assert counters_of(mine) == {"micro_steps": counted, "updates": counted}
    for our_group, their_group in zip(mine["param_groups"], theirs["param_groups"]):
        assert our_group.pop("clipnorm") is None and our_group.pop("clipvalue") is None
        our_group.pop("micro_steps"), our_group.pop("updates")
        our_group.pop("foreach"), their_group.pop("foreach")
        assert our_group == their_group
    # a step without any gradient changes nothing, its counters included (torch.optim.SGD does nothing then)
    assert ours.updates == counted


def test_named_parameters_give_torchs_param_names():
    model = torch.nn.Linear(3, 2)
    ours, reference = SGD(model.named_parameters(), lr=0.1), torch.optim.SGD(model.named_parameters(), lr=0.1)
    assert ours.state_dict()["param_groups"][0]["param_names"] == reference.state_dict()["param_groups"][0]["param_names"] == [
        "weight", "bias"
    ]


# --- 2. LR schedulers -------------------------------------------------------------------------
SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "LambdaLR": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=[lambda e: 1 / (1 + e), lambda e: 0.9**e]),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.01),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.4, 0.2], total_steps=10),
}


def two_group_model(cls, dtype=torch.float32):
    params = parameters([[1.0, -2.0, 0.5], [[0.3, 0.1], [-0.7, 2.0]]], dtype)
    groups = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.05, "nesterov": True}]
    return params, cls(groups, lr=0.1, momentum=0.9, weight_decay=0.01)


def quadratic_closure(optimizer, params):
    """Loss sum(k * w**3 / 3 - w) (k grows per parameter), so the gradient depends on w."""

    def closure():
        optimizer.zero_grad()
        loss = sum(((k + 1) * p**3 / 3 - p).sum() for k, p in enumerate(params))
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedulers_drive_it_exactly_as_torch_sgd(name):
    our_params, ours = two_group_model(SGD)
    reference_params, reference = two_group_model(torch.optim.SGD)
    our_scheduler, reference_scheduler = SCHEDULERS[name](ours), SCHEDULERS[name](reference)
    assert [g["initial_lr"] for g in ours.param_groups] == [g["initial_lr"] for g in reference.param_groups]
    rates = []
    for step in range(8):
        if step == 4:  # checkpoint optimizer and scheduler, resume in fresh objects
            saved_optimizer, saved_scheduler = checkpoint(ours.state_dict()), copy.deepcopy(our_scheduler.state_dict())
            resumed_params, ours = two_group_model(SGD)
            with torch.no_grad():
                for p, q in zip(resumed_params, our_params):
                    p.copy_(q)
            our_params, our_scheduler = resumed_params, SCHEDULERS[name](ours)
            ours.load_state_dict(saved_optimizer)
            our_scheduler.load_state_dict(saved_scheduler)
        loss = ours.step(quadratic_closure(ours, our_params))
        reference_loss = reference.step(quadratic_closure(reference, reference_params))
        assert torch.equal(loss, reference_loss)
        our_scheduler.step()
        reference_scheduler.step()
        assert_bitwise_equal(our_params, reference_params)
        assert_same_momentum_buffers(ours, reference, our_params, reference_params)
        assert our_scheduler.get_last_lr() == reference_scheduler.get_last_lr()
        assert [g["lr"] for g in ours.param_groups] == reference_scheduler.get_last_lr()
        assert [g["momentum"] for g in ours.param_groups] == [g["momentum"] for g in reference.param_groups]
        rates.append(tuple(our_scheduler.get_last_lr()))
    assert len(set(rates)) > 1, "the schedule never changed the learning rate"
    state = our_scheduler.state_dict()
    assert state["last_epoch"] == reference_scheduler.state_dict()["last_epoch"] == 8
    assert state.get("_last_lr") == reference_scheduler.state_dict().get("_last_lr")
    if name == "OneCycleLR":  # it cycles the momentum too
        assert ours.param_groups[0]["momentum"] != 0.9


# --- 3. state_dict interchange, deepcopy, pickle ---------------------------------------------
INTERCHANGE_GRADS = np.random.default_rng(7).normal(size=(8, 2, 3))


def interchange_model(cls, **extra):
    params = parameters([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], torch.float32)
    groups = [{"params": [params[0]]}, {"params": [params[1]], "momentum": 0.5, "nesterov": True, "lr": 0.2}]
    return params, cls(groups, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, **extra)


def train(optimizer, params, grads):
    for g in grads:
        set_grads(params, list(g))
        optimizer.step()


def clone_params_into(target, source):
    with torch.no_grad():
        for p, q in zip(target, source):
            p.copy_(q)


@pytest.mark.parametrize("direction", ["torch to inertia", "inertia to torch"])
def test_state_dict_interchange_mid_training_continues_bit_for_bit(direction):
    first, second = (torch.optim.SGD, SGD) if direction == "torch to inertia" else (SGD, torch.optim.SGD)
    reference_params, reference = interchange_model(torch.optim.SGD)  # never interrupted
    source_params, source = interchange_model(first)
    train(reference, reference_params, INTERCHANGE_GRADS[:3])
    train(source, source_params, INTERCHANGE_GRADS[:3])
    target_params, target = interchange_model(second)
    clone_params_into(target_params, source_params)
    target.load_state_dict(checkpoint(source.state_dict()))
    assert_same_momentum_buffers(target, source, target_params, source_params)
    for g in INTERCHANGE_GRADS[3:]:
        for params, optimizer in ((reference_params, reference), (source_params, source), (target_params, target)):
            set_grads(params, list(g))
            optimizer.step()
        assert_bitwise_equal(target_params, reference_params)
        assert_bitwise_equal(source_params, reference_params)
        assert_same_momentum_buffers(target, reference, target_params, reference_params)


def test_loading_torchs_state_dict_resets_counters_and_keeps_constructor_clipping():
    params, ours = interchange_model(SGD, clipnorm=0.5)
    ours.param_groups[1]["clipnorm"] = 2.0
    train(ours, params, INTERCHANGE_GRADS[:3])
    assert ours.updates == 3 and counters_of(ours.state_dict()) == {"micro_steps": 3, "updates": 3}
    own_state = ours.state_dict()
    torch_params, reference = interchange_model(torch.optim.SGD)
    train(reference, torch_params, INTERCHANGE_GRADS[:2])
    ours.load_state_dict(checkpoint(reference.state_dict()))
    assert ours.updates == 0 and counters_of(ours.state_dict()) == {"micro_steps": 0, "updates": 0}
    assert [g["clipnorm"] for g in ours.param_groups] == [0.5, 0.5]
    assert [g["clipvalue"] for g in ours.param_groups] == [None, None]
    assert_same_momentum_buffers(ours, reference, params, torch_params)
    ours.load_state_dict(own_state)  # its own state dict brings back the override and counters
    assert [g["clipnorm"] for g in ours.param_groups] == [0.5, 2.0]
    assert ours.updates == 3 and counters_of(ours.state_dict()) == {"micro_steps": 3, "updates": 3}


def test_a_state_dict_in_inertia_0_1s_layout_loads_its_counters():
    params, ours = interchange_model(SGD)
    train(ours, params, INTERCHANGE_GRADS[:2])
    older = ours.state_dict()
    for group in older["param_groups"]:  # inertia 0.1 kept the counters in a top-level entry
        group.pop("micro_steps"), group.pop("updates")
    older["inertia"] = {"micro_steps": 7, "updates": 5}
    fresh_params, fresh = interchange_model(SGD)
    fresh.load_state_dict(older)
    assert counters_of(fresh.state_dict()) == {"micro_steps": 7, "updates": 5} and fresh.updates == 5


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_bad_counters_in_a_state_dict_are_rejected_before_loading(bad):
    params, ours = interchange_model(SGD)
    train(ours, params, INTERCHANGE_GRADS[:2])
    state = ours.state_dict()
    other_params, other = interchange_model(SGD)
    train(other, other_params, INTERCHANGE_GRADS[2:5])
    before = snapshot(ours, params)
    with pytest.raises(ValueError, match=rf"state_dict\['inertia'\]\['updates'\].*{bad!r}"):  # inertia 0.1's layout
        ours.load_state_dict({**other.state_dict(), "inertia": {"micro_steps": 1, "updates": bad}})
    assert_unchanged(ours, params, before)
    in_groups = other.state_dict()
    in_groups["param_groups"][-1]["updates"] = bad
    with pytest.raises(ValueError, match=rf"'updates'.*{bad!r}|different 'updates' counters"):
        ours.load_state_dict(in_groups)
    assert_unchanged(ours, params, before)
    assert counters_of(ours.state_dict()) == counters_of(state)


def _changed(path, value):
    """A state dict edit: set ``value`` at ``path`` (keys into the dict), or delete it for ``...``."""

    def edit(state_dict):
        node = state_dict
        for key in path[:-1]:
            node = node[key]
        if value is ...:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return state_dict

    return edit


# name -> (an edit of a valid state dict, exception type, what the message must say)
BAD_STATE_DICTS = {
    "buffer of another shape": (_changed(("state", 0, "momentum_buffer"), torch.ones(4)), ValueError,
                                r"state_dict\['state'\]\[0\]\['momentum_buffer'\].*shape \(3,\).*shape \(4,\)"),
    "integer buffer": (_changed(("state", 1, "momentum_buffer"), lambda b: b.long()), ValueError,
                       r"\['state'\]\[1\]\['momentum_buffer'\].*floating-point.*torch\.int64"),
    "bool buffer": (_changed(("state", 0, "momentum_buffer"), lambda b: b > 0), ValueError, r"\[0\]\['momentum_buffer'\].*torch\.bool"),
    "complex buffer": (_changed(("state", 0, "momentum_buffer"), lambda b: b.to(torch.complex64)), ValueError, r"torch\.complex64"),
    "list buffer": (_changed(("state", 0, "momentum_buffer"), [1.0, 2.0, 3.0]), ValueError, r"\['momentum_buffer'\].*list: \[1\.0, 2\.0, 3\.0\]"),
    "ndarray buffer": (_changed(("state", 0, "momentum_buffer"), np.ones(3)), ValueError, r"\['momentum_buffer'\].*ndarray"),
    "state entry not a dict": (_changed(("state", 1), torch.ones(3)), ValueError, r"state_dict\['state'\]\[1\] must be a dict"),
    "no param_groups": (_changed(("param_groups",), ...), ValueError, r"`state_dict` has no 'param_groups' entry.*keys \["),
    "no state": (_changed(("state",), ...), ValueError, r"`state_dict` has no 'state' entry"),
    "group lr nan": (_changed(("param_groups", 1, "lr"), float("nan")), ValueError, r"state_dict\['param_groups'\]\[1\]: .*`lr`.*lr=nan"),
    "group lr negative": (_changed(("param_groups", 0, "lr"), -0.1), ValueError, r"\['param_groups'\]\[0\]: Invalid learning rate: -0\.1"),
    "group lr inf tensor": (_changed(("param_groups", 0, "lr"), torch.tensor(float("inf"))), ValueError, r"\[0\]: .*`lr` must be finite"),
    "group momentum negative": (_changed(("param_groups", 1, "momentum"), -0.5), ValueError, r"\[1\]: Invalid momentum value: -0\.5"),
    "group weight_decay negative": (_changed(("param_groups", 0, "weight_decay"), -1.0), ValueError, r"\[0\]: Invalid weight_decay value"),
    "group dampening inf": (_changed(("param_groups", 0, "dampening"), float("inf")), ValueError, r"\[0\]: .*`dampening`.*dampening=inf"),
    "group nesterov with dampening": (_changed(("param_groups", 1, "dampening"), 0.5), ValueError, r"\[1\]: Nesterov.*dampening=0\.5"),
    "group momentum a string": (_changed(("param_groups", 0, "momentum"), "0.9"), TypeError, r"\[0\]: .*`momentum`.*'0\.9'"),
    "group without lr": (_changed(("param_groups", 0, "lr"), ...), ValueError, r"state_dict\['param_groups'\]\[0\] has no 'lr' entry"),
    "group with an optimizer-wide key": (_changed(("param_groups", 0, "use_ema"), True), ValueError, r"\[0\]: .*use_ema.*whole optimizer"),
    "one group too few": (_changed(("param_groups",), lambda groups: groups[:1]), ValueError, r"has 1 groups but this optimizer has 2"),
    "a parameter too many": (_changed(("param_groups", 0, "params"), lambda ids: ids + [9]), ValueError, r"\[0\] lists 2 parameters.*has 1"),
    "updates at the int64 limit": (_changed(("param_groups", 0, "updates"), 2**63 - 1), ValueError, r"\[0\]: .*'updates' must be below 9223372036854775807"),
    "micro_steps past the int64 limit": (_changed(("param_groups", 1, "micro_steps"), 2**70), ValueError, r"\[1\]: .*'micro_steps'.*1180591620717411303424"),
    "groups with different counters": (_changed(("param_groups", 1, "updates"), 1), ValueError, r"different 'updates' counters \[1, 3\]"),
    "a group repeating an optimizer-wide key with another value": (
        _changed(("param_groups", 1, "global_clipnorm"), 1.0), ValueError, r"\[1\]: .*global_clipnorm=1\.0.*whole optimizer, whose value is None"
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATE_DICTS))
def test_rejected_state_dicts_name_the_key_and_change_nothing(case):
    edit, error, message = BAD_STATE_DICTS[case]
    params, ours = interchange_model(SGD)
    train(ours, params, INTERCHANGE_GRADS[:2])
    other_params, other = interchange_model(SGD)
    train(other, other_params, INTERCHANGE_GRADS[2:5])
    before, groups = snapshot(ours, params), [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
    twin_params, twin = interchange_model(SGD)
    train(twin, twin_params, INTERCHANGE_GRADS[:2])
    with pytest.raises(error, match=message):
        ours.load_state_dict(edit(checkpoint(other.state_dict())))
    assert_unchanged(ours, params, before)
    assert [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == groups
    train(ours, params, INTERCHANGE_GRADS[5:])  # and it trains on as if the load was never tried
    train(twin, twin_params, INTERCHANGE_GRADS[5:])
    assert_bitwise_equal(params, twin_params)
    assert_same_momentum_buffers(ours, twin, params, twin_params)


@pytest.mark.parametrize("value", [None, [], "state"])
def test_a_state_dict_that_is_not_a_dict_is_a_type_error(value):
    params, ours = interchange_model(SGD)
    with pytest.raises(TypeError, match=rf"`state_dict` must be a dict.*state_dict={re.escape(repr(value))}"):
        ours.load_state_dict(value)


@pytest.mark.parametrize("slot", ["average", "gradient_accumulator"])
def test_inertias_own_slots_are_checked_on_load(slot):
    params, ours = interchange_model(SGD, **EXTRAS)
    train(ours, params, INTERCHANGE_GRADS[:3])
    state_dict = checkpoint(ours.state_dict())
    state_dict["state"][1][slot] = torch.zeros(2)
    before = snapshot(ours, params)
    with pytest.raises(ValueError, match=rf"state_dict\['state'\]\[1\]\['{slot}'\].*shape \(3,\)"):
        ours.load_state_dict(state_dict)
    assert_unchanged(ours, params, before)


def test_torch_state_dicts_with_a_none_buffer_or_old_group_keys_still_load():
    """torch.optim.SGD's state dicts load as before: ``momentum_buffer: None`` (saved without
    momentum by some torch versions) starts a fresh buffer, as torch does, and groups saved
    before torch knew ``maximize`` / ``foreach`` / ``differentiable`` / ``fused`` load too."""
    reference_params, reference = interchange_model(torch.optim.SGD)
    train(reference, reference_params, INTERCHANGE_GRADS[:2])
    state_dict = checkpoint(reference.state_dict())
    state_dict["state"][0]["momentum_buffer"] = None
    for group in state_dict["param_groups"]:
        for key in ("maximize", "foreach", "differentiable", "fused"):
            group.pop(key)
    params, ours = interchange_model(SGD)
    clone_params_into(params, reference_params)
    ours.load_state_dict(state_dict)
    reference.load_state_dict(checkpoint(state_dict))
    assert ours.state[params[0]]["momentum_buffer"] is None and ours.updates == 0
    for g in INTERCHANGE_GRADS[2:]:
        for ps, optimizer in ((params, ours), (reference_params, reference)):
            set_grads(ps, list(g))
            optimizer.step()
    assert_bitwise_equal(params, reference_params)
    assert_same_momentum_buffers(ours, reference, params, reference_params)


EXTRAS = dict(global_clipnorm=1.0, use_ema=True, ema_momentum=0.75, ema_overwrite_frequency=3, gradient_accumulation_steps=2)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_counters_extras_and_train_identically(how):
    params, ours = interchange_model(SGD, **EXTRAS)
    train(ours, params, INTERCHANGE_GRADS[:5])  # 2 updates, then a pending micro-step
    duplicate = copy.deepcopy(ours) if how == "deepcopy" else pickle.loads(pickle.dumps(ours))
    assert type(duplicate) is SGD
    assert counters_of(duplicate.state_dict()) == counters_of(ours.state_dict()) == {"micro_steps": 5, "updates": 2}
    assert duplicate.updates == 2
    for key, value in EXTRAS.items():
        assert getattr(duplicate, key) == value
    copied = [p for g in duplicate.param_groups for p in g["params"]]
    assert all(c is not p for c, p in zip(copied, params))
    assert_bitwise_equal(copied, params)
    for p, c in zip(params, copied):
        assert ours.state[p].keys() == duplicate.state[c].keys() == {"momentum_buffer", "average", "gradient_accumulator"}
        assert_bitwise_equal(list(duplicate.state[c].values()), list(ours.state[p].values()))
    train(ours, params, INTERCHANGE_GRADS[5:])
    train(duplicate, copied, INTERCHANGE_GRADS[5:])
    assert_bitwise_equal(copied, params)
    for p, c in zip(params, copied):
        assert_bitwise_equal(list(duplicate.state[c].values()), list(ours.state[p].values()))
    assert duplicate.updates == ours.updates == 4
    assert duplicate._lock is not ours._lock  # a copy steps under its own lock


def _holds_a_lock(value) -> bool:
    if isinstance(value, dict):
        return any(_holds_a_lock(k) or _holds_a_lock(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(map(_holds_a_lock, value))
    return type(value) in (type(threading.Lock()), type(threading.RLock()))


def test_the_lock_is_not_state():
    params, ours = interchange_model(SGD, **EXTRAS)
    train(ours, params, INTERCHANGE_GRADS[:3])
    assert not _holds_a_lock(ours.state_dict()) and not _holds_a_lock(ours.__getstate__())
    lock = ours._lock
    ours.load_state_dict(checkpoint(ours.state_dict()))  # torch's load goes through __setstate__
    assert ours._lock is lock


# --- 4. closure, zero_grad, add_param_group --------------------------------------------------
def test_step_with_closure_returns_its_loss_and_runs_it_with_grad_enabled():
    w = parameters([[1.0, -2.0]])[0]
    ours = SGD([w], lr=0.5, momentum=0.9)
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        ours.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = ours.step(closure)
    assert seen == [True]
    assert loss.item() == 5.0 and loss.requires_grad
    assert torch.equal(w.detach(), torch.tensor([0.0, 0.0], dtype=torch.float64))  # w - 0.5 * 2w
    assert torch.equal(ours.state[w]["momentum_buffer"], torch.tensor([2.0, -4.0], dtype=torch.float64))
    assert ours.step(lambda: 42) == 42


def test_zero_grad_clears_or_zeroes_the_gradients():
    params = parameters([[1.0, 2.0], [3.0]])
    ours = SGD(params, lr=0.1)
    set_grads(params, [[1.0, 1.0], [2.0]])
    ours.zero_grad(set_to_none=False)
    assert [p.grad.tolist() for p in params] == [[0.0, 0.0], [0.0]]
    ours.zero_grad()
    assert all(p.grad is None for p in params)
    ours.step()  # nothing to do: no gradients
    assert [p.tolist() for p in params] == [[1.0, 2.0], [3.0]] and len(ours.state) == 0


def test_add_param_group_fills_defaults_and_validates():
    a, b, c = parameters([[1.0], [2.0], [3.0]])
    ours = SGD([a], lr=0.1, momentum=0.9, clipvalue=0.5)
    ours.add_param_group({"params": [b], "lr": 0.2})
    group = ours.param_groups[1]
    assert group["lr"] == 0.2 and group["momentum"] == 0.9 and group["clipvalue"] == 0.5 and group["clipnorm"] is None
    cases = [
        ({"lr": -1.0}, ValueError, r"learning rate.*`lr`"),
        ({"momentum": 0.0, "nesterov": True}, ValueError, r"Nesterov.*momentum=0"),
        ({"clipnorm": 1.0}, ValueError, r"clipnorm.*clipvalue.*clipnorm=1\.0, clipvalue=0\.5"),
        ({"use_ema": True}, ValueError, r"use_ema.*whole optimizer"),
        ({"maximize": "yes"}, TypeError, r"`maximize`.*'yes'"),
    ]
    for extra, error, message in cases:
        with pytest.raises(error, match=message):
            ours.add_param_group({"params": [c], **extra})
        assert len(ours.param_groups) == 2
    with pytest.raises(ValueError, match="more than one parameter group"):  # torch's own check
        ours.add_param_group({"params": [a]})
    ours.add_param_group({"params": [c], "clipvalue": None, "clipnorm": 2.0})
    assert len(ours.param_groups) == 3


# --- 5. the extras ---------------------------------------------------------------------------
def clip_per_tensor(grads, c):
    """The per-tensor reference: g * c / max(||g||, c), the norm taken by torch.linalg."""
    return [g * (c / max(torch.linalg.vector_norm(g.double()).item(), c)) for g in grads]


def clip_globally(grads, c):
    """Keras' global clipping by hand: scale every gradient by c * min(1/norm, 1/c)."""
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    return [g * (c * min(1 / norm, 1 / c)) for g in grads]


CLIP_GRADS = np.random.default_rng(3).normal(scale=3.0, size=(5, 3, 4))
CLIP_SHAPES = [(4,), (2, 2), ()]


def split(row):
    """A (3, 4) draw as three gradients of CLIP_SHAPES."""
    return [row[0], row[1].reshape(2, 2), row[2, 0]]


def run_with_reference_clipping(option, value, clip_reference, dtype):
    initial = [np.linspace(-1, 1, 4), [[0.5, -0.5], [1.0, 2.0]], 0.3]
    our_params, reference_params = parameters(initial, dtype), parameters(initial, dtype)
    ours = SGD(our_params, lr=0.05, momentum=0.9, weight_decay=0.1, **{option: value})
    reference = torch.optim.SGD(reference_params, lr=0.05, momentum=0.9, weight_decay=0.1)
    for row in CLIP_GRADS:
        set_grads(our_params, split(row))
        set_grads(reference_params, split(row))
        ours.step()
        clip_reference(reference_params, value)
        reference.step()
        yield our_params, reference_params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipvalue_equals_clip_grad_value_then_torch_sgd_exactly(dtype):
    clipped_some = False
    for our_params, reference_params in run_with_reference_clipping(
        "clipvalue", 2.0, lambda params, v: torch.nn.utils.clip_grad_value_(params, v), dtype
    ):
        clipped_some |= any(bool((p.grad.abs() > 2.0).any()) for p in our_params)
        assert_bitwise_equal(our_params, reference_params)
    assert clipped_some


def replace_grads(params, new_grads):
    for p, g in zip(params, new_grads):
        p.grad = g.to(p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipnorm_clips_each_tensor_like_the_manual_reference(dtype):
    def reference(params, c):
        replace_grads(params, clip_per_tensor([p.grad for p in params], c))

    for our_params, reference_params in run_with_reference_clipping("clipnorm", 1.5, reference, dtype):
        for p, q in zip(our_params, reference_params):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_clipnorm_scales_all_gradients_together(dtype):
    def by_hand(params, c):
        replace_grads(params, clip_globally([p.grad for p in params], c))

    def torch_utils(params, c):  # c / (norm + 1e-6): equal up to the epsilon
        torch.nn.utils.clip_grad_norm_(params, c)

    for reference in (by_hand, torch_utils):
        for our_params, reference_params in run_with_reference_clipping("global_clipnorm", 2.0, reference, dtype):
            for p, q in zip(our_params, reference_params):
                torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipping_hand_computed(dtype):
    def first_step(grads, **options):
        params = parameters([[0.0, 0.0], [0.0, 0.0]], dtype)
        set_grads(params, grads)
        SGD(params, lr=1.0, **options).step()
        return [p.detach().tolist() for p in params]

    def rounded(value):
        return torch.tensor(value, dtype=dtype).item()

    six, eight = rounded(0.6), rounded(0.8)
    # clipnorm: [3, 4] has norm 5 -> (g * 1) / 5 = [0.6, 0.8]; [0.3, 0.4] (norm 0.5) is left alone
    assert first_step([[3.0, 4.0], [0.3, 0.4]], clipnorm=1.0) == [[-six, -eight], [-rounded(0.3), -rounded(0.4)]]
    # global_clipnorm: [3, 0] and [0, 4] together have norm 5; g * (1 * min(1/5, 1/1))
    global_result = first_step([[3.0, 0.0], [0.0, 4.0]], global_clipnorm=1.0)
    fifth = torch.tensor(1 / 5, dtype=dtype)
    assert global_result == [[-(3 * fifth).item(), 0.0], [0.0, -(4 * fifth).item()]]
    assert global_result == [[pytest.approx(-0.6, rel=1e-7), 0.0], [0.0, pytest.approx(-0.8, rel=1e-7)]]
    # clipvalue
    assert first_step([[3.0, -0.25], [-4.0, 0.5]], clipvalue=0.5) == [[-0.5, 0.25], [0.5, -0.5]]


def test_clipping_happens_before_l2_weight_decay():
    w = parameters([[1.0, 1.0]])[0]
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    SGD([w], lr=1.0, weight_decay=0.5, clipnorm=1.0).step()
    # clipped [0.6, 0.8], then + 0.5 * w = [1.1, 1.3]; decay first would clip [3.5, 4.5] instead
    reference = parameters([[1.0, 1.0]])[0]
    reference.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    torch.optim.SGD([reference], lr=1.0, weight_decay=0.5).step()
    assert torch.equal(w.detach(), reference.detach())
    assert w.tolist() == pytest.approx([-0.1, -0.3], abs=1e-15)


def test_ema_by_hand_with_and_without_overwrite():
    # lr 1, gradient 1, no momentum: w = 1, 0, -1, -2, ...; m = 0.5 (all exact in binary)
    w, frozen = parameters([[1.0], [5.0]], torch.float32)
    ours = SGD([w, frozen], lr=1.0, use_ema=True, ema_momentum=0.5)
    expected = [(0.0, 0.0), (-1.0, -0.5), (-2.0, -1.25), (-3.0, -2.125)]
    for weight, average in expected:
        w.grad = torch.ones(1)
        ours.step()
        assert (w.item(), ours.state[w]["average"].item()) == (weight, average)
        assert ours.state[frozen]["average"].item() == 5.0  # a parameter without gradient is averaged too

    w = parameters([[1.0]], torch.float32)[0]
    ours = SGD([w], lr=1.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2)
    expected = [(0.0, 0.0), (-0.5, -0.5), (-1.5, -1.0), (-1.75, -1.75), (-2.75, -2.25), (-3.0, -3.0)]
    for weight, average in expected:  # every 2nd update copies the average into the weight
        w.grad = torch.ones(1)
        ours.step()
        assert (w.item(), ours.state[w]["average"].item()) == (weight, average)
    assert ours.updates == 6


def ema_optimizer():
    params = parameters([[1.0, 2.0], [3.0]], torch.float32)
    ours = SGD(params, lr=0.3, momentum=0.9, use_ema=True, ema_momentum=0.7)
    for g in ([[0.5, -1.0], [2.0]], [[1.5, 0.25], [-1.0]], [[0.1, 0.2], [0.3]]):
        set_grads(params, g)
        ours.step()
    return params, ours


def test_swap_ema_weights_swaps_and_swaps_back_exactly():
    params, ours = ema_optimizer()
    weights = [p.detach().clone() for p in params]
    averages = [ours.state[p]["average"].clone() for p in params]
    assert not all(torch.equal(w, a) for w, a in zip(weights, averages))
    ours.swap_ema_weights()
    assert_bitwise_equal(params, averages)
    assert_bitwise_equal([ours.state[p]["average"] for p in params], weights)
    with pytest.raises(RuntimeError, match="swapped in.*swap_ema_weights"):
        ours.step()
    with pytest.raises(RuntimeError, match="swapped in"):
        ours.load_state_dict(ours.state_dict())
    with pytest.raises(RuntimeError, match="swapped in"):
        ours.finalize_variable_values()
    assert_bitwise_equal(params, averages)
    ours.swap_ema_weights()
    assert_bitwise_equal(params, weights)
    assert_bitwise_equal([ours.state[p]["average"] for p in params], averages)
    assert ours.updates == 3


def test_ema_weights_context_restores_even_when_the_body_raises():
    params, ours = ema_optimizer()
    weights = [p.detach().clone() for p in params]
    averages = [ours.state[p]["average"].clone() for p in params]
    with pytest.raises(KeyError):
        with ours.ema_weights():
            assert_bitwise_equal(params, averages)
            raise KeyError("evaluation failed")
    assert_bitwise_equal(params, weights)
    set_grads(params, [[1.0, 1.0], [1.0]])
    ours.step()  # no longer swapped
    assert ours.updates == 4


def test_finalize_variable_values_copies_the_average_and_needs_ema_for_swapping():
    params, ours = ema_optimizer()
    averages = [ours.state[p]["average"].clone() for p in params]
    ours.finalize_variable_values()
    assert_bitwise_equal(params, averages)
    plain_params = parameters([[1.0]])
    plain = SGD(plain_params, lr=0.1)
    plain.finalize_variable_values()  # a no-op
    assert plain_params[0].tolist() == [1.0]
    with pytest.raises(ValueError, match="use_ema=True"):
        plain.swap_ema_weights()


ACCUMULATION_GRADS = np.random.default_rng(11).normal(size=(6, 2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulation_applies_the_mean_gradient_every_third_step(dtype):
    initial = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]]
    our_params, reference_params = parameters(initial, dtype), parameters(initial, dtype)
    ours = SGD(our_params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, gradient_accumulation_steps=3)
    reference = torch.optim.SGD(reference_params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for cycle in range(2):
        grads = ACCUMULATION_GRADS[3 * cycle : 3 * cycle + 3]
        for micro in range(2):  # micro-steps leave the parameters alone
            before = [p.detach().clone() for p in our_params]
            set_grads(our_params, list(grads[micro]))
            ours.step()
            assert_bitwise_equal(our_params, before)
            assert ours.updates == cycle
        set_grads(our_params, list(grads[2]))
        ours.step()
        # the mean in the parameters' dtype; ((g1 + g2) + g3) / 3 adds in the accumulator's order
        in_dtype = [[torch.tensor(g[i], dtype=dtype) for g in grads] for i in range(2)]
        replace_grads(reference_params, [(g1 + g2 + g3) / 3 for g1, g2, g3 in in_dtype])
        reference.step()
        assert ours.updates == cycle + 1 and counters_of(ours.state_dict())["micro_steps"] == 3 * cycle + 3
        assert_bitwise_equal(our_params, reference_params)
        assert_same_momentum_buffers(ours, reference, our_params, reference_params)
        for p in our_params:
            assert not ours.state[p]["gradient_accumulator"].any()  # zeroed after the update


def test_accumulation_clips_the_mean_and_updates_the_ema_on_real_updates_only():
    w = parameters([[0.0, 0.0]])[0]
    ours = SGD([w], lr=1.0, clipnorm=1.0, gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.5)
    w.grad = torch.tensor([6.0, 8.0], dtype=torch.float64)
    ours.step()
    assert "average" not in ours.state[w] and w.tolist() == [0.0, 0.0]
    w.grad = torch.zeros(2, dtype=torch.float64)
    ours.step()
    # mean [3, 4] clipped to [0.6, 0.8] (clipping each micro-gradient would give [0.3, 0.4])
    assert w.tolist() == [-0.6, -0.8]
    assert ours.state[w]["average"].tolist() == [-0.6, -0.8]


def test_accumulation_counts_only_present_gradients():
    a, b = parameters([[1.0], [1.0]])
    ours = SGD([a, b], lr=1.0, gradient_accumulation_steps=3)
    for grads in ([3.0], [6.0]), ([3.0], None), ([3.0], [9.0]):
        set_grads([a, b], list(grads))
        ours.step()
    assert a.tolist() == [-2.0] and b.tolist() == [-4.0]  # means (3+3+3)/3 and (6+9)/3


# --- 6. errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"lr": -0.5}, ValueError, r"Invalid learning rate: -0\.5.*`lr`"),
        ({"momentum": -0.1}, ValueError, r"Invalid momentum value: -0\.1.*`momentum`"),
        ({"weight_decay": -1e-3}, ValueError, r"Invalid weight_decay value: -0\.001.*`weight_decay`"),
        ({"lr": float("nan")}, ValueError, r"`lr` must be finite.*lr=nan"),
        ({"lr": float("inf")}, ValueError, r"`lr` must be finite.*lr=inf"),
        ({"lr": torch.tensor([0.1, 0.2])}, ValueError, r"Tensor lr must be 1-element.*\(2,\)"),
        ({"lr": "0.1"}, TypeError, r"`lr` must be a real number.*'0\.1'"),
        ({"momentum": 0.9, "nesterov": True, "dampening": 0.1}, ValueError, r"Nesterov.*dampening=0\.1"),
        ({"nesterov": True}, ValueError, r"Nesterov.*momentum=0"),
        ({"clipnorm": 1.0, "clipvalue": 0.5}, ValueError, r"clipnorm.*clipvalue.*clipnorm=1\.0, clipvalue=0\.5"),
        ({"global_clipnorm": 1.0, "clipnorm": 2.0}, ValueError, r"global_clipnorm.*clipnorm=2\.0.*global_clipnorm=1\.0"),
        ({"clipnorm": -1.0}, ValueError, r"`clipnorm` must be >= 0"),
        ({"differentiable": True, "fused": True}, RuntimeError, r"`fused` does not support `differentiable`.*fused=True, differentiable=True"),
        ({"foreach": True, "fused": True}, ValueError, r"`fused` and `foreach` cannot be `True` together.*fused=True, foreach=True"),
        ({"ema_momentum": 1.5}, ValueError, r"`ema_momentum`.*1\.5"),
        ({"ema_overwrite_frequency": 0}, ValueError, r"`ema_overwrite_frequency`.*=0"),
        ({"gradient_accumulation_steps": 1}, ValueError, r"`gradient_accumulation_steps` must be an integer >= 2.*=1"),
        ({"gradient_accumulation_steps": 2.0}, ValueError, r"`gradient_accumulation_steps`.*=2\.0"),
        ({"use_ema": 1}, TypeError, r"`use_ema` must be a bool.*use_ema=1"),
    ],
)
def test_constructor_errors_name_the_argument_and_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        SGD(parameters([[1.0]]), **{"lr": 0.1, **kwargs})


@pytest.mark.parametrize("key", ["global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps"])
def test_an_optimizer_wide_option_in_a_group_with_another_value_is_refused(key):
    with pytest.raises(ValueError, match=rf"sets {key}=2, but {key} applies to the whole optimizer"):
        SGD([{"params": parameters([[1.0]]), key: 2}], lr=0.1)
    ours = SGD(parameters([[1.0]]), lr=0.1)
    ours.param_groups[0][key] = 2  # set after construction: refused at the step, nothing changed
    before = [p.detach().clone() for p in ours.param_groups[0]["params"]]
    set_grads(ours.param_groups[0]["params"], [[1.0]])
    with pytest.raises(ValueError, match=rf"sets {key}=2"):
        ours.step()
    assert_bitwise_equal(list(ours.param_groups[0]["params"]), before) and ours.updates == 0


def test_arguments_the_optimizer_normalises_are_accepted_as_given_in_groups():
    # ZeroRedundancyOptimizer copies the constructor's arguments as given into each group
    raw = dict(ema_overwrite_frequency=5, global_clipnorm=torch.tensor(1.0))  # no EMA: the frequency is dropped
    params = parameters([[1.0, 2.0]])
    ours = SGD([{"params": params, **raw}], lr=0.1, **raw)
    set_grads(params, [[3.0, 4.0]])
    ours.step()
    assert ours.ema_overwrite_frequency is None and ours.updates == 1


def test_optimizer_wide_options_repeated_in_groups_are_accepted_as_zero_redundancy_optimizer_copies_them():
    wide = dict(global_clipnorm=0.5, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2, gradient_accumulation_steps=2)
    params, twin_params = parameters([[1.0, 2.0], [3.0]]), parameters([[1.0, 2.0], [3.0]])
    ours = SGD([{"params": params, **wide}], lr=0.1, momentum=0.9, **wide)
    twin = SGD(twin_params, lr=0.1, momentum=0.9, **wide)
    for _ in range(4):
        set_grads(params, [[1.0, -2.0], [3.0]])
        set_grads(twin_params, [[1.0, -2.0], [3.0]])
        ours.step()
        twin.step()
    assert_bitwise_equal(params, twin_params)
    assert ours.updates == twin.updates == 2


def trained_pair(**options):
    """Two params with momentum state from one real step (plus any extras)."""
    params = parameters([[1.0, 2.0], [3.0, 4.0]])
    ours = SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.2}], lr=0.1, momentum=0.9, **options)
    set_grads(params, [[1.0, 1.0], [1.0, 1.0]])
    ours.step()
    return params, ours


def bad_shape(p):
    p.grad = torch.ones_like(p)
    p.grad.set_(torch.ones(3, dtype=p.dtype))  # assigning a wrong shape directly is refused by torch


def int_gradient(p):
    p.grad_dtype = None  # lets torch accept a gradient of another dtype
    p.grad = torch.ones(p.shape, dtype=torch.int64)


def sparse_gradient(p):
    p.grad = torch.ones_like(p).to_sparse()


STEP_ERRORS = [
    (bad_shape, ValueError, r"gradient has shape \(3,\) but its parameter has shape \(2,\)"),
    (int_gradient, TypeError, r"floating-point.*gradient of dtype torch\.int64"),
    (sparse_gradient, ValueError, r"weight_decay does not apply to a sparse gradient \(parameter of shape \(2,\)\).*weight_decay=0\.1"),
    (lambda p: None, ValueError, r"Invalid learning rate: -1.*`lr`"),  # with the group's lr set below
]


@pytest.mark.parametrize("options", [{}, {"gradient_accumulation_steps": 2}, {"use_ema": True, "global_clipnorm": 1.0}])
@pytest.mark.parametrize("corrupt, error, message", STEP_ERRORS, ids=["shape", "int", "sparse", "group lr"])
def test_step_errors_change_nothing(corrupt, error, message, options):
    params, ours = trained_pair(**options)
    set_grads(params, [[0.5, -0.5], [0.25, 0.25]])
    corrupt(params[1])
    if "Invalid learning rate" in message:
        ours.param_groups[1]["lr"] = -1.0
    if "sparse" in message:
        ours.param_groups[1]["weight_decay"] = 0.1  # torch.optim.SGD cannot step a sparse gradient with L2 decay
    before = snapshot(ours, params)
    assert before[1][0]  # there is state to protect
    with pytest.raises(error, match=message):
        ours.step()
    assert_unchanged(ours, params, before)


def test_non_finite_lr_set_on_a_group_is_refused_at_step():
    params, ours = trained_pair()
    ours.param_groups[1]["lr"] = float("nan")
    set_grads(params, [[1.0, 1.0], [1.0, 1.0]])
    before = snapshot(ours, params)
    with pytest.raises(ValueError, match=r"`lr` must be finite.*lr=nan"):
        ours.step()
    assert_unchanged(ours, params, before)


# --- 7. torch's own errors, same types ----------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"lr": -1}, {"momentum": -1}, {"weight_decay": -1}, {"momentum": 0, "nesterov": True}, {"momentum": 0.9, "dampening": 0.5, "nesterov": True}],
)
def test_same_exception_types_as_torch_sgd(kwargs):
    raised = []
    for cls in (torch.optim.SGD, SGD):
        with pytest.raises(Exception) as info:
            cls(parameters([[1.0]]), **kwargs)
        raised.append(type(info.value))
    assert raised[0] is raised[1] is ValueError


def test_accumulation_applies_gradients_a_param_missed_on_the_last_micro_step():
    a, b = parameters([[1.0, 2.0], [3.0]])
    optimizer = SGD([a, b], lr=0.5, gradient_accumulation_steps=3)
    set_grads([a, b], [[3.0, 6.0], [9.0]])
    optimizer.step()
    set_grads([a, b], [[3.0, 0.0], None])
    optimizer.step()
    set_grads([a, b], [[0.0, 3.0], None])  # b has no gradient on the update step
    optimizer.step()
    # a: mean (6, 9)/3 = (2, 3); b: its one gradient over 3 micro-steps, 9/3 = 3.
    assert a.detach().tolist() == [1.0 - 0.5 * 2.0, 2.0 - 0.5 * 3.0]
    assert b.detach().tolist() == [3.0 - 0.5 * 3.0]
    # A param without any gradient in a cycle is skipped, as torch skips a None gradient.
    c = parameters([[5.0]])[0]
    optimizer.add_param_group({"params": [c], "weight_decay": 0.1})
    for grads in ([[1.0, 1.0], [1.0], None],) * 3:
        set_grads([a, b, c], grads)
        optimizer.step()
    assert c.item() == 5.0 and c not in optimizer.state


@pytest.mark.parametrize(
    "options", [{}, {"gradient_accumulation_steps": 2}, {"use_ema": True, "ema_overwrite_frequency": 2}, {"foreach": False}],
    ids=["plain", "accumulation", "ema", "for-loop"],
)
def test_a_step_without_any_gradient_changes_nothing(options):
    """torch.optim.SGD does nothing when no parameter has a gradient; inertia's counters
    (which drive the EMA, its overwrite and accumulation) do not move either."""
    params, ours = interchange_model(SGD, **options)
    twin_params, twin = interchange_model(SGD, **options)
    train(ours, params, INTERCHANGE_GRADS[:3])  # mid-cycle under accumulation
    train(twin, twin_params, INTERCHANGE_GRADS[:3])
    before = snapshot(ours, params)
    ours.zero_grad()
    assert ours.step() is None
    assert ours.step(lambda: 7.0) == 7.0  # the closure runs; it made no gradient either
    assert_unchanged(ours, params, before)
    train(ours, params, INTERCHANGE_GRADS[3:])  # the gradless steps did not count
    train(twin, twin_params, INTERCHANGE_GRADS[3:])
    assert_bitwise_equal(params, twin_params)
    assert counters_of(ours.state_dict()) == counters_of(twin.state_dict())


def _step_from_threads(optimizer, params, threads: int, steps: int) -> None:
    """``threads`` threads each step ``optimizer`` ``steps`` times with one constant gradient
    (the steps commute: any order of whole steps gives the sequential result)."""
    gradients = [torch.full_like(p, 0.25) for p in params]
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait()
        for _ in range(steps):
            for p, g in zip(params, gradients):
                p.grad = g
            optimizer.step()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"foreach": False, "use_ema": True}], ids=["plain", "momentum", "for-loop+ema"])
def test_one_optimizer_stepped_from_several_threads_takes_every_step_whole(options):
    threads, steps = 4, 150
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: an unlocked step loses updates
    try:
        params = parameters([[1.0, -2.0, 3.0], [0.5, 0.25, -0.75]], torch.float32)
        ours = SGD(params, lr=0.125, **options)
        _step_from_threads(ours, params, threads, steps)
    finally:
        sys.setswitchinterval(previous)
    sequential_params = parameters([[1.0, -2.0, 3.0], [0.5, 0.25, -0.75]], torch.float32)
    sequential = SGD(sequential_params, lr=0.125, **options)
    _step_from_threads(sequential, sequential_params, 1, threads * steps)
    assert ours.updates == threads * steps == sequential.updates
    assert_bitwise_equal(params, sequential_params)
    for p, q in zip(params, sequential_params):
        assert_bitwise_equal(list(ours.state[p].values()), list(sequential.state[q].values()))


def test_stepping_while_swapped_fails_before_running_the_closure():
    (w,) = parameters([[1.0]])
    optimizer = SGD([w], lr=0.1, use_ema=True)
    set_grads([w], [[1.0]])
    optimizer.step()
    optimizer.swap_ema_weights()
    calls = []
    with pytest.raises(RuntimeError, match="swapped"):
        optimizer.step(lambda: calls.append(1))
    assert calls == []


@pytest.mark.parametrize("flags", [{}, {"foreach": True}, {"fused": True}, {"foreach": False}], ids=["default", "foreach", "fused", "for-loop"])
def test_foreach_and_fused_are_accepted_and_give_torchs_numbers(flags, monkeypatch):
    """foreach=True and fused=True run inertia's host kernel, foreach=False the per-parameter
    reference path (as torch's for-loop); every one gives torch.optim.SGD's for-loop numbers."""
    from inertia import kernels
    from inertia.engine import host

    module = kernels.load()
    ran = []

    class Spy:
        def __getattr__(self, name):
            function = getattr(module, name)
            if name != "step":
                return function
            return lambda *args: ran.append(function(*args)) or ran[-1]

    monkeypatch.setattr(kernels, "_loaded", Spy())
    torch.manual_seed(3)
    values = [torch.randn(4, 3), torch.randn(3)]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = SGD(ours, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05, **flags)
    reference = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05, foreach=False)
    for step in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + step)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(optimizer.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"])
    assert ran == ([] if flags.get("foreach") is False else [host.DONE] * 3)


def test_state_dict_hooks_see_the_counters():
    # torch's state_dict post-hooks (and wrappers that rebuild state dicts from the groups,
    # as ZeroRedundancyOptimizer does) see inertia's counters: they live in the groups.
    params = parameters([[1.0, 2.0]])
    ours = SGD(params, lr=0.1, momentum=0.9, gradient_accumulation_steps=2)
    seen = []
    ours.register_state_dict_post_hook(lambda optimizer, state_dict: seen.append(counters_of(state_dict)))
    for _ in range(3):
        set_grads(params, [[1.0, 1.0]])
        ours.step()
    ours.state_dict()
    assert seen == [{"micro_steps": 3, "updates": 1}]
