"""Each gradient stage alone, on NumPy, against hand-computed numbers."""

import numpy as np
import pytest

from inertia import backend as backends
from inertia import pipeline

ops = backends.get("numpy")


def f32(x):
    return np.asarray(x, dtype=np.float32)


def test_unscale_divides_in_the_gradient_dtype():
    out = pipeline.unscale(ops, f32([2.0, 4.0]), 4.0)
    assert out.dtype == np.float32 and out.tolist() == [0.5, 1.0]


def test_accumulated_mean():
    np.testing.assert_array_equal(pipeline.accumulated_mean(ops, f32([3.0]), f32([5.0]), 2), f32([4.0]))
    np.testing.assert_array_equal(pipeline.accumulate(f32([1.0]), f32([2.0])), f32([3.0]))


def test_clip_by_norm_scales_only_large_tensors():
    np.testing.assert_allclose(pipeline.clip_by_norm(ops, f32([3.0, 4.0]), 1.0), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(pipeline.clip_by_norm(ops, f32([0.3, 0.4]), 1.0), [0.3, 0.4], rtol=1e-6)


def test_clip_by_norm_of_zeros_is_zero_not_nan():
    np.testing.assert_array_equal(pipeline.clip_by_norm(ops, f32([0.0, 0.0]), 1.0), f32([0.0, 0.0]))


def test_clip_by_norm_matches_keras_rounding():
    np.testing.assert_array_equal(pipeline.clip_by_norm(ops, f32([100, 100]), 1.0), f32([0.70710677, 0.70710677]))


def test_clip_by_global_norm():
    a, b = pipeline.clip_by_global_norm(ops, [f32([3.0]), f32([4.0])], 1.0)
    np.testing.assert_allclose([a[0], b[0]], [0.6, 0.8], rtol=1e-6)
    a, b = pipeline.clip_by_global_norm(ops, [f32([0.3]), f32([0.4])], 1.0)
    np.testing.assert_array_equal([a[0], b[0]], f32([0.3, 0.4]))  # norm <= c: unchanged
    with np.errstate(all="ignore"):
        (c,) = pipeline.clip_by_global_norm(ops, [f32([np.inf, 1.0])], 1.0)
    assert np.isnan(c).all()


def test_clip_by_value():
    np.testing.assert_array_equal(pipeline.clip_by_value(ops, f32([-2, 0.2, 3]), 0.5), f32([-0.5, 0.2, 0.5]))


@pytest.mark.parametrize(
    "settings, expected",
    [
        ((1.0, None, None), [0.6, 0.8]),
        ((None, 1.0, None), [0.6, 0.8]),
        ((None, None, 1.0), [1.0, 1.0]),
        ((0.0, None, None), [3.0, 4.0]),  # zero and negative thresholds mean "no clipping"
        ((None, None, -1.0), [3.0, 4.0]),
        ((None, None, None), [3.0, 4.0]),
    ],
)
def test_clip_picks_one_mode(settings, expected):
    (out,) = pipeline.clip(ops, [f32([3.0, 4.0])], *settings)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_decoupled_weight_decay():
    assert float(pipeline.decoupled_weight_decay(ops, f32(2.0), 0.004, f32(1.0))) == 1.9919999837875366


def test_ema_first_step_copies_then_averages():
    assert float(pipeline.ema_update(ops, f32(0.0), f32(2.0), 0.9, first=True)) == 2.0
    assert float(pipeline.ema_update(ops, f32(2.0), f32(1.0), 0.9, first=False)) == pytest.approx(1.9)
