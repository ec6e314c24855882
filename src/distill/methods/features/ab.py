"""Activation-boundary transfer: a margin hinge that teaches the student which neurons are on or off.

With s = connector_k(student pre-ReLU map k), t = teacher pre-ReLU map k and margin m, per element
l = (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0], and
L = scale * sum_k w_k * sum(l_k) / B   (``reduction="mean"``; ``"sum"`` omits the /B).

Defaults follow the official code and RepDistiller's ``ABLoss``: taps f1_pre, f2_pre, f3_pre (pre-ReLU),
w_k = 2^(k - n + 1) (1/4, 1/2, 1 for three pairs), scale 3/1000, m = 1. torchdistill's ``AltActTransferLoss``
with pair weights v_k and ``reduction`` equals ``weights=v, scale=1``. Connectors: see :func:`ab_connector`
(``connector="repdistiller"`` default, ``"official"``).

Schedule: the loss is the initialisation stage (RepDistiller ``init_epochs`` 30, training the student's feature
layers and the connectors); the main stage then runs the rest of the composition (RepDistiller: CE only; the
official code: KD with T = 3) and AB adds nothing. ``main_stage`` keeps the loss on in the main stage too; by
default it is on only when ``init_epochs`` is 0 (torchdistill-style use as an ordinary loss).

Paper: Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, AAAI 2019,
arXiv:1811.03233; code: https://github.com/bhheo/AB_distillation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from distill.core.method import IMAGE_TASKS, FeaturePairs, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.features.adapters import conv_regressor
from distill.methods.features.stages import check_stage_options


def ab_hinge(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Sum over all elements of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]."""
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


def ab_connector(s_shape: torch.Size, t_shape: torch.Size, style: str = "repdistiller") -> nn.Module:
    """Connector from a student pre-activation map to the teacher's.

    ``repdistiller``: identity when channels and height match, else FitNet's conv regressor + BN without ReLU
    (:func:`~distill.methods.features.adapters.conv_regressor`). ``official`` (bhheo/AB_distillation): identity when the
    channels match, else a bias-free 1x1 conv (weights N(0, 2 / (k^2 C_out))) + BN (weight 1, bias 0).
    """
    if len(s_shape) != 4 or len(t_shape) != 4:
        raise ValueError(f"ab needs (B, C, H, W) maps, got {tuple(s_shape)} and {tuple(t_shape)}")
    if style == "repdistiller":
        if s_shape[1] == t_shape[1] and s_shape[2] == t_shape[2]:
            return nn.Identity()
        return conv_regressor(s_shape, t_shape, relu=False)
    if s_shape[2:] != t_shape[2:]:
        raise ValueError(f"ab: the official 1x1 connector needs equal spatial sizes, got {tuple(s_shape[2:])} "
                         f"and {tuple(t_shape[2:])}; use connector: repdistiller")
    if s_shape[1] == t_shape[1]:
        return nn.Identity()
    conv = nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(t_shape[1]))


@register_method(
    "ab",
    family="features",
    paper="Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons",
    year=2019,
    arxiv="1811.03233",
    venue="AAAI",
    repo="https://github.com/bhheo/AB_distillation",
    aliases=("activation_boundaries",),
)
class ActivationBoundaries(FeaturePairs):
    """Activation-boundary transfer: a margin hinge that teaches the student which neurons are on or off."""

    tasks = IMAGE_TASKS

    method_name = "ab"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        margin: float = 1.0,
        scale: float = 0.003,
        reduction: Literal["mean", "sum"] = "mean",
        connector: Literal["repdistiller", "official"] = "repdistiller",
        init_epochs: int = 30,
        main_stage: bool | None = None,
    ):
        super().__init__()
        s = list(student or ["f1_pre", "f2_pre", "f3_pre"])
        n = len(s)
        default_w = [2.0 ** (k - n + 1) for k in range(n)]
        self.tap_pairs(s, teacher, weights or default_w, s)
        if margin < 0:
            raise ValueError(f"ab: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.scale = float(scale)
        self.reduction = reduction
        self.connector_style = connector
        self.init_epochs = int(init_epochs)
        self.main_stage = check_stage_options("ab", self.init_epochs, main_stage)
        self.connectors = nn.ModuleList()

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        teacher = self.setup_teacher(teacher)
        self.connectors = nn.ModuleList()
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s, t = student.feature(s_name), teacher.feature(t_name)
            self.connectors.append(ab_connector(s.shape, t.shape, self.connector_style).to(s.device))

    def ab_loss(self, inputs: StepInputs) -> torch.Tensor:
        if len(self.connectors) != len(self.student_features):
            raise RuntimeError("ActivationBoundaries.setup() must run before the first step (the trainer does this)")
        teacher = require_teacher(inputs, "ab")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        batch = None
        for k, (s_name, t_name, w) in enumerate(zip(self.student_features, self.teacher_features,
                                                    self.pair_weights)):
            fs = inputs.student.feature(s_name)
            ft = teacher.feature(t_name).float()
            batch = batch or fs.shape[0]
            total = total + w * ab_hinge(self.connectors[k](fs).float(), ft, self.margin)
        if self.reduction == "mean":
            total = total / batch
        return self.scale * total

    def init_loss(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {"loss": self.ab_loss(inputs)}

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if not self.main_stage:
            return {}  # connectors are discarded after the initialisation stage (official, RepDistiller)
        return {"loss": self.ab_loss(inputs)}
