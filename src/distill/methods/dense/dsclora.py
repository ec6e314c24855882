"""DSCLoRA: distillation-supervised ConvLoRA for efficient super-resolution.

    L = lambda1 * mean|SR_S - HR| + lambda2 * mean|SR_S - SR_T| + lambda3 * sum_l mean_{b,n,n'} |A^S_l - A^T_l|

with A_l the spatial affinity of the l-th tapped feature map (FAKD, :mod:`distill.methods.dense.affinity`):
positions normalised over channels, A = F^T F^ (B x HW x HW). The student is a pretrained SPAN whose selected
convolutions are wrapped in ConvLoRA (``student.conv_lora``: frozen W, trainable A and B, dW = reshape(B A) alpha / r,
merged into W at inference, so the deployed model has the base's parameters and cost;
:mod:`distill.models.conv_lora`). Only the LoRA factors train; the teacher (a larger pretrained SPAN, or the base
itself) is frozen.

Paper: Chai et al., "Distillation-Supervised Convolutional Low-Rank Adaptation for Efficient Image
Super-Resolution", CVPR Workshops (NTIRE 2025 ESR), arXiv:2504.11271. Code: github.com/Yaozzz666/DSCF-SR holds
inference code only (``models/team23_DSCF.py``): the LoRA placement below (``conv_2`` and ``upsampler.0`` at r = 8,
alpha = 16; every SPAB convolution at r = 2, alpha = 4) is its commented-out configuration (unverified as the final
choice). **Reconstructed (R):** the weights lambda1 = lambda2 = 0.5, lambda3 = 10 and three intermediate feature maps
are FAKD's official values (``code/scripts/train_edsr_SA_x2.sh``: alpha = 0.5 between ground truth and teacher,
feature-affinity weight 10), not published for DSCLoRA; the tapped maps default to the outputs of blocks 1-3 (the
DSCF file's commented feature list hooks convolutions inside blocks 1-3).
"""

from __future__ import annotations

from typing import Any

import torch

from distill.core.method import TapMethod, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_labels, require_teacher
from distill.methods.dense.affinity import affinity_distance

#: ConvLoRA placement of DSCF (``models/team23_DSCF.py``, commented configuration) for a 6-block SPAN
DSCF_TARGETS: dict[str, tuple[int, float]] = {
    "conv_2": (8, 16.0), "upsampler.0": (8, 16.0),
    **{f"blocks.{i}.c{j}_r": (2, 4.0) for i in range(6) for j in (1, 2, 3)},
}


@register_method(
    "dsclora",
    family="dense",
    paper="Distillation-Supervised Convolutional Low-Rank Adaptation for Efficient Image Super-Resolution",
    year=2025,
    arxiv="2504.11271",
    venue="CVPR Workshops (NTIRE 2025)",
    repo="https://github.com/Yaozzz666/DSCF-SR",
)
class DSCLoRA(TapMethod):
    """DSCLoRA: L = l1 |SR_S - HR| + l2 |SR_S - SR_T| + l3 sum_l |A^S_l - A^T_l| over ConvLoRA students."""

    tasks = frozenset({"super_resolution"})
    needs_teacher = True
    needs_labels = True
    method_name = "dsclora"

    @classmethod
    def check_experiment(cls, cfg: Any, index: int) -> None:
        """DSCLoRA trains ConvLoRA factors: the student must have ``student.conv_lora`` unless the method is told
        otherwise (``require_conv_lora: false``, e.g. for a full fine-tune under the same loss)."""
        opts = cfg.methods[index].options()
        if opts.get("require_conv_lora", True) and not getattr(cfg.student, "conv_lora", None):
            raise ValueError(f"student.conv_lora: method {cfg.methods[index].name!r} trains ConvLoRA factors; give "
                             "the convolutions to wrap (e.g. conv_2: {rank: 8, alpha: 16}) or set the method's "
                             "require_conv_lora: false")

    def __init__(self, lambda_gt: float = 0.5, lambda_teacher: float = 0.5, lambda_affinity: float = 10.0,
                 student: list[str] | None = None, teacher: list[str] | None = None,
                 require_conv_lora: bool = True):
        super().__init__()
        for name, v in (("lambda_gt", lambda_gt), ("lambda_teacher", lambda_teacher),
                        ("lambda_affinity", lambda_affinity)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.lambda_gt, self.lambda_teacher, self.lambda_affinity = map(float, (lambda_gt, lambda_teacher,
                                                                             lambda_affinity))
        s = list(student if student is not None else ["b1", "b2", "b3"])
        t = list(teacher if teacher is not None else s)
        if len(s) != len(t):
            raise ValueError("dsclora: student and teacher feature lists must have the same length")
        self.student_features, self.teacher_features = s, t
        self.require_conv_lora = bool(require_conv_lora)

    def student_taps(self) -> list[str]:
        return self.student_features if self.lambda_affinity > 0 else []

    def teacher_taps(self) -> list[str]:
        return self.teacher_features if self.lambda_affinity > 0 else []

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        t = self.setup_teacher(teacher)
        for s_name, t_name in zip(self.student_taps(), self.teacher_taps(), strict=True):
            fs, ft = student.feature(s_name), t.feature(t_name)
            if fs.shape[-2:] != ft.shape[-2:]:
                raise ValueError(f"dsclora: student feature {s_name!r} is {tuple(fs.shape[-2:])} but teacher feature "
                                 f"{t_name!r} is {tuple(ft.shape[-2:])}; the affinity needs equal spatial sizes")

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        hr = require_labels(inputs, "dsclora").float()
        teacher = require_teacher(inputs, "dsclora")
        sr = inputs.student.logits.float()
        terms: dict[str, torch.Tensor] = {
            "gt": self.lambda_gt * (sr - hr).abs().mean(),
            "teacher": self.lambda_teacher * (sr - teacher.logits.detach().float()).abs().mean(),
        }
        affinity = sr.new_zeros(())
        for s_name, t_name in zip(self.student_taps(), self.teacher_taps(), strict=True):
            affinity = affinity + affinity_distance(inputs.student.feature(s_name),
                                                    teacher.feature(t_name).detach())
        terms["affinity"] = self.lambda_affinity * affinity
        return terms
