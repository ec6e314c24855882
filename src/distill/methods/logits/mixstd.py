"""MIXSTD loss of MIX-KD: KD with a per-sample scale instead of a temperature.

With sigma_s, sigma_t the per-row unbiased standard deviations of the logits over the classes,

    L = gamma * (1/B) sum_i sum_c -y~_ic log softmax(z_s,i / sigma_s,i)_c
        + alpha * KL(softmax(z_t / sigma_t) || softmax(z_s / sigma_s))   (batchmean, no T^2 factor)

(``distiller_zoo/MIXSTD.py``: gamma = ``ce_weight`` = 0.1, alpha = ``kl_weight`` = 0.9; sigma_s is not
detached). Targets y~ are the (B, K) soft labels of a mixup transform, or hard labels (one-hot; unlabelled
rows skipped). The loss is invariant to z -> a z + b (a > 0) for either model. The official validation also
divides logits by sigma, which leaves the arg-max unchanged, so no inference wrapper is added. We clamp
sigma at 1e-12 (constant logits) where the official code would divide by zero.

Paper: Understanding the Role of Mixup in Knowledge Distillation: An Empirical Study, WACV 2023, arXiv:2211.03946;
code: https://github.com/hchoi71/MIX-KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import StepInputs
from distill.methods.augmentation.mixing import MIX_PROVENANCE
from distill.methods.logits.losses import cross_entropy


def std_scaled(logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """z / std(z) per row, the unbiased standard deviation over the classes (gradient flows through it)."""
    z = logits.float()
    return z / z.std(dim=-1, keepdim=True).clamp_min(eps)


def mixstd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
                ce_weight: float = 0.1, kl_weight: float = 0.9) -> dict[str, torch.Tensor]:
    """{"ce": gamma * CE(z_s / sigma_s, y~), "kl": alpha * KL(softmax(z_t / sigma_t) || softmax(z_s / sigma_s))}."""
    zs = std_scaled(student_logits)
    zt = std_scaled(teacher_logits.detach())
    terms = {"kl": kl_weight * F.kl_div(F.log_softmax(zs, -1), F.softmax(zt, -1), reduction="batchmean")}
    if ce_weight != 0.0:
        if targets is None:
            raise ValueError("method 'mixstd' needs labels for its CE term, but the batch has none")
        terms["ce"] = ce_weight * cross_entropy(zs, targets)
    return terms


@register_method("mixstd", family="logits", **MIX_PROVENANCE)
class MixSTD(Method):
    """MIXSTD loss of MIX-KD: KD with a per-sample scale instead of a temperature."""

    tasks = CLASSIFICATION_TASKS

    def __init__(self, ce_weight: float = 0.1, kl_weight: float = 0.9):
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.kl_weight = float(kl_weight)

    @property
    def needs_labels(self) -> bool:  # type: ignore[override]
        return self.ce_weight != 0.0

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'mixstd' needs a teacher, but none is configured")
        return mixstd_loss(inputs.student.logits, inputs.teacher.logits, inputs.labels, self.ce_weight,
                           self.kl_weight)
