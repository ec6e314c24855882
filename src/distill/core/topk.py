"""Sparse teacher distributions: the k most likely classes (or tokens) per position plus the mass left over.

A teacher cache or an offline LM dataset may keep only the top-k log-probabilities of each teacher
distribution (DistillKit keeps about 0.15% of a dense LM distribution this way). The probability outside the
top k is not thrown away: every divergence here is computed between the *bucketed* distributions over k + 1
outcomes, the k kept classes and one "tail" bucket holding everything else. For the student the tail bucket is
exact (``logsumexp`` of its logits outside the kept classes); for the teacher it is ``1 - sum(top-k probs)``.
At temperature 1 the bucketed divergence is exact for the coarsened distributions and tends to the dense one as
k grows (by the data-processing inequality, KL on buckets <= dense KL). At another temperature the teacher's
tail would need the unknown individual tail probabilities. The default follows DistillKit (arcee-ai), whose
``missing`` modes we implement: ``symmetric_uniform`` re-tempers the tail as one bucket (exact when both tails
are proportional over the missing ids), ``zero`` renormalises the teacher over the kept classes; ``spread``
(each missing class holding tail / (V - k), re-tempered alone) is kept as an option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

#: what a top-k teacher puts on the classes it did not keep (see :meth:`TopKLogits.bucket_logprobs`)
Missing = Literal["symmetric_uniform", "zero", "spread"]
MISSING_MODES: tuple[str, ...] = ("symmetric_uniform", "zero", "spread")


@dataclass
class TopKLogits:
    """The k largest teacher log-probabilities per position.

    ``indices``: (..., k) integer class ids; ``logprobs``: (..., k) log-softmax values at temperature 1, normalised
    over all ``num_classes`` classes (so ``exp(logprobs).sum(-1) <= 1``, the rest being the tail mass).
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.indices.shape != self.logprobs.shape:
            raise ValueError(f"top-k indices {tuple(self.indices.shape)} and log-probabilities "
                             f"{tuple(self.logprobs.shape)} differ in shape")
        if self.k > self.num_classes:
            raise ValueError(f"k = {self.k} exceeds the number of classes {self.num_classes}")

    @property
    def k(self) -> int:
        return int(self.indices.shape[-1])

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> TopKLogits:
        """Keep the k most likely classes of dense ``logits`` (..., V)."""
        v = logits.shape[-1]
        if not 1 <= k <= v:
            raise ValueError(f"k must be in [1, {v}], got {k}")
        logp = torch.log_softmax(logits.float(), dim=-1)
        values, idx = logp.topk(k, dim=-1)
        return cls(idx, values, v)

    def to(self, device: torch.device | str) -> TopKLogits:
        return TopKLogits(self.indices.to(device), self.logprobs.to(device), self.num_classes)

    def detach(self) -> TopKLogits:
        return TopKLogits(self.indices, self.logprobs.detach(), self.num_classes)

    def tail_mass(self) -> torch.Tensor:
        """1 - sum of the kept probabilities, (...,), clamped to [0, 1]."""
        return (1.0 - self.logprobs.float().exp().sum(-1)).clamp(0.0, 1.0)

    def bucket_logprobs(self, temperature: float = 1.0, missing: Missing = "symmetric_uniform") -> torch.Tensor:
        """Teacher log-probabilities over the k + 1 buckets (kept classes, then the tail), at ``temperature``.

        ``missing`` says what the teacher puts on the classes it did not keep (DistillKit's ``missing`` modes;
        a = 1 / temperature re-tempers the stored probabilities, which were taken at temperature 1):

        - ``symmetric_uniform``: the tail P_tail = 1 - sum_K p_i is one bucket, re-tempered as one value:
          p_i^a / (sum_K p_j^a + P_tail^a). Exact when both models' tails are proportional over the missing ids.
        - ``zero``: the teacher is renormalised over the kept classes, p_i^a / sum_K p_j^a; the tail bucket is
          empty (``-inf``), so a divergence compares the student's tail mass with nothing (KL: no tail term;
          TVD: + 1/2 (1 - sum_K q_i); JSD: the student's tail against half of itself).
        - ``spread``: the tail mass is spread evenly over the V - k missing classes and each of them is
          re-tempered on its own (the convention of this library before DistillKit's was adopted; equal to
          ``symmetric_uniform`` at temperature 1).

        The tail bucket is ``-inf`` when nothing is left (k == num_classes or zero tail mass)."""
        if missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
        lp = self.logprobs.float()
        t = float(temperature)
        rest = self.num_classes - self.k
        if missing == "zero" or rest == 0:
            kept = torch.log_softmax(lp / t, dim=-1)
            return torch.cat([kept, torch.full_like(kept[..., :1], -math.inf)], dim=-1)
        tail = self.tail_mass()
        log_tail = torch.where(tail > 0, tail.clamp_min(1e-45).log(), torch.full_like(tail, -math.inf))
        if missing == "spread" and t != 1.0:
            log_tail = math.log(rest) + (log_tail - math.log(rest)) / t  # each missing class re-tempered alone
            buckets = torch.cat([lp / t, log_tail.unsqueeze(-1)], dim=-1)
        else:
            buckets = torch.cat([lp, log_tail.unsqueeze(-1)], dim=-1) / t
        return buckets - torch.logsumexp(buckets, dim=-1, keepdim=True)

    def dense_logprobs(self, missing: Missing = "symmetric_uniform") -> torch.Tensor:
        """A dense (..., V) log-probability tensor (DistillKit's densify): the kept log-probabilities, and on the
        missing classes the tail mass spread evenly (``symmetric_uniform`` / ``spread``) or ``-inf`` with the kept
        ones renormalised (``zero``)."""
        if missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
        rest = self.num_classes - self.k
        shape = (*self.indices.shape[:-1], self.num_classes)
        kept = self.logprobs.float()
        if rest and missing != "zero":
            fill = (self.tail_mass().clamp_min(1e-45) / rest).log()
        else:
            fill = torch.full(shape[:-1], -math.inf, device=self.logprobs.device)
            kept = torch.log_softmax(kept, dim=-1)
        out = fill.unsqueeze(-1).expand(shape).clone()
        return out.scatter(-1, self.indices.long(), kept)


