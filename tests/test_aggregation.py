"""The gradient-aggregation stage on every face, in one process.

It runs on real update steps only, after the loss-scale division and the accumulation
mean, and before clipping (SPEC section 8): a stage that multiplies by 3 (three replicas
summing equal gradients) must give the numbers of an optimizer without accumulation fed 3x
the mean, bit for bit, on the fast path and the reference path, on every backend. A stage
that fails, or returns something else than one gradient per gradient, changes nothing.
The multi-process stages (DDP, ZeRO) are in ``test_scale_out_torch.py``.
"""

import numpy as np
import pytest

import inertia
from conftest import load_backend, requires
from inertia import backend as backends
from inertia.distributed import GradientAggregator
from inertia.engine import host

GRADS = [[1.0, -2.0, 0.5], [0.25, 4.0, -1.0], [3.0, 0.0, 2.0], [-1.0, 1.0, 1.0], [0.5, 0.5, -3.0], [2.0, -1.0, 0.0]]
SCALE, STEPS, REPLICAS = 2.0, 2, 3
OPTIONS = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=1.5, use_ema=True,
               ema_momentum=0.5, ema_overwrite_frequency=2)


class TimesReplicas(inertia.SGD):
    """The stage of three replicas holding equal gradients: their sum."""

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = []

    def aggregate_gradients(self, grads_and_vars):
        ops = backends.of(grads_and_vars[0][0])
        if not ops.is_traced(grads_and_vars[0][0]):
            self.seen.append([ops.to_numpy(g).copy() for g, _ in grads_and_vars])
        return [(g * REPLICAS, v) for g, v in grads_and_vars]


