"""PLD: Plackett-Luce list-wise distillation (Bassam, Zhu, Bian, arXiv 2506.12542).

Plackett-Luce distillation: one weighted list-wise loss that replaces CE + KD.

With s, t the student and teacher logits and y the label, pi* = (y, j_1, ..., j_{C-1}) puts the label first
and the other classes in descending teacher logit. With q = softmax(t / tau) (teacher constant) and
alpha_k = q_{pi*_k},

    L = (1/B) sum_b sum_{k=1..C} alpha_k * [log sum_{l=k..C} exp(s_{pi*_l}) - s_{pi*_k}].

The student logits are not temperature-scaled; the k = C term is zero. There is no separate CE term and
no mixing weight (add feature losses beside it if wanted). ``weighting`` picks alpha: ``"teacher"`` (PLD),
``"uniform"`` (alpha_k = 1/C, ListMLE / C), ``"onehot"`` (alpha = e_1: exactly cross-entropy),
``"normalized_teacher"`` (P-ListMLE with a decreasing, normalised sequence taken from the teacher: the
teacher's probabilities sorted in descending order; the paper prints alpha_k = q_{pi*_k} / sum_j q_{pi*_j},
which equals PLD's own weights since q sums to 1, so we read it as the sorted, position-wise sequence).

No official code exists: this follows the reference implementation in the paper's Appendix C (ascending
order with the label last and a forward ``logcumsumexp``, equivalent to the descending suffix form used
here) and the paper's equations. Defaults: tau = 1 (the best value in the paper's ImageNet ablation; its
CIFAR-100 runs used tau = 4). Unlabelled rows (label -100) are skipped; soft (B, C) labels use their
argmax as y. Logits of shape (B, C, ...) (dense tasks) are flattened to (N, C) with the labels.

Paper: PLD: A Choice-Theoretic List-Wise Knowledge Distillation, NeurIPS 2025, arXiv:2506.12542.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX
from distill.core.method import CLASSIFICATION_TASKS, Method, register_method
from distill.core.outputs import StepInputs

Weighting = Literal["teacher", "uniform", "onehot", "normalized_teacher"]


def _flatten(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) stays; (B, C, d1, ...) becomes (B * d1 * ..., C), class dimension last (dense tasks)."""
    if logits.ndim == 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def _hard_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class indices; soft (B, C) targets (e.g. after mixup) are reduced to their argmax."""
    if labels.is_floating_point():
        return labels.argmax(-1)
    return labels.reshape(-1)


def teacher_optimal_permutation(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """pi* per row: the label first, then the other classes by descending teacher logit (ties in sort order)."""
    keyed = teacher_logits.detach().float().clone()
    keyed.scatter_(1, labels.unsqueeze(1), float("inf"))
    return torch.sort(keyed, dim=1, descending=True, stable=True).indices


def pld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float = 1.0,
             weighting: Weighting = "teacher", reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """sum_k alpha_k * [logsumexp_{l >= k} s_{pi*_l} - s_{pi*_k}] per row, averaged (or summed) over rows.

    ``student_logits``/``teacher_logits`` are (N, C) and ``labels`` (N,) class indices (no ignored rows).
    The suffix log-sum-exp is ``flip(logcumsumexp(flip(.)))`` of the student logits gathered in pi* order.
    """
    s = student_logits.float()
    n, c = s.shape
    perm = teacher_optimal_permutation(teacher_logits, labels)
    s_perm = s.gather(1, perm)
    suffix_lse = torch.logcumsumexp(s_perm.flip(1), dim=1).flip(1)
    step_nll = suffix_lse - s_perm  # -log P(choose pi*_k among pi*_k..pi*_C); zero at k = C
    with torch.no_grad():
        q = F.softmax(teacher_logits.detach().float() / tau, dim=1)
        if weighting == "teacher":
            alpha = q.gather(1, perm)
        elif weighting == "uniform":
            alpha = torch.full_like(s_perm, 1.0 / c)
        elif weighting == "onehot":
            alpha = torch.zeros_like(s_perm)
            alpha[:, 0] = 1.0
        elif weighting == "normalized_teacher":
            alpha = torch.sort(q, dim=1, descending=True).values
        else:
            raise ValueError(f"unknown weighting {weighting!r}")
    per_row = (alpha * step_nll).sum(1)
    return per_row.mean() if reduction == "mean" else per_row.sum()


@register_method(
    "pld",
    family="logits",
    paper="PLD: A Choice-Theoretic List-Wise Knowledge Distillation",
    year=2025,
    arxiv="2506.12542",
    venue="NeurIPS",
    aliases=("plackett_luce",),
)
class PLD(Method):
    """Plackett-Luce distillation: one weighted list-wise loss that replaces CE + KD."""

    tasks = CLASSIFICATION_TASKS

    needs_labels = True

    def __init__(self, tau: float = 1.0, weighting: Weighting = "teacher", reduction: Literal["mean", "sum"] = "mean"):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)
        self.weighting = weighting
        self.reduction = reduction

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'pld' needs a teacher, but none is configured")
        if inputs.labels is None:
            raise ValueError("method 'pld' needs labels, but the batch has none")
        s = _flatten(inputs.student.logits)
        t = _flatten(inputs.teacher.logits)
        y = _hard_labels(inputs.labels)
        keep = y != IGNORE_INDEX
        if not bool(keep.all()):
            if not bool(keep.any()):
                return {"loss": s.float().sum() * 0.0}
            s, t, y = s[keep], t[keep], y[keep]
        return {"loss": pld_loss(s, t, y, self.tau, self.weighting, self.reduction)}