def student_bucket_logprobs(student_logits: torch.Tensor, topk: TopKLogits, temperature: float = 1.0) -> torch.Tensor:
    """Student log-probabilities (at ``temperature``) over the same k + 1 buckets as ``topk``; exact and
    differentiable: with z = logits / temperature and K the kept ids, bucket i holds z_(K_i) - logsumexp(z) and the
    tail holds logsumexp(z outside K) - logsumexp(z) (``-inf`` when nothing is left).

    Computed by :class:`_BucketLogProbs` in blocks of rows with its gradient written out, so no tensor of the
    logits' size is made besides the gradient itself (autograd on the plain formula made five, and cost six times
    a cross-entropy over an LM vocabulary)."""
    if student_logits.shape[-1] != topk.num_classes:
        raise ValueError(f"student has {student_logits.shape[-1]} classes, the top-k teacher {topk.num_classes}")
    v, k = topk.num_classes, topk.k
    lead = student_logits.shape[:-1]
    if topk.indices.shape[:-1] != lead:
        raise ValueError(f"top-k positions {tuple(topk.indices.shape[:-1])} differ from the student's {tuple(lead)}")
    z = (student_logits if student_logits.dtype == torch.float64 else student_logits.float()).reshape(-1, v)
    idx = topk.indices.long().reshape(-1, k)
    with torch.autocast(z.device.type, enabled=False):  # float32 throughout, whatever autocast is on
        out = _BucketLogProbs.apply(z, idx, float(temperature))
    return out.reshape(*lead, k + 1)


def row_block(vocab: int, device: torch.device) -> int:
    """Rows per block of the blocked row losses over a vocabulary (here and in :mod:`distill.methods.llm`): about
    4 MB of float32 on a CPU (a block stays in cache), 256 MB on an accelerator."""
    return max(1, (2**20 if device.type == "cpu" else 2**26) // vocab)


class _BucketLogProbs(torch.autograd.Function):
    """(N, V) logits z (float32 or float64), (N, k) kept ids -> (N, k + 1) bucket log-probabilities at temperature t.

    With s = softmax(z / t), log Z its normaliser, L_tail = logsumexp_(v not in K) z_v / t and g the incoming
    gradient (G = sum_b g_b): dL/dz_v = (1 / t) (g_(j: K_j = v) - G s_v) for kept v and
    (1 / t) s_v (g_tail e^(log Z - L_tail) - G) for the others (ids repeated in K count once in the tail and once
    per occurrence among the kept buckets, as autograd on the plain formula gives)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, idx: torch.Tensor, t: float) -> torch.Tensor:  # type: ignore[override]
        n, v = z.shape
        k = idx.shape[1]
        log_z = z.new_empty(n, 1)
        tail = z.new_full((n, 1), -math.inf)
        step = row_block(v, z.device)
        for a in range(0, n, step):
            zc = z[a:a + step]
            zc = zc / t if t != 1.0 else zc
            log_z[a:a + step] = torch.logsumexp(zc, -1, keepdim=True)
            if k < v:
                tail[a:a + step] = torch.logsumexp(zc.scatter(-1, idx[a:a + step], -math.inf), -1, keepdim=True)
        kept = z.gather(-1, idx)
        kept = kept / t if t != 1.0 else kept
        ctx.save_for_backward(z, idx, log_z, tail)
        ctx.t = t
        return torch.cat([kept, tail], -1) - log_z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        z, idx, log_z, tail = ctx.saved_tensors
        t = ctx.t
        n, v = z.shape
        g = g.to(z.dtype)
        g_kept, g_tail = g[:, :-1], g[:, -1:]
        total = g.sum(-1, keepdim=True)
        finite = torch.isfinite(tail)  # a row with nothing outside K has no tail gradient
        ratio = torch.where(finite, (log_z - tail.where(finite, log_z)).exp(), torch.zeros_like(tail))
        rest = g_tail * ratio - total  # factor of s_v for every v outside K
        grad = torch.empty_like(z)
        step = row_block(v, z.device)
        for a in range(0, n, step):
            b = slice(a, a + step)
            zc = z[b] / t if t != 1.0 else z[b]
            s = (zc - log_z[b]).exp_()
            gc = s.mul(rest[b])
            gc.scatter_(-1, idx[b], -total[b] * s.gather(-1, idx[b]))
            gc.scatter_add_(-1, idx[b], g_kept[b])
            grad[b] = gc / t if t != 1.0 else gc
        return grad, None, None


def bucket_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the last dimension, (...,), with 0 * log 0 = 0 for empty teacher buckets."""
    p = teacher_logp.exp()
    diff = torch.where(p > 0, teacher_logp - student_logp, torch.zeros_like(p))
    return (p * diff).sum(-1)
