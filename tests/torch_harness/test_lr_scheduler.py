"""Ports of PyTorch's LR scheduler tests (test/optim/test_lrscheduler.py, ``TestLRScheduler``)
to ``inertia.torch.SGD``.

torch's tests drive one SGD of two param groups (a float lr 0.05 and a tensor lr 0.5) and
check the learning rates its schedulers set. Ours drive the same set-up twice, once with
``inertia.torch.SGD`` and once with ``torch.optim.SGD`` (for-loop), and train for real
between scheduler steps (gradients ``sin(w)`` of the loss ``-sum(cos(w))``): the learning
rates (and momenta) the schedulers set, the parameters and the momentum buffers must be the
same, bit for bit, at every epoch; the rates must also be the expected ones (torch's
tolerance, 1e-5). README.md maps every torch test to its port here.
"""

from __future__ import annotations

import copy
import gc
import io
import math
import pickle
import types
import warnings
import weakref
from functools import partial

import pytest

from torch_harness_common import SGD, assert_bitwise, assert_same_state, torch

from torch.optim.lr_scheduler import (  # noqa: E402  (after torch_harness_common's import checks)
    EPOCH_DEPRECATION_WARNING,
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)
from torch.optim.swa_utils import SWALR  # noqa: E402

TOLERANCE = 1e-5  # torch's, for the expected rates


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 1, 1)
        self.conv2 = torch.nn.Conv2d(1, 1, 1)


class Bed:
    """torch's set-up for one optimizer class: conv1's parameters at lr 0.05, conv2's at a
    tensor lr 0.5 (or one group at ``single_lr``)."""

    def __init__(self, cls, single_lr=None):
        torch.manual_seed(0)
        self.net = Net()
        extra = {"foreach": False} if cls is torch.optim.SGD else {}
        if single_lr is not None:
            single_lr = single_lr.clone() if isinstance(single_lr, torch.Tensor) else single_lr  # one per optimizer
            self.opt = cls(self.net.parameters(), lr=single_lr, **extra)
        else:
            groups = [{"params": self.net.conv1.parameters()}, {"params": self.net.conv2.parameters(), "lr": torch.tensor(0.5)}]
            self.opt = cls(groups, lr=0.05, **extra)

    def params(self):
        return list(self.net.parameters())

    def train(self):
        """One real step: gradient sin(w) (bounded: cyclic schedules reach lr 25, momentum 22)."""
        self.opt.zero_grad()
        loss = sum(-torch.cos(p).sum() for p in self.params())
        loss.backward()
        self.opt.step()

    def lrs(self):
        return [float(group["lr"]) for group in self.opt.param_groups]

    def momenta(self):
        return [float(group["momentum"]) for group in self.opt.param_groups]


def both(body, **bed_options):
    """``body(bed)`` with inertia's optimizer and with torch's: same trace (exactly), same
    parameters and momentum buffers (bit for bit). Returns inertia's trace."""
    traces, beds = [], []
    for cls in (SGD, torch.optim.SGD):
        bed = Bed(cls, **bed_options)
        traces.append(body(bed))
        beds.append(bed)
    assert traces[0] == traces[1]
    assert_bitwise(beds[0].params(), beds[1].params())
    assert_same_state(beds[0].opt, beds[0].params(), beds[1].opt, beds[1].params())
    return traces[0]


def listed(schedulers):
    return schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]


def close(trace, targets, what="lr"):
    """Each epoch's rate of each group with a target is the target (within 1e-5)."""
    for epoch, rates in enumerate(trace):
        for group, target in enumerate(targets):
            assert abs(rates[group] - target[epoch]) <= TOLERANCE, f"{what} of group {group} at epoch {epoch}: {rates[group]} != {target[epoch]}"


def tenfold(rates):
    """The two groups' targets when the second's base lr (0.5) is ten times the first's."""
    return [rates, [10 * r for r in rates]]


