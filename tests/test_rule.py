"""The SGD rule alone: both forms, hand-computed, and their documented divergence."""

import numpy as np
import pytest

from inertia.rule import KERAS, SGDRule, sgd_update

f = np.float64


def run(rule, grads, lrs, momentum=0.9, w=1.0, dampening=0.0, wd=None):
    # torch's buffer starts as None (its first step); Keras' and MLX's as zeros.
    w, b = f(w), (None if momentum is None or rule.buffer_starts_with_gradient else f(0.0))
    trajectory = []
    for g, lr in zip(grads, lrs):
        w, b = sgd_update(rule, w, f(g), b, f(lr), None if momentum is None else f(momentum),
                          None if wd is None else f(wd), dampening)
        trajectory.append((float(w), None if b is None else float(b)))
    return trajectory


def test_keras_form_by_hand():
    (w1, v1), (w2, v2) = run(KERAS, [1.0, 0.5], [0.1, 0.1])
    assert (w1, v1) == (0.9, -0.1)
    assert v2 == pytest.approx(0.9 * -0.1 - 0.1 * 0.5) and w2 == pytest.approx(0.9 + v2)


def test_keras_nesterov_uses_new_velocity():
    (w1, v1), = run(SGDRule(nesterov=True), [1.0], [0.1])
    assert v1 == -0.1 and w1 == pytest.approx(1.0 + (0.9 * -0.1 - 0.1))


def test_plain_sgd_without_buffer():
    (w1, b1), = run(KERAS, [2.0], [0.25], momentum=None)
    assert (w1, b1) == (0.5, None)
    (w1, b1), = run(SGDRule(lr_in_velocity=False), [2.0], [0.25], momentum=None, wd=0.5)
    assert (w1, b1) == (1.0 - 0.25 * (2.0 + 0.5 * 1.0), None)  # L2 folds into the gradient


TORCH = SGDRule(lr_in_velocity=False, buffer_starts_with_gradient=True)
MLX = SGDRule(lr_in_velocity=False)


def test_torch_buffer_starts_as_gradient_and_dampening_waits_for_step_two():
    (w1, b1), (w2, b2) = run(TORCH, [2.0, 4.0], [0.1, 0.1], dampening=0.5)
    assert b1 == 2.0 and w1 == pytest.approx(1.0 - 0.2)
    assert b2 == pytest.approx(0.9 * 2.0 + 0.5 * 4.0) and w2 == pytest.approx(w1 - 0.1 * b2)


def test_mlx_buffer_starts_at_zero_and_dampening_applies_at_once():
    (w1, b1), = run(MLX, [2.0], [0.1], dampening=0.5)
    assert b1 == pytest.approx(0.5 * 2.0) and w1 == pytest.approx(1.0 - 0.1)


def test_heavy_ball_nesterov_and_maximize():
    (w1, b1), = run(SGDRule(lr_in_velocity=False, buffer_starts_with_gradient=True, nesterov=True), [2.0], [0.1])
    assert b1 == 2.0 and w1 == pytest.approx(1.0 - 0.1 * (2.0 + 0.9 * 2.0))
    (w1, _), = run(SGDRule(lr_in_velocity=False, buffer_starts_with_gradient=True, maximize=True), [2.0], [0.1])
    assert w1 == pytest.approx(1.2)


def test_forms_agree_with_constant_rate_and_diverge_when_it_changes():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=12)
    constant = [0.05] * 12
    keras = [w for w, _ in run(KERAS, grads, constant)]
    heavy = [w for w, _ in run(MLX, grads, constant)]
    np.testing.assert_allclose(keras, heavy, rtol=1e-12)
    changing = [0.05] * 6 + [0.5] * 6
    keras = [w for w, _ in run(KERAS, grads, changing)]
    heavy = [w for w, _ in run(MLX, grads, changing)]
    np.testing.assert_allclose(keras[:6], heavy[:6], rtol=1e-12)
    # Keras' velocity still carries the old rate after the change; heavy-ball rescales it.
    step7_keras = keras[6] - keras[5]
    step7_heavy = heavy[6] - heavy[5]
    assert abs(step7_keras - step7_heavy) > 1e-3


def test_add_scaled_carries_every_scaled_sum_of_the_heavy_ball_form():
    calls = []

    def add_scaled(y, x, alpha):
        calls.append(alpha)
        return y + alpha * x

    rule = SGDRule(lr_in_velocity=False, buffer_starts_with_gradient=True, nesterov=True)
    w, b = sgd_update(rule, f(1.0), f(2.0), f(0.5), f(0.1), f(0.9), f(0.01), 0.25, add_scaled=add_scaled)
    # decay, buffer (alpha 1 - dampening formed in double), Nesterov direction, weight
    assert calls == [f(0.01), 0.75, f(0.9), -f(0.1)]
    g = 2.0 + 0.01 * 1.0
    assert b == pytest.approx(0.9 * 0.5 + 0.75 * g) and w == pytest.approx(1.0 - 0.1 * (g + 0.9 * b))


def test_a_missing_mlx_buffer_counts_as_zeros():
    w, b = sgd_update(MLX, f(1.0), f(2.0), None, f(0.1), f(0.9), None, 0.5)
    assert (float(w), float(b)) == (1.0 - 0.1 * 1.0, 1.0)
