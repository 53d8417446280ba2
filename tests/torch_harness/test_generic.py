"""Ports of the generic optimizer tests of PyTorch's harness (``TestOptimRenewed`` in
test/test_optim.py, ``TestDifferentiableOptimizer`` and ``TestSGDComplexForeach`` in
test/optim/test_optim.py) to ``inertia.torch.SGD``.

torch's own SGD data drives them (keyword sets, error inputs, scheduler sets, sparse
metadata: ``SGD_INFO``). Where torch's test only checks a direction or that nothing
raised, ours also runs ``torch.optim.SGD`` (for-loop implementation) beside inertia and
requires the same parameters and momentum buffers bit for bit. README.md maps every torch
test to its port here, or says why it has none.
"""

from __future__ import annotations

import copy
import functools
import io
import re
import warnings

import pytest

from torch_harness_common import (
    SGD,
    SGD_INFO,
    assert_bitwise,
    assert_same_state,
    common_optimizers,
    own_copy,
    reference_kwargs,
    same_structure,
    sgd_inputs,
    torch,
)

Parameter = torch.nn.Parameter
ReduceLROnPlateau = torch.optim.lr_scheduler.ReduceLROnPlateau

# The implementation variants torch's harness runs each keyword set under; differentiable=True
# is not there yet in inertia.
FLAGS = ["plain", "foreach", "fused", "differentiable"]
FLAGS_BUT_DIFFERENTIABLE = ["plain", "foreach", "fused"]
SCHEDULER_SETS = list(range(len(SGD_INFO.scheduler_inputs)))


def linear_problem(seed, dtype=torch.float32, contiguous=True):
    """torch's small regression problem: weight (10, 5), bias (10,), input (5,); the
    non-contiguous variant takes every other element of a larger tensor."""
    torch.manual_seed(seed)
    if contiguous:
        weight, bias = torch.randn(10, 5, dtype=dtype), torch.randn(10, dtype=dtype)
    else:
        weight, bias = torch.randn(10, 5, 2, dtype=dtype)[..., 0], torch.randn(10, 2, dtype=dtype)[..., 0]
    inputs = torch.randn(5, dtype=dtype)
    return weight, bias, inputs


def as_parameters(*tensors):
    """Leaf parameters sharing the given tensors' layout (a strided view stays strided)."""
    return [Parameter(t.detach().clone() if t.is_contiguous() else t.detach().clone(memory_format=torch.preserve_format)) for t in tensors]


def strided_parameters(*tensors):
    """Non-contiguous parameters: each a strided view of a fresh copy of its base."""
    made = []
    for t in tensors:
        base = torch.stack([t.detach().clone(), torch.zeros_like(t)], dim=-1)
        made.append(Parameter(base[..., 0]))
    return made


def squared_error(optimizer, weight, bias, inputs):
    optimizer.zero_grad()
    loss = (weight.mv(inputs) + bias).pow(2).sum()
    loss.backward()
    return loss


def step_schedulers(schedulers, loss):
    for scheduler in schedulers:
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()


# --- errors ----------------------------------------------------------------------------------
ERROR_INPUTS = SGD_INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("case", range(len(ERROR_INPUTS)), ids=[e.optimizer_error_input.desc for e in ERROR_INPUTS])
def test_error_inputs_fail_as_torch_says(case):
    # torch's error inputs: each must raise (or warn) its error type with its message, at
    # construction or at the first step, as torch.optim.SGD does.
    error = SGD_INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)[case]
    given = error.optimizer_error_input
    expect = pytest.warns if issubclass(error.error_type, Warning) else pytest.raises
    if error.error_on == common_optimizers.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect(error.error_type, match=error.error_regex):
            SGD(given.params, **given.kwargs)
    else:
        optimizer = SGD(given.params, **given.kwargs)
        with expect(error.error_type, match=error.error_regex):
            optimizer.step()


def test_torchs_keyword_sets_leave_the_implementation_flags_to_the_tests():
    # The harness adds foreach / fused / differentiable itself; the data must not set them.
    for _, kwargs in sgd_inputs():
        assert not set(kwargs) & {"foreach", "fused", "differentiable"}
    assert len(sgd_inputs()) == 9


# --- training goes the right way, with torch's numbers ------------------------------------
def run_side_by_side(make_ours, make_theirs, params_ours, params_theirs, inputs, steps, schedulers_of=None):
    """Train both optimizers on torch's regression problem; after every step the parameters
    must be the same bit for bit. Returns (optimizers, first loss, last loss) of ours."""
    ours, theirs = make_ours(params_ours), make_theirs(params_theirs)
    our_schedulers = schedulers_of(ours) if schedulers_of else []
    their_schedulers = schedulers_of(theirs) if schedulers_of else []
    first = squared_error(ours, *params_ours, inputs).item()
    for step in range(steps):
        loss = squared_error(ours, *params_ours, inputs)
        their_loss = squared_error(theirs, *params_theirs, inputs)
        assert torch.equal(loss, their_loss), f"step {step}: the losses differ"
        ours.step()
        theirs.step()
        step_schedulers(our_schedulers, loss)
        step_schedulers(their_schedulers, their_loss)
        assert_bitwise(params_ours, params_theirs)
        assert [float(g["lr"]) for g in ours.param_groups] == [float(g["lr"]) for g in theirs.param_groups]
    assert_same_state(ours, params_ours, theirs, params_theirs)
    last = squared_error(ours, *params_ours, inputs).item()
    return ours, first, last


