"""The four faces against each other: one rule, two forms.

* With a constant learning rate the Keras form (``inertia.SGD``, ``inertia.legacy.SGD``)
  and the heavy-ball form (``inertia.torch.SGD``, ``inertia.mlx.SGD``) give the same
  weights, plain and Nesterov.
* When the learning rate changes they diverge, each exactly as its recursion predicts:
  Keras' velocity keeps the rates in force when each gradient arrived; heavy-ball rescales
  the whole history by the current rate.
* Every face routes its arithmetic through ``inertia.rule.sgd_update``.
"""

import numpy as np
import pytest
from conftest import requires

import inertia
from inertia.engine import host
import inertia.legacy
import inertia.mlx
import inertia.rule

STEPS = 8
# Rates and momentum exact in float32: Keras and MLX keep the rate (legacy also the
# momentum) as a float32 value, torch as a Python float; the weights are float64.
MOMENTUM = 0.875


def gradients(seed, steps=STEPS, size=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=size) for _ in range(steps)]


def keras_face(optimizer, grads, rates, w0):
    w = w0.copy()
    for g, lr in zip(grads, rates):
        optimizer.learning_rate = lr
        optimizer.apply_gradients([(g.copy(), w)])
    return w


def torch_face(grads, rates, w0, nesterov):
    torch = requires("torch")
    import inertia.torch

    w = torch.nn.Parameter(torch.tensor(w0))
    optimizer = inertia.torch.SGD([w], lr=rates[0], momentum=MOMENTUM, nesterov=nesterov)
    for g, lr in zip(grads, rates):
        optimizer.param_groups[0]["lr"] = lr
        w.grad = torch.tensor(g)
        optimizer.step()
    return w.detach().numpy()


def mlx_face(grads, rates, w0, nesterov):
    optimizer = inertia.mlx.SGD(rates[0], momentum=MOMENTUM, nesterov=nesterov)
    params = {"w": w0.copy()}
    for g, lr in zip(grads, rates):
        optimizer.learning_rate = lr
        params = optimizer.apply_gradients({"w": g.copy()}, params)
    return params["w"]


def all_faces(grads, rates, nesterov):
    w0 = np.linspace(-1.0, 1.0, grads[0].size)
    return {
        "keras": keras_face(inertia.SGD(rates[0], momentum=MOMENTUM, nesterov=nesterov), grads, rates, w0),
        "legacy": keras_face(inertia.legacy.SGD(rates[0], momentum=MOMENTUM, nesterov=nesterov), grads, rates, w0),
        "torch": torch_face(grads, rates, w0, nesterov),
        "mlx": mlx_face(grads, rates, w0, nesterov),
    }


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_constant_rate_every_face_gives_the_same_weights(seed, nesterov):
    faces = all_faces(gradients(seed), [0.0625] * STEPS, nesterov)
    for name, weights in faces.items():
        np.testing.assert_allclose(weights, faces["keras"], rtol=1e-12, atol=1e-14, err_msg=name)
    # ...and the run really moved the weights.
    assert np.abs(faces["keras"] - np.linspace(-1.0, 1.0, 5)).max() > 0.1


def test_rate_change_splits_the_two_forms_as_their_recursions_predict():
    grads = [np.ones(1)] * STEPS
    rates = [0.125] * 5 + [0.015625] * 3  # a step decay after step 5
    faces = all_faces(grads, rates, nesterov=False)

    velocity, buffer, keras_w, heavy_w = 0.0, 0.0, -1.0, -1.0
    for g, lr in zip(grads, rates):
        velocity = MOMENTUM * velocity - lr * g[0]  # keeps each gradient's own rate
        keras_w += velocity
        buffer = MOMENTUM * buffer + g[0]  # rescaled by the current rate
        heavy_w -= lr * buffer
    assert faces["keras"][0] == pytest.approx(keras_w, rel=1e-12)
    assert faces["legacy"][0] == pytest.approx(keras_w, rel=1e-12)
    assert faces["torch"][0] == pytest.approx(heavy_w, rel=1e-12)
    assert faces["mlx"][0] == pytest.approx(heavy_w, rel=1e-12)
    # After the drop, the heavy-ball steps shrink tenfold at once; Keras' decay slowly.
    assert keras_w < heavy_w - 0.3


def test_rate_warmup_amplifies_heavy_ball_history():
    grads = [np.ones(1)] * STEPS
    rates = [(i + 1) / 64 for i in range(STEPS)]
    faces = all_faces(grads, rates, nesterov=True)
    assert faces["keras"][0] == pytest.approx(faces["legacy"][0], rel=1e-12)
    assert faces["torch"][0] == pytest.approx(faces["mlx"][0], rel=1e-12)
    assert faces["torch"][0] < faces["keras"][0] - 0.1  # growing rates scale old momentum up


def test_every_face_calls_the_one_rule(monkeypatch):
    torch = requires("torch")
    import inertia.torch

    calls = []
    rule = inertia.rule.sgd_update

    def counting(*args, **kwargs):
        calls.append(args[0])
        return rule(*args, **kwargs)

    for module in (inertia.sgd, inertia.mlx, inertia.torch):
        monkeypatch.setattr(module, "sgd_update", counting)

    two = [np.ones(3), np.ones(2)]
    # The reference path (each fast path is tested equal to it: test_fused.py, test_fast_paths.py).
    with host.disabled():
        inertia.SGD(0.1, momentum=0.9).apply_gradients([(np.ones(3), two[0]), (np.ones(2), two[1])])
        inertia.legacy.SGD(0.1, momentum=0.9).apply_gradients([(np.ones(3), two[0].copy()), (np.ones(2), two[1].copy())])
        inertia.mlx.SGD(0.1, momentum=0.9).apply_gradients({"a": np.ones(3), "b": np.ones(2)}, {"a": np.ones(3), "b": np.ones(2)})
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        for p in params:
            p.grad = torch.ones_like(p)
        inertia.torch.SGD(params, lr=0.1, momentum=0.9).step()

    forms = [rule_used.lr_in_velocity for rule_used in calls]
    assert forms == [True, True, True, True, False, False, False, False]
    starts = [rule_used.buffer_starts_with_gradient for rule_used in calls[4:]]
    assert starts == [False, False, True, True]  # MLX from zero, torch from the gradient
