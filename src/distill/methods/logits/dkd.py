"""Decoupled knowledge distillation: KD split into a target-class and a non-target-class term.

L = ce_weight * CE(z_s, y) + w(epoch) * (alpha * TCKD + beta * NCKD), see :func:`dkd_terms` for TCKD and
NCKD (both include T^2). The identity behind it: T^2 KL(p_t || p_s) = TCKD + (1 - p_t,g) NCKD, so classical
KD is DKD with the NCKD weight tied to the teacher's non-target mass; DKD frees it (beta).

Follows mdistiller's ``DKD`` / ``dkd_loss`` (the official code) by default: the -1000 masking of the target,
no eps in log(b_s), 'sum' KL divided by the batch size, and the linear warm-up
w = min(e / warmup, 1) with mdistiller's 1-based epoch e. Our trainer's ``inputs.epoch`` starts at 0, so
e = ``inputs.epoch + 1``: w = 1/warmup during the first epoch and 1 from epoch ``warmup`` (1-based) on,
constant within an epoch. ``warmup=0`` turns the warm-up off. The warm-up scales the DKD terms only, not CE.

Mapping onto mdistiller's ``cfg.DKD``: ALPHA -> ``alpha``, BETA -> ``beta``, T -> ``temperature``,
WARMUP -> ``warmup``, CE_WEIGHT -> ``ce_weight`` (or, equivalently, a separate ``ce`` method with that
weight; CE is never warmed up). Defaults are ``cfg.DKD``'s (alpha 1, beta 8, T 4, warm-up 20) except CE,
which we leave to the ``ce`` method (``ce_weight=0``). The CIFAR-100 configs set beta per pair
(ResNet56 -> ResNet20: 2; ResNet32x4 -> ResNet8x4: 8).

``standardize=True`` z-scores both logit vectors first
(:func:`~distill.methods.logits.losses.standardize_logits`, eps ``eps``), as the LS-KD repository's DKD does
with ``--logit-stand``; CE still uses the raw logits. That repository's
``--kd-weight w --base-temp T`` multiplies alpha and beta by w and sets the temperature to T, i.e.
``alpha=w*alpha, beta=w*beta, temperature=T`` here (or a method weight of w).

Labels: rows labelled -100 (unlabelled) are left out and the terms averaged over the labelled rows (0 when
there are none); soft (B, K) float targets (e.g. after mixup) use their arg-max class as the target.

Paper: Decoupled Knowledge Distillation, CVPR 2022, arXiv:2203.08679; code:
https://github.com/megvii-research/mdistiller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX
from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import StepInputs, require_labels, require_teacher
from distill.methods.logits.losses import cross_entropy, standardize_logits

#: DKD's way of removing the target class from a softmax (mdistiller): subtract this from its logit / T.
_DKD_MASK = 1000.0


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of decoupled KD, each already multiplied by T^2 and averaged over the rows.

    With p = softmax(z / T) and g the target class of a row:
    TCKD = T^2 * mean_rows KL(b_t || b_s), b = [p_g, sum_{k != g} p_k] (the binary target / non-target split;
    its log is taken with no eps, as in mdistiller); NCKD = T^2 * mean_rows KL(p^_t || p^_s) with
    p^ = softmax(z / T - 1000 * onehot(g)), i.e. the distribution among the non-target classes (the target's
    teacher probability underflows to 0, so it contributes nothing).
    """
    zs, zt = student_logits.float() / temperature, teacher_logits.float() / temperature
    n = zs.shape[0]
    target_mask = F.one_hot(target, zs.shape[-1]).to(zs.dtype)
    other_mask = 1.0 - target_mask
    ps, pt = zs.softmax(dim=-1), zt.softmax(dim=-1)
    bs = torch.stack([(ps * target_mask).sum(-1), (ps * other_mask).sum(-1)], dim=-1)
    bt = torch.stack([(pt * target_mask).sum(-1), (pt * other_mask).sum(-1)], dim=-1)
    tckd = F.kl_div(bs.log(), bt, reduction="sum") / n
    log_ps_hat = F.log_softmax(zs - _DKD_MASK * target_mask, dim=-1)
    pt_hat = F.softmax(zt - _DKD_MASK * target_mask, dim=-1)
    nckd = F.kl_div(log_ps_hat, pt_hat, reduction="sum") / n
    t2 = temperature * temperature
    return t2 * tckd, t2 * nckd


def dkd_warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's linear warm-up min(epoch / warmup, 1), ``epoch`` counted from 1 (1 when warmup is 0)."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


@register_method(
    "dkd",
    family="logits",
    paper="Decoupled Knowledge Distillation",
    year=2022,
    arxiv="2203.08679",
    venue="CVPR",
    repo="https://github.com/megvii-research/mdistiller",
)
class DKD(Method):
    """Decoupled knowledge distillation: KD split into a target-class and a non-target-class term."""

    tasks = CLASSIFICATION_TASKS

    needs_labels = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        ce_weight: float = 0.0,
        standardize: bool = False,
        eps: float = 1e-7,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 epochs, got {warmup}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.warmup = int(warmup)
        self.ce_weight = float(ce_weight)
        self.standardize = standardize
        self.eps = float(eps)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        zs = inputs.student.logits
        zt = require_teacher(inputs, "dkd").logits
        labels = require_labels(inputs, "dkd")
        terms: dict[str, torch.Tensor] = {}
        if self.ce_weight != 0.0:
            terms["ce"] = self.ce_weight * cross_entropy(zs, labels)
        target = labels.argmax(dim=-1) if labels.is_floating_point() else labels
        keep = target != IGNORE_INDEX
        if not bool(keep.all()):
            zs, zt, target = zs[keep], zt[keep], target[keep]
        if target.numel() == 0:
            zero = inputs.student.logits.float().sum() * 0.0
            return {"tckd": zero, "nckd": zero, **terms}
        ks, kt = (standardize_logits(zs, self.eps), standardize_logits(zt, self.eps)) if self.standardize else (zs, zt)
        tckd, nckd = dkd_terms(ks, kt, target, self.temperature)
        w = dkd_warmup_factor(inputs.epoch + 1, self.warmup)
        return {"tckd": w * self.alpha * tckd, "nckd": w * self.beta * nckd, **terms}