def assert_direction(kwargs, first, last):
    if kwargs.get("maximize", False):
        assert last > first
    else:
        assert last < first


@pytest.mark.parametrize("schedulers", [None] + SCHEDULER_SETS, ids=["no-scheduler"] + [f"schedulers{k}" for k in SCHEDULER_SETS])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_forloop_goes_right_direction_with_torchs_numbers(contiguous, schedulers):
    # torch's 9 keyword sets with foreach=False, alone or under each of torch's scheduler
    # sets for SGD, on contiguous and strided parameters: 20 steps of the same numbers as
    # torch.optim.SGD, and the loss moves the way maximize says.
    schedulers_of = None
    if schedulers is not None:
        makers = SGD_INFO.scheduler_inputs[schedulers]
        schedulers_of = lambda opt: [make(opt) for make in makers]  # noqa: E731
    for seed, (desc, kwargs) in enumerate(sgd_inputs()):
        weight, bias, inputs = linear_problem(seed, contiguous=contiguous)
        make = strided_parameters if not contiguous else as_parameters
        ours_p, theirs_p = make(weight, bias), make(weight, bias)
        assert ours_p[0].is_contiguous() == contiguous
        ours_kwargs = {**own_copy(kwargs), "foreach": False}
        _, first, last = run_side_by_side(
            lambda p: SGD(p, **ours_kwargs), lambda p: torch.optim.SGD(p, **reference_kwargs(kwargs)),
            ours_p, theirs_p, inputs, 20, schedulers_of,
        )
        assert_direction(kwargs, first, last)


@pytest.mark.parametrize("schedulers", SCHEDULER_SETS, ids=[f"schedulers{k}" for k in SCHEDULER_SETS])
def test_param_group_with_lrscheduler_goes_right_direction(schedulers):
    makers = SGD_INFO.scheduler_inputs[schedulers]
    weight, bias, inputs = linear_problem(11)

    def groups(cls, extra):
        return lambda p: cls([{"params": [p[0]]}, {"params": [p[1]], "lr": 0.01}], **extra)

    _, first, last = run_side_by_side(
        groups(SGD, {}), groups(torch.optim.SGD, {"foreach": False}), as_parameters(weight, bias),
        as_parameters(weight, bias), inputs, 20, lambda opt: [make(opt) for make in makers],
    )
    assert last < first


@pytest.mark.parametrize("flag", FLAGS_BUT_DIFFERENTIABLE)
def test_tensor_lr_gives_the_float_lrs_numbers(flag):
    # A 0-dim tensor lr steps exactly as the same float lr, and as torch.optim.SGD.
    for seed, (desc, kwargs) in enumerate(sgd_inputs(flag)):
        kwargs.pop("lr", None)
        weight, bias, inputs = linear_problem(seed)
        with_tensor, with_float, reference = (as_parameters(weight, bias) for _ in range(3))
        ours_tensor = SGD(with_tensor, lr=torch.tensor(1e-3), **kwargs)
        ours_float = SGD(with_float, lr=1e-3, **kwargs)
        theirs = torch.optim.SGD(reference, lr=1e-3, **reference_kwargs(kwargs))
        for _ in range(5):
            for optimizer, params in ((ours_tensor, with_tensor), (ours_float, with_float), (theirs, reference)):
                squared_error(optimizer, *params, inputs)
                optimizer.step()
            assert_bitwise(with_tensor, reference)
            assert_bitwise(with_float, reference)
        assert not torch.equal(with_tensor[0], weight), desc


# --- sparse gradients ------------------------------------------------------------------------
def rosenbrock(xy):
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_gradient(xy):
    x, y = xy
    return torch.stack((-400 * x * (y - x * x) - 2 * (1 - x), 200 * (y - x * x)))


def one_coordinate_gradient(xy, coordinate, sparse):
    """The gradient's one coordinate, the rest zero; sparse: as an uncoalesced sparse tensor
    (the value split in two entries at the same index), as torch's test tortures it."""
    full = rosenbrock_gradient(xy.detach())
    value = full[coordinate].item()
    if not sparse:
        dense = torch.zeros(2, dtype=xy.dtype)
        dense[coordinate] = value
        return dense
    indices = torch.tensor([[coordinate, coordinate]])
    values = torch.tensor([value / 4.0, value - value / 4.0], dtype=torch.float32)
    return torch.sparse_coo_tensor(indices, values, (2,)).to(xy.dtype)


def sparse_inputs():
    """torch's rule for SGD's sparse runs: its keyword sets without fused or differentiable,
    less the keys its sparse metadata fixes (lr 4.8e-3, no momentum, ...), the empty and
    repeated ones dropped."""
    fixed, _ = SGD_INFO.metadata_for_sparse
    seen, kept = set(), []
    for flag in ("plain", "foreach"):
        for desc, kwargs in sgd_inputs(flag):
            kwargs = {k: v for k, v in kwargs.items() if k not in fixed and k not in ("fused", "differentiable")}
            key = tuple(sorted(kwargs.items()))
            if kwargs and key not in seen:
                seen.add(key)
                kept.append({**kwargs, "lr": fixed["lr"]})
    return kept


