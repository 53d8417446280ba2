"""The Keras 3 base class: variables and naming, native arrays, state, config, stateless
use, custom optimizers, and inertia's deliberate deviations from Keras."""

import copy
import pickle
import sys
import threading
import warnings

import numpy as np
import pytest

import inertia
from conftest import load_backend, requires, tensor
from inertia import backend as backends
from inertia import schedules


def f32(x):
    return np.asarray(x, dtype=np.float32)


def g32(x, dtype="float32"):
    """A gradient / initial value as an array of the current backend (``INERTIA_BACKEND``)."""
    return tensor(x, dtype=dtype)


def as_np(value):
    """Any backend's array (or a Variable) as a NumPy copy."""
    if isinstance(value, inertia.Variable):
        return value.numpy()
    ops = backends.of(value)
    return ops.to_numpy(value) if ops is not None else np.asarray(value)


def featured(**overrides):
    settings = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clipnorm=1.0,
                    use_ema=True, ema_momentum=0.9, gradient_accumulation_steps=2)
    settings.update(overrides)
    return inertia.SGD(**settings)


# --- variables and naming -----------------------------------------------------------------
def test_variables_order_and_names_follow_keras():
    kernel = inertia.Variable(np.ones((2, 2), "float32"), name="kernel")
    kernel._path = "dense_1/kernel"
    bias = inertia.Variable(np.zeros(2, "float32"), name="bias")
    bias._path = "dense_1/bias"
    opt = featured(name="sgd")
    opt.build([kernel, bias])
    assert [v.name for v in opt.variables] == [
        "iteration", "learning_rate",
        "dense_1_kernel_average", "dense_1_bias_average",
        "dense_1_kernel_gradient_accumulator", "dense_1_bias_gradient_accumulator",
        "dense_1_kernel_momentum", "dense_1_bias_momentum",
    ]
    assert opt.variables[-1].path == "sgd/dense_1_bias_momentum"
    assert opt.variables[0].dtype == "int32" and opt.variables[1].dtype == "float32"


def test_no_momentum_slots_without_momentum_and_build_is_idempotent():
    opt = inertia.SGD()
    a = inertia.Variable(1.0)
    opt.build([a])
    opt.build([a, inertia.Variable(2.0)])  # a second build is a no-op, as in Keras
    assert len(opt.variables) == 2 and len(opt._trainable_variables) == 1


def test_colliding_variable_names_get_distinct_slots():
    a, b = inertia.Variable(1.0, name="w"), inertia.Variable(2.0, name="w")
    opt = inertia.SGD(momentum=0.5)
    opt.build([a, b])
    names = [v.name for v in opt.variables]
    assert names == ["iteration", "learning_rate", "w_momentum", "w_momentum_1"]


def test_learning_rate_variable_untracked_when_replaced_by_a_schedule():
    opt = inertia.SGD(learning_rate=0.1)
    assert len(opt.variables) == 2
    opt.learning_rate = schedules.ExponentialDecay(0.1, 10, 0.5)
    assert [v.name for v in opt.variables] == ["iteration"]
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.2


def test_learning_rate_setter_assigns_in_place():
    opt = inertia.SGD(learning_rate=0.1)
    variable = opt.variables[1]
    opt.learning_rate = 0.5
    assert opt.variables[1] is variable and float(variable.numpy()) == 0.5
    assert opt.get_config()["learning_rate"] == 0.5


def test_schedule_sees_raw_counter_and_first_update_uses_step_zero():
    seen = []

    class Recording(schedules.LearningRateSchedule):
        def __call__(self, step):
            seen.append(int(step))
            return np.float32(0.1)

        def get_config(self):
            return {}

    opt = inertia.SGD(learning_rate=Recording(), gradient_accumulation_steps=2)
    w = inertia.Variable(1.0)
    for _ in range(4):
        opt.apply([f32(1.0)], [w])
    assert seen == [1, 3]  # evaluated on update steps only, with the raw (micro-step) counter


# --- native arrays ----------------------------------------------------------------------------
def test_native_ndarrays_are_updated_in_place():
    w = np.array([1.0, 2.0], dtype=np.float32)
    opt = inertia.SGD(learning_rate=0.5, momentum=0.5)
    before = id(w)
    opt.apply([f32([1.0, 1.0])], [w])
    opt.apply_gradients([(f32([1.0, 1.0]), w)])
    assert id(w) == before
    np.testing.assert_allclose(w, [1.0 - 0.5 - 0.75, 2.0 - 0.5 - 0.75])
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate", "param_0_momentum"]


