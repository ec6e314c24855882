"""KD on z-scored logits (LS-KD): the student matches the teacher's logit relations, not their range.

L = ce_weight * CE(z_s, y) + kl_weight * T^2 * KL(softmax(Z(z_t)/T) || softmax(Z(z_s)/T)), with
Z = :func:`~distill.methods.logits.losses.standardize_logits` (unbiased std, ``eps`` 1e-7 added to it) and CE
on the **raw** student logits.
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

Paper: Logit Standardization in Knowledge Distillation, CVPR 2024, arXiv:2403.01427; code:
https://github.com/sunshangquan/logit-standardization-KD.
"""

from __future__ import annotations

from typing import Literal

import torch

from distill.core.method import CLASSIFICATION_TASKS, register_method
from distill.methods.logits.kd import KD
from distill.methods.logits.losses import standardize_logits


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
    """KD on z-scored logits (LS-KD): the student matches the teacher's logit relations, not their range."""

    tasks = CLASSIFICATION_TASKS

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
