"""Attention transfer over feature pairs j with weights w_j.

``mode="code"`` (the official code, torchdistill's default, mdistiller, RepDistiller):
L = sum_j w_j * mean_{b,hw} (Q_s,b - Q_t,b)^2. ``mode="paper"``: L = (1/B) sum_j w_j sum_b ||Q_s,b - Q_t,b||_2.
Q is :func:`attention_map`. When the spatial sizes differ, the larger map is adaptive-average-pooled to
the smaller (RepDistiller/mdistiller); equal sizes are untouched. CIFAR default: taps f1, f2, f3 and a
method weight of 1000.

Paper: Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks via Attention
Transfer, ICLR 2017, arXiv:1612.03928; code: https://github.com/szagoruyko/attention-transfer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import IMAGE_TASKS, FeaturePairs, register_method
from distill.core.outputs import StepInputs, require_teacher


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
class AttentionTransfer(FeaturePairs):
    """Attention transfer over feature pairs j with weights w_j."""

    tasks = IMAGE_TASKS

    method_name = "at"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        p: float = 2.0,
        mode: Literal["code", "paper"] = "code",
    ):
        super().__init__()
        self.tap_pairs(student, teacher, weights, ["f1", "f2", "f3"])
        self.p = float(p)
        self.mode = mode

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