@pytest.mark.parametrize("kind", ["tensor", "parameter"])
def test_native_torch_tensors_are_updated_in_place(kind):
    torch = requires("torch")
    w = torch.tensor([1.0, 2.0])
    grad = None
    if kind == "parameter":
        w = torch.nn.Parameter(w)
        grad = torch.tensor([7.0, 7.0])
        w.grad = grad
    opt = inertia.SGD(learning_rate=0.5, momentum=0.5)
    before = id(w)
    opt.apply([torch.tensor([1.0, 1.0])], [w])
    opt.apply_gradients([(torch.tensor([1.0, 1.0]), w)])
    assert id(w) == before
    assert w.tolist() == [1.0 - 0.5 - 0.75, 2.0 - 0.5 - 0.75]
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate", "param_0_momentum"]
    assert all(isinstance(v.value, torch.Tensor) for v in opt.variables)
    # no autograd history, requires_grad and .grad as they were
    assert w.grad_fn is None and w.is_leaf
    assert w.requires_grad is (kind == "parameter")
    assert type(w) is (torch.nn.Parameter if kind == "parameter" else torch.Tensor)
    assert w.grad is grad
    if grad is not None:
        assert grad.tolist() == [7.0, 7.0]
    # still usable for autograd afterwards
    if kind == "parameter":
        (w * w).sum().backward()
        assert w.grad.tolist() == [7.0 + 2 * (1.0 - 1.25), 7.0 + 2 * (2.0 - 1.25)]


def test_native_jax_arrays_are_rejected_with_a_clear_error():
    load_backend("jax")
    import jax
    import jax.numpy as jnp

    w = jnp.array([1.0, 2.0], dtype="float32")
    opt = inertia.SGD(learning_rate=0.5, momentum=0.5)
    hint = r"JAX arrays are immutable: wrap them in inertia.Variable or use `stateless_apply`"
    with pytest.raises(TypeError, match=hint):
        opt.apply([jnp.array([1.0, 1.0], dtype="float32")], [w])
    with pytest.raises(TypeError, match=hint):
        opt.build([w])
    with pytest.raises(TypeError, match=hint):
        opt.minimize(lambda w_: (w_ * w_).sum(), [w])
    assert not opt.built and int(opt.iterations) == 0 and w.tolist() == [1.0, 2.0]
    # the two suggested ways work
    v = inertia.Variable(w)
    opt.apply([jnp.array([1.0, 1.0], dtype="float32")], [v])
    assert v.numpy().tolist() == [0.5, 1.5] and w.tolist() == [1.0, 2.0]
    other = inertia.SGD(learning_rate=0.5, momentum=0.5)
    other.build([inertia.Variable(w)])
    state = [x.value for x in other.variables]
    step = jax.jit(other.stateless_apply)
    (new_w,), new_state = step(state, [jnp.array([1.0, 1.0], dtype="float32")], [w])
    assert new_w.tolist() == [0.5, 1.5] and int(new_state[0]) == 1 and w.tolist() == [1.0, 2.0]
    assert int(other.iterations) == 0


def test_native_and_variable_give_identical_numbers():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(3, 3)).astype(np.float32)
    native, variable = start.copy(), inertia.Variable(start)
    a, b = featured(), featured()
    for _ in range(6):
        g = rng.normal(size=(3, 3)).astype(np.float32)
        a.apply([g], [native])
        b.apply([g], [variable])
    np.testing.assert_array_equal(native, variable.numpy())


def test_minimize_native_arrays_with_an_argument_taking_loss():
    w = np.array([1.0, -2.0], dtype=np.float32)
    inertia.SGD(learning_rate=0.1).minimize(lambda w_: (w_ * w_).sum() / 2.0, [w])
    np.testing.assert_allclose(w, [0.9, -1.8], rtol=1e-6)
    with pytest.raises(TypeError, match="zero-argument `loss`"):
        inertia.SGD().minimize(lambda: (w * w).sum(), [w])


def test_compute_gradients_and_var_list_callable():
    a, b = inertia.Variable(3.0), inertia.Variable([1.0, 2.0])
    pairs = inertia.SGD().compute_gradients(lambda: a * a + (b * b).sum(), lambda: [a, b])
    (ga, va), (gb, vb) = pairs
    assert va is a and vb is b
    assert float(ga) == 6.0 and gb.tolist() == [2.0, 4.0]


def test_exclusion_by_identity_works_for_native_arrays():
    w, u = np.array([2.0], "float32"), np.array([2.0], "float32")
    opt = inertia.SGD(learning_rate=1.0, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[u])
    opt.apply([f32([0.0]), f32([0.0])], [w, u])
    assert w.tolist() == [1.0] and u.tolist() == [2.0]


# --- apply, subsets, iterations -------------------------------------------------------------
def test_apply_on_a_subset_leaves_the_rest_untouched(backend):
    a, b = inertia.Variable(1.0), inertia.Variable(1.0)
    opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply([g32(1.0), g32(1.0)], [a, b])
    opt.apply([g32(1.0)], [b])
    assert float(a.numpy()) == pytest.approx(0.9)
    assert float(b.numpy()) == pytest.approx(0.9 - 0.19)
    assert int(opt.iterations) == 2


def test_apply_without_variables_uses_the_built_list(backend):
    a = inertia.Variable(1.0)
    opt = inertia.SGD(learning_rate=0.5)
    opt.build([a])
    opt.apply([g32(1.0)])
    assert float(a.numpy()) == 0.5