@pytest.mark.parametrize("with_lrsched", [False, True], ids=["no-scheduler", "scheduler"])
def test_rosenbrock_sparse(with_lrsched):
    # Coordinate descent on Rosenbrock with sparse gradients: the same numbers as
    # torch.optim.SGD given the same sparse gradients, close to inertia given them dense, and
    # nearer the minimum (1, 1) at the end.
    _, scheduler_makers = SGD_INFO.metadata_for_sparse
    inputs = sparse_inputs()
    assert len(inputs) == 4
    for kwargs in inputs:
        dtypes = [torch.float32, torch.float64] if kwargs.get("foreach") else [torch.float32]
        start = [torch.tensor([1.5, 1.5], dtype=d) for d in dtypes]
        ours, theirs, dense = ([Parameter(s.clone()) for s in start] for _ in range(3))
        optimizers = [SGD(ours, **kwargs), torch.optim.SGD(theirs, **kwargs), SGD(dense, **kwargs)]
        schedulers = [[m(o) for m in scheduler_makers] if with_lrsched else [] for o in optimizers]
        for step in range(400):
            coordinate = 1 - step % 2
            for (optimizer, params, sparse), scheds in zip(((optimizers[0], ours, True), (optimizers[1], theirs, True), (optimizers[2], dense, False)), schedulers):
                for p in params:
                    p.grad = one_coordinate_gradient(p, coordinate, sparse)
                optimizer.step()
                step_schedulers(scheds, None)
            assert_bitwise(ours, theirs)
            for p, q in zip(ours, dense):
                torch.testing.assert_close(p, q, atol=5e-6, rtol=5e-6)
        solution = torch.tensor([1.0, 1.0])
        assert sum(p.detach().double().dist(solution.double()) for p in ours) < sum(s.double().dist(solution.double()) for s in start)


# --- complex parameters ----------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["plain", "foreach"])
def test_complex(flag):
    # Complex parameters step as their real views do (a real one mixed in), at every step,
    # and as torch.optim.SGD steps them.
    for seed, (desc, kwargs) in enumerate(sgd_inputs(flag)):
        torch.manual_seed(seed)
        complex_params = [
            torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, 5, dtype=torch.float32, requires_grad=True),
        ]
        real_params = [torch.view_as_real(p).detach().clone().requires_grad_() if p.is_complex() else p.detach().clone().requires_grad_() for p in complex_params]
        reference_params = [p.detach().clone().requires_grad_() for p in complex_params]
        ours_complex, ours_real = SGD(complex_params, **own_copy(kwargs)), SGD(real_params, **own_copy(kwargs))
        theirs = torch.optim.SGD(reference_params, **reference_kwargs(kwargs))
        for _ in range(3):
            for c, r, t in zip(complex_params, real_params, reference_params):
                r.grad = torch.randn_like(r)
                c.grad = torch.view_as_complex(r.grad.clone()) if c.is_complex() else r.grad.clone()
                t.grad = c.grad.clone()
            for optimizer in (ours_complex, ours_real, theirs):
                optimizer.step()
            # against the real views with torch's own tolerance (torch's complex path rounds
            # differently in the last bit for some sets); against torch.optim.SGD bit for bit
            torch.testing.assert_close([torch.view_as_real(p) if p.is_complex() else p for p in complex_params], real_params)
            assert_bitwise(complex_params, reference_params)
        assert_same_state(ours_complex, complex_params, theirs, reference_params)


@pytest.mark.parametrize("flag", ["plain", "foreach"])
def test_complex_2d(flag):
    # One complex parameter of 2 against its real and imaginary parts as two real
    # parameters, on |rosenbrock|: same losses, gradients and steps.
    for seed, (desc, kwargs) in enumerate(sgd_inputs(flag)):
        torch.manual_seed(seed)
        a = torch.randn(2, dtype=torch.complex64, requires_grad=True)
        re_part, im_part = a.real.detach().clone().requires_grad_(), a.imag.detach().clone().requires_grad_()
        joint, split = SGD([a], **own_copy(kwargs)), SGD([re_part, im_part], **own_copy(kwargs))
        reference = a.detach().clone().requires_grad_()
        theirs = torch.optim.SGD([reference], **reference_kwargs(kwargs))
        for _ in range(3):
            for optimizer in (joint, split, theirs):
                optimizer.zero_grad()
            loss_joint = rosenbrock(a).abs()
            loss_joint.backward()
            loss_split = rosenbrock(torch.complex(re_part, im_part)).abs()
            loss_split.backward()
            rosenbrock(reference).abs().backward()
            # complex and real arithmetic round apart: compared with a tolerance, then the
            # split parameters re-synchronised (as torch's TensorTracker does)
            torch.testing.assert_close(loss_joint, loss_split, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close((a.grad.real, a.grad.imag), (re_part.grad, im_part.grad), rtol=1e-5, atol=1e-5)
            for optimizer in (joint, split, theirs):
                optimizer.step()
            torch.testing.assert_close((a.real, a.imag), (re_part, im_part), rtol=1e-5, atol=1e-5)
            assert_bitwise([a], [reference])  # torch.optim.SGD's numbers, bit for bit
            with torch.no_grad():
                re_part.copy_(a.real)
                im_part.copy_(a.imag)


@pytest.mark.parametrize(
    "kwargs", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {"weight_decay": 0.1}, {"maximize": True}],
    ids=["plain", "momentum", "nesterov", "weight_decay", "maximize"],
)
def test_complex_foreach_matches_single_tensor(kwargs):
    # TestSGDComplexForeach: complex parameters, foreach=True and False, as torch.optim.SGD.
    results = []
    for make, foreach in ((SGD, True), (SGD, False), (torch.optim.SGD, False)):
        torch.manual_seed(0)
        param = Parameter(torch.complex(torch.randn(3, 2), torch.randn(3, 2)))
        optimizer = make([param], lr=0.1, foreach=foreach, dampening=0.0, **kwargs)
        generator = torch.Generator().manual_seed(1)
        for _ in range(4):
            param.grad = torch.complex(torch.randn(3, 2, generator=generator), torch.randn(3, 2, generator=generator))
            optimizer.step()
        results.append(param.detach().clone())
    assert_bitwise(results[:2], results[1:])


