"""D2DGN: unlearn part of a graph by distilling a student GNN from two frozen teachers (Sinha et al., 2023).

The *preserver* P is the trained model; the *destroyer* D is a randomly initialised, untrained copy. The
student S learns P's outputs on the retained elements and D's on the deleted ones:

  L = alpha * (1/|R|) sum_{r in R} KL(q^P_r || q^S_r) + (1 - alpha) * (1/|F|) sum_{f in F} KL(q^D_f || q^S_f)

where q is softmax(class logits) for node rows (2-D logits), and for link-prediction rows (1-D scores
s = z_u . z_v) the 2-class distribution [sigma(s), 1 - sigma(s)] with sigma clamped to [1e-5, 1 - 1e-5].

The teacher output of a row is P's for retained rows and D's for forgotten rows; which rows are forgotten
comes from the teacher source as the feature ``"forget"`` (a bool/0-1 per row), see
:class:`distill.pipelines.graph_unlearning.PreserverDestroyer`.

**Reconstructed, no official code exists.** Taken from the abstract and a third-party summary (two
teachers, KL, L = alpha L_r + (1 - alpha) L_f) and a third-party re-implementation (OpenGU ``D2DGN``:
untrained destroyer, alpha 0.5, re-initialised student, clamp 1e-5, one fixed negative set). The
per-element means of L_r and L_f, and the student propagating over the retained graph (as GNNDelete's
evaluation does) are our choices; the paper's feature (MSE) variant is not implemented here.

Paper: Distill to Delete: Unlearning in Graph Networks with Knowledge Distillation, 2023, arXiv:2309.16173.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_teacher
from distill.methods.graph.base import kl_rows


def binary_log_probs(scores: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log [s, 1 - s] with s = sigmoid(score) clamped to [eps, 1 - eps] (the link-prediction distribution)."""
    s = torch.sigmoid(scores.float()).clamp(eps, 1.0 - eps)
    return torch.stack([s, 1.0 - s], dim=-1).log()


@register_method(
    "d2dgn",
    family="graph-unlearning",
    paper="Distill to Delete: Unlearning in Graph Networks with Knowledge Distillation",
    year=2023,
    arxiv="2309.16173",
)
class D2DGN(Method):
    """D2DGN: unlearn part of a graph by distilling a student GNN from two frozen teachers (Sinha et al., 2023)."""

    tasks = frozenset({"graph_node_classification"})

    needs_teacher = True
    #: trained inside the edge-unlearning pipeline (its preserver/destroyer teacher is built there), not from a
    #: methods list of a YAML run
    pipeline: ClassVar[str | None] = "distill.pipelines.graph_unlearning"
    needs_labels = False

    def __init__(self, alpha: float = 0.5, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.eps = float(eps)

    def _log_probs(self, z: torch.Tensor) -> torch.Tensor:
        return binary_log_probs(z, self.eps) if z.dim() == 1 else F.log_softmax(z.float(), dim=-1)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "d2dgn")
        forget = teacher.feature("forget").bool().flatten()
        zs, zt = inputs.student.logits, teacher.logits.detach()
        if forget.numel() != zs.shape[0]:
            raise ValueError(f"d2dgn: 'forget' has {forget.numel()} rows, the logits {zs.shape[0]}")
        kl = kl_rows(self._log_probs(zt), self._log_probs(zs))
        zero = zs.sum() * 0.0
        retain = kl[~forget].mean() if bool((~forget).any()) else zero
        forgot = kl[forget].mean() if bool(forget.any()) else zero
        return {"retain": self.alpha * retain, "forget": (1.0 - self.alpha) * forgot}