# --- expected schedules, written as multipliers of the base lr ---------------------------------
def step_factor(size, gamma):
    return lambda e: gamma ** (e // size)


def milestones_factor(milestones, gamma):
    return lambda e: gamma ** sum(e >= m for m in milestones)


def constant_factor(factor, iters):
    return lambda e: factor if e < iters else 1.0


def linear_factor(start, end, iters):
    return lambda e: start + (end - start) * min(e, iters) / iters


def exp_factor(gamma):
    return lambda e: gamma**e


def poly_factor(power, iters):
    return lambda e: (1.0 - min(e, iters) / iters) ** power


def cosine_factor(period):
    return lambda e: (1 + math.cos(math.pi * e / period)) / 2  # eta_min 1e-10: below the tolerance


def product(*factors):
    return lambda e: math.prod(f(e) for f in factors)


def scheduled(factor, epochs, base=0.05):
    return [base * factor(e) for e in range(epochs)]


# --- the main table: one scheduler set, stepped after each training step ------------------------
# (our id, torch tests covered, schedulers maker, epochs, targets of group 0 (group 1: x10))
BEFORE_EACH_STEP = [
    ("step", ["test_step_lr", "test_chained_lr1"], lambda o: StepLR(o, gamma=0.1, step_size=3), 10, step_factor(3, 0.1)),
    ("multistep", ["test_multi_step_lr"], lambda o: MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]), 10, milestones_factor([2, 5, 9], 0.1)),
    ("constant", ["test_constantlr"], lambda o: ConstantLR(o, factor=0.5, total_iters=5), 10, constant_factor(0.5, 5)),
    ("linear", ["test_linearlr"], lambda o: LinearLR(o, start_factor=0.5, total_iters=4), 10, linear_factor(0.5, 1.0, 4)),
    ("exponential", ["test_exp_lr"], lambda o: ExponentialLR(o, gamma=0.9), 10, exp_factor(0.9)),
    ("polynomial", ["test_poly_lr"], lambda o: PolynomialLR(o, power=0.9, total_iters=5), 10, poly_factor(0.9, 5)),
    ("cosine", ["test_cos_anneal_lr"], lambda o: CosineAnnealingLR(o, T_max=10, eta_min=1e-10), 10, cosine_factor(10)),
    ("chained-linear", ["test_chained_lr2"], lambda o: ChainedScheduler([LinearLR(o, start_factor=0.4, total_iters=3)]), 10, linear_factor(0.4, 1.0, 3)),
    (
        "chained-linear-multistep", ["test_chained_lr3"],
        lambda o: ChainedScheduler([LinearLR(o, start_factor=0.4, total_iters=3), MultiStepLR(o, milestones=[4, 8, 10], gamma=0.1)]),
        10, product(linear_factor(0.4, 1.0, 3), milestones_factor([4, 8, 10], 0.1)),
    ),
    (
        "chained-exp-constant-step", ["test_chained_lr4"],
        lambda o: ChainedScheduler([ExponentialLR(o, gamma=0.9), ConstantLR(o, factor=0.2, total_iters=4), StepLR(o, gamma=0.1, step_size=3)]),
        9, product(exp_factor(0.9), constant_factor(0.2, 4), step_factor(3, 0.1)),
    ),
    (
        "chained-poly-constant", ["test_chained_lr5"],
        lambda o: ChainedScheduler([PolynomialLR(o, power=0.9, total_iters=5), ConstantLR(o, factor=0.1)]),
        10, product(poly_factor(0.9, 5), constant_factor(0.1, 5)),
    ),
    (
        "compound-step-multistep", ["test_compound_step_and_multistep_lr"],
        lambda o: [StepLR(o, gamma=0.1, step_size=3), MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9])],
        10, product(step_factor(3, 0.1), milestones_factor([2, 5, 9], 0.1)),
    ),
    (
        "compound-step-exp", ["test_compound_step_and_exp_lr"],
        lambda o: [StepLR(o, gamma=0.1, step_size=3), ExponentialLR(o, gamma=0.9)], 10, product(step_factor(3, 0.1), exp_factor(0.9)),
    ),
    (
        "compound-multistep-exp", ["test_compound_exp_and_multistep_lr"],
        lambda o: [MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]), ExponentialLR(o, gamma=0.9)], 10,
        product(milestones_factor([2, 5, 9], 0.1), exp_factor(0.9)),
    ),
    (
        "compound-linear-exp", ["test_compound_exp_and_linearlr"],
        lambda o: [LinearLR(o, start_factor=0.4, end_factor=0.9, total_iters=4), ExponentialLR(o, gamma=0.9)], 10,
        product(linear_factor(0.4, 0.9, 4), exp_factor(0.9)),
    ),
    (
        "compound-step-constant", ["test_compound_step_and_constantlr"],
        lambda o: [StepLR(o, gamma=0.1, step_size=3), ConstantLR(o, factor=0.4, total_iters=4)], 10,
        product(step_factor(3, 0.1), constant_factor(0.4, 4)),
    ),
    (
        "compound-multistep-linear", ["test_compound_linearlr_and_multistep_lr"],
        lambda o: [MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]), LinearLR(o, start_factor=0.4, total_iters=4)], 10,
        product(milestones_factor([2, 5, 9], 0.1), linear_factor(0.4, 1.0, 4)),
    ),
    (
        "compound-cosine-step", ["test_compound_cosanneal_and_step_lr"],
        lambda o: [CosineAnnealingLR(o, T_max=10, eta_min=1e-10), StepLR(o, gamma=0.1, step_size=3)], 10,
        product(cosine_factor(10), step_factor(3, 0.1)),
    ),
    (
        "compound-cosine-multistep", ["test_compound_cosanneal_and_multistep_lr"],
        lambda o: [CosineAnnealingLR(o, T_max=10, eta_min=1e-10), MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9])], 10,
        product(cosine_factor(10), milestones_factor([2, 5, 9], 0.1)),
    ),
    (
        "compound-linear-cosine", ["test_compound_cosanneal_and_linearlr"],
        lambda o: [LinearLR(o, start_factor=0.4, total_iters=4), CosineAnnealingLR(o, T_max=10, eta_min=1e-10)], 10,
        product(linear_factor(0.4, 1.0, 4), cosine_factor(10)),
    ),
    (
        "compound-cosine-exp", ["test_compound_cosanneal_and_exp_lr"],
        lambda o: [CosineAnnealingLR(o, T_max=10, eta_min=1e-10), ExponentialLR(o, gamma=0.1)], 10,
        product(cosine_factor(10), exp_factor(0.1)),
    ),
    (
        "sequential-exp-step", ["test_sequentiallr1"],
        lambda o: SequentialLR(o, schedulers=[ExponentialLR(o, gamma=0.8), StepLR(o, gamma=0.1, step_size=4)], milestones=[3]), 19,
        lambda e: 0.8**e if e < 3 else 0.1 ** ((e - 3) // 4),
    ),
    (
        "sequential-constant-exp", ["test_sequentiallr2"],
        lambda o: SequentialLR(o, schedulers=[ConstantLR(o, factor=0.1, total_iters=3), ExponentialLR(o, gamma=0.9)], milestones=[3]), 13,
        lambda e: 0.1 if e < 3 else 0.9 ** (e - 3),
    ),
    (
        "sequential-three", ["test_sequentiallr3"],
        lambda o: SequentialLR(
            o, schedulers=[ConstantLR(o, factor=0.1, total_iters=3), ExponentialLR(o, gamma=0.8), StepLR(o, gamma=0.1, step_size=2)], milestones=[3, 6]
        ), 12,
        lambda e: 0.1 if e < 3 else (0.8 ** (e - 3) if e < 6 else 0.1 ** ((e - 6) // 2)),
    ),
    (
        "sequential-of-chained", ["test_sequentiallr5"],
        lambda o: SequentialLR(
            o, schedulers=[ChainedScheduler([LinearLR(o, start_factor=0.1, total_iters=5), ConstantLR(o, factor=0.1, total_iters=5)]),
                           ConstantLR(o, factor=0.5, total_iters=5)], milestones=[5],
        ), 10,
        lambda e: (0.1 + 0.9 * e / 5) * 0.1 if e < 5 else 0.5,
    ),
]


@pytest.mark.parametrize("case", BEFORE_EACH_STEP, ids=[c[0] for c in BEFORE_EACH_STEP])
def test_schedule_drives_both_optimizers_alike(case):
    _, _, make, epochs, factor = case

    def body(bed):
        schedulers, trace = listed(make(bed.opt)), []
        for _ in range(epochs):
            trace.append(bed.lrs())
            bed.train()
            for scheduler in schedulers:
                scheduler.step()
        return trace

    trace = both(body)
    close(trace, tenfold(scheduled(factor, epochs)))
    assert len({rates[0] for rates in trace}) > 1


def test_lambda_and_multiplicative_lr():
    # test_lambda_lr, test_multiplicative_lr: per-group functions, from lrs 0.05 and 0.4.
    targets = [scheduled(exp_factor(0.9), 10), scheduled(exp_factor(0.8), 10, base=0.4)]
    for make in (
        lambda o: LambdaLR(o, lr_lambda=[lambda e: 0.9**e, lambda e: 0.8**e]),
        lambda o: MultiplicativeLR(o, lr_lambda=[lambda e: 0.9, lambda e: 0.8]),
    ):
        def body(bed):
            bed.opt.param_groups[0]["lr"], bed.opt.param_groups[1]["lr"] = 0.05, 0.4
            scheduler, trace = make(bed.opt), []
            for _ in range(10):
                trace.append(bed.lrs())
                bed.train()
                scheduler.step()
            return trace

        close(both(body), targets)


def test_sequentiallr_does_not_alias_lr_and_initial_lr():
    # One group with a tensor lr 2.0: up from 0.1x to 0.8x over 4 epochs, then back down.
    def body(bed):
        opt = bed.opt
        scheduler = SequentialLR(opt, [LinearLR(opt, 0.1, 0.8, total_iters=4), LinearLR(opt, 0.8, 0.1, total_iters=4)], milestones=[4])
        trace = []
        for _ in range(8):
            trace.append(bed.lrs())
            bed.train()
            scheduler.step()
        return trace

    trace = both(body, single_lr=torch.tensor(2.0))
    close(trace, [[2 * (0.1 + 0.7 * e / 4) if e < 4 else 2 * (0.8 - 0.7 * (e - 4) / 4) for e in range(8)]])


# --- get_last_lr, and epochs passed to step() ---------------------------------------------------
LAST_LR = [
    ("step", "test_get_last_lr_step_lr", lambda o: StepLR(o, 3, gamma=0.1), step_factor(3, 0.1)),
    ("multistep", "test_get_last_lr_multi_step_lr", lambda o: MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]), milestones_factor([2, 5, 9], 0.1)),
    ("constant", "test_get_last_lr_constantlr", lambda o: ConstantLR(o, factor=0.5, total_iters=5), constant_factor(0.5, 5)),
    ("linear", "test_get_last_lr_linearlr", lambda o: LinearLR(o, start_factor=0.25, end_factor=0.6, total_iters=4), linear_factor(0.25, 0.6, 4)),
    (
        "sequential", "test_get_last_lr_sequentiallr",
        lambda o: SequentialLR(o, schedulers=[ConstantLR(o, factor=0.1, total_iters=3), ExponentialLR(o, gamma=0.8), StepLR(o, gamma=0.1, step_size=2)], milestones=[3, 6]),
        lambda e: 0.1 if e < 3 else (0.8 ** (e - 3) if e < 6 else 0.1 ** ((e - 6) // 2)),
    ),
]


@pytest.mark.parametrize("case", LAST_LR, ids=[c[0] for c in LAST_LR])
def test_get_last_lr(case):
    _, _, make, factor = case

    def body(bed):
        scheduler, trace = make(bed.opt), []
        for _ in range(10):
            trace.append(list(map(float, scheduler.get_last_lr())))
            assert trace[-1] == bed.lrs()
            bed.train()
            scheduler.step()
        return trace

    close(both(body), tenfold(scheduled(factor, 10)))


def step_with_epoch(schedulers, epoch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scheduler in schedulers:
            scheduler.step(epoch)
    assert [str(w.message) for w in caught] == [EPOCH_DEPRECATION_WARNING] * len(schedulers)


WITH_EPOCH = [
    ("multistep", "test_multi_step_lr_with_epoch", lambda o: MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]), milestones_factor([2, 5, 9], 0.1)),
    ("constant", "test_constantlr_with_epoch", lambda o: ConstantLR(o, factor=0.5, total_iters=5), constant_factor(0.5, 5)),
    ("linear", "test_linearlr_with_epoch", lambda o: LinearLR(o, start_factor=0.5, total_iters=4), linear_factor(0.5, 1.0, 4)),
]


@pytest.mark.parametrize("case", WITH_EPOCH, ids=[c[0] for c in WITH_EPOCH])
def test_step_with_epoch_argument(case):
    _, _, make, factor = case

    def body(bed):
        scheduler, trace = make(bed.opt), []
        for epoch in range(10):
            bed.train()
            step_with_epoch([scheduler], epoch)
            trace.append(bed.lrs())
        return trace

    close(both(body), tenfold(scheduled(factor, 10)))


CONSTANT_EPOCH = {
    "test_step_lr_is_constant_for_constant_epoch": lambda o: StepLR(o, 2),
    "test_exponential_lr_is_constant_for_constant_epoch": lambda o: ExponentialLR(o, gamma=0.9),
    "test_constantlr_is_constant_for_constant_epoch": lambda o: ConstantLR(o),
    "test_linear_linearlr_is_constant_for_constant_epoch": lambda o: LinearLR(o),
    "test_polynomial_lr_is_constant_for_constant_epoch": lambda o: PolynomialLR(o, power=0.9),
}


@pytest.mark.parametrize("name", CONSTANT_EPOCH)
def test_lr_is_constant_for_constant_epoch(name):
    def body(bed):
        scheduler, trace = CONSTANT_EPOCH[name](bed.opt), []
        for _ in range(10):
            bed.train()
            step_with_epoch([scheduler], 2)
            trace.append(bed.lrs())
        return trace

    trace = both(body)
    assert len({tuple(rates) for rates in trace}) == 1


CLOSED_FORM = {
    "test_closed_form_step_lr": lambda o: StepLR(o, gamma=0.1, step_size=3),
    "test_closed_form_linearlr": lambda o: LinearLR(o, start_factor=1.0 / 3, end_factor=0.7, total_iters=4),
    "test_closed_form_constantlr": lambda o: ConstantLR(o, factor=1.0 / 3, total_iters=4),
    "test_closed_form_multi_step_lr": lambda o: MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]),
    "test_closed_form_exp_lr": lambda o: ExponentialLR(o, gamma=0.9),
    "test_closed_form_poly_lr": lambda o: PolynomialLR(o, power=0.9),
    "test_closed_form_cos_anneal_lr": lambda o: CosineAnnealingLR(o, T_max=5, eta_min=1e-10),
}


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_chainable_form_matches_closed_form(name):
    # Stepped one epoch at a time, or told the epoch (the closed form), a scheduler sets the
    # same rates (within 1e-5); each way, both optimizers alike. (torch's version reads the
    # rates of a fresh optimizer its schedulers do not drive; ours compares the driven ones.)
    def chained(bed):
        scheduler, trace = CLOSED_FORM[name](bed.opt), []
        for _ in range(20):
            bed.train()
            scheduler.step()
            trace.append(bed.lrs())
        return trace

    def closed(bed):
        scheduler, trace = CLOSED_FORM[name](bed.opt), []
        for epoch in range(20):
            bed.train()
            step_with_epoch([scheduler], epoch + 1)
            trace.append(bed.lrs())
        return trace

    closed_rates = both(closed)
    close(both(chained), [[rates[g] for rates in closed_rates] for g in range(2)])