def compiled_against_eager(dtype, backend="inductor"):
    torch.manual_seed(0)
    if dtype.is_complex:
        start = torch.complex(torch.randn(3, 2), torch.randn(3, 2))
    else:
        start = torch.randn(3, 2, dtype=dtype)
    eager_param, compiled_param, reference_param = (Parameter(start.clone()) for _ in range(3))
    eager = SGD([eager_param], lr=0.1, foreach=True, momentum=0.9)
    compiled = SGD([compiled_param], lr=0.1, foreach=True, momentum=0.9)
    reference = torch.optim.SGD([reference_param], lr=0.1, foreach=False, momentum=0.9)
    compiled_step = torch.compile(compiled.step, backend=backend)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        grad = torch.randn(start.shape, dtype=start.dtype, generator=generator)
        for p in (eager_param, compiled_param, reference_param):
            p.grad = grad.clone()
        eager.step()
        compiled_step()
        reference.step()
    assert_bitwise([eager_param], [reference_param])
    if dtype.is_complex:  # a step the compiled path leaves to the eager one: torch's bits
        assert_bitwise([compiled_param], [reference_param])
        assert_same_state(compiled, [compiled_param], reference, [reference_param])
    else:  # inductor fuses each y + a*x its own way: within its rounding, not bit for bit
        torch.testing.assert_close(compiled_param.detach(), reference_param.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            compiled.state[compiled_param]["momentum_buffer"], reference.state[reference_param]["momentum_buffer"],
            rtol=1e-6, atol=1e-7,
        )


def test_compiled_step_on_complex_parameters_matches_eager():
    # TestSGDComplexForeach's torch.compile half: a compiled step of complex parameters.
    # aot_eager: torch 2.13's inductor fails on torch.optim.SGD's own complex foreach step
    # on CPU ("getitem is not an OpOverload"), so it could not be the reference there.
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        compiled_against_eager(torch.complex64, backend="aot_eager")


def test_compiled_step_matches_eager():
    # The same with real parameters: torch.compile(optimizer.step) gives torch's numbers
    # within inductor's rounding.
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's notes on what it does not trace
        compiled_against_eager(torch.float32)


