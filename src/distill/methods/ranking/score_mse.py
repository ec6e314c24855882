"""Pointwise score regression, the baseline Margin-MSE is compared against: L = mean_{b,j} (s_bj - t_bj)^2
over all (B, 1 + n) scores. Unlike Margin-MSE it asks the student to reproduce the teacher's score scale.

Paper: Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation (pointwise
baseline), 2020, arXiv:2010.02666; code: https://github.com/sebastian-hofstaetter/neural-ranking-kd.
"""

from __future__ import annotations

import torch

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs
from distill.methods.ranking.scores import group_scores


@register_method(
    "score_mse",
    family="ranking",
    paper="Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation "
          "(pointwise baseline)",
    year=2020,
    arxiv="2010.02666",
    repo="https://github.com/sebastian-hofstaetter/neural-ranking-kd",
    aliases=("pointwise_mse",),
)
class ScoreMSE(Method):
    """Pointwise score regression, the baseline Margin-MSE is compared against: L = mean_{b,j} (s_bj - t_bj)^2
    over all (B, 1 + n) scores."""

    tasks = frozenset({"ranking"})

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        s, t = group_scores(inputs, "score_mse")
        return {"loss": ((s - t) ** 2).mean()}
