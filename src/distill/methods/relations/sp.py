"""Similarity-preserving KD: the student keeps the teacher's pairwise similarities within a batch.

For each feature pair j, Z = activations flattened to (B, D) (D may differ between student and teacher),
G = Z Z^T and G~ = G with each row L2-normalised (eps 1e-12). Then
L = sum_j w_j * ||G~_t,j - G~_s,j||_F^2 / B^2 (``reduction="batchmean"``; ``"sum"`` drops the 1/B^2).
The teacher Gram is a constant. No parameters.

Follows torchdistill ``SPKDLoss`` (``reduction='batchmean'`` there is ours), which equals RepDistiller's and
mdistiller's ``Similarity`` (squared sum / bsz^2, verified by the paper's author). CIFAR default: one tap
on the last stage output ``f3`` (RepDistiller ``feat[-2]``), method weight 3000 with CE weight 1.

Paper: Similarity-Preserving Knowledge Distillation, ICCV 2019, arXiv:1907.09682.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import CLASSIFICATION_TASKS, FeaturePairs, register_method
from distill.core.outputs import StepInputs, require_teacher
from distill.methods.relations.rows import flat_rows


def similarity_matrix(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """SP's G~: the batch Gram matrix Z Z^T of the flattened activations, each row scaled to unit L2 norm."""
    z = x.flatten(1)
    return F.normalize(z @ z.t(), p=2.0, dim=1, eps=eps)


def sp_loss(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """||G~_t - G~_s||_F^2, divided by B^2 for ``reduction="batchmean"``."""
    sq = (similarity_matrix(ft) - similarity_matrix(fs)).pow(2).sum()
    return sq / fs.shape[0] ** 2 if reduction == "batchmean" else sq


@register_method(
    "sp",
    family="relations",
    paper="Similarity-Preserving Knowledge Distillation",
    year=2019,
    arxiv="1907.09682",
    venue="ICCV",
    aliases=("similarity_preserving", "spkd"),
)
class SimilarityPreserving(FeaturePairs):
    """Similarity-preserving KD: the student keeps the teacher's pairwise similarities within a batch."""

    tasks = CLASSIFICATION_TASKS

    method_name = "sp"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        weights: list[float] | None = None,
        reduction: Literal["batchmean", "sum"] = "batchmean",
    ):
        super().__init__()
        self.tap_pairs(student, teacher, weights, ["f3"])
        self.reduction = reduction

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "sp")
        total = inputs.student.logits.new_zeros((), dtype=torch.float32)
        for s_name, t_name, w in zip(self.student_features, self.teacher_features, self.pair_weights):
            fs = flat_rows(inputs.student.feature(s_name))
            ft = flat_rows(teacher.feature(t_name)).detach()
            total = total + w * sp_loss(fs, ft, self.reduction)
        return {"loss": total}