def test_apply_gradients_returns_the_counter_and_apply_empty_is_a_no_op():
    opt = inertia.SGD()
    opt.apply([])
    assert not opt.built and int(opt.iterations) == 0
    counter = opt.apply_gradients([(f32(1.0), inertia.Variable(1.0))])
    assert counter is opt.variables[0] and int(counter.numpy()) == 1


def test_float64_variables_update_in_float64(backend):
    w = inertia.Variable(g32([1.0], dtype="float64"))
    opt = inertia.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply([g32([1.0], dtype="float64")], [w])
    assert backends.of(w.value) is backend and backends.of(opt.momentums[0].value) is backend
    assert w.dtype == "float64" and opt.momentums[0].dtype == "float64"
    # the learning rate is the float32 variable's value, cast to float64 (as Keras does)
    assert w.numpy()[0] == 1.0 - np.float64(np.float32(0.1))


# --- EMA under accumulation (deliberate deviation 2) -------------------------------------------
def test_ema_advances_only_on_real_update_steps(backend):
    opt = inertia.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5, gradient_accumulation_steps=2)
    v = inertia.Variable(10.0)
    values, averages = [], []
    for _ in range(6):
        opt.apply([g32(1.0)], [v])
        values.append(float(v.numpy()))
        averages.append(float(opt._model_variables_moving_average[0].numpy()))
    assert values == [10, 9, 9, 8, 8, 7]
    assert averages == [0, 9, 9, 8.5, 8.5, 7.75]


def test_ema_overwrite_counts_real_steps_under_accumulation(backend):
    opt = inertia.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2,
                      gradient_accumulation_steps=2)
    v = inertia.Variable(10.0)
    values = []
    for _ in range(6):
        opt.apply([g32(1.0)], [v])
        values.append(float(v.numpy()))
    assert values == [10, 9, 9, 8.5, 8.5, 7.5]  # overwritten once, at the second real step


# --- state ---------------------------------------------------------------------------------------
def stepped(optimizer_factory, steps=3, seed=0):
    """Variables of the current backend and an optimizer stepped ``steps`` times on them."""
    rng = np.random.default_rng(seed)
    variables = [inertia.Variable(g32(rng.normal(size=s)), name=n) for s, n in [((2, 3), "k"), ((3,), "b")]]
    opt = optimizer_factory()
    for _ in range(steps):
        opt.apply([g32(rng.normal(size=v.shape)) for v in variables], variables)
    return opt, variables, rng


def test_save_and_load_own_variables_resume_bit_for_bit(backend):
    opt, variables, rng = stepped(featured, steps=3)
    store = {}
    opt.save_own_variables(store)
    assert list(store) == [v.name for v in opt.variables]
    assert all(isinstance(value, np.ndarray) for value in store.values())
    grads = [[g32(rng.normal(size=v.shape)) for v in variables] for _ in range(5)]
    snapshot = [v.numpy() for v in variables]
    for g in grads:
        opt.apply(g, variables)
    expected = [v.numpy() for v in variables]

    restored_vars = [inertia.Variable(g32(s), name=v.name) for s, v in zip(snapshot, variables)]
    fresh = featured()
    fresh.build(restored_vars)
    fresh.load_own_variables(store)
    for g in grads:
        fresh.apply(g, restored_vars)
    for a, b in zip(expected, restored_vars):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(opt.variables, fresh.variables):
        assert backends.of(b.value) is backend and a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_load_accepts_keras_index_keys(backend):
    opt, variables, _ = stepped(lambda: inertia.SGD(momentum=0.9))
    store = {str(i): v.numpy() for i, v in enumerate(opt.variables)}
    twin = inertia.SGD(momentum=0.9)
    twin.build([inertia.Variable(g32(v.numpy()), name=v.name) for v in variables])
    twin.load_own_variables(store)
    for a, b in zip(opt.variables, twin.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_load_index_keys_in_numeric_order_past_ten(backend):
    # Keras' index keys are "0", "1", ..., "11": "10" is the 11th variable, not the 3rd.
    variables = [inertia.Variable(g32([0.0, 0.0]), name=f"w{i}") for i in range(10)]
    opt = inertia.SGD(momentum=0.9)
    opt.build(variables)
    assert len(opt.variables) == 12  # iteration, learning_rate, 10 momentum slots
    store = {str(i): np.full(np.shape(slot.numpy()), i, dtype=slot.numpy().dtype) for i, slot in enumerate(opt.variables)}
    opt.load_own_variables(store)
    for i, slot in enumerate(opt.variables):
        np.testing.assert_array_equal(as_np(slot.value), store[str(i)], err_msg=slot.name)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["reference", "fused"])