# --- foreach / fused against the for-loop ---------------------------------------------------
def small_network(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    return model.to(dtype=dtype)


def compare_with_forloop(dtype, flag):
    """torch's derived-implementation check: a small network plus a 0-dim parameter, 7
    steps, one without a backward (gradients None), a layer frozen for two; inertia with
    ``flag`` against torch.optim.SGD's for-loop, parameters and state bit for bit."""
    inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    for desc, kwargs in sgd_inputs():
        models, optimizers, extras = [], [], []
        for make, extra in ((SGD, {flag: True}), (torch.optim.SGD, {"foreach": False})):
            model = small_network(dtype)
            scalar = torch.empty((), dtype=dtype, requires_grad=True)
            with torch.no_grad():
                scalar.fill_(0.25)
            scalar.grad = torch.full_like(scalar, 0.75)
            extra_kwargs = reference_kwargs(kwargs) if make is torch.optim.SGD else own_copy(kwargs)
            extra_kwargs.update(extra)
            models.append(model)
            extras.append(scalar)
            optimizers.append(make(list(model.parameters()) + [scalar], **extra_kwargs))
        for step in range(7):
            for model, optimizer in zip(models, optimizers):
                optimizer.zero_grad()
                if step == 3:
                    model[2].requires_grad_(False)
                if step == 5:
                    model[2].requires_grad_(True)
                if step != 2:
                    model(inputs).sum().backward()
                optimizer.step()
            ours_params = list(models[0].parameters()) + [extras[0]]
            theirs_params = list(models[1].parameters()) + [extras[1]]
            assert_bitwise(ours_params, theirs_params, f"{desc}, step {step}: parameter")
            assert_same_state(optimizers[0], ours_params, optimizers[1], theirs_params)


@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_foreach_and_fused_match_forloop_float64(flag):
    compare_with_forloop(torch.float64, flag)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fused_matches_forloop(dtype):
    compare_with_forloop(dtype, "fused")


@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_mixed_dtypes_on_cpu_match_forloop(flag):
    # The CPU half of torch's mixed device / dtype test: parameters of four float dtypes
    # (and an int64 tensor without gradient left out, as torch does), 7 steps.
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    torch.manual_seed(5)
    start = [torch.rand(2, 3, dtype=d) for d in dtypes]
    grads = [torch.rand(2, 3, dtype=d) for d in dtypes]
    for desc, kwargs in sgd_inputs():
        ours, theirs = [Parameter(s.clone()) for s in start], [Parameter(s.clone()) for s in start]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer = SGD(ours, **own_copy(kwargs), **{flag: True})
        reference = torch.optim.SGD(theirs, **reference_kwargs(kwargs))
        for _ in range(7):
            optimizer.step()
            reference.step()
        assert_bitwise(ours, theirs, f"{desc}: parameter")
        assert_same_state(optimizer, ours, reference, theirs)


def meta_network():
    with torch.device("meta"):
        return small_network(torch.float32).to("meta")


def test_fused_error_on_params_on_meta():
    model = meta_network()
    optimizer = SGD(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        optimizer.step()


def test_fused_steps_once_meta_parameters_are_materialised():
    # The other half of torch's meta test: built on meta, moved to the CPU with to_empty,
    # the fused optimizer steps with torch's numbers.
    models = [meta_network(), meta_network()]
    optimizers = [SGD(models[0].parameters(), fused=True, momentum=0.5), torch.optim.SGD(models[1].parameters(), foreach=False, momentum=0.5)]
    for model in models:
        model.to_empty(device="cpu")
    torch.manual_seed(2)
    for p, q in zip(*(m.parameters() for m in models)):
        with torch.no_grad():
            p.copy_(torch.randn_like(p))
            q.copy_(p)
        p.grad = torch.rand_like(p)
        q.grad = p.grad.clone()
    for optimizer in optimizers:
        optimizer.step()
    assert_bitwise(models[0].parameters(), models[1].parameters())


# --- param groups ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag", FLAGS_BUT_DIFFERENTIABLE)
def test_param_groups_weight_decay(flag):
    # The bias group overrides weight_decay with 0: 20 steps with torch's numbers, and the
    # loss moves the right way.
    for seed, (desc, kwargs) in enumerate(sgd_inputs(flag)):
        weight, bias, inputs = linear_problem(seed)

        def groups(cls, options):
            return lambda p: cls([dict(params=[p[0]], **own_copy(options)), dict(params=[p[1]], **{**own_copy(options), "weight_decay": 0.0})])

        _, first, last = run_side_by_side(
            groups(SGD, kwargs), groups(torch.optim.SGD, reference_kwargs(kwargs)), as_parameters(weight, bias), as_parameters(weight, bias), inputs, 20,
        )
        assert_direction(kwargs, first, last)


@pytest.mark.parametrize("flag", FLAGS_BUT_DIFFERENTIABLE)
def test_param_groups_lr(flag):
    # Each keyword set as the first group's options; a second group takes the optimizer's
    # lr of 1e-28, far below its parameters' precision: it must not move, the first must
    # train, with torch's numbers.
    for seed, (desc, kwargs) in enumerate(sgd_inputs(flag)):
        if "lr" not in kwargs or kwargs["lr"] == 0:
            kwargs["lr"] = 1e-3
        weight, bias, inputs = linear_problem(seed)
        torch.manual_seed(100 + seed)
        idle = torch.randn(2)
        runs = []
        for cls, options in ((SGD, own_copy(kwargs)), (torch.optim.SGD, reference_kwargs(kwargs))):
            w, b, other = as_parameters(weight, bias, idle)
            optimizer = cls([dict(params=[w, b], **options), dict(params=[other])], lr=1e-28, **({"foreach": False} if cls is torch.optim.SGD else {}))
            first = squared_error(optimizer, w, b, inputs).item()
            generator = torch.Generator().manual_seed(seed)
            for _ in range(20):
                loss = squared_error(optimizer, w, b, inputs)
                other.grad = torch.rand(2, generator=generator)
                optimizer.step()
            runs.append((w, b, other, first, loss.item()))
        (w, b, other, first, last), (w2, b2, other2, _, _) = runs
        assert_bitwise([w, b, other], [w2, b2, other2])
        assert torch.equal(other, idle), desc
        assert_direction(kwargs, first, last)


# --- steps that change nothing ----------------------------------------------------------------
@pytest.mark.parametrize("flag", FLAGS)
def test_step_is_noop_when_params_have_no_grad(flag):
    torch.manual_seed(0)
    params = [torch.randn(2, 3) for _ in range(2)]
    before = [p.clone() for p in params]
    for desc, kwargs in sgd_inputs(flag):
        optimizer = SGD(params, **kwargs)
        assert optimizer.step(lambda: torch.tensor([1.0])).item() == 1.0
        assert_bitwise(params, before)
        assert len(optimizer.state) == 0 and optimizer.updates == 0, desc


@pytest.mark.parametrize("flag", FLAGS)
def test_step_is_noop_for_zero_grads(flag):
    # Zero gradients leave the parameter alone (weight decay would not: those sets are
    # left out, as in torch), bit for bit as torch.optim.SGD.
    torch.manual_seed(0)
    start = torch.randn(5, 1)
    for desc, kwargs in sgd_inputs(flag):
        if kwargs.get("weight_decay", 0) != 0:
            continue
        param = start.clone().requires_grad_(True)
        params = [param.clone()] if kwargs.get("differentiable") else [param]
        reference = start.clone().requires_grad_(True)
        optimizer = SGD(params, **kwargs)
        theirs = torch.optim.SGD([reference], **reference_kwargs(kwargs))
        params[0].grad, reference.grad = torch.zeros(5, 1), torch.zeros(5, 1)
        optimizer.step(lambda: torch.tensor([1.0]))
        theirs.step()
        assert torch.equal(params[0].detach(), start), desc
        assert_bitwise(params, [reference])


# --- printing --------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", FLAGS)
def test_optimizer_can_be_printed(flag):
    # The repr lists every group option torch.optim.SGD's does, with the same value.
    torch.manual_seed(0)
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for desc, kwargs in sgd_inputs(flag):
        ours = repr(SGD(params, **own_copy(kwargs)))
        theirs = repr(torch.optim.SGD(params, **own_copy(kwargs)))
        assert ours.startswith("SGD (") and "Parameter Group 0" in ours
        missing = [line for line in theirs.splitlines()[1:] if line not in ours.splitlines()]
        assert not missing, f"{desc}: {missing}"


# --- state_dict ------------------------------------------------------------------------------
def named(params, is_named):
    return [(f"name{k}", p) for k, p in enumerate(params)] if is_named else list(params)


def without_param_names(state_dict):
    copied = copy.deepcopy(state_dict)
    for group in copied["param_groups"]:
        group.pop("param_names", None)
    return copied


def small_problem(seed=0):
    torch.manual_seed(seed)
    return torch.randn(2, 3), torch.randn(2), torch.randn(3)


@pytest.mark.parametrize("named1", [False, True], ids=["plain1", "named1"])
@pytest.mark.parametrize("named0", [False, True], ids=["plain0", "named0"])
def test_state_dict_deterministic(named0, named1):
    # Loaded into a fresh optimizer of equal (not identical) parameters, a state dict
    # continues training bit for bit; both then give equal state dicts (param names aside),
    # and a repeated group is written as the original. torch.optim.SGD trains alongside.
    for flag in FLAGS_BUT_DIFFERENTIABLE:
        for desc, kwargs in sgd_inputs(flag):
            w0, b0, inputs = small_problem()
            weight, bias = as_parameters(w0, b0)
            ref_weight, ref_bias = as_parameters(w0, b0)
            optimizer = SGD(named([weight, bias], named0), **own_copy(kwargs))
            reference = torch.optim.SGD([ref_weight, ref_bias], **reference_kwargs(kwargs))
            for _ in range(10):
                for opt, w, b in ((optimizer, weight, bias), (reference, ref_weight, ref_bias)):
                    squared_error(opt, w, b, inputs)
                    opt.step()
            weight_c, bias_c = as_parameters(weight, bias)
            copy_ = SGD(named([weight_c, bias_c], named1), **own_copy(kwargs))
            copy_.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            for _ in range(10):
                for opt, w, b in ((optimizer, weight, bias), (copy_, weight_c, bias_c), (reference, ref_weight, ref_bias)):
                    squared_error(opt, w, b, inputs)
                    opt.step()
                assert_bitwise([weight, bias], [weight_c, bias_c])
                assert_bitwise([weight, bias], [ref_weight, ref_bias])
            same_structure(without_param_names(optimizer.state_dict()), without_param_names(copy_.state_dict()))
            copy_.param_groups.extend(copy_.param_groups)
            same_structure(
                without_param_names(optimizer.state_dict())["param_groups"][-1], without_param_names(copy_.state_dict())["param_groups"][-1]
            )


def conv_batchnorm(seed=1):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, eps=1e-05, momentum=0.1))
    return model, torch.rand(1, 4, 16, 16)