def test_cos_anneal_lr_continue():
    # A cosine scheduler resumed at last_epoch=0 starts from the rates the first one reached.
    def body(bed):
        scheduler = CosineAnnealingLR(bed.opt, T_max=5, eta_min=0.1)
        bed.train()
        scheduler.step()
        resumed = CosineAnnealingLR(bed.opt, T_max=5, eta_min=0.1, last_epoch=0)
        return [list(map(float, scheduler.get_last_lr())), list(map(float, resumed.get_last_lr()))]

    original, resumed = both(body)
    assert original == pytest.approx(resumed, rel=1e-4, abs=1e-5)
    assert original[0] != 0.05


# --- ReduceLROnPlateau ---------------------------------------------------------------------------
def piecewise(*runs):
    """[(value, count), ...] -> the flat list."""
    return [value for value, count in runs for _ in range(count)]


PLATEAU = [
    ("abs-min-no-reduction", "test_reduce_lr_on_plateau1", dict(threshold_mode="abs", mode="min", threshold=0.01, patience=5, cooldown=5),
     [10 - i * 0.0167 for i in range(20)], 10, [piecewise((0.5, 20))]),
    ("abs-min", "test_reduce_lr_on_plateau2", dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
     [10 - i * 0.0165 for i in range(22)], 22, [piecewise((0.5, 6), (0.05, 7), (0.005, 7), (0.0005, 2))]),
    ("abs-max", "test_reduce_lr_on_plateau3", dict(mode="max", patience=5, cooldown=5, threshold_mode="abs"),
     [-0.8] * 2 + [-0.234] * 20, 22, [piecewise((0.5, 8), (0.05, 11), (0.005, 4))]),
    ("rel-max-no-reduction", "test_reduce_lr_on_plateau4", dict(mode="max", patience=3, threshold_mode="rel", threshold=0.1),
     [1.5 * (1.025**i) for i in range(20)], 20, [piecewise((0.5, 20))]),
    ("rel-max", "test_reduce_lr_on_plateau5", dict(mode="max", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5),
     [1.5 * (1.005**i) for i in range(20)], 20, [piecewise((0.5, 6), (0.05, 11), (0.005, 4))]),
    ("rel-min-no-reduction", "test_reduce_lr_on_plateau6", dict(mode="min", threshold_mode="rel", threshold=0.1),
     [1.5 * (0.85**i) for i in range(20)], 20, [piecewise((0.5, 20))]),
    ("rel-min", "test_reduce_lr_on_plateau7", dict(mode="min", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5),
     [1] * 7 + [0.6] + [0.5] * 12, 20, [piecewise((0.5, 6), (0.05, 11), (0.005, 4))]),
    ("min-lr-per-group", "test_reduce_lr_on_plateau8", dict(mode="max", threshold_mode="rel", min_lr=[0.4, 0.3], threshold=0.1, patience=5, cooldown=5),
     [1.5 * (1.005**i) for i in range(20)], 20, [piecewise((0.5, 6), (0.4, 14)), piecewise((0.5, 6), (0.3, 14))]),
]
COMPOUND_PLATEAU = [
    ("with-step", "test_compound_reduce_lr_on_plateau1", dict(threshold_mode="abs", mode="min", threshold=0.01, patience=5, cooldown=5),
     lambda o: StepLR(o, gamma=0.1, step_size=3), [10 - i * 0.0167 for i in range(20)], 10),
    ("with-multistep", "test_compound_reduce_lr_on_plateau2", dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
     lambda o: MultiStepLR(o, gamma=0.1, milestones=[3, 8, 12]), [10 - i * 0.0165 for i in range(22)], 22),
    ("with-exp", "test_compound_reduce_lr_on_plateau3", dict(mode="max", patience=5, cooldown=5, threshold_mode="abs"),
     lambda o: ExponentialLR(o, gamma=0.1), [-0.8] * 2 + [-0.234] * 20, 22),
    ("with-cosine", "test_compound_reduce_lr_on_plateau4", dict(mode="max", patience=3, threshold_mode="rel", threshold=0.1),
     lambda o: CosineAnnealingLR(o, 10, 1e-10), [1.5 * (1.025**i) for i in range(20)], 10),
    ("with-linear", "test_compound_reduce_lr_on_plateau5", dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
     lambda o: LinearLR(o, start_factor=0.4, total_iters=4), [10 - i * 0.0165 for i in range(22)], 22),
]


