"""Token-level divergences for distilling causal language models (row 16 of the method catalogue).

Notation: z_S, z_T (B, T, V) student and teacher logits; q = softmax(z_S / tau), p = softmax(z_T / tau);
"shift" means position t predicts token t + 1, so logits are cut to [:, :-1] and labels to [:, 1:];
m_bt = [shifted label != -100] is the valid-token mask and N = sum m. KL(a || b) = sum_v a_v (log a_v - log b_v).

Every loss is a per-token divergence D_bt summed over the vocabulary, then reduced over valid tokens
(``token_mean`` = sum m D / max(1, N), the default, as in DistiLLM, TAID and DistillKit; ``sum``; ``batch_mean``
= sum m D / B; ``none`` returns the masked (B, T - 1) map). Softmaxes run in float32; the teacher never gets a
gradient (its outputs are detached here as well as computed under no-grad by the teacher source).

Vocabulary entries where either log-probability is -inf (padding rows masked out by the task, see
:func:`distill.tasks.causal_lm.align_vocab`) are zeroed before the vocabulary sum, as DistiLLM does.

Top-k teachers (an offline store of the k most likely tokens per position, :class:`~distill.core.topk.TopKLogits`):
all divergences below except TAID are f-divergences, so they are computed between the *bucketed* distributions
over k + 1 outcomes (the k stored tokens and one tail bucket holding the rest of the mass; the student tail is
exact). That is the divergence between coarsened distributions: a lower bound of the dense value (data-processing
inequality), exact when student and teacher are proportional inside the tail, with an exact gradient for the
student's bucket masses. TAID's target is a *geometric* mixture of student and teacher, which does not commute with
coarsening; with a top-k teacher TAID uses the densified teacher (tail mass spread evenly over the other tokens,
:meth:`TopKLogits.dense_logprobs`), an approximation stated in
:class:`~distill.methods.llm.taid.TAID`.

This module holds the divergences and the token-level base class shared by ``fkl``, ``rkl``, ``gjsd``,
``tvd``, ``skl``, ``srkl`` and ``taid`` (one module each; ``lm_ce`` is in :mod:`distill.methods.logits.lm_ce`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX
from distill.core.method import Method
from distill.core.outputs import ModelOutput, StepInputs, require_teacher
from distill.core.topk import Missing, TopKLogits, student_bucket_logprobs
from distill.methods.llm.chunked import (
    RowKernel,
    chunked_token_sum,
    dense_kernel_rows,
    normaliser,
    teacher_rows,
)

Reduction = Literal["token_mean", "sum", "batch_mean", "none"]


REDUCTIONS = ("token_mean", "sum", "batch_mean", "none")




#: smallest teacher tail mass of a top-k teacher with k < V (an fp16 store can round the tail to 0)
TAIL_FLOOR = 1e-8


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits at position t predict token t + 1: drop the last position, (B, T, V) -> (B, T - 1, V)."""
    return logits[:, :-1]


def shift_topk(topk: TopKLogits) -> TopKLogits:
    return TopKLogits(topk.indices[:, :-1], topk.logprobs[:, :-1], topk.num_classes)


