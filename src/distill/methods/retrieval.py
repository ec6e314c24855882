"""Distillation for text embedding and ranking: LEAF embedding regression, Margin-MSE, and the two baselines the
Margin-MSE paper sets against it (pointwise score MSE, label-only contrastive training)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_labels, require_teacher


def embedding_regression(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """(1/B) sum_i ||y_i - t_i||^2 (``sum``: summed over dimensions, LEAF) or the element mean (``mean``)."""
    sq = (student.float() - teacher.float()) ** 2
    return sq.sum(-1).mean() if reduction == "sum" else sq.mean()


@register_method(
    "leaf",
    family="embedding",
    paper="LEAF: Knowledge Distillation of Text Embedding Models with Teacher-Aligned Representations",
    year=2025,
    arxiv="2509.12539",
    aliases=("embedding_regression",),
)
class LEAF(Method):
    """LEAF: regress the teacher's embedding of each unlabelled text, so the student lives in the teacher's space.

    Student embedding y_i = Norm(W_out MeanPool(Transformer(x_i))); target t_i = the teacher's (normalised)
    embedding, precomputed and detached. L = (1/B) sum_i ||y_i - t_i||_2^2, which for unit vectors equals
    (1/B) sum_i (2 - 2 cos(y_i, t_i)). ``reduction="mean"`` divides further by the dimension d (the element-mean
    of sentence-transformers' ``MSELoss``).

    Where W_out lives: a student built with :func:`distill.text.st_models.truncated_student` carries it as a
    ``Dense`` module, so the saved student is self-contained. For students without one, ``projection=True`` makes
    the method own W_out (d_student -> d_teacher, identity-initialised when square) and ``normalize=True`` applies
    Norm after it. No official training code is published (the models MongoDB/mdbr-leaf-* are); the loss follows
    the paper as quoted in the spec, and the rest (data mix, lr, steps) is our choice.
    """

    def __init__(self, projection: bool = False, normalize: bool = False,
                 reduction: Literal["sum", "mean"] = "sum"):
        super().__init__()
        self.use_projection = projection
        self.normalize = normalize
        self.reduction = reduction
        self.projection: nn.Linear | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        d_s = student.logits.shape[-1]
        d_t = teacher.logits.shape[-1] if teacher is not None else d_s
        if self.use_projection:
            self.projection = nn.Linear(d_s, d_t)
            if d_s == d_t:
                with torch.no_grad():
                    self.projection.weight.copy_(torch.eye(d_s))
                    self.projection.bias.zero_()
            self.projection.to(student.logits.device)
        elif d_s != d_t:
            raise ValueError(f"leaf: student embeddings have dim {d_s}, the teacher's {d_t}; give the student a "
                             "projection (truncated_student(projection_dim=...)) or set projection: true")

    def embed(self, y: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            y = self.projection(y)
        return F.normalize(y, dim=-1) if self.normalize else y

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        target = require_teacher(inputs, "leaf").logits.detach()
        y = self.embed(inputs.student.logits)
        return {"loss": embedding_regression(y, target, self.reduction)}


def _group_scores(inputs: StepInputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = inputs.student.logits.float()
    t = require_teacher(inputs, name).logits.detach().float().to(s.device)
    if s.shape != t.shape or s.dim() != 2 or s.shape[1] < 2:
        raise ValueError(f"{name}: student and teacher scores must both be (B, 1 + n) with the positive in "
                         f"column 0; got {tuple(s.shape)} and {tuple(t.shape)}")
    return s, t


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
    """Margin-MSE: match the student's positive-minus-negative score margins to the teacher's.

    With student scores s and raw teacher scores t of shape (B, 1 + n) (positive in column 0, n negatives),
    L = (1/(B n)) sum_b sum_j [(s_b0 - s_bj) - (t_b0 - t_bj)]^2. For n = 1 this is the official
    ``MarginMSELoss`` (mean of squared margin differences); for n > 1 it is the multi-negative form of
    sentence-transformers (labels = positive minus each negative, MSE over B * n). Invariant to adding a
    per-query constant to either model's scores, not to rescaling them. Teacher scores usually come from a
    score file (:class:`~distill.text.teacher_sources.ScoreFileTeacher`).
    """

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        s, t = _group_scores(inputs, "margin_mse")
        return {"loss": margin_mse(s, t)}


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
    over all (B, 1 + n) scores. Unlike Margin-MSE it asks the student to reproduce the teacher's score scale."""

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        s, t = _group_scores(inputs, "score_mse")
        return {"loss": ((s - t) ** 2).mean()}


@register_method(
    "ranking_nll",
    family="ranking",
    paper="Dense Passage Retrieval for Open-Domain Question Answering",
    year=2020,
    arxiv="2004.04906",
    venue="EMNLP",
    repo="https://github.com/facebookresearch/DPR",
    aliases=("label_contrastive",),
)
class RankingNLL(Method):
    """Label-only contrastive ranking loss (DPR with hard negatives), no teacher:
    L = -(1/B) sum_b log [exp(scale * s_{b,y_b}) / sum_j exp(scale * s_bj)] over each (1 + n) group, y_b the
    positive's column (0 for :class:`~distill.tasks.text_retrieval.TextRanking`). DPR scores by dot product
    (``scale = 1``); cosine students usually use ``scale = 20`` (sentence-transformers'
    ``MultipleNegativesRankingLoss``)."""

    needs_teacher = False
    needs_labels = True

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        labels = require_labels(inputs, "ranking_nll")
        return {"loss": F.cross_entropy(self.scale * inputs.student.logits.float(), labels)}
