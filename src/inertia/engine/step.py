"""What a face's step is, as data: the description the engine runs.

A face never hands the engine code. It states its rule's form and precision
(:class:`StepDescription`, fixed per face) and, every step, the settings of each group of
tensors (:class:`GroupSettings`, read from the face's own hyperparameters). The reference
path and every fast path read the same description, so they run the same step.

Example (torch.optim.SGD's step, as the torch face describes it):
    >>> from inertia.engine.step import TORCH, GroupSettings
    >>> TORCH.form, TORCH.fused_multiply_add
    ('heavy_ball', True)
    >>> GroupSettings(learning_rate=0.1, momentum=0.9, nesterov=True).mode
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from inertia.rule import SGDRule

__all__ = ["StepDescription", "GroupSettings", "KERAS", "TF_KERAS", "TF_KERAS_LEGACY", "TORCH", "MLX"]

# The kernel's codes (``_sgd_core.h``): keep in step with its enums.
_FORMS = {"keras": 0, "heavy_ball": 1}
MODE_NONE, MODE_PLAIN, MODE_NESTEROV = 0, 1, 2
CLIPS_BY_NORM, CLIPS_BY_VALUE = 1, 2
GLOBAL_NONE, GLOBAL_KERAS, GLOBAL_RECIPROCAL_IN_DTYPE = 0, 1, 2


@dataclass(frozen=True)
class StepDescription:
    """A face's step, fixed for the face.

    Attributes:
        form: ``"keras"`` (lr inside the velocity, decoupled decay) or ``"heavy_ball"``
            (torch and MLX: lr outside the buffer, coupled L2 decay, dampening).
        fused_multiply_add: heavy-ball only: every ``y + a*x`` rounds once, as torch's
            ``add(alpha=)`` does (True), or twice, as MLX's ``y + a*x`` does (False).
        buffer_starts_with_gradient: heavy-ball only: a fresh buffer takes the gradient
            (torch), instead of decaying a zero buffer (MLX).
        hyperparameters_in_float32: the hyperparameters are float32 values cast to the
            variable's dtype (tf.keras legacy: momentum here; its learning rate arrives already
            in the dtype); otherwise they are rounded to the dtype once.
        value_clip_first: clipvalue and a norm clip combine, clipvalue first (tf.keras
            legacy); otherwise one clipping mode at most.
        global_reciprocal_in_dtype: the global norm clip's ``1/c`` is formed in the dtype
            (``tf.clip_by_global_norm``) instead of rounded once from double (Keras 3).
        ema_starts_at_build: tf.keras 2.11+'s moving average: each average starts as a copy
            of its variable when the optimizer is built, advances only for the variables of
            the step, with ``1 - m`` rounded from the Python float; the fast paths' EMA is
            Keras 3's (the first step copies), so they decline such a step when the EMA is on.

    The reference path reads the same description: :meth:`rule` is the
    :class:`inertia.rule.SGDRule` each face hands to ``sgd_update``.
    """

    form: str = "keras"
    fused_multiply_add: bool = False
    buffer_starts_with_gradient: bool = False
    hyperparameters_in_float32: bool = False
    value_clip_first: bool = False
    global_reciprocal_in_dtype: bool = False
    ema_starts_at_build: bool = False

    @property
    def global_clip_code(self) -> int:
        return GLOBAL_RECIPROCAL_IN_DTYPE if self.global_reciprocal_in_dtype else GLOBAL_KERAS

    def rule(self, nesterov: bool = False, maximize: bool = False) -> SGDRule:
        """The reference path's settings of the shared rule for this form."""
        return _rule(self.form, self.buffer_starts_with_gradient, bool(nesterov), bool(maximize))


@lru_cache(maxsize=None)
def _rule(form: str, buffer_starts_with_gradient: bool, nesterov: bool, maximize: bool) -> SGDRule:
    return SGDRule(
        nesterov=nesterov, lr_in_velocity=form == "keras", buffer_starts_with_gradient=buffer_starts_with_gradient,
        maximize=maximize,
    )


KERAS = StepDescription()
TF_KERAS = StepDescription(hyperparameters_in_float32=True, global_reciprocal_in_dtype=True, ema_starts_at_build=True)
TF_KERAS_LEGACY = StepDescription(hyperparameters_in_float32=True, value_clip_first=True, global_reciprocal_in_dtype=True)
TORCH = StepDescription(form="heavy_ball", fused_multiply_add=True, buffer_starts_with_gradient=True)
MLX = StepDescription(form="heavy_ball")


@dataclass(frozen=True)
class GroupSettings:
    """One group's settings for this step, as Python floats already rounded the way the face
    rounds them (the kernel casts each to the tensors' dtype once).

    ``momentum`` of 0 keeps no buffer (unless ``keeps_buffer`` says otherwise: Keras updates
    the slots it built whatever the momentum is now); ``weight_decay`` applies to the tensors
    flagged for decay;
    ``clipnorm`` / ``clipvalue`` of None do not clip.
    """

    learning_rate: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    maximize: bool = False
    clipnorm: Optional[float] = None
    clipvalue: Optional[float] = None
    keeps_buffer: Optional[bool] = None  # None: momentum != 0 (Keras: whether slots were built)

    @property
    def mode(self) -> int:
        keeps = self.momentum != 0 if self.keeps_buffer is None else self.keeps_buffer
        if not keeps:
            return MODE_NONE
        return MODE_NESTEROV if self.nesterov else MODE_PLAIN

    def row(self, description: StepDescription) -> tuple:
        """The kernel's row for this group (``GROUP_FIELDS`` float64 values, ``_kernels.c``),
        with the description's precision: momentum held in float32 where the face holds it so."""
        clip = (CLIPS_BY_NORM if self.clipnorm is not None else 0) | (CLIPS_BY_VALUE if self.clipvalue is not None else 0)
        if clip == CLIPS_BY_NORM | CLIPS_BY_VALUE and not description.value_clip_first:
            raise ValueError(
                f"clipnorm and clipvalue combine only in a face that clips by value first. Received: "
                f"clipnorm={self.clipnorm}, clipvalue={self.clipvalue}"
            )
        momentum = float(np.float32(self.momentum)) if description.hyperparameters_in_float32 else self.momentum
        return (
            self.learning_rate, momentum, self.weight_decay, 1.0 - self.dampening,
            self.clipnorm or 0.0, self.clipvalue or 0.0, _FORMS[description.form], self.mode,
            int(description.fused_multiply_add), int(self.maximize), clip,
        )