def plateau_run(options, metrics, epochs, others=lambda o: [], lr=0.5):
    def body(bed):
        for group in bed.opt.param_groups:
            group["lr"] = lr
        schedulers, trace = [ReduceLROnPlateau(bed.opt, **options)] + listed(others(bed.opt)), []
        for epoch in range(epochs):
            bed.train()
            for scheduler in schedulers:
                scheduler.step(metrics[epoch]) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
            trace.append(bed.lrs())
        return trace

    return both(body)


@pytest.mark.parametrize("case", PLATEAU, ids=[c[0] for c in PLATEAU])
def test_reduce_lr_on_plateau(case):
    _, _, options, metrics, epochs, targets = case
    close(plateau_run(options, metrics, epochs), targets)


@pytest.mark.parametrize("case", COMPOUND_PLATEAU, ids=[c[0] for c in COMPOUND_PLATEAU])
def test_reduce_lr_on_plateau_with_another_scheduler(case):
    # torch's compound plateau tests check no rate (their target lists end up empty); ours
    # checks both optimizers alike and that the rates moved.
    _, _, options, others, metrics, epochs = case
    lr = 0.05 if "cosine" in case[0] else 0.5
    trace = plateau_run(options, metrics, epochs, others, lr=lr)
    assert trace[-1][0] < lr


def test_reduce_lr_on_plateau_get_last_lr_before_step():
    def body(bed):
        for group in bed.opt.param_groups:
            group["lr"] = 0.5
        return ReduceLROnPlateau(bed.opt).get_last_lr()

    assert both(body) == [0.5, 0.5]


def test_reduce_lr_on_plateau_preserves_lr_type():
    # A tensor lr stays a tensor (written in place) when the scheduler reduces it.
    def body(bed):
        kinds = [type(group["lr"]) for group in bed.opt.param_groups]
        scheduler = ReduceLROnPlateau(bed.opt, mode="min", patience=0)
        bed.train()
        scheduler.step(1.0)
        bed.train()
        scheduler.step(2.0)  # worse: reduced
        bed.train()
        assert [type(group["lr"]) for group in bed.opt.param_groups] == kinds
        return bed.lrs()

    assert both(body) == pytest.approx([0.005, 0.05])


@pytest.mark.parametrize("min_lr", ["scalar", "list"])
def test_add_param_group_does_not_break_reduce_lr_on_plateau(min_lr):
    # A group added at epoch 8 (to both optimizers) leaves the first group's schedule alone.
    def body(bed):
        for group in bed.opt.param_groups:
            group["lr"] = 0.5
        scheduler = ReduceLROnPlateau(bed.opt, mode="min", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5,
                                      min_lr=0 if min_lr == "scalar" else [1e-5, 1e-4])
        metrics, trace = [1] * 7 + [0.6] + [0.5] * 12, []
        for epoch in range(20):
            if epoch == 8:
                torch.manual_seed(8)
                bed.opt.add_param_group({"params": [torch.nn.Parameter(torch.rand(2, 3))], "lr": 0.05})
                if min_lr == "list":
                    scheduler.min_lrs.append(1e-6)
            bed.train()
            scheduler.step(metrics[epoch])
            trace.append(bed.lrs()[:1])
        return trace

    close(both(body), [piecewise((0.5, 6), (0.05, 11), (0.005, 4))])


def test_add_param_group_errors_reduce_lr_on_plateau():
    bed = Bed(SGD)
    scheduler = ReduceLROnPlateau(bed.opt, mode="min", threshold_mode="rel", threshold=1e-5, patience=0, cooldown=0, min_lr=[1e-5, 1e-4])
    bed.opt.add_param_group({"params": [torch.nn.Parameter(torch.rand(2, 3))], "lr": 0.05})
    bed.train()
    scheduler.step(1)
    bed.train()
    with pytest.raises(RuntimeError, match="The number of param groups in the"):
        scheduler.step(1.3)


# --- cyclic schedules (lr and momentum) -----------------------------------------------------------
def cycle_height(e, up, down):
    """Where a triangle wave of rise ``up`` and fall ``down`` steps is at step e, in [0, 1]."""
    position = e % (up + down)
    return position / up if position <= up else 1 - (position - up) / down


def cycle_number(e, up, down):
    return e // (up + down)


def cyclic_targets(base, top, up, down, steps, amplitude=lambda e, cycle: 1.0):
    lr = [base + (top - base) * cycle_height(e, up, down) * amplitude(e, cycle_number(e, up, down)) for e in range(steps)]
    momentum = [top - (top - base) * cycle_height(e, up, down) * amplitude(e, cycle_number(e, up, down)) for e in range(steps)]
    return lr, momentum


HALVING = lambda e, cycle: 0.5**cycle  # noqa: E731  triangular2
EXP_09 = lambda e, cycle: 0.9**e  # noqa: E731  exp_range, gamma 0.9