def final_gradients(ops, like):
    """What the stage must see at each update (unscale, then ``(g + acc) / N``, as the
    pipeline forms them) and what it returns (times 3), as float32 arrays."""
    seen, returned = [], []
    scale, steps = np.float32(SCALE), np.float32(STEPS)
    for update in range(len(GRADS) // STEPS):
        first, second = (np.asarray(GRADS[update * STEPS + k], np.float32) / scale for k in range(STEPS))
        mean = (second + (first + np.zeros(3, np.float32))) / steps
        seen.append(mean)
        returned.append(mean * np.float32(REPLICAS))
    return seen, returned


def trained(backend_name, aggregating, fast=True):
    ops = backends.get(backend_name)
    w = inertia.Variable(ops.asarray(np.array([1.0, -0.5, 2.0], np.float32)), name="w")
    if aggregating:
        opt = TimesReplicas(**OPTIONS, loss_scale_factor=SCALE, gradient_accumulation_steps=STEPS)
        grads = GRADS
    else:  # one process fed what the stage returns
        # On JAX an update with a stage runs eagerly (a compiled step would trace the stage
        # on micro-steps too), so the comparison is with JAX's eager step.
        opt = inertia.SGD(**OPTIONS, jit_compile=backend_name != "jax")
        grads = final_gradients(ops, None)[1]
    with (host.disabled() if not fast else _nothing()):
        for grad in grads:
            opt.apply([ops.asarray(np.asarray(grad, np.float32))], [w])
    return opt, w


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "reference path"])
@pytest.mark.parametrize("backend_name", ["numpy", "torch", "jax"])
def test_the_stage_sees_the_accumulated_mean_on_updates_only_and_precedes_clipping(backend_name, fast):
    load_backend(backend_name)
    opt, w = trained(backend_name, aggregating=True, fast=fast)
    expected_opt, expected_w = trained(backend_name, aggregating=False, fast=fast)
    seen, _ = final_gradients(None, None)
    assert len(opt.seen) == len(GRADS) // STEPS  # updates only, never micro-steps
    for got, want in zip(opt.seen, seen):
        np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(w.numpy(), expected_w.numpy())
    np.testing.assert_array_equal(opt.momentums[0].numpy(), expected_opt.momentums[0].numpy())
    np.testing.assert_array_equal(opt._model_variables_moving_average[0].numpy(),
                                  expected_opt._model_variables_moving_average[0].numpy())
    steps_taken = [int(np.asarray(getattr(o.iterations, "value", o.iterations))) for o in (opt, expected_opt)]
    assert steps_taken == [len(GRADS) // STEPS] * 2
    np.testing.assert_array_equal(opt._accumulated_gradients[0].numpy(), np.zeros(3, np.float32))


def test_an_assigned_aggregator_is_the_stage_and_skip_gradients_aggregation_skips_it():
    calls = []

    class Doubling(GradientAggregator):
        def reduce(self, gradients):
            calls.append(len(gradients))
            return [g * 2 for g in gradients]

    w, twin = (inertia.Variable(np.array([1.0, 2.0], np.float32)) for _ in range(2))
    opt, plain = inertia.SGD(learning_rate=0.5), inertia.SGD(learning_rate=0.5)
    opt.aggregate_gradients = Doubling()
    opt.apply_gradients([(np.array([1.0, 1.0], np.float32), w)])
    plain.apply([np.array([2.0, 2.0], np.float32)], [twin])
    np.testing.assert_array_equal(w.numpy(), twin.numpy())
    assert calls == [2]  # the gradient, and the presence vector
    opt.apply_gradients([(np.array([1.0, 1.0], np.float32), w)], skip_gradients_aggregation=True)
    plain.apply([np.array([1.0, 1.0], np.float32)], [twin])
    np.testing.assert_array_equal(w.numpy(), twin.numpy())
    assert calls == [2]
    opt.minimize(lambda: (w * w).sum(), [w])  # minimize aggregates too
    assert calls == [2, 2]


def test_the_legacy_face_aggregates_unless_told_its_gradients_are_aggregated():
    calls = []

    class Summing(inertia.legacy.SGD):
        def aggregate_gradients(self, grads_and_vars):
            calls.append(1)
            return [(g * 3, v) for g, v in grads_and_vars]

    w, twin = (inertia.Variable(np.array([1.0, 2.0], np.float32)) for _ in range(2))
    opt, plain = Summing(learning_rate=0.1, momentum=0.9), inertia.legacy.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply_gradients([(np.array([0.5, -1.0], np.float32), w)])
    plain.apply_gradients([(np.array([1.5, -3.0], np.float32), twin)])
    opt.apply_gradients([(np.array([0.5, -1.0], np.float32), w)], experimental_aggregate_gradients=False)
    plain.apply_gradients([(np.array([0.5, -1.0], np.float32), twin)])
    np.testing.assert_array_equal(w.numpy(), twin.numpy())
    assert calls == [1]


def test_stateless_apply_traces_the_stage_under_jit():
    load_backend("jax")
    import jax
    import jax.numpy as jnp

    w = inertia.Variable(jnp.array([1.0, -0.5, 2.0], jnp.float32), name="w")
    opt = TimesReplicas(**OPTIONS, loss_scale_factor=SCALE, gradient_accumulation_steps=STEPS)
    opt.build([w])
    step = jax.jit(lambda state, grads, weights: opt.stateless_apply(state, grads, weights))
    state, weights = [v.value for v in opt.variables], [w.value]
    for grad in GRADS:
        weights, state = step(state, [jnp.asarray(grad, jnp.float32)], weights)
    assert opt.seen == []  # traced: the stage ran inside the compiled step
    _, expected_w = trained("jax", aggregating=False)
    np.testing.assert_allclose(np.asarray(weights[0]), expected_w.numpy(), rtol=1e-6)


class Failing(inertia.SGD):
    def __init__(self, answer, **options):
        super().__init__(**options)
        self.answer = answer

    def aggregate_gradients(self, grads_and_vars):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(grads_and_vars)


@pytest.mark.parametrize("answer, error, message", [
    (ConnectionError("a rank went away"), ConnectionError, "a rank went away"),
    (lambda pairs: pairs[:0], ValueError, r"must return 2 \(gradient, variable\) pairs.*Received: \[\]"),
    (lambda pairs: [(g[:1], v) for g, v in pairs], TypeError, r"returned for variable 'w' .*shape \(1,\).*expected a numpy array of shape \(3,\)"),
    (lambda pairs: [(g.astype("float64"), v) for g, v in pairs], TypeError, r"dtype float32"),
    (lambda pairs: [g for g, _ in pairs], TypeError, r"must return \(gradient, variable\) pairs"),
], ids=["raises", "too few", "wrong shape", "wrong dtype", "not pairs"])
def test_a_failing_stage_changes_nothing(answer, error, message):
    w = inertia.Variable(np.array([1.0, -0.5, 2.0], np.float32), name="w")
    opt = Failing(answer, learning_rate=0.1, momentum=0.9, use_ema=True, gradient_accumulation_steps=2)
    opt.apply([np.ones(3, np.float32)], [w])  # a micro-step: no stage
    before = [v.numpy().copy() for v in opt.variables] + [w.numpy().copy()]
    with pytest.raises(error, match=message):
        opt.apply([np.ones(3, np.float32)], [w])
    for got, want in zip([v.numpy() for v in opt.variables] + [w.numpy()], before):
        np.testing.assert_array_equal(got, want)


# --- the torch face: aggregate= -----------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "reference path"])
def test_the_torch_face_aggregates_the_accumulated_mean_on_updates_only(fast):
    torch = requires("torch")
    import inertia.torch

    seen = []

    def times_replicas(grads):
        seen.append([g.clone() for g in grads[:-1]])  # the last: the presence vector
        return [g * REPLICAS for g in grads]

    options = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=1.5, use_ema=True,
                   ema_momentum=0.5, ema_overwrite_frequency=2)
    w = torch.nn.Parameter(torch.tensor([1.0, -0.5, 2.0]))
    twin = torch.nn.Parameter(torch.tensor([1.0, -0.5, 2.0]))
    opt = inertia.torch.SGD([w], **options, gradient_accumulation_steps=STEPS, aggregate=times_replicas)
    plain = inertia.torch.SGD([twin], **options)
    with (host.disabled() if not fast else _nothing()):
        for step, grad in enumerate(GRADS):
            w.grad = torch.tensor(grad)
            opt.step()
            if (step + 1) % STEPS == 0:
                first, second = torch.tensor(GRADS[step - 1]), torch.tensor(GRADS[step])
                twin.grad = (second + (first + torch.zeros(3))) / STEPS * REPLICAS
                plain.step()
                torch.testing.assert_close(seen[-1][0], (second + first) / STEPS, rtol=0, atol=0)
    assert len(seen) == len(GRADS) // STEPS
    assert torch.equal(w, twin)
    for key in ("momentum_buffer", "average"):
        assert torch.equal(opt.state[w][key], plain.state[twin][key])
    assert torch.count_nonzero(opt.state[w]["gradient_accumulator"]) == 0
    assert opt.updates == plain.updates == len(GRADS) // STEPS


