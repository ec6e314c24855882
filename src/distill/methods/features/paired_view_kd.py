"""Paired-view distillation (exo -> ego synchronisation).

Paper: Quattrocchi et al., "Synchronization is All You Need: Exocentric-to-Egocentric Transfer for Temporal Action
Segmentation with Unlabeled Synchronized Video Pairs", ECCV 2024, arXiv:2312.02638; code
github.com/fpv-iplab/synchronization-is-all-you-need (``main_distillation.py``, ``transformer_and_distillation.py``).
Re-implemented from ../shared/methods/dense.md row 7.

A frozen teacher trained on the labelled "exo" view runs on the exo member of each synchronised pair; the student,
usually initialised from the teacher, runs on the "ego" member, and learns to reproduce the teacher's outputs at the
same instant, with no ego label (``task: paired_views`` hides the labels):

    L = sum_k w_k mean( (f_S(x^ego)_k - f_T(x^exo)_k)^2 )

over a list of matched named outputs k (the paper: the C2F-TCN side outputs y5, y4, y3, y2, not the final output
nor y1, each weight 1, no CE and no smoothing term; here any taps, and ``logits`` names the final output). The teacher
is detached. The feature-level variant (a residual adapter in front of the frozen exo model's later stages,
MSE(g(x^ego) + x^ego, x^exo)) is this loss on the adapted tap of a student with ``student.adapter``
(:mod:`distill.models.paired_view_adapter`; recipe ``configs/paired_views/adapter.yaml``).
"""

from __future__ import annotations

import torch

from distill.core.method import FeaturePairs, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher

LOGITS = "logits"


def output_of(out: ModelOutput, name: str) -> torch.Tensor:
    """The named feature, or the model's final output for ``logits``."""
    return out.logits if name == LOGITS else out.feature(name)


@register_method(
    "paired_view_kd",
    family="features",
    paper="Synchronization is All You Need: Exocentric-to-Egocentric Transfer for Temporal Action Segmentation "
          "with Unlabeled Synchronized Video Pairs",
    year=2024,
    arxiv="2312.02638",
    venue="ECCV",
    repo="https://github.com/fpv-iplab/synchronization-is-all-you-need",
    aliases=("exo_ego",),
)
class PairedViewKD(FeaturePairs):
    """Weighted sum of per-output MSEs between the student on its view and the frozen teacher on the other."""

    tasks = frozenset({"paired_views"})
    method_name = "paired_view_kd"

    def __init__(self, student: list[str] | None = None, teacher: list[str] | None = None,
                 weights: list[float] | None = None):
        super().__init__()
        self.tap_pairs(student, teacher, weights, default=["f1", "f2", "f3"])

    def student_taps(self) -> list[str]:
        return [n for n in self.student_features if n != LOGITS]

    def teacher_taps(self) -> list[str]:
        return [n for n in self.teacher_features if n != LOGITS]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        t = self.setup_teacher(teacher)
        for s_name, t_name in zip(self.student_features, self.teacher_features, strict=True):
            s, tt = output_of(student, s_name), output_of(t, t_name)
            if s.shape[1:] != tt.shape[1:]:
                raise ValueError(f"paired_view_kd: student {s_name} {tuple(s.shape)} and teacher {t_name} "
                                 f"{tuple(tt.shape)} differ in shape (the method has no projector)")

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        t_out = require_teacher(inputs, self.method_name)
        total = torch.zeros((), device=inputs.student.logits.device)
        for s_name, t_name, w in zip(self.student_features, self.teacher_features, self.pair_weights, strict=True):
            s, t = output_of(inputs.student, s_name), output_of(t_out, t_name).detach()
            total = total + w * (s.float() - t.float()).pow(2).mean()
        return {"loss": total}
