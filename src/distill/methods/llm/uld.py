"""Universal Logit Distillation (ULD): a distillation term that needs no shared vocabulary.

Paper: Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs (Boizard, El Haddad,
Hudelot, Colombo), 2024, arXiv:2402.12030; code: https://github.com/Nicolas-BZRD/llm-recipes
(``models/distillation_model.py``, ``DistillationLoss``); also TRL's GOLD trainer (``ULDLoss``).

The paper's loss is L = CE(student, its own labels) + lambda * sum_t W1(p_t, q_t), where W1 between a teacher
distribution p over V_T tokens and a student distribution q over V_S tokens is taken with a cost that ignores
token identity, which makes it the L1 distance between the two probability vectors sorted in decreasing order, the
shorter one padded with zeros:

    W_t = sum_{r=1}^{max(V_S, V_T)} | q_(r) - p_(r) |,    q_(1) >= q_(2) >= ...,  p_(1) >= p_(2) >= ...

with q = softmax(z_S / tau_S), p = softmax(z_T / tau_T) (official defaults tau_S = tau_T = 1; the official
``distil_factor`` lambda = 1.5 and ``cross_entropy_factor`` 1). Here this module is the W term only: a recipe
composes it with ``lm_ce`` (weight 1) and gives it the weight lambda, the library's weighted sum of methods.

Which positions are compared (the alignment) is not this module's business: the teacher output it reads is
already placed at the student's positions, with ``teacher.features["aligned"]`` (B, T) marking the positions
that hold a teacher distribution (:mod:`distill.tasks.causal_lm.cross_tokenizer` builds it). Without that feature
every position is aligned (a same-tokenizer teacher). The official code aligns by *index*: the i-th answer token
of the student with the i-th answer token of the teacher, both answer sequences truncated to the shorter one
(``alignment: index`` in ``data.cross_tokenizer``); the default alignment here is by character offsets
(``token_end``: the teacher's distribution after its token j is compared with the student's distribution after
its token ending at the same character, so both predict from the same text prefix) -- a departure from the
official code, stated in ``docs/llm.md``.

Reduction: the mean of W_t over the aligned, loss-bearing positions of the batch (``token_mean``; the official code
takes the mean over each sequence's positions, then over the batch: the same when rows have equal counts), or
``sum``, ``batch_mean`` (sum / B), ``none`` (the masked (B, T - 1) map).

Top-k teacher (:class:`~distill.core.topk.TopKLogits`): the sorted teacher vector is the k stored probabilities,
then the tail mass 1 - sum_k p spread evenly over the V_T - k tokens not kept (each re-tempered alone at tau_T != 1;
none of them can exceed the smallest kept probability, so the vector stays sorted). Only the first V_S ranks meet a
student probability; the teacher's ranks beyond V_S meet zeros and add their mass, 1 - sum_{r <= V_S} p_(r), which
does not depend on how the tail is spread. So at tau_T = 1 with k >= V_S (a 64-character student and a top-128
teacher) the value is *exact*; with k < V_S the ranks k+1..V_S use the evenly spread tail (an approximation).

The teacher never receives a gradient (its probabilities are detached); the sort is differentiable in the
student's values (the gradient flows to whichever token holds each rank).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_teacher
from distill.core.topk import TopKLogits
from distill.methods.llm.divergences import REDUCTIONS, shift_logits, shift_topk, token_mask

Reduction = Literal["token_mean", "sum", "batch_mean", "none"]


def sorted_student_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """q = softmax(z / tau) sorted in decreasing order, (..., V_S); differentiable."""
    q = F.softmax(logits.float() / temperature, dim=-1)
    return q.sort(dim=-1, descending=True).values


def sorted_teacher_head(teacher: torch.Tensor | TopKLogits, m: int,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's m largest probabilities in decreasing order (..., m), zero-padded when V_T < m, and the mass
    beyond rank m (...,); from dense logits (..., V_T) or a top-k store (tail spread evenly, see the module)."""
    if isinstance(teacher, TopKLogits):
        a = 1.0 / temperature
        kept = teacher.logprobs.detach().float().sort(dim=-1, descending=True).values * a
        rest = teacher.num_classes - teacher.k
        if rest > 0:
            tail = teacher.tail_mass().clamp_min(1e-30)
            log_fill = (tail / rest).log() * a  # each missing token, re-tempered alone
            log_z = torch.logaddexp(torch.logsumexp(kept, -1), log_fill + math.log(rest))
            head = (kept - log_z.unsqueeze(-1)).exp()
            n_fill = min(max(m - teacher.k, 0), rest)
            if n_fill:
                fill = (log_fill - log_z).exp().unsqueeze(-1).expand(*head.shape[:-1], n_fill)
                head = torch.cat([head, fill], dim=-1)
        else:
            head = torch.softmax(kept, dim=-1)
    else:
        p = F.softmax(teacher.detach().float() / temperature, dim=-1)
        head = p.sort(dim=-1, descending=True).values
    head = head[..., :m]
    if head.shape[-1] < m:
        head = F.pad(head, (0, m - head.shape[-1]), value=0.0)
    beyond = (1.0 - head.sum(-1)).clamp_min(0.0)
    return head, beyond