def test_each_exclusion_call_replaces_the_previous_one(jit_compile):
    # Zero gradients, no momentum: only the decay moves a weight, w - w*0.5*0.1 in float32.
    def decayed(w):
        return np.float32(w) - np.float32(w) * np.float32(0.5) * np.float32(0.1)

    first, second = np.ones(2, np.float32), np.ones(2, np.float32)
    opt = inertia.SGD(learning_rate=0.1, weight_decay=0.5, jit_compile=jit_compile)
    opt.exclude_from_weight_decay(var_list=[first])
    opt.apply([np.zeros(2, np.float32)] * 2, [first, second])
    assert first.tolist() == [1.0, 1.0] and second.tolist() == [decayed(1.0)] * 2
    opt.exclude_from_weight_decay(var_list=[second])  # now only the second is exempt
    opt.apply([np.zeros(2, np.float32)] * 2, [first, second])
    assert first.tolist() == [decayed(1.0)] * 2 and second.tolist() == [decayed(1.0)] * 2


def test_load_mismatch_is_an_error_not_a_warning():
    opt, variables, _ = stepped(lambda: inertia.SGD(momentum=0.9))
    store = {}
    opt.save_own_variables(store)
    unbuilt = inertia.SGD(momentum=0.9)
    with pytest.raises(ValueError, match="has not been built yet"):
        unbuilt.load_own_variables(store)


def test_set_weights_round_trip_and_length_check(backend):
    opt, variables, _ = stepped(lambda: inertia.SGD(momentum=0.9))
    weights = [v.numpy() for v in opt.variables]
    twin = inertia.SGD(momentum=0.9)
    twin.build([inertia.Variable(g32(v.numpy())) for v in variables])
    twin.set_weights(weights)
    for a, b in zip(weights, twin.variables):
        assert backends.of(b.value) is backend
        np.testing.assert_array_equal(a, b.numpy())
    twin.set_weights([v.value for v in opt.variables])  # the backend's own arrays work too
    for a, b in zip(weights, twin.variables):
        np.testing.assert_array_equal(a, b.numpy())
    with pytest.raises(ValueError, match="expected 4, received 3"):
        twin.set_weights(weights[:3])


def test_loss_scale_optimizer_state_keys_do_not_collide():
    opt, _, _ = stepped(lambda: inertia.LossScaleOptimizer(inertia.SGD(momentum=0.9)))
    store = {}
    opt.save_own_variables(store)
    assert list(store)[:4] == ["iteration", "learning_rate", "step_counter", "dynamic_scale"]
    assert "inner_optimizer/iteration" in store and len(store) == len(opt.variables)


def test_optimizer_pickles(backend):
    opt, _, _ = stepped(featured)
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.get_config() == opt.get_config()
    for a, b in zip(opt.variables, clone.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_copies_get_their_own_lock():
    opt, _, _ = stepped(featured)
    assert "_lock" not in opt.__getstate__()  # a lock is not state (nor picklable)
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert clone._lock is not opt._lock and clone._lock.acquire(blocking=False)
        clone._lock.release()
        for a, b in zip(opt.variables, clone.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- threads ---------------------------------------------------------------------------------------
def _step_from_threads(step, threads: int, steps: int) -> None:
    """``threads`` threads call ``step()`` ``steps`` times each, switching as often as Python
    lets them (an unlocked step then loses updates)."""
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait()
        for _ in range(steps):
            step()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(previous)


THREADED = {
    "SGD": lambda: inertia.SGD(learning_rate=0.125),
    "SGD momentum, reference path": lambda: inertia.SGD(learning_rate=0.125, momentum=0.9, use_ema=True, jit_compile=False),
    "SGD every stage": lambda: featured(learning_rate=0.125),
    "legacy": lambda: __import__("inertia.legacy").legacy.SGD(learning_rate=0.125, momentum=0.9),
    "LossScaleOptimizer": lambda: inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.125, momentum=0.5), initial_scale=1.0, dynamic_growth_steps=7),
}


@pytest.mark.parametrize("call", ["apply", "apply_gradients"])
@pytest.mark.parametrize("make", list(THREADED))
def test_one_optimizer_stepped_from_several_threads_takes_every_step_whole(make, call):
    """N threads x M steps of one constant gradient (the steps commute) give N*M counted
    steps and the weights of N*M sequential steps, bit for bit."""
    threads, steps = 4, 60

    def run(threads_, steps_):
        optimizer = THREADED[make]()
        variables = [inertia.Variable(np.array([1.0, -2.0, 3.0], np.float32), name="a"), np.array([0.5, -0.25])]
        grads = [np.full(3, 0.25, np.float32), np.full(2, 0.5)]
        if call == "apply":
            step = lambda: optimizer.apply(grads, variables)  # noqa: E731
        else:
            step = lambda: optimizer.apply_gradients(zip(grads, variables))  # noqa: E731
        _step_from_threads(step, threads_, steps_)
        return optimizer, variables

    ours, ours_variables = run(threads, steps)
    sequential, sequential_variables = run(1, threads * steps)
    assert int(as_np(ours.iterations)) == int(as_np(sequential.iterations)) > 0
    assert int(as_np(getattr(ours, "inner_optimizer", ours)._iterations)) == threads * steps
    for a, b in zip(ours_variables, sequential_variables):
        np.testing.assert_array_equal(as_np(a), as_np(b))
    state = [v() if callable(v) else v for v in (ours.variables, sequential.variables)]  # legacy: a method
    assert len(state[0]) == len(state[1])
    for a, b in zip(*state):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- config and serialization --------------------------------------------------------------------
