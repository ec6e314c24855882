"""Margin-MSE: match the student's positive-minus-negative score margins to the teacher's.

With student scores s and raw teacher scores t of shape (B, 1 + n) (positive in column 0, n negatives),
L = (1/(B n)) sum_b sum_j [(s_b0 - s_bj) - (t_b0 - t_bj)]^2. For n = 1 this is the official
``MarginMSELoss`` (mean of squared margin differences); for n > 1 it is the multi-negative form of
sentence-transformers (labels = positive minus each negative, MSE over B * n). Invariant to adding a
per-query constant to either model's scores, not to rescaling them. Teacher scores usually come from a
score file (:class:`~distill.text.teacher_sources.ScoreFileTeacher`, or for MS MARCO's per-triple teacher files
``score_pos score_neg qid pid_pos pid_neg``, :class:`~distill.text.teacher_sources.GroupScoreTeacher`).

Paper: Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation, 2020,
arXiv:2010.02666; code: https://github.com/sebastian-hofstaetter/neural-ranking-kd.
"""

from __future__ import annotations

import torch

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs
from distill.methods.ranking.scores import group_scores


def margin_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over B * n of ((s_pos - s_neg_j) - (t_pos - t_neg_j))^2 for (B, 1 + n) score matrices."""
    ms = student[:, :1] - student[:, 1:]
    mt = teacher[:, :1] - teacher[:, 1:]
    return ((ms - mt) ** 2).mean()


@register_method(
    "margin_mse",
    family="ranking",
    paper="Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation",
    year=2020,
    arxiv="2010.02666",
    repo="https://github.com/sebastian-hofstaetter/neural-ranking-kd",
)
class MarginMSE(Method):
    """Margin-MSE: match the student's positive-minus-negative score margins to the teacher's."""

    tasks = frozenset({"ranking"})

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        s, t = group_scores(inputs, "margin_mse")
        return {"loss": margin_mse(s, t)}