def train_step(optimizer, model, inputs):
    optimizer.zero_grad()
    model(inputs).sum().backward()
    optimizer.step()


@pytest.mark.parametrize("flag", FLAGS_BUT_DIFFERENTIABLE)
def test_can_load_older_state_dict(flag):
    # A state dict without the flags SGD gained after its first release (foreach, fused,
    # differentiable, maximize, capturable) loads, and the next step is torch.optim.SGD's
    # after the same load.
    for desc, kwargs in sgd_inputs(flag):
        (model, inputs), (twin, _) = conv_batchnorm(), conv_batchnorm()
        optimizer = SGD(model.parameters(), **own_copy(kwargs))
        reference = torch.optim.SGD(twin.parameters(), **reference_kwargs(kwargs))
        for _ in range(3):
            train_step(optimizer, model, inputs)
            train_step(reference, twin, inputs)
        for opt in (optimizer, reference):
            older = copy.deepcopy(opt.state_dict())
            for group in older["param_groups"]:
                for key in SGD_INFO.not_og_supported_flags:
                    group.pop(key, None)
            opt.load_state_dict(older)
        assert optimizer.param_groups[0]["maximize"] is False  # the default of a group that lacks it
        train_step(optimizer, model, inputs)
        train_step(reference, twin, inputs)
        assert_bitwise(model.parameters(), twin.parameters(), desc)


@pytest.mark.parametrize("named1", [False, True], ids=["plain1", "named1"])
@pytest.mark.parametrize("named0", [False, True], ids=["plain0", "named0"])
def test_can_load_from_to_named_state_dict(named0, named1):
    # State dicts of optimizers given parameters or named parameters load into either kind;
    # names given to either are kept; the step after loading is torch.optim.SGD's.
    for flag in FLAGS_BUT_DIFFERENTIABLE:
        for desc, kwargs in sgd_inputs(flag):
            (model, inputs), (twin, _) = conv_batchnorm(), conv_batchnorm()
            optimizer = SGD(model.named_parameters() if named0 else model.parameters(), **own_copy(kwargs))
            reference = torch.optim.SGD(twin.parameters(), **reference_kwargs(kwargs))
            for _ in range(3):
                train_step(optimizer, model, inputs)
                train_step(reference, twin, inputs)
            second = SGD(model.named_parameters() if named1 else model.parameters(), **own_copy(kwargs))
            second.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            train_step(second, model, inputs)
            train_step(reference, twin, inputs)
            assert_bitwise(model.parameters(), twin.parameters(), desc)
            if named0 or named1:
                assert second.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("is_named", [False, True], ids=["plain", "named"])
def test_save_load_equality_with_weights_only(is_named):
    # torch.save then torch.load (also with weights_only=True) give back an equal state dict.
    for flag in FLAGS_BUT_DIFFERENTIABLE:
        for desc, kwargs in sgd_inputs(flag):
            w0, b0, inputs = small_problem()
            weight, bias = as_parameters(w0, b0)
            optimizer = SGD(named([weight, bias], is_named), **own_copy(kwargs))
            for _ in range(3):
                optimizer.step(functools.partial(squared_error, optimizer, weight, bias, inputs))
            saved = optimizer.state_dict()
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            for weights_only in (False, True):
                buffer.seek(0)
                same_structure(torch.load(buffer, weights_only=weights_only), saved)