def test_config_round_trip_with_every_option():
    opt = inertia.SGD(learning_rate=schedules.CosineDecay(0.1, 100, alpha=0.1), momentum=0.5, nesterov=True,
                      weight_decay=1e-4, global_clipnorm=2.0, use_ema=True, ema_momentum=0.95,
                      ema_overwrite_frequency=10, loss_scale_factor=128.0, gradient_accumulation_steps=4,
                      name="custom", jit_compile=False)
    config = opt.get_config()
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    assert config["jit_compile"] is False and list(config)[-1] == "jit_compile"
    clone = inertia.SGD.from_config(config)
    assert clone.get_config() == config


def test_config_keeps_the_given_float():
    assert inertia.SGD(learning_rate=0.1).get_config()["learning_rate"] == 0.1
    opt = inertia.SGD(learning_rate=0.1)
    opt.build([inertia.Variable(1.0)])
    opt.set_weights([np.int32(0), np.float32(0.25)])
    assert opt.get_config()["learning_rate"] == 0.25  # changed behind the setter: the variable wins


def test_serialize_deserialize_get():
    opt = inertia.SGD(learning_rate=0.5, momentum=0.25)
    data = inertia.optimizers.serialize(opt)
    assert data["module"] == "inertia.optimizers" and data["class_name"] == "SGD"
    clone = inertia.optimizers.deserialize(data)
    assert isinstance(clone, inertia.SGD) and clone.get_config() == opt.get_config()
    for name in ("sgd", "SGD", "Sgd"):
        made = inertia.optimizers.get(name)
        assert isinstance(made, inertia.SGD) and float(made.learning_rate) == pytest.approx(0.01)
    assert inertia.optimizers.get(None) is None and inertia.optimizers.get(opt) is opt
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier: 'typo'"):
        inertia.optimizers.get("typo")


def test_loss_scale_optimizer_config_round_trip():
    opt = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.5, momentum=0.9), initial_scale=64.0,
                                     dynamic_growth_steps=10, name="lso")
    config = opt.get_config()
    assert list(config) == ["name", "inner_optimizer", "initial_scale", "dynamic_growth_steps"]
    clone = inertia.optimizers.deserialize(inertia.optimizers.serialize(opt))
    assert isinstance(clone, inertia.LossScaleOptimizer) and clone.get_config() == config
    assert clone.scale_loss(2.0) == 128.0


def test_keras_serialized_sgd_loads(keras):
    data = keras.optimizers.serialize(keras.optimizers.SGD(learning_rate=0.25, momentum=0.5, nesterov=True))
    opt = inertia.optimizers.deserialize(data)
    assert isinstance(opt, inertia.SGD) and opt.momentum == 0.5 and opt.nesterov
    assert float(opt.learning_rate) == 0.25


# --- stateless use ---------------------------------------------------------------------------------
def test_stateless_apply_is_pure_and_equals_apply(backend):
    opt, variables, rng = stepped(featured)
    grads = [g32(rng.normal(size=v.shape)) for v in variables]
    optimizer_values = [backend.copy(v.value) for v in opt.variables]  # the backend's arrays
    trainable_values = [backend.copy(v.value) for v in variables]
    inputs = [as_np(a) for a in optimizer_values + trainable_values]
    own_before = [v.numpy() for v in opt.variables]
    weights_before = [v.numpy() for v in variables]
    grads_before = [as_np(g) for g in grads]
    for _ in range(2):  # one micro-step then one real step of the accumulation
        new_trainables, new_optimizer = opt.stateless_apply(optimizer_values, grads, trainable_values)
        for given, original in zip(optimizer_values + trainable_values, inputs):
            np.testing.assert_array_equal(as_np(given), original)  # inputs untouched
        for v, original in zip(opt.variables, own_before):
            np.testing.assert_array_equal(v.numpy(), original)  # own state untouched
        for v, original in zip(variables, weights_before):
            np.testing.assert_array_equal(v.numpy(), original)  # the variables too
        for g, original in zip(grads, grads_before):
            np.testing.assert_array_equal(as_np(g), original)
        assert all(backends.of(value) is backend for value in new_trainables + new_optimizer)
        optimizer_values, trainable_values = new_optimizer, new_trainables
        inputs = [as_np(a) for a in optimizer_values + trainable_values]
    for _ in range(2):
        opt.apply(grads, variables)
    for v, value in zip(variables, trainable_values):
        np.testing.assert_array_equal(v.numpy(), as_np(value))
    for v, value in zip(opt.variables, optimizer_values):
        np.testing.assert_array_equal(v.numpy(), as_np(value))


def test_stateless_apply_with_native_arrays_does_not_touch_them():
    w = np.array([1.0, 2.0], dtype=np.float32)
    opt = inertia.SGD(learning_rate=0.5)
    opt.build([w])
    new_w, new_state = opt.stateless_apply([v.numpy() for v in opt.variables], [f32([1.0, 1.0])], [w])
    assert w.tolist() == [1.0, 2.0] and new_w[0].tolist() == [0.5, 1.5] and int(new_state[0]) == 1


