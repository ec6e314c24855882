"""Correlation congruence: match the kernel correlations between the batch's embeddings.

f_s = h_s(flatten(feature_s)), f_t = h_t(flatten(feature_t)) with two linear heads to ``out_dim`` (128)
built at set-up and trained with the student. The teacher's head is trainable; the teacher backbone is not
(its feature is a constant). ``normalize=True`` L2-normalises f first (default False, as in both libraries).

``variant="torchdistill"`` (default; ``CCKDLoss`` + ``Linear4CCKD``): C = :func:`correlation_matrix` with
``kernel`` ``gaussian`` (``gamma`` 0.4, ``max_p`` P = 2; torchdistill's ``kernel_config={'type', 'gamma',
'max_p'}``) or ``bilinear``, and L = ||C_s - C_t||_F / B^2 (``reduction="batchmean"``; ``"sum"`` drops the
1/B^2). torchdistill uses the unsquared Frobenius norm (``torch.dist``); ``squared=True`` gives the paper's
(1/B^2) ||C_s - C_t||_F^2. torchdistill's ImageNet sample: 128-d heads on the pooled feature, weight 0.003,
plus a bare KL (``kd`` with ``torchdistill_compat``, temperature 1).

``variant="repdistiller"``: the loss of RepDistiller's ``Correlation`` (code sent by the authors, different
from the paper): delta = |f_s - f_t| and L = (1/(B-1)) sum_{i<B} sum_d delta_{i,d} delta_{i+1,d};
``kernel``, ``gamma``, ``max_p``, ``reduction`` and ``squared`` are then unused. RepDistiller's CIFAR row:
tap ``pooled``, ``out_dim`` 128, method weight 0.02 with CE weight 1.

Paper: Correlation Congruence for Knowledge Distillation, ICCV 2019, arXiv:1904.01802.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import CLASSIFICATION_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.relations.rows import flat_rows


def correlation_matrix(f: torch.Tensor, kernel: str = "gaussian", gamma: float = 0.4, max_p: int = 2) -> torch.Tensor:
    """CC's correlation matrix of embeddings f (B, d).

    ``bilinear``: C = F F^T. ``gaussian``: C_ij = e^{-2 gamma} sum_{p=0}^{P} (2 gamma)^p / p! (f_i . f_j)^p, the
    order-P Taylor form of exp(-gamma ||f_i - f_j||^2), which it equals (as P grows) when the f are unit-norm.
    """
    k = f @ f.t()
    if kernel == "bilinear":
        return k
    if kernel != "gaussian":
        raise ValueError(f"cc: unknown kernel {kernel!r}")
    term = torch.ones_like(k)
    total = torch.ones_like(k)
    for p in range(1, max_p + 1):
        term = term * (2.0 * gamma) * k / p  # (2 gamma k)^p / p!, built up one factor at a time
        total = total + term
    return math.exp(-2.0 * gamma) * total


def cc_congruence(cs: torch.Tensor, ct: torch.Tensor, reduction: str = "batchmean", squared: bool = False
                  ) -> torch.Tensor:
    """||C_s - C_t||_F (squared if ``squared``), divided by B^2 for ``reduction="batchmean"``."""
    diff = cs - ct
    dist = diff.pow(2).sum() if squared else torch.linalg.vector_norm(diff)
    return dist / cs.shape[0] ** 2 if reduction == "batchmean" else dist


def cc_consecutive(es: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``Correlation``: with delta = |e_s - e_t|, the mean over i < B of sum_d delta_i,d delta_i+1,d."""
    delta = (es - et).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_method(
    "cc",
    family="relations",
    paper="Correlation Congruence for Knowledge Distillation",
    year=2019,
    arxiv="1904.01802",
    venue="ICCV",
    aliases=("cckd", "correlation_congruence"),
)
class CorrelationCongruence(FeaturePair):
    """Correlation congruence: match the kernel correlations between the batch's embeddings."""

    tasks = CLASSIFICATION_TASKS

    method_name = "cc"

    def __init__(
        self,
        student: str = "pooled",
        teacher: str = "pooled",
        out_dim: int = 128,
        kernel: Literal["gaussian", "bilinear"] = "gaussian",
        gamma: float = 0.4,
        max_p: int = 2,
        reduction: Literal["batchmean", "sum"] = "batchmean",
        squared: bool = False,
        normalize: bool = False,
        variant: Literal["torchdistill", "repdistiller"] = "torchdistill",
    ):
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"cc: out_dim must be positive, got {out_dim}")
        if max_p < 0:
            raise ValueError(f"cc: max_p must be >= 0, got {max_p}")
        self.tap_pair(student, teacher)
        self.out_dim = int(out_dim)
        self.kernel = kernel
        self.gamma = float(gamma)
        self.max_p = int(max_p)
        self.reduction = reduction
        self.squared = squared
        self.normalize = normalize
        self.variant = variant
        self.student_head: nn.Linear | None = None
        self.teacher_head: nn.Linear | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        s, t = self.setup_features(student, teacher)
        self.student_head = nn.Linear(s[0].numel(), self.out_dim).to(s.device)
        self.teacher_head = nn.Linear(t[0].numel(), self.out_dim).to(s.device)

    def embed(self, head: nn.Linear, feature: torch.Tensor) -> torch.Tensor:
        f = head(flat_rows(feature))
        return F.normalize(f, dim=1) if self.normalize else f

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.student_head is None or self.teacher_head is None:
            raise RuntimeError("CorrelationCongruence.setup() must run before the first step (the trainer does this)")
        fs = self.embed(self.student_head, inputs.student.feature(self.student_feature))
        # the teacher feature is a constant; only the teacher-side head learns from this term
        ft = self.embed(self.teacher_head, require_teacher(inputs, "cc").feature(self.teacher_feature).detach())
        if self.variant == "repdistiller":
            return {"loss": cc_consecutive(fs, ft)}
        cs = correlation_matrix(fs, self.kernel, self.gamma, self.max_p)
        ct = correlation_matrix(ft, self.kernel, self.gamma, self.max_p)
        return {"loss": cc_congruence(cs, ct, self.reduction, self.squared)}