@pytest.mark.parametrize("answer, error, message", [
    (lambda grads: grads[:0], ValueError, r"`aggregate` must return a list of 2 tensors"),
    (lambda grads: [g[:1] for g in grads], TypeError, r"for tensor 0, a tensor of shape \(1,\).*expected a tensor of shape \(3,\)"),
    (lambda grads: [g.double() for g in grads], TypeError, r"torch.float64"),
    (lambda grads: (_ for _ in ()).throw(ConnectionError("a rank went away")), ConnectionError, "a rank went away"),
], ids=["too few", "wrong shape", "wrong dtype", "raises"])
def test_a_failing_torch_aggregate_changes_nothing(answer, error, message):
    torch = requires("torch")
    import inertia.torch

    w = torch.nn.Parameter(torch.tensor([1.0, -0.5, 2.0]))
    opt = inertia.torch.SGD([w], lr=0.1, momentum=0.9, use_ema=True, gradient_accumulation_steps=2, aggregate=answer)
    w.grad = torch.ones(3)
    opt.step()  # a micro-step: no stage
    before = (w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()}, opt._micro_steps)
    with pytest.raises(error, match=message):
        opt.step()
    assert torch.equal(w, before[0]) and opt._micro_steps == before[2]
    assert opt.state[w].keys() == before[1].keys()
    for key, value in before[1].items():
        assert torch.equal(opt.state[w][key], value)


def test_torch_face_options_for_scale_out_are_checked():
    torch = requires("torch")
    import inertia.torch

    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match=r"`aggregate` must be a callable.*aggregate=3"):
        inertia.torch.SGD([w], aggregate=3)
    with pytest.raises(TypeError, match=r"`clip_group` must be a torch.distributed process group.*clip_group='all'"):
        inertia.torch.SGD([w], global_clipnorm=1.0, clip_group="all")
    with pytest.raises(ValueError, match=r"`clip_group` .*needs global_clipnorm"):
        inertia.torch.SGD([w], clip_group="world")


def test_a_gradient_aggregator_keeps_the_structure_it_is_given():
    class Negating(GradientAggregator):
        def reduce(self, gradients):
            return [-g for g in gradients]

    a, b = np.array([1.0]), np.array([2.0])
    assert Negating()([a, b]) == [-a, -b]
    pairs = Negating()([(a, "x"), (b, "y")])
    assert [v for _, v in pairs] == ["x", "y"] and [float(g[0]) for g, _ in pairs] == [-1.0, -2.0]

    class Losing(GradientAggregator):
        def reduce(self, gradients):
            return gradients[1:]

    with pytest.raises(ValueError, match=r"Losing.reduce returned 1 gradients for 2"):
        Losing()([a, b])