# --- custom optimizers ------------------------------------------------------------------------------
class HeavyBallSGD(inertia.Optimizer):
    """A custom optimizer written as in the Keras reference: build + update_step + get_config.

    Backend-neutral as Keras' ``ops``: scalars and casts go through ``variable.backend``.
    """

    def __init__(self, learning_rate=0.01, beta=0.9, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta = beta

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.velocities = [self.add_variable_from_reference(v, "velocity") for v in var_list]
        self.counter = self.add_variable((), initializer="zeros", dtype="int32", name="counter")

    def update_step(self, gradient, variable, learning_rate):
        ops = variable.backend
        velocity = self.velocities[self._get_variable_index(variable)]
        velocity.assign(velocity * ops.scalar(self.beta, variable.dtype, like=variable.value) + gradient)
        variable.assign(variable - velocity * ops.cast(learning_rate, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config["beta"] = self.beta
        return config


def test_custom_optimizer_written_as_in_the_reference(backend):
    w = inertia.Variable([1.0, 2.0], name="w")
    opt = HeavyBallSGD(learning_rate=0.1, beta=0.5, clipvalue=1.0, use_ema=True)
    for _ in range(2):
        opt.apply([g32([4.0, 0.5])], [w])
    assert all(backends.of(v.value) is backend for v in opt.variables)
    # step 1: v=[1, .5], w=[.9, 1.95]; step 2: v=[1.5, .75], w=[.75, 1.875]
    np.testing.assert_allclose(w.numpy(), [0.75, 1.875], rtol=1e-6)
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate", "w_average", "w_velocity", "counter"]
    assert opt.name == "heavy_ball_sgd" or opt.name.startswith("heavy_ball_sgd_")
    clone = HeavyBallSGD.from_config(opt.get_config())
    assert clone.beta == 0.5 and clone.clipvalue == 1.0


def test_abstract_update_step_raises():
    opt = inertia.Optimizer(learning_rate=0.1)
    with pytest.raises(NotImplementedError, match="update_step"):
        opt.apply([f32(1.0)], [inertia.Variable(1.0)])


def test_decay_kwarg_warns_and_is_ignored():
    with pytest.warns(UserWarning, match="Argument `decay` is no longer supported"):
        opt = inertia.SGD(decay=0.1)
    assert "decay" not in opt.get_config()


def test_partial_none_gradients_still_update_ema_of_all(backend):
    a, b = inertia.Variable(1.0, name="a"), inertia.Variable(5.0, name="b")
    opt = inertia.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt.apply([g32(1.0), g32(1.0)], [a, b])
        opt.apply([g32(1.0), None], [a, b])
    assert float(opt._model_variables_moving_average[1].numpy()) == 4.0  # b's average kept moving


def test_set_weights_rejects_complex_values_and_changes_nothing():
    opt, _, _ = stepped(lambda: inertia.SGD(momentum=0.9))
    before = [v.numpy() for v in opt.variables]
    weights = [v.numpy() for v in opt.variables]
    weights[-1] = weights[-1].astype(np.complex64)
    with pytest.raises(TypeError, match="complex value"):
        opt.set_weights(weights)
    for v, b in zip(opt.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_loss_scale_optimizer_stateless_apply_covers_inner_state(backend):
    opt = inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.5, momentum=0.5), initial_scale=4.0)
    w = inertia.Variable([1.0, 2.0])
    opt.build([w])
    state = [backend.copy(v.value) for v in opt.variables]
    state_before = [as_np(v) for v in state]
    (new_w,), new_state = opt.stateless_apply(state, [g32([4.0, 8.0])], [backend.copy(w.value)])
    np.testing.assert_allclose(as_np(new_w), [0.5, 1.0])  # unscaled gradient [1, 2], lr 0.5
    names = [v.name for v in opt.variables]
    assert int(new_state[names.index("step_counter")]) == 1
    np.testing.assert_allclose(as_np(new_state[-1]), [-0.5, -1.0])  # the inner momentum slot
    assert w.numpy().tolist() == [1.0, 2.0] and int(opt.iterations) == 0
    for given, before in zip(state, state_before):
        np.testing.assert_array_equal(as_np(given), before)
    assert int(opt.inner_optimizer.iterations) == 0 and float(opt.dynamic_scale.numpy()) == 4.0
    (same_w,), skipped = opt.stateless_apply(state, [g32([np.inf, 1.0])], [backend.copy(w.value)])
    assert as_np(same_w).tolist() == [1.0, 2.0] and float(skipped[names.index("dynamic_scale")]) == 2.0
    assert int(skipped[names.index("step_counter")]) == 0


# --- torch specifics ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_state_lives_on_the_parameters_device_and_dtype(device, dtype):
    torch = requires("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch_dtype = getattr(torch, dtype)
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -3.0], dtype=torch_dtype, device=device))
    opt = inertia.SGD(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clipnorm=1.0,
                      use_ema=True, ema_momentum=0.9, gradient_accumulation_steps=2)
    grads = [torch.tensor([0.5, -1.5, 2.0], dtype=torch_dtype, device=device) * (k + 1) for k in range(4)]
    for g in grads:
        opt.apply([g], [w])
    assert w.dtype == torch_dtype and w.device.type == device and w.requires_grad and w.grad is None
    assert [v.name for v in opt.variables] == [
        "iteration", "learning_rate", "param_0_average", "param_0_gradient_accumulator", "param_0_momentum",
    ]
    for variable in opt.variables:
        assert isinstance(variable.value, torch.Tensor) and variable.value.device == w.device
    assert opt.variables[0].value.dtype == torch.int32 and opt.variables[1].value.dtype == torch.float32
    for slot in opt.variables[2:]:
        assert slot.value.dtype == torch_dtype and slot.dtype == dtype
    # The same numbers as NumPy in the same dtype (float16 / bfloat16 rounding included).
    # float32 may differ by 1 ulp: torch's vectorized float32 sqrt (clipnorm) is not
    # correctly rounded (NumPy's and XLA's are); the half types compute each op in float32
    # and round once, which hides it.
    twin = inertia.SGD(**opt.get_config())
    reference = inertia.Variable(tensor([1.0, 2.0, -3.0], dtype=dtype, backend_name="numpy"))
    for g in grads:
        twin.apply([tensor(as_np(g), dtype=dtype, backend_name="numpy")], [reference])
    rtol = 2.4e-7 if dtype == "float32" else 0.0
    np.testing.assert_allclose(as_np(w).astype(np.float64), reference.numpy().astype(np.float64), rtol=rtol, atol=0)
    for a, b in zip(opt.variables, twin.variables):
        np.testing.assert_allclose(a.numpy().astype(np.float64), b.numpy().astype(np.float64), rtol=rtol, atol=0)