def cyclic_case(base, top, up, down, steps, mode, amplitude=lambda e, c: 1.0, **extra):
    bases, tops = (base, top) if isinstance(base, list) else ([base] * 2, [top] * 2)
    targets = [cyclic_targets(b, t, up, down, steps, amplitude) for b, t in zip(bases, tops)]
    make = lambda o: CyclicLR(o, base_lr=base, max_lr=top, step_size_up=up, step_size_down=down if down != up else None,  # noqa: E731
                              cycle_momentum=True, base_momentum=base, max_momentum=top, mode=mode, **extra)
    return make, [t[0] for t in targets], [t[1] for t in targets], steps


def one_cycle_targets(phases, anneal):
    """phases: [(last step, start, end), ...] from step 0; values annealed within each."""
    values, previous = [], 0
    for last, start, end in phases:
        for step in range(previous if not values else previous + 1, last + 1):
            values.append(anneal(start, end, (step - previous) / (last - previous)))
        previous = last
    return values


def linear_anneal(start, end, fraction):
    return start + (end - start) * fraction


def cosine_anneal(start, end, fraction):
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


CYCLES = {
    "test_cycle_lr_triangular_mode_one_lr": cyclic_case(1, 5, 4, 4, 11, "triangular"),
    "test_cycle_lr_triangular2_mode_one_lr": cyclic_case(1, 5, 4, 4, 22, "triangular2", HALVING),
    "test_cycle_lr_exp_range_mode_one_lr": cyclic_case(1, 5, 4, 4, 13, "exp_range", EXP_09, gamma=0.9),
    "test_cycle_lr_triangular_mode": cyclic_case([1, 2], [5, 6], 4, 4, 11, "triangular"),
    "test_cycle_lr_triangular2_mode": cyclic_case([1, 3], [5, 7], 4, 4, 22, "triangular2", HALVING),
    "test_cycle_lr_exp_range_mode": cyclic_case([1, 5], [5, 12], 4, 4, 13, "exp_range", EXP_09, gamma=0.9),
    "test_cycle_lr_triangular_mode_step_size_up_down": cyclic_case(1, 5, 4, 6, 11, "triangular"),
    "test_cycle_lr_triangular2_mode_step_size_up_down": cyclic_case([1, 3], [5, 7], 2, 6, 24, "triangular2", HALVING),
    "test_cycle_lr_exp_range_mode_step_size_up_down": cyclic_case(1, 5, 2, 6, 13, "exp_range", EXP_09, gamma=0.9),
    "test_onecycle_lr_linear_annealing": (
        lambda o: OneCycleLR(o, max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22, total_steps=10, anneal_strategy="linear"),
        [one_cycle_targets([(2, 1, 25), (9, 25, 0.5)], linear_anneal)] * 2, [one_cycle_targets([(2, 22, 1), (9, 1, 22)], linear_anneal)] * 2, 10,
    ),
    "test_onecycle_lr_linear_annealing_three_phases": (
        lambda o: OneCycleLR(o, max_lr=25, div_factor=25, base_momentum=1, max_momentum=22, total_steps=10, anneal_strategy="linear",
                             pct_start=0.4, final_div_factor=4, three_phase=True),
        [one_cycle_targets([(3, 1, 25), (6, 25, 1), (9, 1, 0.25)], linear_anneal)] * 2,
        [one_cycle_targets([(3, 22, 1), (6, 1, 22), (9, 22, 22)], linear_anneal)] * 2, 10,
    ),
    "test_onecycle_lr_cosine_annealing": (
        lambda o: OneCycleLR(o, max_lr=25, final_div_factor=2, base_momentum=1, max_momentum=22, total_steps=10),
        [one_cycle_targets([(2, 1, 25), (9, 25, 0.5)], cosine_anneal)] * 2, [one_cycle_targets([(2, 22, 1), (9, 1, 22)], cosine_anneal)] * 2, 10,
    ),
}


@pytest.mark.parametrize("name", CYCLES)
def test_cyclic_schedules_set_lr_and_momentum(name):
    make, lr_targets, momentum_targets, steps = CYCLES[name]

    def body(bed):
        scheduler, trace = make(bed.opt), []
        for _ in range(steps):
            trace.append((bed.lrs(), bed.momenta()))
            bed.train()
            scheduler.step()
        return trace

    trace = both(body)
    close([lrs for lrs, _ in trace], lr_targets)
    close([momenta for _, momenta in trace], momentum_targets, "momentum")


def test_cycle_lr_without_cycling_momentum_keeps_the_optimizers():
    # test_cycle_lr_triangular_mode_one_lr_no_momentum: the momentum stays the optimizer's.
    def body(bed):
        scheduler = CyclicLR(bed.opt, base_lr=1, max_lr=5, step_size_up=4, cycle_momentum=False, mode="triangular")
        trace = []
        for _ in range(11):
            trace.append((bed.lrs(), bed.momenta()))
            bed.train()
            scheduler.step()
        return trace

    trace = both(body)
    close([lrs for lrs, _ in trace], [cyclic_targets(1, 5, 4, 4, 11)[0]] * 2)
    assert {tuple(m) for _, m in trace} == {(0.0, 0.0)}


def test_cosine_then_cyclic():
    # A cyclic schedule after a cosine one stays within its bounds (torch issue 21965).
    def body(bed):
        first = CosineAnnealingLR(bed.opt, T_max=20, eta_min=0.1)
        second = CyclicLR(bed.opt, base_lr=0.1, max_lr=0.3, step_size_up=1, step_size_down=3)
        trace = []
        for step in range(40):
            bed.train()
            (first if step <= first.T_max else second).step()
            trace.append(bed.lrs()[0])
        return trace

    trace = both(body, single_lr=0.5)
    assert trace[-1] <= 0.3 and max(trace[25:]) <= 0.3 + 1e-12


# --- CosineAnnealingWarmRestarts -------------------------------------------------------------------
def warm_restart_factor(t, first, mult):
    """Cosine factor at (possibly fractional) epoch t with restarts every first, first*mult, ..."""
    period, start = first, 0.0
    while t - start >= period - 1e-9:
        start += period
        period *= mult
    return (1 + math.cos(math.pi * (t - start) / period)) / 2


@pytest.mark.parametrize("T_mult", [1, 2, 4])
def test_CosineAnnealingWarmRestarts_lr1(T_mult):
    def body(bed):
        scheduler, trace = CosineAnnealingWarmRestarts(bed.opt, T_0=10, T_mult=T_mult, eta_min=1e-10), []
        for _ in range(100):
            trace.append(bed.lrs())
            bed.train()
            scheduler.step()
        return trace

    close(both(body), tenfold([0.05 * warm_restart_factor(e, 10, T_mult) for e in range(100)]))


def warm_restarts_at(T_mult, epochs):
    """CosineAnnealingWarmRestarts(T_0=10) stepped with the given epochs (``step(epoch)``),
    on both optimizers, against the closed form."""

    def body(bed):
        scheduler, trace = CosineAnnealingWarmRestarts(bed.opt, T_0=10, T_mult=T_mult, eta_min=1e-10), []
        for epoch in epochs:
            bed.train()
            scheduler.step(epoch)
            trace.append(bed.lrs())
        return trace

    close(both(body), tenfold([0.05 * warm_restart_factor(t, 10, T_mult) for t in epochs]))


def test_CosineAnnealingWarmRestarts_lr2():
    # Fractional epochs 0, 0.1, ... 29.9 given to step().
    for T_mult in (1, 2, 4):
        warm_restarts_at(T_mult, [round(k * 0.1, 1) for k in range(300)])


