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

Paper: LEAF: Knowledge Distillation of Text Embedding Models with Teacher-Aligned Representations, 2025,
arXiv:2509.12539.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import Method, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher


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
    """LEAF: regress the teacher's embedding of each unlabelled text, so the student lives in the teacher's space."""

    tasks = frozenset({"embedding"})

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