@pytest.mark.parametrize("flag", FLAGS_BUT_DIFFERENTIABLE)
def test_load_state_dict_round_trip_then_step(flag):
    # torch's test_load_nontensor_step, for an optimizer without a step counter in its
    # state: a deep copy of the state dict loads back, and the next step is torch's.
    torch.manual_seed(0)
    start = [torch.randn(2, 3) for _ in range(2)]
    grads = [torch.rand(2, 3) for _ in range(2)]
    for desc, kwargs in sgd_inputs(flag):
        ours, theirs = [Parameter(s.clone()) for s in start], [Parameter(s.clone()) for s in start]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer, reference = SGD(ours, **own_copy(kwargs)), torch.optim.SGD(theirs, **reference_kwargs(kwargs))
        for _ in range(3):
            optimizer.step()
            reference.step()
        for opt in (optimizer, reference):
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        optimizer.step()
        reference.step()
        assert_bitwise(ours, theirs, desc)
        assert_same_state(optimizer, ours, reference, theirs)


# --- hooks -----------------------------------------------------------------------------------
def fresh_optimizer(kwargs):
    return SGD([torch.rand(2, 3, requires_grad=True)], **kwargs)


def mark_state(optimizer):
    optimizer.state["test"] = 1


def report_and_drop_mark(optimizer, state_dict):
    state_dict["ran_state_dict_pre_hook"] = "test" in state_dict["state"]
    state_dict["state"].pop("test", None)
    return state_dict


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("hooks", ["pre", "post", "pre+post"])
def test_state_dict_hooks(hooks, flag):
    # A state_dict pre-hook sees the optimizer before packing, a post-hook the packed dict
    # (and may rewrite it); together, the post-hook sees what the pre-hook did.
    for desc, kwargs in sgd_inputs(flag):
        optimizer = fresh_optimizer(kwargs)
        if "pre" in hooks:
            optimizer.register_state_dict_pre_hook(mark_state)
        if "post" in hooks:
            optimizer.register_state_dict_post_hook(report_and_drop_mark)
        state_dict = optimizer.state_dict()
        if hooks == "pre":
            assert state_dict["state"]["test"] == 1
        elif hooks == "post":
            assert state_dict["ran_state_dict_pre_hook"] is False
        else:
            assert "test" not in state_dict["state"] and state_dict["ran_state_dict_pre_hook"] is True
        assert state_dict["param_groups"][0]["updates"] == 0  # inertia's counters ride along


def set_lr_in_place(optimizer, state_dict):
    state_dict["param_groups"][0]["lr"] = 0.002


def set_lr_on_a_copy(optimizer, state_dict):
    replaced = copy.deepcopy(state_dict)
    replaced["param_groups"][0]["lr"] = 0.003
    return replaced


def record_after_load(optimizer):
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


@pytest.mark.parametrize("flag", FLAGS)
def test_load_state_dict_pre_hook_and_prepend(flag):
    # A pre-hook may edit the dict in place or return a replacement; prepend=True runs a
    # hook first, so the later in-place edit wins.
    for desc, kwargs in sgd_inputs(flag):
        optimizer = fresh_optimizer(kwargs)
        state_dict = optimizer.state_dict()
        optimizer.register_load_state_dict_pre_hook(set_lr_in_place)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002
        optimizer.register_load_state_dict_pre_hook(set_lr_on_a_copy, prepend=True)
        optimizer.load_state_dict(state_dict)
        assert optimizer.param_groups[0]["lr"] == 0.002


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("with_pre_hook", [False, True], ids=["post", "pre+post"])
def test_load_state_dict_post_hook(with_pre_hook, flag):
    for desc, kwargs in sgd_inputs(flag):
        optimizer = fresh_optimizer(kwargs)
        if with_pre_hook:
            optimizer.register_load_state_dict_pre_hook(set_lr_on_a_copy)
        optimizer.register_load_state_dict_post_hook(record_after_load)
        optimizer.load_state_dict(optimizer.state_dict())
        assert bool(optimizer.state["ran_load_state_dict_pre_hook2"]) is with_pre_hook  # a tensor lr compares to a tensor
        assert optimizer.state["ran_load_state_dict_post_hook"] is True


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("kind", ["pre", "post"])
def test_step_hook(kind, flag):
    # A step pre- / post-hook runs on each step until its handle is removed.
    for desc, kwargs in sgd_inputs(flag):
        optimizer = SGD([torch.tensor([1.0, 1.0])], **kwargs)
        calls = []
        register = optimizer.register_step_pre_hook if kind == "pre" else optimizer.register_step_post_hook
        handle = register(lambda opt, args, kw: calls.append(opt))
        optimizer.step()
        optimizer.step()
        assert calls == [optimizer, optimizer]
        handle.remove()
        optimizer.step()
        assert len(calls) == 2