def test_CosineAnnealingWarmRestarts_lr3():
    # Epochs given out of order, jumping forward and back.
    for T_mult, epochs in (
        (1, [0, 1, 2, 3, 4, 5, 12, 27, 3, 4, 5, 6, 13]),
        (2, [0, 1, 2, 3, 4, 5, 25, 32, 33, 34, 80, 81, 3]),
        (3, [0, 0.1, 0.2, 0.3, 1.3, 2.3, 17.5, 18.5, 19.5, 29.5, 30.5, 31.5, 50]),
    ):
        warm_restarts_at(T_mult, epochs)


def test_CosineAnnealingWarmRestarts_T_cur_reset():
    bed = Bed(SGD)
    scheduler = CosineAnnealingWarmRestarts(bed.opt, T_0=4)
    for epoch in (7, 8, 9):
        scheduler.T_cur = epoch
        bed.train()
        scheduler.step()
        assert scheduler.T_cur == (epoch + 1) % 4


# --- SWALR -----------------------------------------------------------------------------------------
def swa_run(make_swa, make_before, epochs, swa_start):
    def body(bed):
        swa, before, trace = make_swa(bed.opt), make_before(bed.opt) if make_before else None, []
        for epoch in range(epochs):
            trace.append(bed.lrs())
            if epoch >= swa_start:
                bed.train()
                swa.step()
            elif before is not None:
                bed.train()
                before.step()
        return trace

    return both(body)


def test_swalr_no_anneal():
    trace = swa_run(lambda o: SWALR(o, anneal_epochs=1, swa_lr=0.01), None, 10, 5)
    close(trace, [[lr] * 6 + [0.01] * 4 for lr in (0.05, 0.5)])


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swalr_anneal_after_multiplicative(strategy):
    # test_swalr_cosine_anneal_after_multiplicative (one swa_lr, 5 anneal epochs) and
    # test_swalr_linear_anneal_after_multiplicative (an swa_lr per group, 4 epochs).
    swa_lrs, anneal_epochs = ([0.01, 0.01], 5) if strategy == "cos" else ([0.01, 0.02], 4)
    trace = swa_run(
        lambda o: SWALR(o, anneal_epochs=anneal_epochs, anneal_strategy=strategy, swa_lr=swa_lrs if strategy == "linear" else swa_lrs[0]),
        lambda o: MultiplicativeLR(o, lr_lambda=lambda epoch: 0.9), 15, 5,
    )

    def remaining(t):  # the weight of the pre-SWA rate t+1 epochs into the annealing
        if t + 1 >= anneal_epochs:
            return 0.0
        fraction = (t + 1) / anneal_epochs
        return (1 + math.cos(math.pi * fraction)) / 2 if strategy == "cos" else 1 - fraction

    targets = []
    for base, swa_lr in zip((0.05, 0.5), swa_lrs):
        before = [base * 0.9**e for e in range(6)]
        targets.append(before + [before[-1] * remaining(t) + swa_lr * (1 - remaining(t)) for t in range(9)])
    close(trace, targets)


def test_swalr_hypers():
    bed = Bed(SGD)
    with pytest.raises(ValueError, match="anneal_strategy must"):
        SWALR(bed.opt, anneal_strategy="exponential", swa_lr=1.0)
    for epochs in (-1, 1.7):
        with pytest.raises(ValueError, match="anneal_epochs must"):
            SWALR(bed.opt, anneal_epochs=epochs, swa_lr=1.0)
    with pytest.raises(ValueError, match="swa_lr must"):
        SWALR(bed.opt, swa_lr=[1.0, 0.1, 0.01])


# --- errors --------------------------------------------------------------------------------------
ERRORS = {
    "test_linearlr_start_factor_limits1": (ValueError, None, lambda o: LinearLR(o, start_factor=0.0, total_iters=4)),
    "test_linearlr_start_factor_limits2": (ValueError, None, lambda o: LinearLR(o, start_factor=1.1, total_iters=4)),
    "test_cycle_lr_invalid_mode": (ValueError, None, lambda o: CyclicLR(o, base_lr=0, max_lr=0, mode="CATS")),
    "test_onecycle_lr_invalid_anneal_strategy": (ValueError, None, lambda o: OneCycleLR(o, max_lr=1e-3, total_steps=10, anneal_strategy="CATS")),
    "test_onecycle_lr_invalid_pct_start": (ValueError, None, lambda o: OneCycleLR(o, max_lr=1e-3, total_steps=10, pct_start=1.1)),
    "test_onecycle_lr_cannot_calculate_total_steps": (ValueError, None, lambda o: OneCycleLR(o, max_lr=1e-3)),
    "test_multiplicative_lr_with_lr_lambda": (TypeError, "lr_lambda should be a function", lambda o: MultiplicativeLR(o, 0.95)),
    "test_multiplicative_lr_with_lr_lambda (list)": (TypeError, "lr_lambda should be a function", lambda o: MultiplicativeLR(o, [0.95, 0.95])),
}


@pytest.mark.parametrize("name", ERRORS)
def test_scheduler_argument_errors(name):
    error, message, make = ERRORS[name]
    with pytest.raises(error, match=message):
        make(Bed(SGD).opt)


def test_raise_error_when_last_epoch_is_greater_than_0_and_initial_lr_is_not_specified():
    optimizer = SGD([torch.nn.Parameter(torch.randn(2, 2))], 0.1)
    with pytest.raises(KeyError, match=r"param 'initial_lr' is not specified in param_groups\[0\] when resuming"):
        StepLR(optimizer, step_size=3, gamma=0.1, last_epoch=1)


def test_error_when_getlr_has_epoch():
    class WithEpochArgument(LRScheduler):
        def get_lr(self, step):
            return [group["lr"] for group in self.optimizer.param_groups]

    with pytest.raises(TypeError):
        WithEpochArgument(SGD([torch.rand(1)], lr=1))


# --- step order warnings --------------------------------------------------------------------------
def overridden_step(optimizer):
    original = optimizer.step
    optimizer.step = types.MethodType(lambda self, *a, **k: original(*a, **k), optimizer)


@pytest.mark.parametrize("how", ["fresh", "resuming", "overridden-step"])
def test_scheduler_stepped_before_the_optimizer_warns(how):
    # test_old_pattern_warning (and _with_arg), _resuming (and _with_arg),
    # _with_overridden_optim_step: no warning at construction, a warning pointing to the
    # docs when the scheduler steps first.
    bed = Bed(SGD)
    options = {}
    if how != "fresh":
        for group in bed.opt.param_groups:
            group["initial_lr"] = 0.01
        options["last_epoch"] = 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler = StepLR(bed.opt, gamma=0.1, step_size=3, **options)
    assert caught == []
    if how == "overridden-step":
        overridden_step(bed.opt)
    with pytest.warns(UserWarning, match="how-to-adjust-learning-rate"):
        for _ in range(35):
            scheduler.step()
            bed.train()


@pytest.mark.parametrize("how", ["plain", "overridden-step"])
def test_optimizer_then_scheduler(how):
    # test_new_pattern_no_warning (and _with_arg): no warning;
    # test_new_pattern_no_warning_with_overridden_optim_step: the override is reported.
    bed = Bed(SGD)
    scheduler = StepLR(bed.opt, gamma=0.1, step_size=3)
    if how == "plain":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(35):
                bed.train()
                scheduler.step()
        assert caught == []
        assert bed.lrs()[0] == pytest.approx(0.05 * 0.1**11)
    else:
        overridden_step(bed.opt)
        with pytest.warns(UserWarning, match=r"`optimizer.step\(\)` has been overridden"):
            for _ in range(35):
                bed.train()
                scheduler.step()