def other_replica_stage(other: dict, other_present: list):
    """A one-process stand-in for two replicas averaging: this replica's list (zeros where
    it has no gradient, then its presence vector) averaged with another's, given here."""

    def mean_with_other(arrays):
        import numpy as np

        *gradients, presence = arrays
        ops = backends.of(presence)
        others = [ops.asarray(np.asarray(other.get(k, np.zeros(ops.shape(g))), np.float32), like=g) for k, g in enumerate(gradients)]
        other_presence = ops.asarray(np.asarray(other_present, np.float32), like=presence)
        two = ops.scalar(2, "float32", like=presence)
        return [(g + o) / two for g, o in zip(gradients, others)] + [(presence + other_presence) / two]

    return mean_with_other


def test_the_keras_stage_sees_every_variable_and_skips_those_no_replica_has_a_gradient_for():
    a, b, c = (inertia.Variable(np.array([1.0, 1.0], np.float32), name=n) for n in "abc")
    opt = inertia.SGD(learning_rate=0.5, momentum=0.9)
    stage = other_replica_stage({1: [4.0, -4.0]}, [1.0, 1.0, 0.0])  # the other replica: gradients for a and b
    opt.aggregate_gradients = lambda pairs: list(zip(stage([g for g, _ in pairs]), [v for _, v in pairs]))
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([np.array([2.0, 2.0], np.float32), None, None], [a, b, c])  # this replica: a only
    np.testing.assert_array_equal(a.numpy(), [1.0 - 0.5 * 1.0] * 2)  # (2 + 0) / 2
    np.testing.assert_array_equal(b.numpy(), [1.0 - 0.5 * 2.0, 1.0 + 0.5 * 2.0])  # (0 + 4) / 2: the other replica's
    np.testing.assert_array_equal(c.numpy(), [1.0, 1.0])  # no replica: skipped, no momentum either
    np.testing.assert_array_equal(opt.momentums[2].numpy(), [0.0, 0.0])


def test_the_torch_stage_sees_every_parameter_and_skips_those_no_rank_has_a_gradient_for():
    torch = requires("torch")
    import inertia.torch

    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    opt = inertia.torch.SGD([a, b, c], lr=0.5, momentum=0.9, aggregate=other_replica_stage({1: [4.0, -4.0]}, [1.0, 1.0, 0.0]))
    a.grad = torch.full((2,), 2.0)
    opt.step()
    assert torch.equal(a.detach(), torch.full((2,), 0.5)) and torch.equal(b.detach(), torch.tensor([0.0, 2.0]))  # (0 + 4) / 2: the other rank's
    assert torch.equal(c.detach(), torch.ones(2)) and c not in opt.state or "momentum_buffer" not in opt.state[c]
    assert torch.equal(opt.state[b]["momentum_buffer"], torch.tensor([2.0, -2.0]))


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_an_identity_stage_changes_no_number_and_keeps_jit_compile_false_on_the_reference_path(backend_name):
    load_backend(backend_name)
    ops = backends.get(backend_name)
    from inertia.engine import optimizer_host

    kernel_calls = []
    original = optimizer_host.apply_final
    optimizer_host.apply_final = lambda *args: kernel_calls.append(1) or original(*args)
    results = []
    try:
        results = _identity_stage_runs(ops)
    finally:
        optimizer_host.apply_final = original
    assert kernel_calls == []  # jit_compile=False: the reference path, stage or not
    for with_stage, without in zip(results[1], results[0]):
        np.testing.assert_array_equal(with_stage, without)


def _identity_stage_runs(ops):
    results = []
    for stage in (None, lambda pairs: pairs):
        variables = [inertia.Variable(ops.asarray(np.array(v, np.float32)), name=n) for n, v in (("a", [1.0, -2.0]), ("b", [0.5]))]
        opt = inertia.SGD(learning_rate=0.1, momentum=0.9, global_clipnorm=0.3, loss_scale_factor=4.0, jit_compile=False)
        if stage is not None:
            opt.aggregate_gradients = stage
        for step in range(3):
            opt.apply([ops.asarray(np.array([0.7 + step, -1.3], np.float32)), ops.asarray(np.array([2.9], np.float32))], variables)
        results.append([v.numpy().copy() for v in variables] + [m.numpy().copy() for m in opt.momentums])
    return results
