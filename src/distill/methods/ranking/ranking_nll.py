"""Label-only contrastive ranking loss (DPR with hard negatives), no teacher:
L = -(1/B) sum_b log [exp(scale * s_{b,y_b}) / sum_j exp(scale * s_bj)] over each (1 + n) group, y_b the
positive's column (0 for :class:`~distill.tasks.text_retrieval.TextRanking`). DPR scores by dot product
(``scale = 1``); cosine students usually use ``scale = 20`` (sentence-transformers'
``MultipleNegativesRankingLoss``).

Paper: Dense Passage Retrieval for Open-Domain Question Answering, EMNLP 2020, arXiv:2004.04906; code:
https://github.com/facebookresearch/DPR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_labels


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
    positive's column (0 for :class:`~distill.tasks.text_retrieval.TextRanking`)."""

    tasks = frozenset({"ranking"})

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