def test_sequentiallr_no_warnings():
    bed = Bed(SGD)
    scheduler = SequentialLR(bed.opt, schedulers=[LinearLR(bed.opt, start_factor=0.5, end_factor=0.1, total_iters=5), ExponentialLR(bed.opt, gamma=0.9)], milestones=[5])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            bed.train()
            scheduler.step()
    assert caught == []


def test_sequentiallr4():
    # Building a SequentialLR of two ConstantLRs leaves the optimizer's lr as it was.
    optimizer = SGD([torch.tensor(0.5)], lr=0.1)
    SequentialLR(optimizer, [ConstantLR(optimizer, factor=1), ConstantLR(optimizer, factor=0.1)], milestones=[10])
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_chained_lr2_get_last_lr_before_step():
    bed = Bed(SGD)
    schedulers = [LinearLR(bed.opt, start_factor=0.4, total_iters=3), MultiStepLR(bed.opt, milestones=[4, 8, 10], gamma=0.1)]
    assert ChainedScheduler(schedulers).get_last_lr() == schedulers[-1].get_last_lr() == pytest.approx([0.02, 0.2])


# --- references and garbage ------------------------------------------------------------------------
def test_no_cyclic_references():
    param = torch.nn.Parameter(torch.empty(10))
    optimizer = SGD([param], lr=0.5)
    scheduler = LambdaLR(optimizer, lambda epoch: 1.0)
    del scheduler
    assert len(gc.get_referrers(optimizer)) == 0, "the optimizer should not be part of a reference cycle"
    alive = weakref.ref(optimizer)
    del optimizer  # freed at once, by reference counting alone (gc.collect() may find unrelated garbage)
    assert alive() is None, "the optimizer should be freed by reference counting alone"


def run_and_forget():
    param = torch.empty(10, requires_grad=True)
    optimizer = SGD(params=[param], lr=0.5)
    scheduler = LambdaLR(optimizer, lambda epoch: 1.0)
    param.sum().backward()
    optimizer.step()
    scheduler.step()
    return weakref.ref(scheduler)


@pytest.mark.parametrize("make", ["LambdaLR", "CyclicLR"])
def test_no_cyclic_references_in_step(make):
    # test_no_cyclic_references_in_step, and test_cycle_lr_removed_after_out_of_scope (with
    # inertia's SGD in place of Adam): freed without the garbage collector.
    def cyclic():
        optimizer = SGD(Net().parameters(), lr=0.1)
        return weakref.ref(CyclicLR(optimizer, base_lr=1, max_lr=5, cycle_momentum=False))

    gc.collect()
    gc.disable()
    try:
        reference = run_and_forget() if make == "LambdaLR" else cyclic()
        assert reference() is None
    finally:
        gc.enable()


# --- scheduler state dicts -------------------------------------------------------------------------
STATE_DICT_PAIRS = {
    "test_step_lr_state_dict": (lambda o: StepLR(o, gamma=0.1, step_size=3), lambda o: StepLR(o, gamma=0.01 / 2, step_size=1)),
    "test_multi_step_lr_state_dict": (lambda o: MultiStepLR(o, gamma=0.1, milestones=[2, 5, 9]), lambda o: MultiStepLR(o, gamma=0.01, milestones=[1, 4, 6])),
    "test_exp_step_lr_state_dict": (lambda o: ExponentialLR(o, gamma=0.1), lambda o: ExponentialLR(o, gamma=0.01)),
    "test_cosine_lr_state_dict": (lambda o: CosineAnnealingLR(o, T_max=10, eta_min=1e-10), lambda o: CosineAnnealingLR(o, T_max=5, eta_min=5e-11)),
    "test_CosineAnnealingWarmRestarts_lr_state_dict": (lambda o: CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2), lambda o: CosineAnnealingWarmRestarts(o, T_0=100)),
    "test_swa_lr_state_dict": (lambda o: SWALR(o, anneal_epochs=3, swa_lr=0.5), lambda o: SWALR(o, anneal_epochs=10, anneal_strategy="linear", swa_lr=5.0)),
}


def same_attributes(scheduler, other, leave_out=("optimizer",)):
    for key, value in vars(scheduler).items():
        if key not in leave_out:
            assert value == other.__dict__[key], key


@pytest.mark.parametrize("name", STATE_DICT_PAIRS)
def test_scheduler_state_dict_loads_into_another_configuration(name):
    make, make_other = STATE_DICT_PAIRS[name]

    def body(bed):
        scheduler = make(bed.opt)
        for _ in range(10):
            bed.train()
            scheduler.step()
        loaded = make_other(bed.opt)
        loaded.load_state_dict(scheduler.state_dict())
        same_attributes(scheduler, loaded)
        assert loaded.get_last_lr() == scheduler.get_last_lr()
        return list(map(float, scheduler.get_last_lr()))

    both(body)


def test_reduce_lr_on_plateau_state_dict():
    bed = Bed(SGD)
    scheduler = ReduceLROnPlateau(bed.opt, mode="min", factor=0.1, patience=2)
    for score in [1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 3.0, 2.0, 1.0]:
        bed.train()
        scheduler.step(score)
    assert bed.lrs()[0] < 0.05
    loaded = ReduceLROnPlateau(bed.opt, mode="max", factor=0.5, patience=10)
    loaded.load_state_dict(scheduler.state_dict())
    same_attributes(scheduler, loaded, ("optimizer", "is_better"))


