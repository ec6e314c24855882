"""Variants of logit distillation: decoupled KD (DKD), correlation matching (DIST) and logit-standardised KD.

All three read only the logits of student and teacher. The teacher's logits are constants; every loss is
computed in float32 (the logits may come out of bf16/fp16 autocast).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_labels, require_teacher
from distill.methods.logits import KD, cross_entropy

#: DKD's way of removing the target class from a softmax (mdistiller): subtract this from its logit / T.
_DKD_MASK = 1000.0


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score over the last dim: (z - mean_k z) / (std_k z + eps), with the unbiased std (divisor K - 1).

    The form of the official LS-KD code and torchdistill's ``LogitStdKDLoss`` (eps added to the std, not
    under the square root)."""
    logits = logits.float()
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # correction=1: unbiased, as torch.Tensor.std's default
    return (logits - mean) / (std + eps)


# -- DKD ---------------------------------------------------------------------------------------------------------
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

    ``standardize=True`` z-scores both logit vectors first (:func:`standardize_logits`, eps ``eps``), as the
    LS-KD repository's DKD does with ``--logit-stand``; CE still uses the raw logits. That repository's
    ``--kd-weight w --base-temp T`` multiplies alpha and beta by w and sets the temperature to T, i.e.
    ``alpha=w*alpha, beta=w*beta, temperature=T`` here (or a method weight of w).

    Labels: rows labelled -100 (unlabelled) are left out and the terms averaged over the labelled rows (0 when
    there are none); soft (B, K) float targets (e.g. after mixup) use their arg-max class as the target.
    """

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
        keep = target != -100
        if not bool(keep.all()):
            zs, zt, target = zs[keep], zt[keep], target[keep]
        if target.numel() == 0:
            zero = inputs.student.logits.float().sum() * 0.0
            return {"tckd": zero, "nckd": zero, **terms}
        ks, kt = (standardize_logits(zs, self.eps), standardize_logits(zt, self.eps)) if self.standardize else (zs, zt)
        tckd, nckd = dkd_terms(ks, kt, target, self.temperature)
        w = dkd_warmup_factor(inputs.epoch + 1, self.warmup)
        return {"tckd": w * self.alpha * tckd, "nckd": w * self.beta * nckd, **terms}


# -- DIST --------------------------------------------------------------------------------------------------------
def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8,
                 eps_mode: Literal["official", "torchdistill"] = "official") -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: the cosine of the mean-centred rows.

    ``"official"`` (hunto/DIST_KD): <a, b> / (||a|| ||b|| + eps). ``"torchdistill"``: PyTorch's
    ``cosine_similarity`` with ``eps``, which clamps the norms instead of adding eps. The two differ only when
    a row is (nearly) constant."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    if eps_mode == "torchdistill":
        return F.cosine_similarity(a, b, dim=1, eps=eps)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(ys: torch.Tensor, yt: torch.Tensor, eps: float = 1e-8,
                   eps_mode: Literal["official", "torchdistill"] = "official") -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) relation losses of DIST on probability matrices (B, K).

    inter = 1 - mean_b rho(ys[b, :], yt[b, :]) (each sample, over classes);
    intra = 1 - mean_k rho(ys[:, k], yt[:, k]) (each class, over the batch) = inter on the transposes."""
    inter = 1.0 - pearson_rows(ys, yt, eps, eps_mode).mean()
    intra = 1.0 - pearson_rows(ys.t(), yt.t(), eps, eps_mode).mean()
    return inter, intra