@pytest.mark.parametrize("flag", FLAGS)
def test_step_all_hooks(flag):
    # Global hooks wrap the optimizer's own: global pre, own pre, own post, global post; for
    # inertia's optimizer and torch's alike; removed, none runs.
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    for desc, kwargs in sgd_inputs(flag):
        params = [torch.tensor([1.0, 1.0])]
        ours, theirs = SGD(params, **kwargs), torch.optim.SGD(params)
        order = []
        handles = [
            register_optimizer_step_pre_hook(lambda *a: order.append(0)),
            register_optimizer_step_post_hook(lambda *a: order.append(5)),
        ]
        for optimizer in (ours, theirs):
            handles.append(optimizer.register_step_pre_hook(lambda *a: order.append(1)))
            handles.append(optimizer.register_step_post_hook(lambda *a: order.append(2)))
        try:
            ours.step()
            assert order == [0, 1, 2, 5]
            theirs.step()
            ours.step()
            assert order == [0, 1, 2, 5] * 3
        finally:
            for handle in handles:
                handle.remove()
        ours.step()
        theirs.step()
        assert order == [0, 1, 2, 5] * 3


# --- copies and state ------------------------------------------------------------------------
@pytest.mark.parametrize("flag", FLAGS_BUT_DIFFERENTIABLE)
def test_deepcopy_copies_all_public_attrs(flag):
    torch.manual_seed(0)
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    for desc, kwargs in sgd_inputs(flag):
        optimizer = SGD(params, **kwargs)
        for _ in range(3):
            optimizer.step()
        duplicate = copy.deepcopy(optimizer)
        public = {k for k in vars(optimizer) if not k.startswith("_")}
        assert public == {k for k in vars(duplicate) if not k.startswith("_")}
        assert {"defaults", "state", "param_groups"} <= public


def test_non_empty_state():
    # After a step, every state entry holds something (no empty dict left behind), and the
    # parameters with state are torch.optim.SGD's.
    inputs = torch.rand(2, 5)
    for desc, kwargs in sgd_inputs():
        torch.manual_seed(0)
        model, twin = torch.nn.Linear(5, 5), torch.nn.Linear(5, 5)
        twin.load_state_dict(model.state_dict())
        optimizer, reference = SGD(model.parameters(), **own_copy(kwargs)), torch.optim.SGD(twin.parameters(), **reference_kwargs(kwargs))
        for m, opt in ((model, optimizer), (twin, reference)):
            opt.zero_grad()
            m(inputs).sum().backward()
            opt.step()
        assert all(len(state) > 0 for state in optimizer.state.values()), desc
        assert_same_state(optimizer, model.parameters(), reference, twin.parameters())
        assert len(optimizer.state) == (2 if kwargs.get("momentum") else 0)


# --- differentiable=True (TestDifferentiableOptimizer) ---------------------------------------
def one_step(param, grad, state, kwargs, *state_values):
    """A step as a function of the parameter, gradient and state, for gradcheck: returns
    the new parameter and the state tensors that require a gradient."""
    param = param.clone()
    param.grad = grad
    optimizer = SGD([param], **kwargs)
    optimizer.state[param].update({k: v.clone() for k, v in state.items()})
    optimizer.step()
    return (param,) + tuple(v for v in optimizer.state[param].values() if isinstance(v, torch.Tensor) and v.requires_grad)


@pytest.mark.parametrize("kwargs", [{"lr": 0.9}, {"lr": 0.9, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True}], ids=["torchs", "momentum"])
def test_differentiable_sgd_gradcheck(kwargs):
    torch.manual_seed(0)
    param, grad, buffer = (torch.rand(10, dtype=torch.float64, requires_grad=True) for _ in range(3))
    state = {"momentum_buffer": buffer}
    options = {**kwargs, "differentiable": True}
    assert torch.autograd.gradcheck(one_step, (param, grad, state, options, *state.values()))
    # and the differentiable step has torch's numbers
    ours = one_step(param, grad, state, options)
    reference = param.clone()
    reference.grad = grad
    theirs = torch.optim.SGD([reference], **options)
    theirs.state[reference].update({k: v.clone() for k, v in state.items()})
    theirs.step()
    assert_bitwise([ours[0]], [reference])


def two_steps_then_loss(param, grad, state, kwargs, *tensors):
    """Two differentiable steps on a small regression, then the loss, as a function of
    the hyperparameters given as tensors that require a gradient."""
    param = param.clone()
    param.grad = grad
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    hyper = [v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    optimizer = SGD([param], **kwargs)
    optimizer.state[param].update({k: v.clone() for k, v in state.items()})
    x, y = torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    for _ in range(2):
        loss = torch.nn.functional.mse_loss(x * param.sum(), y)
        loss.backward(inputs=(param,), create_graph=True)
        optimizer.step()
        optimizer.zero_grad()
    loss.backward(inputs=tuple(hyper), create_graph=True)
    assert all(h.grad is not None for h in hyper)
    buffers = tuple(v for v in optimizer.state[param].values() if isinstance(v, torch.Tensor) and v.requires_grad)
    return (loss,) + buffers + tuple(hyper)


@pytest.mark.parametrize("names", [("lr",), ("weight_decay",), ("weight_decay", "lr")], ids=["lr", "weight_decay", "weight_decay_and_lr"])
def test_differentiable_hyperparameters_gradcheck(names):
    torch.manual_seed(0)
    param = torch.rand(10, requires_grad=True, dtype=torch.float64)
    grad = torch.rand_like(param, requires_grad=True)
    values = {"lr": 0.001, "weight_decay": 0.9}
    kwargs = {name: torch.tensor(values[name], requires_grad=True, dtype=torch.float64) for name in names}
    kwargs["differentiable"] = True
    state = {"momentum_buffer": torch.rand_like(param, requires_grad=True)}
    assert torch.autograd.gradcheck(two_steps_then_loss, (param, grad, state, kwargs, *state.values(), *kwargs.values()))