def uld_distance(student_logits: torch.Tensor, teacher: torch.Tensor | TopKLogits, student_temperature: float = 1.0,
                 teacher_temperature: float = 1.0) -> torch.Tensor:
    """W = sum_r |q_(r) - p_(r)| over the zero-padded sorted vectors, per position (...,). The student's logits
    (..., V_S) and the teacher's logits (..., V_T) or top-k may have different vocabulary sizes."""
    q = sorted_student_probs(student_logits, student_temperature)
    p, beyond = sorted_teacher_head(teacher, q.shape[-1], teacher_temperature)
    return (q - p).abs().sum(-1) + beyond


@register_method("uld", family="llm", paper="Towards Cross-Tokenizer Distillation: the Universal Logit "
                 "Distillation Loss for LLMs", year=2024, arxiv="2402.12030",
                 repo="https://github.com/Nicolas-BZRD/llm-recipes", aliases=("universal_logit_distillation",))
class ULD(Method):
    """W_t = sum_r |q_(r) - p_(r)|: L1 between the student's and the teacher's probabilities sorted in decreasing
    order (shorter vocabulary zero-padded), averaged over the aligned positions; compose with ``lm_ce`` and weight
    it by lambda (official 1.5). Works across tokenizers (``data.cross_tokenizer``)."""

    tasks = frozenset({"causal_lm"})
    needs_teacher = True
    accepts_topk_teacher = True
    #: compares sorted probabilities, not token ids: allowed when the teacher's tokenizer differs
    cross_tokenizer = True

    def __init__(self, student_temperature: float = 1.0, teacher_temperature: float = 1.0,
                 reduction: Reduction = "token_mean"):
        super().__init__()
        for key, t in (("student_temperature", student_temperature), ("teacher_temperature", teacher_temperature)):
            if t <= 0:
                raise ValueError(f"{key} must be > 0, got {t}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.reduction = reduction

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "uld")
        zs = inputs.student.logits
        b, t = zs.shape[:2]
        if teacher.topk is not None:
            tq: torch.Tensor | TopKLogits = shift_topk(teacher.topk)
            t_len = teacher.topk.indices.shape[1]
        else:
            tq = shift_logits(teacher.logits)
            t_len = teacher.logits.shape[1]
        if t_len != t:
            raise ValueError(f"uld: the teacher's outputs cover {t_len} positions and the student's {t}: place the "
                             "teacher at the student's positions first (data.cross_tokenizer)")
        mask = token_mask(inputs.labels, b, t, zs.device)
        aligned = teacher.features.get("aligned")
        if aligned is not None:
            mask = mask & aligned[:, :-1].to(mask.device).bool()
        d = uld_distance(shift_logits(zs), tq, self.student_temperature, self.teacher_temperature)
        d = torch.where(mask, d, torch.zeros_like(d))
        if self.reduction == "token_mean":
            loss = d.sum() / mask.sum().clamp_min(1)
        elif self.reduction == "sum":
            loss = d.sum()
        elif self.reduction == "batch_mean":
            loss = d.sum() / b
        else:
            loss = d
        return {"loss": loss}
