"""Relational KD: transfer the distances and angles among the batch's embeddings.

x = feature flattened to (B, D). Distance term: d = :func:`rkd_distances` (unsquared by default; eps 1e-12
clamp before the root, zero diagonal) divided by the mean of its positive entries, and
L_D = SmoothL1_beta=1(d_s, d_t) averaged over all B^2 entries. Angle term: a = :func:`rkd_angles`, and
L_A = SmoothL1(a_s, a_t) averaged over all B^3 entries. Returns ``{"distance": w_D L_D, "angle": w_A L_A}``;
a term whose weight is 0 is left out (torchdistill returns 0 for it). Teacher relations carry no gradient.

Defaults follow RepDistiller's ``RKDLoss`` (``w_d=25, w_a=50``) and mdistiller's ``cfg.RKD`` (``PDIST.SQUARED
= False``), on the penultimate embedding ``pooled`` (RepDistiller ``feat[-1]``), method weight 1 with CE 1.
torchdistill ``RKDLoss(dist_factor, angle_factor, reduction)`` is ``distance_weight``, ``angle_weight``,
``reduction`` (passed to SmoothL1); its ImageNet sample uses 1.0 / 2.0 (the paper's metric-learning
values) on flattened ``layer4``.

Paper: Relational Knowledge Distillation, CVPR 2019, arXiv:1904.05068; code: https://github.com/lenscloth/RKD.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import CLASSIFICATION_TASKS, FeaturePair, register_method
from distill.core.outputs import StepInputs
from distill.methods.relations.rows import flat_rows


def rkd_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of x, via the Gram expansion clamped at ``eps`` before the square
    root; the diagonal is set to 0 (value and gradient)."""
    sq = x.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(eps)
    if not squared:
        d = d.sqrt()
    off_diagonal = 1.0 - torch.eye(x.shape[0], dtype=d.dtype, device=d.device)
    return d * off_diagonal


def rkd_normalized_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """:func:`rkd_distances` divided by the mean of its positive entries (left as is when there are none, B = 1)."""
    d = rkd_distances(x, squared, eps)
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def rkd_angles(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """a[i, j, k] = e_ij . e_ik with e_ij = (x_j - x_i) / ||x_j - x_i|| (the zero vector when x_j = x_i)."""
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2.0, dim=2, eps=eps)  # e[i, j] = unit(x_j - x_i)
    return e @ e.transpose(1, 2)


@register_method(
    "rkd",
    family="relations",
    paper="Relational Knowledge Distillation",
    year=2019,
    arxiv="1904.05068",
    venue="CVPR",
    repo="https://github.com/lenscloth/RKD",
    aliases=("relational_kd",),
)
class RelationalKD(FeaturePair):
    """Relational KD: transfer the distances and angles among the batch's embeddings."""

    tasks = CLASSIFICATION_TASKS

    method_name = "rkd"

    def __init__(
        self,
        student: str = "pooled",
        teacher: str = "pooled",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        squared: bool = False,
        reduction: Literal["mean", "sum"] = "mean",
    ):
        super().__init__()
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError("rkd: distance_weight and angle_weight are both 0, so the method has no term")
        self.tap_pair(student, teacher)
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.squared = squared
        self.reduction = reduction

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        fs, ft = self.step_features(inputs)
        xs, xt = flat_rows(fs), flat_rows(ft)
        terms: dict[str, torch.Tensor] = {}
        if self.distance_weight != 0:
            with torch.no_grad():
                dt = rkd_normalized_distances(xt, self.squared)
            ds = rkd_normalized_distances(xs, self.squared)
            terms["distance"] = self.distance_weight * F.smooth_l1_loss(ds, dt, reduction=self.reduction, beta=1.0)
        if self.angle_weight != 0:
            with torch.no_grad():
                at = rkd_angles(xt)
            as_ = rkd_angles(xs)
            terms["angle"] = self.angle_weight * F.smooth_l1_loss(as_, at, reduction=self.reduction, beta=1.0)
        return terms
