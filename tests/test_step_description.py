"""What a face's step is, as data (``inertia.engine.step``): the descriptions of the four
faces, the rule each gives the reference path, and the kernel rows of their groups."""

from __future__ import annotations

import numpy as np
import pytest

from inertia.engine.step import KERAS, MLX, TF_KERAS_LEGACY, TORCH, GroupSettings

FORM, MODE, FUSED, CLIP = 6, 7, 8, 10  # columns of a kernel row (``_kernels.c``, read_groups)


@pytest.mark.parametrize(
    "description, in_velocity, starts_with_gradient",
    [(KERAS, True, False), (TF_KERAS_LEGACY, True, False), (TORCH, False, True), (MLX, False, False)],
    ids=["keras", "legacy", "torch", "mlx"],
)
def test_each_face_gives_the_reference_path_its_rule(description, in_velocity, starts_with_gradient):
    rule = description.rule(nesterov=True, maximize=True)
    assert (rule.lr_in_velocity, rule.buffer_starts_with_gradient, rule.nesterov, rule.maximize) == (
        in_velocity, starts_with_gradient, True, True,
    )
    assert description.rule() is description.rule()  # one object per setting


def test_rows_carry_each_faces_precision_and_form():
    group = GroupSettings(learning_rate=0.1, momentum=0.9, dampening=0.25, nesterov=True)
    keras, legacy, torch, mlx = (group.row(d) for d in (KERAS, TF_KERAS_LEGACY, TORCH, MLX))
    assert keras[1] == 0.9 and legacy[1] == float(np.float32(0.9)) != 0.9  # tf.keras holds momentum in float32
    assert keras[3] == 0.75  # 1 - dampening, formed in double
    assert (keras[FORM], torch[FORM], mlx[FORM]) == (0, 1, 1)
    assert (torch[FUSED], mlx[FUSED]) == (1, 0)  # add(alpha=) rounds once; MLX's y + a*x twice
    assert keras[MODE] == 2 and GroupSettings(learning_rate=0.1).row(KERAS)[MODE] == 0
    # Keras updates the slots it built, whatever the momentum is now.
    assert GroupSettings(learning_rate=0.1, momentum=0.0, keeps_buffer=True).row(KERAS)[MODE] == 1


def test_clipvalue_and_a_norm_clip_combine_only_where_the_face_orders_them():
    both = GroupSettings(learning_rate=0.1, clipnorm=1.0, clipvalue=0.5)
    assert both.row(TF_KERAS_LEGACY)[CLIP] == 3
    with pytest.raises(ValueError, match=r"clipnorm=1.0, clipvalue=0.5"):
        both.row(KERAS)
