"""Spatial affinity (FAKD: He et al., "FAKD: Feature-Affinity Based Knowledge Distillation for Efficient Image
Super-Resolution", ICIP 2020; code github.com/Vincent-Hoo/Knowledge-Distillation-for-Super-resolution,
``code/feature_transformation.py`` and ``code/loss.py``), re-implemented.

For F (B, C, H, W): each position's channel vector is normalised, F^_{:,n} = F_{:,n} / (||F_{:,n}||_2 + 1e-7), and
A = F^T F^ (B, HW, HW) holds the cosines between positions. The loss of one layer is mean_{b,n,n'} |A^S - A^T|;
teacher and student may differ in C but need the same H x W.
"""

from __future__ import annotations

import torch


def spatial_affinity(feature: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(B, HW, HW) cosine affinities between the spatial positions of ``feature`` (B, C, H, W)."""
    f = feature.float().flatten(2)  # B, C, N
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    return f.transpose(1, 2) @ f


def affinity_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean_{b,n,n'} |A(student) - A(teacher)|; the spatial sizes must agree."""
    if student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"spatial affinity needs equal spatial sizes, got {tuple(student.shape[-2:])} (student) "
                         f"and {tuple(teacher.shape[-2:])} (teacher)")
    return (spatial_affinity(student) - spatial_affinity(teacher)).abs().mean()
