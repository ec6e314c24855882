"""Hinton knowledge distillation with temperature.

L = ce_weight * CE(z_s, y) + kl_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)),
the KL averaged over the batch (``reduction="batchmean"``; any other reduction is passed to both terms,
as torchdistill's ``KDLoss`` does). The T^2 factor keeps the soft-term gradient scale independent of T.

Mapping onto the references: torchdistill ``KDLoss(temperature=T, alpha=a, beta=b)`` is
``ce_weight=a, kl_weight=b`` (b defaults to 1 - a there); mdistiller/RepDistiller's CIFAR setting
(CE 0.1, KD 0.9, T 4) is ``ce_weight=0.1, kl_weight=0.9``. With ``torchdistill_compat=True`` the quirk of
``KDLoss`` is reproduced: when ``ce_weight`` is 0 or the batch has no labels the loss is the bare KL, with
neither T^2 nor ``kl_weight``. By default (False) T^2 * kl_weight always applies.

With a top-k teacher (a top-k cache) the KL is taken over k + 1 buckets, the kept classes and the tail
(:mod:`distill.core.topk`); it equals the dense KL when k is the number of classes. ``missing`` picks DistillKit's
convention for the classes the teacher did not keep (``symmetric_uniform``: the tail is one bucket, re-tempered
as one; ``zero``: the teacher renormalised over the kept classes; ``spread``: see :mod:`distill.core.topk`).

Paper: Distilling the Knowledge in a Neural Network, NIPS Deep Learning Workshop 2015, arXiv:1503.02531.
"""

from __future__ import annotations

from typing import Literal

import torch

from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import StepInputs, require_labels, require_teacher
from distill.core.topk import Missing, TopKLogits, bucket_kl, student_bucket_logprobs
from distill.methods.logits.losses import cross_entropy, kl_batchmean


@register_method(
    "kd",
    family="logits",
    paper="Distilling the Knowledge in a Neural Network",
    year=2015,
    arxiv="1503.02531",
    venue="NIPS Deep Learning Workshop",
    aliases=("hinton",),
)
class KD(Method):
    """Hinton knowledge distillation with temperature."""

    tasks = CLASSIFICATION_TASKS

    accepts_topk_teacher = True

    def __init__(
        self,
        temperature: float = 4.0,
        ce_weight: float = 0.0,
        kl_weight: float = 1.0,
        reduction: Literal["batchmean", "mean", "sum"] = "batchmean",
        torchdistill_compat: bool = False,
        missing: Missing = "symmetric_uniform",
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.missing = missing
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.kl_weight = float(kl_weight)
        self.reduction = reduction
        self.torchdistill_compat = torchdistill_compat

    @property
    def needs_labels(self) -> bool:  # type: ignore[override]
        return self.ce_weight != 0.0

    #: the name used in error messages (subclasses that pre-process the logits set their own)
    method_name = "kd"

    def sparse_kl(self, zs: torch.Tensor, topk: TopKLogits, t: float) -> torch.Tensor:
        if type(self).soft_logits is not KD.soft_logits:
            raise ValueError(f"{self.method_name} transforms the teacher's logits and needs them dense, not top-k")
        per_row = bucket_kl(topk.bucket_logprobs(t, self.missing), student_bucket_logprobs(zs, topk, t))
        if self.reduction == "batchmean":
            return per_row.sum() / zs.shape[0]
        if self.reduction == "sum":
            return per_row.sum()
        return per_row.sum() / zs.numel()  # F.kl_div's "mean" divides by every element

    def soft_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the softened KL is computed on (the raw logits here; LS-KD standardises them)."""
        return logits

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        zs = inputs.student.logits
        teacher = require_teacher(inputs, self.method_name)
        t = self.temperature
        if teacher.is_sparse:
            kl = self.sparse_kl(zs, teacher.topk, t)
        else:
            kl = kl_batchmean(self.soft_logits(zs), self.soft_logits(teacher.logits), t, self.reduction)
        if self.torchdistill_compat and (self.ce_weight == 0.0 or inputs.labels is None):
            return {"kl": kl}
        terms = {"kl": self.kl_weight * t * t * kl}
        if self.ce_weight != 0.0:
            ce_red = "mean" if self.reduction == "batchmean" else self.reduction
            ce = cross_entropy(zs, require_labels(inputs, self.method_name), reduction=ce_red)
            terms["ce"] = self.ce_weight * ce
        return terms
