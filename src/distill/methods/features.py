"""Losses on intermediate features: FitNet hints and attention transfer."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher


def conv_regressor(s_shape: torch.Size, t_shape: torch.Size, relu: bool = True) -> nn.Module:
    """FitNet's regressor from a student map (C_s, H_s, W_s) to a teacher map (C_t, H_t, W_t).

    The rule of RepDistiller/mdistiller's ``ConvReg``, chosen by the spatial sizes:
    H_s = 2 H_t: 3x3 conv, stride 2, padding 1; 2 H_s = H_t: 4x4 transposed conv, stride 2, padding 1;
    H_s >= H_t: a conv with kernel (1 + H_s - H_t, 1 + W_s - W_t) (1x1 for equal sizes). Then BatchNorm(C_t)
    and, by default, ReLU (the hint is a post-ReLU map). For non-spatial features (B, ..., D) a linear map.
    """
    if len(s_shape) != len(t_shape):
        raise ValueError(f"student feature {tuple(s_shape)} and teacher feature {tuple(t_shape)} differ in rank")
    if len(s_shape) != 4:
        return nn.Linear(s_shape[-1], t_shape[-1])
    _, cs, hs, ws = s_shape
    _, ct, ht, wt = t_shape
    if hs == 2 * ht:
        conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    elif 2 * hs == ht:
        conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    elif hs >= ht:
        conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
    else:
        raise ValueError(f"no FitNet regressor maps spatial size {hs}x{ws} to {ht}x{wt}")
    layers = [conv, nn.BatchNorm2d(ct)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@register_method(
    "fitnet",
    family="features",
    paper="FitNets: Hints for Thin Deep Nets",
    year=2015,
    arxiv="1412.6550",
    venue="ICLR",
    aliases=("hint",),
)
class FitNet(Method):
    """FitNet hint loss: L = MSE(r(f_s), f_t), with r a learned regressor and f_t constant.

    ``reduction="mean"`` divides the squared error by B*C*H*W (RepDistiller/mdistiller, weight 100 on
    CIFAR); ``"sum"`` is torchdistill's stage-1 form. The regressor (see :func:`conv_regressor`) is built
    from the feature shapes at set-up and trained with the student. Default taps: ``f2`` for both models
    (RepDistiller's hint layer 2, the output of the second stage).
    """

    def __init__(
        self,
        student: str = "f2",
        teacher: str = "f2",
        reduction: Literal["mean", "sum"] = "mean",
        relu: bool = True,
    ):
        super().__init__()
        self.student_feature = student
        self.teacher_feature = teacher
        self.reduction = reduction
        self.relu = relu
        self.regressor: nn.Module | None = None

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        if teacher is None:
            raise ValueError("method 'fitnet' needs a teacher, but none is configured")
        s = student.feature(self.student_feature)
        t = teacher.feature(self.teacher_feature)
        self.regressor = conv_regressor(s.shape, t.shape, relu=self.relu).to(s.device)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.regressor is None:
            raise RuntimeError("FitNet.setup() must run before the first step (the trainer does this)")
        s = inputs.student.feature(self.student_feature)
        t = require_teacher(inputs, "fitnet").feature(self.teacher_feature)
        return {"loss": F.mse_loss(self.regressor(s).float(), t.float(), reduction=self.reduction)}


def attention_map(feature: torch.Tensor, p: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """Q(A) = v / ||v||_2 with v = vec_{HW}(mean_c A_c^p), for A of shape (B, C, H, W)."""
    return F.normalize(feature.float().pow(p).mean(1).flatten(1), dim=1, eps=eps)


@register_method(
    "at",
    family="features",
    paper="Paying More Attention to Attention: Improving the Performance of Convolutional Neural "
    "Networks via Attention Transfer",
    year=2017,
    arxiv="1612.03928",
    venue="ICLR",
    repo="https://github.com/szagoruyko/attention-transfer",
    aliases=("attention_transfer",),
)
class AttentionTransfer(Method):
    """Attention transfer over feature pairs j with weights w_j.

    ``mode="code"`` (the official code, torchdistill's default, mdistiller, RepDistiller):
    L = sum_j w_j * mean_{b,hw} (Q_s,b - Q_t,b)^2. ``mode="paper"``: L = (1/B) sum_j w_j sum_b ||Q_s,b - Q_t,b||_2.
    Q is :func:`attention_map`. When the spatial sizes differ, the larger map is adaptive-average-pooled to
    the smaller (RepDistiller/mdistiller); equal sizes are untouched. CIFAR default: taps f1, f2, f3 and a
    method weight of 1000.
    """

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        p: float = 2.0,
        mode: Literal["code", "paper"] = "code",
    ):
        super().__init__()
        self.student_features = list(student or ["f1", "f2", "f3"])
        self.teacher_features = list(teacher or self.student_features)
        if len(self.student_features) != len(self.teacher_features):
            raise ValueError("at: student and teacher feature lists must have the same length")
        self.pair_weights = list(weights or [1.0] * len(self.student_features))
        if len(self.pair_weights) != len(self.student_features):
            raise ValueError("at: one weight per feature pair is needed")
        self.p = float(p)
        self.mode = mode

    def student_taps(self) -> list[str]:
        return self.student_features

    def teacher_taps(self) -> list[str]:
        return self.teacher_features

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "at")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s_name, t_name, w in zip(self.student_features, self.teacher_features, self.pair_weights):
            fs, ft = inputs.student.feature(s_name), teacher.feature(t_name)
            hs, ht = fs.shape[-2], ft.shape[-2]
            if hs > ht:
                fs = F.adaptive_avg_pool2d(fs, ft.shape[-2:])
            elif ht > hs:
                ft = F.adaptive_avg_pool2d(ft, fs.shape[-2:])
            qs, qt = attention_map(fs, self.p), attention_map(ft, self.p)
            if self.mode == "code":
                total = total + w * (qs - qt).pow(2).mean()
            else:
                total = total + w * (qs - qt).norm(dim=1).sum() / fs.shape[0]
        return {"loss": total}