@register_method(
    "dist",
    family="logits",
    paper="Knowledge Distillation from A Stronger Teacher",
    year=2022,
    arxiv="2205.10536",
    venue="NeurIPS",
    repo="https://github.com/hunto/DIST_KD",
    aliases=("dist_kd",),
)
class DIST(Method):
    """DIST: match the teacher's inter- and intra-class relations by Pearson correlation, not exact probabilities.

    With y = softmax(z / tau) (B x K): L = tau^2 * (beta * inter + gamma * intra), see :func:`dist_relations`.
    Returned as two terms, ``inter`` = beta tau^2 inter and ``intra`` = gamma tau^2 intra. Each relation lies in
    [0, 2], so 0 <= L <= 2 tau^2 (beta + gamma). The intra-class term correlates each class's column over the
    batch, so it depends on the batch (size and composition); a batch of one gives intra = 1 with no gradient.

    Follows the official classification code (hunto/image_classification_sota ``DIST``, which torchdistill's
    ``DISTLoss`` restates): defaults beta = gamma = tau = 1 (its ImageNet setting); ``eps_mode="official"``
    adds eps to the product of norms, ``"torchdistill"`` uses ``F.cosine_similarity``'s clamp (torchdistill).
    Mapping: torchdistill ``DISTLoss(beta, gamma, tau, eps)`` is the same names here. The official CIFAR recipe
    (``dist_t4``: tau 4, beta = gamma = 1 in the loss, KD weight 2, CE weight 1) is ``tau=4`` with a method
    weight of 2 plus a ``ce`` method of weight 1. No labels are used; CE belongs to the ``ce`` method.
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        eps: float = 1e-8,
        eps_mode: Literal["official", "torchdistill"] = "official",
    ):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.eps = float(eps)
        self.eps_mode = eps_mode

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        zs = inputs.student.logits.float()
        zt = require_teacher(inputs, "dist").logits.float()
        ys, yt = (zs / self.tau).softmax(dim=1), (zt / self.tau).softmax(dim=1)
        inter, intra = dist_relations(ys, yt, self.eps, self.eps_mode)
        t2 = self.tau * self.tau
        return {"inter": self.beta * t2 * inter, "intra": self.gamma * t2 * intra}


# -- logit-standardised KD ---------------------------------------------------------------------------------------
@register_method(
    "lskd",
    family="logits",
    paper="Logit Standardization in Knowledge Distillation",
    year=2024,
    arxiv="2403.01427",
    venue="CVPR",
    repo="https://github.com/sunshangquan/logit-standardization-KD",
    aliases=("logit_std_kd",),
)
class LogitStandardizedKD(KD):
    """KD on z-scored logits (LS-KD): the student matches the teacher's logit relations, not their range.

    L = ce_weight * CE(z_s, y) + kl_weight * T^2 * KL(softmax(Z(z_t)/T) || softmax(Z(z_s)/T)), with
    Z = :func:`standardize_logits` (unbiased std, ``eps`` 1e-7 added to it) and CE on the **raw** student logits.
    Equivalently each sample gets its own temperature T * std(z). The KL is averaged over the batch
    (``batchmean``; other reductions are passed to both terms, as for ``kd``).

    How it composes with ``kd``: this is a standalone method, ``kd`` with the pre-process switched on (same
    options plus ``eps``), not something to add on top of ``kd``; for DKD with the pre-process use
    ``dkd`` with ``standardize=True``. Defaults follow the official code's base temperature (``--base-temp 2``)
    and keep the weights in the composition as ``kd`` does (``ce_weight=0``, ``kl_weight=1``).

    Weight convention of the official code (mdistiller-based ``KD`` with ``--logit-stand --base-temp 2
    --kd-weight 9``): kd_weight * T^2 * KL_batchmean, CE weighted separately, i.e. ``temperature=2,
    kl_weight=9`` here (or a method weight of 9), plus its CE weight as ``ce_weight`` or a ``ce`` method.
    torchdistill ``LogitStdKDLoss(temperature, eps, alpha, beta)`` is ``ce_weight=alpha, kl_weight=beta``
    (beta defaults to 1 - alpha there); ``torchdistill_compat=True`` reproduces its quirk that with alpha 0 or
    no labels the loss is the bare KL (no T^2, no weight).
    """

    method_name = "lskd"
    accepts_topk_teacher = False  # standardising needs every teacher logit

    def __init__(
        self,
        temperature: float = 2.0,
        ce_weight: float = 0.0,
        kl_weight: float = 1.0,
        eps: float = 1e-7,
        reduction: Literal["batchmean", "mean", "sum"] = "batchmean",
        torchdistill_compat: bool = False,
    ):
        super().__init__(temperature, ce_weight, kl_weight, reduction, torchdistill_compat)
        self.eps = float(eps)

    def soft_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return standardize_logits(logits, self.eps)