class Scale:
    """A picklable lr_lambda object (its attributes go into the state dict)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, epoch):
        return self.value * epoch

    def __eq__(self, other):
        return isinstance(other, Scale) and vars(self) == vars(other)


@pytest.mark.parametrize("kind", ["function", "object"])
def test_lambda_lr_state_dict(kind):
    # test_lambda_lr_state_dict_fn (a function is not saved) and _obj (an object's
    # attributes are, and load into the other scheduler's object).
    bed = Bed(SGD)
    scheduler = LambdaLR(bed.opt, lr_lambda=(lambda x: x) if kind == "function" else Scale(10))
    state = scheduler.state_dict()
    loaded = LambdaLR(bed.opt, lr_lambda=(lambda x: x) if kind == "function" else Scale(-1))
    loaded.load_state_dict(state)
    if kind == "function":
        assert state["lr_lambdas"][0] is None
        same_attributes(scheduler, loaded, ("optimizer", "lr_lambdas"))
    else:
        assert state["lr_lambdas"][0] == {"value": 10}
        same_attributes(scheduler, loaded)


def test_cycle_lr_state_dict_picklable_and_scale_fn_restored():
    # test_cycle_lr_state_dict_picklable and test_cycle_lr_scale_fn_restored_from_state_dict,
    # with inertia's SGD in place of Adam.
    optimizer = SGD(Net().parameters(), lr=0.1)
    built_in = CyclicLR(optimizer, base_lr=1, max_lr=5, cycle_momentum=False, mode="triangular2")
    state = built_in.state_dict()
    assert "_scale_fn_ref" not in state and state["_scale_fn_custom"] is None
    pickle.dumps(state)
    restored = CyclicLR(optimizer, base_lr=1, max_lr=5, cycle_momentum=False)
    restored.load_state_dict(state)
    assert restored.mode == "triangular2" and restored._scale_fn_custom is None

    class Half:
        def __init__(self):
            self.x = 0.5

        def __call__(self, _):
            return self.x

    half = Half()
    custom = CyclicLR(optimizer, base_lr=1, max_lr=5, cycle_momentum=False, scale_fn=half)
    state = custom.state_dict()
    assert state["_scale_fn_custom"] == {"x": 0.5}
    pickle.dumps(state)


LR_CLASSES = {
    "LambdaLR": partial(LambdaLR, lr_lambda=lambda e: e // 10),
    "MultiplicativeLR": partial(MultiplicativeLR, lr_lambda=lambda e: 0.95),
    "StepLR": partial(StepLR, step_size=30),
    "MultiStepLR": partial(MultiStepLR, milestones=[30, 80]),
    "ConstantLR": ConstantLR,
    "LinearLR": LinearLR,
    "ExponentialLR": partial(ExponentialLR, gamma=0.9),
    "PolynomialLR": PolynomialLR,
    "CosineAnnealingLR": partial(CosineAnnealingLR, T_max=10),
    "ChainedScheduler": lambda opt, **kw: ChainedScheduler(schedulers=[ConstantLR(opt), ConstantLR(opt)], **kw),
    "SequentialLR": lambda opt, **kw: SequentialLR(opt, schedulers=[ConstantLR(opt), ConstantLR(opt)], milestones=[2], **kw),
    "ReduceLROnPlateau": ReduceLROnPlateau,
    "CyclicLR": partial(CyclicLR, base_lr=0.01, max_lr=0.1),
    "OneCycleLR": partial(OneCycleLR, max_lr=0.01, total_steps=10, anneal_strategy="linear"),
    "CosineAnnealingWarmRestarts": partial(CosineAnnealingWarmRestarts, T_0=20),
    "SWALR": partial(SWALR, swa_lr=0.01),
}


@pytest.mark.parametrize("weights_only", [True, False])
@pytest.mark.parametrize("name", LR_CLASSES)
def test_lr_scheduler_state_dict_load(name, weights_only):
    bed = Bed(SGD)
    scheduler = LR_CLASSES[name](bed.opt)
    state = scheduler.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=weights_only)
    assert loaded == state
    again = LR_CLASSES[name](bed.opt)
    again.load_state_dict(loaded)
    assert again.state_dict() == state


CONSTANT_INITIAL = [n for n in LR_CLASSES if n not in ("ChainedScheduler", "SequentialLR", "ReduceLROnPlateau", "CyclicLR", "OneCycleLR", "SWALR")]


@pytest.mark.parametrize("name", CONSTANT_INITIAL)
def test_constant_initial_lr(name):
    # A tensor lr changed in place after the scheduler starts changes neither initial_lr
    # nor base_lrs, and they are not the same object.
    lr = torch.as_tensor(0.1)
    optimizer = SGD([torch.nn.Parameter(torch.randn(1))], lr=lr)
    scheduler = LR_CLASSES[name](optimizer)
    original = copy.deepcopy(optimizer.param_groups)
    for epoch in range(2):
        optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the epoch argument's deprecation
            scheduler.step(epoch)
        lr.multiply_(0.1)
        for group, before in zip(optimizer.param_groups, original):
            assert group["initial_lr"] == before["initial_lr"]
            assert scheduler.base_lrs == [0.1]
            assert scheduler.base_lrs[0] is not group["initial_lr"]


@pytest.mark.parametrize("kind", ["CyclicLR", "OneCycleLR", "SWALR"])
def test_constant_initial_params(kind):
    # test_constant_initial_params_cyclelr / _onecyclelr / _swalr: tensors given to the
    # scheduler, changed in place later, leave its saved bounds alone.
    lr, top, low, high = torch.as_tensor(0.1), torch.as_tensor(0.2), torch.as_tensor(0.8), torch.as_tensor(0.9)
    swa_lr = torch.as_tensor(0.05)
    optimizer = SGD([torch.nn.Parameter(torch.randn(1))], lr=lr)
    if kind == "CyclicLR":
        scheduler = CyclicLR(optimizer, base_lr=lr, max_lr=top, base_momentum=low, max_momentum=high)
        keys = ("initial_lr", "max_momentum", "base_momentum")
    elif kind == "OneCycleLR":
        scheduler = OneCycleLR(optimizer, max_lr=lr, total_steps=10, base_momentum=low, max_momentum=high)
        keys = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
    else:
        scheduler = SWALR(optimizer, swa_lr=swa_lr)
        keys = ("initial_lr", "swa_lr")
    original = copy.deepcopy(optimizer.param_groups)
    for epoch in range(2):
        for t in (lr, top, low, high, swa_lr):
            t.multiply_(0.5)
        optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step() if kind == "SWALR" else scheduler.step(epoch)
        group = optimizer.param_groups[0]
        for key in keys:
            assert group[key] == original[0][key], key
        if kind != "SWALR":
            assert (group["base_momentum"], group["max_momentum"]) == (pytest.approx(0.8), pytest.approx(0.9))
        else:
            assert group["swa_lr"] == pytest.approx(0.05)
        if kind != "OneCycleLR":
            assert scheduler.base_lrs == [pytest.approx(0.1)]
        if kind == "CyclicLR":
            assert scheduler.max_lrs == [pytest.approx(0.2)]


CHECKPOINT_CLASSES = {k: v for k, v in LR_CLASSES.items() if k not in ("ChainedScheduler", "SequentialLR", "ReduceLROnPlateau")}
CHECKPOINT_CLASSES["ExponentialLR"] = partial(ExponentialLR, gamma=0.999)
CHECKPOINT_CLASSES["LambdaLR"] = partial(LambdaLR, lr_lambda=lambda epoch: epoch // 30)
CHECKPOINT_CLASSES["OneCycleLR"] = partial(OneCycleLR, max_lr=0.01, total_steps=10)


@pytest.mark.parametrize("name", list(CHECKPOINT_CLASSES) + ["ReduceLROnPlateau"])
def test_lr_scheduler_checkpoint(name):
    # test_lr_scheduler_checkpoint / _on_plateau, with inertia's SGD in place of AdamW: the
    # optimizer's state dict carries initial_lr, so a scheduler rebuilt on a restored
    # optimizer with last_epoch=0 continues at the rate the first one set.
    model = torch.nn.Linear(3, 3)
    optimizer = SGD(model.parameters(), lr=1e-3)
    if name == "ReduceLROnPlateau":
        scheduler = ReduceLROnPlateau(optimizer, mode="min")
        optimizer.step()
        scheduler.step(1)
    else:
        scheduler = CHECKPOINT_CLASSES[name](optimizer)
        optimizer.step()
        scheduler.step()
    restored = SGD(model.parameters(), lr=1e-3)
    restored.load_state_dict(optimizer.state_dict())
    if name == "ReduceLROnPlateau":
        again = ReduceLROnPlateau(restored, mode="min")
    else:
        assert restored.param_groups[0]["initial_lr"] == optimizer.param_groups[0]["initial_lr"]
        again = CHECKPOINT_CLASSES[name](restored, last_epoch=0)
    assert again.get_last_lr()[0] == optimizer.param_groups[0]["lr"]
