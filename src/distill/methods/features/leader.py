"""LEADER: an LLM's pooled hidden state distilled into a compact model through a learned projector.

Per example, with u the student's mediator feature (in the paper the *pre-activation* hidden layer of the
student's output head, Linear(3E -> 2E)(ReLU(x))), P a linear projector with bias (d_u -> d_T) trained with the
student and dropped at inference, and h_T the teacher LLM's final-layer hidden state (after the final norm) at the
last non-pad token, detached and cast to fp32:

    L_feat = mean_{d <= d_T} (P(u)_d - h_{T,d})^2          (plain MSE over the d_T dimensions, h_T unnormalised)

and the batch loss is the mean over examples (``torch.nn.MSELoss`` over (B, d_T), as the official code). The
student's own task loss (BCE in the paper, ``ce`` here) is a separate method; the paper's weight alpha is this
method's weight (0.1 in ``main_distill.py``, 0.4 in the released scripts). No temperature is involved.

:func:`last_token_hidden` is the teacher-side pooling of the official code: index (#non-pad - 1) under right
padding. :func:`leader_align_loss` is the paper's optional medication-set / profile alignment term,
cl(X, Y) + cl(Y, X) with cl(X, Y)_j = -log[exp(s_jj/tau) / (sum_i exp(s_ij/tau) - exp(s_jj/tau))], s = cosine
similarity (the positive is *excluded* from the denominator, as in the code); it is specific to medication
recommendation and is offered as a function only, not wired into the training step.

Adaptation (reconstructed for this library, not in the paper): the student and teacher features are named taps;
any teacher whose tap gives a (B, d_T) vector (a cached LLM last-token state, a text teacher's ``pooled``) works.

Paper: Large Language Model Distilling Medication Recommendation Model (Liu et al., 2024, arXiv:2402.02803);
code: https://github.com/liuqidong07/LEADER-pytorch (``models/LEADER.py``, ``trainers/distill_trainer.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs


def last_token_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) hidden states -> (B, d) at index (#non-pad - 1) of each row (right padding assumed)."""
    last = attention_mask.long().sum(1) - 1
    if bool((last < 0).any()):
        raise ValueError("last_token_hidden: a row has no non-pad token")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def leader_feature_loss(projected: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """mean over examples and dimensions of (P(u) - h_T)^2; h_T is detached and cast to fp32."""
    return F.mse_loss(projected.float(), teacher_hidden.detach().float())


def leader_align_loss(x: torch.Tensor, y: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """cl(X, Y) + cl(Y, X), each the mean over columns j of -log[e^{s_jj/tau} / (sum_i e^{s_ij/tau} - e^{s_jj/tau})]
    with s_ij = cos(X_i, Y_j) (the paper's optional alignment term; the positive is left out of the denominator)."""

    def cl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T / tau  # s[i, j] = cos(a_i, b_j)
        pos = s.diagonal()
        others = torch.logsumexp(s.masked_fill(torch.eye(len(s), dtype=torch.bool, device=s.device), float("-inf")),
                                 dim=0)  # log(sum_{i != j} e^{s_ij}) per column j
        return (others - pos).mean()

    return cl(x, y) + cl(y, x)


@register_method(
    "leader",
    family="features",
    paper="Large Language Model Distilling Medication Recommendation Model",
    year=2024,
    arxiv="2402.02803",
    repo="https://github.com/liuqidong07/LEADER-pytorch",
)
class Leader(FeaturePair):
    """LEADER: MSE between a linear projection (with bias) of a student feature and a teacher's pooled hidden
    state; the projector is trained with the student and dropped at inference."""

    tasks = frozenset({"text_classification"})
    method_name = "leader"

    def __init__(self, student: str = "pooled", teacher: str = "pooled"):
        super().__init__()
        self.tap_pair(student, teacher)
        self.projector: nn.Linear | None = None

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        s, t = self.setup_features(student, teacher)
        if s.dim() != 2 or t.dim() != 2:
            raise ValueError(f"leader: the student tap {self.student_feature!r} and the teacher tap "
                             f"{self.teacher_feature!r} must be (batch, dim) vectors, got {tuple(s.shape)} and "
                             f"{tuple(t.shape)}")
        self.projector = nn.Linear(s.shape[1], t.shape[1]).to(s.device)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.projector is None:
            raise RuntimeError("Leader.setup() must run before the first step (the trainer does this)")
        s, t = self.step_features(inputs)
        return {"loss": leader_feature_loss(self.projector(s.float()), t)}
