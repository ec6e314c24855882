"""Distillation for text embedding and ranking: LEAF embedding regression, Margin-MSE, and the two baselines the
Margin-MSE paper sets against it (pointwise score MSE, label-only contrastive training).

This module holds the score check shared by ``margin_mse``, ``score_mse`` and ``ranking_nll``.
"""

from __future__ import annotations

import torch

from distill.core.outputs import StepInputs, require_teacher


def group_scores(inputs: StepInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = inputs.student.logits.float()
    t = require_teacher(inputs, name).logits.detach().float().to(s.device)
    if s.shape != t.shape or s.dim() != 2 or s.shape[1] < 2:
        raise ValueError(f"{name}: student and teacher scores must both be (B, 1 + n) with the positive in "
                         f"column 0; got {tuple(s.shape)} and {tuple(t.shape)}")
    return s, t
