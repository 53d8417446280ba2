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
from typing import Optional

__all__ = ["StepDescription", "GroupSettings", "KERAS", "TF_KERAS_LEGACY", "TORCH", "MLX"]

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
            variable's dtype (tf.keras legacy); otherwise they are rounded to the dtype once.
        value_clip_first: clipvalue and a norm clip combine, clipvalue first (tf.keras
            legacy); otherwise one clipping mode at most.
        global_reciprocal_in_dtype: the global norm clip's ``1/c`` is formed in the dtype
            (``tf.clip_by_global_norm``) instead of rounded once from double (Keras 3).
        fresh_average_copies: an EMA average is created as a copy of the weights after the
            first update (the torch face); otherwise it starts at zero with an EMA momentum of
            0 on the first step (Keras: the same value except for the sign of a zero).
    """

    form: str = "keras"
    fused_multiply_add: bool = False
    buffer_starts_with_gradient: bool = False
    hyperparameters_in_float32: bool = False
    value_clip_first: bool = False
    global_reciprocal_in_dtype: bool = False
    fresh_average_copies: bool = False

    @property
    def global_clip_code(self) -> int:
        return GLOBAL_RECIPROCAL_IN_DTYPE if self.global_reciprocal_in_dtype else GLOBAL_KERAS


KERAS = StepDescription()
TF_KERAS_LEGACY = StepDescription(hyperparameters_in_float32=True, value_clip_first=True, global_reciprocal_in_dtype=True)
TORCH = StepDescription(form="heavy_ball", fused_multiply_add=True, buffer_starts_with_gradient=True, fresh_average_copies=True)
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
        """The kernel's row for this group (``GROUP_FIELDS`` float64 values, ``_kernels.c``)."""
        clip = (CLIPS_BY_NORM if self.clipnorm is not None else 0) | (CLIPS_BY_VALUE if self.clipvalue is not None else 0)
        return (
            self.learning_rate, self.momentum, self.weight_decay, 1.0 - self.dampening,
            self.clipnorm or 0.0, self.clipvalue or 0.0, _FORMS[description.form], self.mode,
            int(description.fused_multiply_add), int(self.maximize), clip,
        )
