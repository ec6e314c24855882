"""Probabilistic knowledge transfer: match the batch's cosine-affinity distributions.

x = feature flattened to (B, D) (D may differ between student and teacher); P = :func:`pkt_probabilities`
(cosine similarities shifted to [0, 1] by (K + 1) / 2, rows normalised to sum 1, diagonal kept) and
L = (1/B^2) sum_{i,j} P_t,ij log((P_t,ij + eps) / (P_s,ij + eps)), a mean over all B^2 entries (not a
per-row sum), eps = 1e-7. No parameters.

Follows the official code as copied by torchdistill ``PKTLoss(eps=1e-7)``, RepDistiller ``PKT`` and
mdistiller (all identical). Default tap: the penultimate embedding ``pooled`` (torchdistill: input of
``fc``); CIFAR method weight 30000 with CE weight 1.

Paper: Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018, arXiv:1803.10837; code:
https://github.com/passalis/probabilistic_kt.
"""

from __future__ import annotations

import torch

from distill.core.method import CLASSIFICATION_TASKS, FeaturePair, register_method
from distill.core.outputs import StepInputs
from distill.methods.relations.rows import flat_rows


def pkt_probabilities(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT's conditional probabilities: x^ = x / (||x|| + eps) (NaN -> 0), K = (x^ x^^T + 1) / 2 in [0, 1], and
    P = K / rowsum(K), the diagonal included."""
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


def pkt_loss(xs: torch.Tensor, xt: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mean over all (i, j) of P_t,ij log((P_t,ij + eps) / (P_s,ij + eps))."""
    ps, pt = pkt_probabilities(xs, eps), pkt_probabilities(xt, eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


@register_method(
    "pkt",
    family="relations",
    paper="Learning Deep Representations with Probabilistic Knowledge Transfer",
    year=2018,
    arxiv="1803.10837",
    venue="ECCV",
    repo="https://github.com/passalis/probabilistic_kt",
    aliases=("probabilistic_kt",),
)
class ProbabilisticKT(FeaturePair):
    """Probabilistic knowledge transfer: match the batch's cosine-affinity distributions."""

    tasks = CLASSIFICATION_TASKS

    method_name = "pkt"

    def __init__(self, student: str = "pooled", teacher: str = "pooled", eps: float = 1e-7):
        super().__init__()
        if eps < 0:
            raise ValueError(f"pkt: eps must be >= 0, got {eps}")
        self.tap_pair(student, teacher)
        self.eps = float(eps)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        fs, ft = self.step_features(inputs)
        xs, xt = flat_rows(fs), flat_rows(ft).detach()
        return {"loss": pkt_loss(xs, xt, self.eps)}
