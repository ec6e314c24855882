"""Variational information distillation: a Gaussian likelihood of the teacher feature given the student's.

Per pair j: mu = r_j(f_s) with r_j = 1x1 conv (C_s -> C_m), ReLU, 1x1 conv (C_m -> C_m), ReLU, 1x1 conv
(C_m -> C_t), no biases, no BN; sigma^2_c = softplus(alpha_c) + eps per teacher channel, alpha initialised to
log(exp(init_pred_var - eps) - 1) so that sigma^2 starts at ``init_pred_var``;
L = sum_j w_j * mean_{b,c,h,w} 1/2 [(mu - f_t)^2 / sigma^2 + log sigma^2].

Follows RepDistiller's ``VIDLoss`` (taken from the authors' code): C_m = C_t by default (``mid_channels``),
the spatially larger map is adaptive-average-pooled to the smaller one, init_pred_var 5.0, eps 1e-5, taps
f1, f2, f3, method weight 1 with CE 1. torchdistill ``VIDLoss`` + ``Regressor4VID`` is the same with pair
weights w_j (``weights``) and equal shapes. alpha is a trained parameter (RepDistiller, torchdistill; mdistiller
never optimises it, a bug not reproduced). (B, D) features are treated as (B, D, 1, 1) maps.

Paper: Variational Information Distillation for Knowledge Transfer, CVPR 2019, arXiv:1904.05835; code:
https://github.com/ssahn0215/variational-information-distillation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import CLASSIFICATION_TASKS, FeaturePairs, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.features.adapters import match_spatial


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(B, D) vectors as (B, D, 1, 1) maps, so 1x1-conv adapters also apply to pooled features."""
    return x[:, :, None, None] if x.dim() == 2 else x


def vid_nll(mean: torch.Tensor, var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood without the 1/2 log 2 pi constant: mean of 1/2 [(mu - t)^2 / var + log var]
    (torchdistill ``VIDLoss`` for one pair, given (mu, var))."""
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=False)


@register_method(
    "vid",
    family="features",
    paper="Variational Information Distillation for Knowledge Transfer",
    year=2019,
    arxiv="1904.05835",
    venue="CVPR",
    repo="https://github.com/ssahn0215/variational-information-distillation",
    aliases=("variational_information_distillation",),
)
class VID(FeaturePairs):
    """Variational information distillation: a Gaussian likelihood of the teacher feature given the student's."""

    tasks = CLASSIFICATION_TASKS

    method_name = "vid"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        mid_channels: int | None = None,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.tap_pairs(student, teacher, weights, ["f1", "f2", "f3"])
        if init_pred_var <= eps:
            raise ValueError(f"vid: init_pred_var must exceed eps, got {init_pred_var} <= {eps}")
        if mid_channels is not None and mid_channels <= 0:
            raise ValueError(f"vid: mid_channels must be positive, got {mid_channels}")
        self.mid_channels = mid_channels
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.regressors = nn.ModuleList()
        self.alphas = nn.ParameterList()

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        teacher = self.setup_teacher(teacher)
        self.regressors = nn.ModuleList()
        self.alphas = nn.ParameterList()
        alpha0 = math.log(math.expm1(self.init_pred_var - self.eps))
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s, t = student.feature(s_name), teacher.feature(t_name)
            cs, ct = s.shape[1], t.shape[1]
            cm = self.mid_channels or ct
            reg = nn.Sequential(_conv1x1(cs, cm), nn.ReLU(), _conv1x1(cm, cm), nn.ReLU(), _conv1x1(cm, ct))
            self.regressors.append(reg.to(s.device))
            self.alphas.append(nn.Parameter(torch.full((ct,), alpha0, device=s.device)))

    def variance(self, j: int) -> torch.Tensor:
        """sigma^2 of pair j, shaped (1, C_t, 1, 1)."""
        return (F.softplus(self.alphas[j]) + self.eps).view(1, -1, 1, 1)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if len(self.regressors) != len(self.student_features):
            raise RuntimeError("VID.setup() must run before the first step (the trainer does this)")
        teacher = require_teacher(inputs, "vid")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for j, (s_name, t_name, w) in enumerate(zip(self.student_features, self.teacher_features,
                                                    self.pair_weights)):
            fs = _as_map(inputs.student.feature(s_name).float())
            ft = _as_map(teacher.feature(t_name).float())
            fs, ft = match_spatial(fs, ft)
            total = total + w * vid_nll(self.regressors[j](fs).float(), self.variance(j), ft)
        return {"loss": total}