def _torch_model(torch, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _torch_data(torch, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, generator=generator), torch.randn(16, 2, generator=generator)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["callable", "loss_tensor"])
def test_torch_minimize_differentiates_an_nn_module_through_autograd(as_tensor):
    torch = requires("torch")
    model = _torch_model(torch)
    x, y = _torch_data(torch)

    def loss_of_model():
        return ((model(x) - y) ** 2).mean()

    params = list(model.parameters())
    expected_grads = torch.autograd.grad(loss_of_model(), params)
    expected = [(p - g * torch.tensor(0.1)).detach() for p, g in zip(params, expected_grads)]
    opt = inertia.SGD(learning_rate=0.1)
    loss = loss_of_model() if as_tensor else loss_of_model
    counter = opt.minimize(loss, list(model.parameters()))
    assert int(counter.numpy()) == 1
    for p, e in zip(model.parameters(), expected):
        np.testing.assert_allclose(as_np(p), as_np(e), rtol=1e-6, atol=1e-7)
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad
        assert p.grad is None and p.grad_fn is None  # .grad is never written, no history kept
    grads = opt.compute_gradients(loss_of_model, list(model.parameters()))
    assert [v for _, v in grads] == list(model.parameters())
    assert all(isinstance(g, torch.Tensor) and not g.requires_grad for g, _ in grads)


@pytest.mark.parametrize(
    "settings",
    [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True)],
    ids=["plain", "momentum", "nesterov"],
)
def test_torch_nn_training_matches_torch_optim_sgd(settings):
    """Keras' velocity form equals torch's heavy-ball buffer for a constant learning rate."""
    torch = requires("torch")
    steps, lr = 30, 0.05
    ours, theirs = _torch_model(torch), _torch_model(torch)
    x, y = _torch_data(torch)
    opt = inertia.SGD(learning_rate=lr, **settings)
    reference = torch.optim.SGD(theirs.parameters(), lr=lr, **settings)
    for _ in range(steps):
        opt.minimize(lambda: ((ours(x) - y) ** 2).mean(), list(ours.parameters()))
        reference.zero_grad()
        ((theirs(x) - y) ** 2).mean().backward()
        reference.step()
    assert int(opt.iterations) == steps
    moved = 0.0
    for a, b, start in zip(ours.parameters(), theirs.parameters(), _torch_model(torch).parameters()):
        np.testing.assert_allclose(as_np(a), as_np(b), rtol=1e-5, atol=1e-6)
        moved = max(moved, float((a.detach() - start.detach()).abs().max()))
    assert moved > 1e-2  # the comparison is not vacuous


def test_serialize_round_trips_the_legacy_face_and_reads_tf_keras_legacy_configs():
    import inertia.legacy

    legacy = inertia.legacy.SGD(0.1, momentum=0.9, decay=0.1, clipvalue=1.0)
    config = inertia.optimizers.serialize(legacy)
    assert config["module"] == "inertia.legacy" and config["class_name"] == "SGD"
    restored = inertia.optimizers.deserialize(config)
    assert type(restored) is inertia.legacy.SGD and restored.get_config() == legacy.get_config()
    # tf.keras 2.11+ marks legacy optimizers in their config; the Keras 3 SGD is still the default.
    flagged = {"class_name": "SGD", "config": {"learning_rate": 0.5, "decay": 0.25, "is_legacy_optimizer": True}}
    assert type(inertia.optimizers.deserialize(flagged)) is inertia.legacy.SGD
    assert type(inertia.optimizers.get("sgd")) is inertia.SGD