def token_mask(labels: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """m_bt = [labels[:, 1:] != -100], (B, T - 1) bool; every position counts when there are no labels."""
    if labels is None:
        return torch.ones(batch, length - 1, dtype=torch.bool, device=device)
    if labels.dim() != 2 or labels.shape != (batch, length):
        raise ValueError(f"token labels must be (batch, length) = {(batch, length)}, got {tuple(labels.shape)}")
    return labels[:, 1:] != IGNORE_INDEX


def reduce_tokens(d: torch.Tensor, mask: torch.Tensor, reduction: str,
                  num_tokens: float | None = None) -> torch.Tensor:
    """Reduce a per-token map d (B, T') over the valid tokens ``mask``. ``num_tokens``: what ``token_mean``
    divides by instead of this batch's count (:attr:`distill.core.outputs.StepInputs.num_tokens`)."""
    d = torch.where(mask, d, torch.zeros_like(d))
    if reduction == "token_mean":
        if num_tokens is not None:
            return d.sum() / max(float(num_tokens), 1.0)
        return d.sum() / mask.sum().clamp_min(1)
    if reduction == "sum":
        return d.sum()
    if reduction == "batch_mean":
        return d.sum() / d.shape[0]
    if reduction == "none":
        return d
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _usable(a_logp: torch.Tensor, b_logp: torch.Tensor) -> torch.Tensor:
    """Entries where neither log-probability is -inf (NaN is kept, so it propagates loudly)."""
    return ~(torch.isneginf(a_logp) | torch.isneginf(b_logp))


def _no_neginf(a_logp: torch.Tensor, b_logp: torch.Tensor) -> bool:
    """True when neither tensor holds -inf (nor NaN or +inf), checked by two sums (no tensor of the inputs' size
    is allocated): then the guarded formulas below equal the plain ones value for value, and the plain ones skip
    the masks, which cost as much as the divergence itself over a large vocabulary."""
    return bool(torch.isfinite(a_logp.detach().sum() + b_logp.detach().sum()))


def _xlogy_diff(a_logp: torch.Tensor, b_logp: torch.Tensor) -> torch.Tensor:
    """Elementwise a * (log a - log b) with 0 where either side is -inf (a = 0, or a masked vocab row / an empty
    bucket, zeroed as DistiLLM does). Masked entries are replaced by 0 *before* the arithmetic, so no inf or NaN
    enters the graph and the gradient stays finite. Without any -inf entry: the plain product (the same values)."""
    if _no_neginf(a_logp, b_logp):
        return a_logp.exp() * (a_logp - b_logp)
    ok = _usable(a_logp, b_logp)
    zero = torch.zeros_like(a_logp)
    a_s, b_s = torch.where(ok, a_logp, zero), torch.where(ok, b_logp, zero)
    return torch.where(ok, a_s.exp() * (a_s - b_s), zero)


def kl(a_logp: torch.Tensor, b_logp: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dim."""
    return _xlogy_diff(a_logp, b_logp).sum(-1)


def cross_entropy_form(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """-sum_v p_v log q_v (KL(p || q) + H(p): same gradient in q, different value)."""
    if _no_neginf(p_logp, q_logp):
        return -(p_logp.exp() * q_logp).sum(-1)
    ok = _usable(p_logp, q_logp)
    zero = torch.zeros_like(q_logp)
    p_s, q_s = torch.where(ok, p_logp, zero), torch.where(ok, q_logp, zero)
    return -torch.where(ok, p_s.exp() * q_s, zero).sum(-1)


#: finite stand-in for -inf inside mixtures (exp underflows to exactly 0 in float32), so logaddexp of two
#: masked entries has a finite gradient
_FLOOR = -1.0e4


def log_mixture(a_logp: torch.Tensor, b_logp: torch.Tensor, wa: float) -> torch.Tensor:
    """log(wa * a + (1 - wa) * b), a mixture in probability space (not detached)."""
    if wa <= 0.0:
        return b_logp
    if wa >= 1.0:
        return a_logp
    return torch.logaddexp(a_logp.clamp_min(_FLOOR) + math.log(wa), b_logp.clamp_min(_FLOOR) + math.log1p(-wa))


def forward_kl(q_logp: torch.Tensor, p_logp: torch.Tensor, ce_form: bool = False) -> torch.Tensor:
    """FKL = KL(p || q) (mode covering); ``ce_form``: -sum p log q as DistiLLM's ``forward_kl`` returns."""
    return cross_entropy_form(p_logp, q_logp) if ce_form else kl(p_logp, q_logp)


def reverse_kl(q_logp: torch.Tensor, p_logp: torch.Tensor) -> torch.Tensor:
    """RKL = KL(q || p) (mode seeking)."""
    return kl(q_logp, p_logp)


def generalized_jsd(q_logp: torch.Tensor, p_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's generalised JSD (convention since TRL PR #3043): beta = 0 gives KL(p || q) exactly, beta = 1 gives
    KL(q || p) exactly; otherwise M = beta * p + (1 - beta) * q and D = beta KL(p || M) + (1 - beta) KL(q || M)."""
    if beta == 0.0:
        return kl(p_logp, q_logp)
    if beta == 1.0:
        return kl(q_logp, p_logp)
    m = log_mixture(p_logp, q_logp, beta)
    return beta * kl(p_logp, m) + (1.0 - beta) * kl(q_logp, m)


def total_variation(q_logp: torch.Tensor, p_logp: torch.Tensor) -> torch.Tensor:
    """TVD = 1/2 sum_v |p_v - q_v|."""
    return 0.5 * (p_logp.exp() - q_logp.exp()).abs().sum(-1)


def skew_forward_kl(q_logp: torch.Tensor, p_logp: torch.Tensor, alpha: float, ce_form: bool = False) -> torch.Tensor:
    """DistiLLM's SKL = KL(p || alpha p + (1 - alpha) q); ``ce_form``: -sum p log mix as DistiLLM returns it."""
    mix = log_mixture(p_logp, q_logp, alpha)
    return cross_entropy_form(p_logp, mix) if ce_form else kl(p_logp, mix)


def skew_reverse_kl(q_logp: torch.Tensor, p_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM's SRKL = KL(q || (1 - alpha) p + alpha q)."""
    return kl(q_logp, log_mixture(q_logp, p_logp, alpha))


class TokenDivergence(Method):
    """Base of the token-level LM divergences: shift, temperature, top-k buckets, masking and reduction.

    ``temperature`` divides both logits (TRL applies no tau^2 factor; DistillKit does: ``t2_scale=True``).
    """

    tasks = frozenset({"causal_lm"})

    needs_teacher = True
    accepts_topk_teacher = True
    accepts_hidden_states = True
    name = "divergence"

    #: the divergences that stay finite when the teacher's tail bucket is empty (``missing: zero``)
    zero_tail_ok: bool = True

    def __init__(self, temperature: float = 1.0, t2_scale: bool = False, reduction: Reduction = "token_mean",
                 missing: Missing = "symmetric_uniform"):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if missing == "zero" and not self.zero_tail_ok:
            raise ValueError(f"missing: 'zero' leaves the teacher no tail, where {self.name} weighs the student's "
                             "tail by log(q / 0); use 'symmetric_uniform'")
        self.missing = missing
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.temperature = float(temperature)
        self.t2_scale = bool(t2_scale)
        self.reduction = reduction

    def divergence(self, q_logp: torch.Tensor, p_logp: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def pair_log_probs(self, zs: torch.Tensor, teacher: torch.Tensor | TopKLogits) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher log-probabilities at the temperature, from student logits ``zs`` (..., V) and the
        teacher's logits (..., V) or top-k (..., k) at the same positions: over the vocabulary, or over the k + 1
        buckets of a top-k teacher."""
        zs = zs.float()
        if isinstance(teacher, TopKLogits):
            p_logp = teacher.bucket_logprobs(self.temperature, self.missing).detach()
            if teacher.k < teacher.num_classes and self.missing != "zero":
                # a stored top-k whose probabilities round to a sum of 1 leaves an empty tail bucket although
                # tokens remain; give it at least 1e-8 (DistillKit's clamp) so the student's tail is still scored
                tail = p_logp[..., -1:].clamp_min(math.log(TAIL_FLOOR))
                p_logp = torch.log_softmax(torch.cat([p_logp[..., :-1], tail], dim=-1), dim=-1)
            return student_bucket_logprobs(zs, teacher, self.temperature), p_logp
        zt = teacher.detach().float()
        if zs.shape != zt.shape:
            raise ValueError(f"student logits {tuple(zs.shape)} and teacher logits {tuple(zt.shape)} differ: align "
                             "the vocabularies (distill.tasks.causal_lm.align_vocab) first")
        return F.log_softmax(zs / self.temperature, -1), F.log_softmax(zt / self.temperature, -1)

    def log_probs(self, student: ModelOutput, teacher: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Shifted student and teacher log-probabilities at the temperature (dense logits)."""
        zs = shift_logits(student.logits)
        return self.pair_log_probs(zs, shifted_teacher(teacher, zs.shape[1] + 1))

    def token_divergence(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = require_teacher(inputs, self.name)
        q_logp, p_logp = self.log_probs(inputs.student, teacher)
        b, t = inputs.student.logits.shape[:2]
        mask = token_mask(inputs.labels, b, t, q_logp.device)
        return self.divergence(q_logp, p_logp), mask

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.student.hidden is not None:
            loss = self.chunked_loss(inputs)
        else:
            d, mask = self.dense_kernel_divergence(inputs) or self.token_divergence(inputs)
            loss = reduce_tokens(d, mask, self.reduction, inputs.num_tokens)
        if self.t2_scale:
            loss = loss * self.temperature**2
        return {"loss": loss}

    def dense_kernel_divergence(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`token_divergence` by this divergence's analytic kernel (:func:`.chunked.dense_kernel_rows`) where
        it has one and the teacher is dense; None otherwise."""
        kernel = self.chunk_kernel()
        teacher = require_teacher(inputs, self.name)
        if kernel is None or teacher.is_sparse:
            return None
        zs = shift_logits(inputs.student.logits)
        zt = shifted_teacher(teacher, zs.shape[1] + 1)
        b, t = inputs.student.logits.shape[:2]
        d = dense_kernel_rows(zs, zt, kernel, lambda z, teach: self.divergence(*self.pair_log_probs(z, teach)))
        return d, token_mask(inputs.labels, b, t, zs.device)

    def chunked_loss(self, inputs: StepInputs) -> torch.Tensor:
        """The reduced loss from the student's hidden states and head, chunk by chunk (:mod:`.chunked`)."""
        teacher = require_teacher(inputs, self.name)
        student = inputs.student.hidden
        b, t, _ = student.shape
        mask = token_mask(inputs.labels, b, t, student.hidden.device)
        scale = normaliser(mask, self.reduction, inputs.num_tokens)
        rows = teacher_rows(teacher, t, mask)
        total = chunked_token_sum(student, mask, lambda z, part: self.divergence(*self.pair_log_probs(z, rows(part))),
                                  rows, self.chunk_kernel())
        return total / scale

    def chunk_kernel(self) -> RowKernel | None:
        """The analytic values-and-gradient kernel of this divergence for chunks with a dense teacher
        (:mod:`.chunked`), or None: autograd on each chunk."""
        return None


def shifted_teacher(teacher: ModelOutput, length: int) -> torch.Tensor | TopKLogits:
    """The teacher's logits (B, length - 1, V) or top-k at the shifted positions of a student sequence of
    ``length`` tokens (a teacher stored at the dataset's width is cut to the batch's)."""
    n = length - 1
    if teacher.is_sparse:
        top = teacher.topk
        return TopKLogits(top.indices[:, :n], top.logprobs[:, :n], top.num_classes)
    if teacher.hidden is not None:
        return teacher.hidden.dense()[:, :n].detach()
    return teacher.logits[:, :n].detach()


SURVEY = dict(family="llm", paper="A Survey on Knowledge Distillation of Large Language Models", year=2024,
               arxiv="2402.13116")


DISTILLM = dict(family="llm", paper="DistiLLM: Towards Streamlined Distillation for Large Language Models",
                 year=2024, arxiv="2402.03898", venue="ICML", repo="https://github.com/jongwooko/distillm")
