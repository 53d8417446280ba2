"""Shared pieces of the ports of PyTorch's optimizer harness (see README.md here).

torch's own test data drives them: the ``torch.optim.SGD`` entry of
``torch.testing._internal.common_optimizers.optim_db`` (its keyword sets, error inputs,
scheduler sets and sparse metadata). The reference system is ``torch.optim.SGD`` run with
``foreach=False`` (its for-loop implementation, which inertia claims to match bit for bit,
whatever inertia's own implementation flags are).
"""

from __future__ import annotations

import copy

import pytest
from conftest import requires

torch = requires("torch")
requires("expecttest")  # torch.testing._internal imports it
from torch.testing._internal import common_optimizers  # noqa: E402

from inertia.torch import SGD  # noqa: E402

SGD_INFO = next(info for info in common_optimizers.optim_db if info.optim_cls is torch.optim.SGD)
IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable")  # torch's "global cliquey" flags


def sgd_inputs(flag=None):
    """torch's SGD keyword sets as ``(description, kwargs)``, fresh objects on each call (a
    tensor lr is a new tensor). ``flag``: None for torch's sets as they are; ``"plain"``
    sets every implementation flag False; a flag name sets that one True and the others
    False, as torch's harness varies them one at a time."""
    cases = []
    for given in SGD_INFO.optim_inputs_func(device="cpu"):
        kwargs = dict(given.kwargs)
        desc = given.desc
        if flag is not None:
            kwargs.update(dict.fromkeys(IMPLEMENTATION_FLAGS, False))
            if flag != "plain":
                kwargs[flag] = True
                desc = f"{desc} & {flag}"
        cases.append((desc, kwargs))
    return cases


def own_copy(kwargs):
    """A copy of ``kwargs`` whose tensor values are new tensors (schedulers write into a
    tensor lr in place; two optimizers must not share one)."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in kwargs.items()}


def reference_kwargs(kwargs):
    """The same hyperparameters for torch.optim.SGD's for-loop implementation."""
    reference = {k: v for k, v in own_copy(kwargs).items() if k not in IMPLEMENTATION_FLAGS}
    reference["foreach"] = False
    return reference


def twin_params(params):
    """Fresh leaf copies of ``params`` (same values, strides kept by cloning views' bases is
    not needed here: each is a plain clone)."""
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def assert_bitwise(ours, theirs, what="parameter"):
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {k}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a.detach(), b.detach()), f"{what} {k} differs: max |diff| {(a.detach().double() - b.detach().double()).abs().max().item()}"


def assert_same_state(ours, our_params, theirs, their_params):
    """Every per-parameter state entry torch keeps is inertia's too, bit for bit; the same
    parameters have state."""
    our_params, their_params = list(our_params), list(their_params)
    assert [p in ours.state for p in our_params] == [q in theirs.state for q in their_params]
    for k, (p, q) in enumerate(zip(our_params, their_params)):
        if q not in theirs.state:
            continue
        for key, expected in theirs.state[q].items():
            got = ours.state[p].get(key)
            if expected is None:
                assert got is None, f"state[{k}][{key!r}] should be None"
            else:
                assert got is not None, f"state[{k}][{key!r}] is missing"
                assert_bitwise([got], [expected], f"state[{k}][{key!r}]")


def same_structure(a, b, path="state_dict"):
    """Recursive equality for state dicts: tensors bit for bit, everything else with ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and torch.equal(a, b), f"{path}: {a} vs {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            same_structure(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for k, (x, y) in enumerate(zip(a, b)):
            same_structure(x, y, f"{path}[{k}]")
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} vs {b!r}"
