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

Paper: Knowledge Distillation from A Stronger Teacher, NeurIPS 2022, arXiv:2205.10536; code:
https://github.com/hunto/DIST_KD.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import StepInputs, require_teacher


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
    """DIST: match the teacher's inter- and intra-class relations by Pearson correlation, not exact probabilities."""

    tasks = CLASSIFICATION_TASKS

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