def test_changing_python_hyperparameters_takes_effect_on_every_backend(backend):
    # A compiled JAX step bakes Python settings in; changing one must compile a new step.
    w = inertia.Variable(tensor([1.0, 1.0], "float64"))
    opt = inertia.SGD(1.0, momentum=0.5)
    opt.apply([tensor([1.0, 1.0], "float64")], [w])  # v = -1, w = 0
    opt.momentum = 0.25
    opt.apply([tensor([1.0, 1.0], "float64")], [w])  # v = -0.25 - 1, w = -1.25
    np.testing.assert_array_equal(w.numpy(), [-1.25, -1.25])
    opt.nesterov = True
    opt.apply([tensor([1.0, 1.0], "float64")], [w])  # v = 0.25*-1.25 - 1 = -1.3125; w += 0.25*v - 1
    np.testing.assert_array_equal(w.numpy(), [-1.25 + 0.25 * -1.3125 - 1.0] * 2)


# --- copies that train on ----------------------------------------------------------------------------
COPYABLE = {
    "sgd everything": lambda: inertia.SGD(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.1,
                                          global_clipnorm=1.0, use_ema=True, ema_overwrite_frequency=3,
                                          gradient_accumulation_steps=2),
    "legacy": lambda: inertia.legacy.SGD(learning_rate=0.1, momentum=0.9, decay=0.01, clipnorm=1.0),
    "loss scale": lambda: inertia.LossScaleOptimizer(inertia.SGD(learning_rate=0.1, momentum=0.5), initial_scale=4.0),
}


@pytest.mark.parametrize("name", list(COPYABLE))
@pytest.mark.parametrize("backend_name", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["variables", "native"])
def test_an_optimizer_copied_with_its_variables_trains_on_as_the_original(name, backend_name, how, wrapped):
    load_backend(backend_name)
    if backend_name == "jax" and not wrapped:
        return  # JAX arrays are immutable: only inertia.Variables hold them
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(shape).astype(np.float32) for shape in ((3, 2), (2,))]
    targets = [tensor(v, backend_name=backend_name) for v in values]
    if wrapped:
        targets = [inertia.Variable(t, name=n) for t, n in zip(targets, ("kernel", "bias"))]
    opt = COPYABLE[name]()
    if name == "sgd everything":
        opt.exclude_from_weight_decay(var_list=[targets[1]])
    grads = [[tensor(rng.standard_normal(v.shape).astype(np.float32), backend_name=backend_name) for v in values]
             for _ in range(7)]
    apply = (lambda o, g, t: o.apply_gradients(list(zip(g, t)))) if name == "legacy" else (lambda o, g, t: o.apply(g, t))
    for g in grads[:3]:
        apply(opt, g, targets)
    clone_opt, clone_targets = (copy.deepcopy((opt, targets)) if how == "deepcopy"
                                else pickle.loads(pickle.dumps((opt, targets))))
    for g in grads[3:]:
        apply(opt, g, targets)
        apply(clone_opt, g, clone_targets)
    numpy = lambda t: np.asarray(t.numpy() if hasattr(t, "numpy") and not isinstance(t, np.ndarray) else t)
    for a, b in zip(targets, clone_targets):
        assert a is not b
        np.testing.assert_array_equal(numpy(b), numpy(a))
    state = (lambda o: o.variables()) if name == "legacy" else (lambda o: o.variables)
    assert len(state(opt)) == len(state(clone_opt)) > 2
    for a, b in zip(state(opt), state(clone_opt)):
        np.testing.assert_array_equal(numpy(b), numpy(a))
    if name != "legacy":  # (tf.keras' legacy optimizers take new variables at any step)
        with pytest.raises(ValueError, match="Unknown variable"):  # the copy belongs to the copied variables
            apply(clone_opt, grads[0], targets)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_an_unbuilt_copy_keeps_its_weight_decay_exclusions(how):
    kernel = inertia.Variable(np.ones(2, np.float32), name="kernel")
    bias = inertia.Variable(np.ones(2, np.float32), name="bias")
    opt = inertia.SGD(learning_rate=0.5, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=[bias])  # before the build
    opt, kernel, bias = copy.deepcopy((opt, kernel, bias)) if how == "deepcopy" else pickle.loads(pickle.dumps((opt, kernel, bias)))
    opt.apply([np.zeros(2, np.float32)] * 2, [kernel, bias])
    np.testing.assert_array_equal(bias.numpy(), [1, 1])  # excluded: untouched by a zero gradient
    np.testing.assert_array_equal(kernel.numpy(), np.float32(1) - np.float32(1 * np.float32(0.1)) * np.float32(0.5))
