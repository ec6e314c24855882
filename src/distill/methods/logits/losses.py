"""Losses on logits shared by several methods: cross-entropy (hard or soft labels, unlabelled rows skipped),
the batch-mean KL of softened distributions and the z-score standardisation of logits (DKD, LS-KD).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy that accepts hard labels (with ``IGNORE_INDEX`` = -100 rows skipped, and 0 when a batch has
    no labelled row) or soft targets (a (B, K) float tensor, e.g. after mixup)."""
    logits = logits.float()
    if labels.is_floating_point():
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction=reduction)
    if reduction == "mean" and not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction=reduction)


def kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 reduction: str = "batchmean") -> torch.Tensor:
    """KL(p_t || p_s) with p = softmax(z / T) over the last dim; ``batchmean`` divides the sum by B."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    pt = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_ps, pt, reduction=reduction)


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score over the last dim: (z - mean_k z) / (std_k z + eps), with the unbiased std (divisor K - 1).

    The form of the official LS-KD code and torchdistill's ``LogitStdKDLoss`` (eps added to the std, not
    under the square root)."""
    logits = logits.float()
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # correction=1: unbiased, as torch.Tensor.std's default
    return (logits - mean) / (std + eps)
