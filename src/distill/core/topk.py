"""Sparse teacher distributions: the k most likely classes (or tokens) per position plus the mass left over.

A teacher cache or an offline LM dataset may keep only the top-k log-probabilities of each teacher
distribution (DistillKit keeps about 0.15% of a dense LM distribution this way). The probability outside the
top k is not thrown away: every divergence here is computed between the *bucketed* distributions over k + 1
outcomes, the k kept classes and one "tail" bucket holding everything else. For the student the tail bucket is
exact (``logsumexp`` of its logits outside the kept classes); for the teacher it is ``1 - sum(top-k probs)``.
At temperature 1 the bucketed divergence is exact for the coarsened distributions and tends to the dense one as
k grows (by the data-processing inequality, KL on buckets <= dense KL). At another temperature the teacher's
tail would need the unknown individual tail probabilities; we assume the tail mass is spread evenly over the
``num_classes - k`` classes outside the top k, which is exact when they are equal and otherwise an
approximation stated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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

    def bucket_logprobs(self, temperature: float = 1.0) -> torch.Tensor:
        """Teacher log-probabilities over the k + 1 buckets (kept classes, then the tail), at ``temperature``.

        The tail bucket is ``-inf`` when nothing is left (k == num_classes or zero tail mass)."""
        lp = self.logprobs.float()
        rest = self.num_classes - self.k
        tail = self.tail_mass()
        if rest == 0:
            log_tail = torch.full_like(tail, -math.inf)
        else:
            log_tail = torch.where(tail > 0, tail.clamp_min(1e-45).log(), torch.full_like(tail, -math.inf))
        if temperature == 1.0:
            buckets = torch.cat([lp, log_tail.unsqueeze(-1)], dim=-1)
            return buckets - torch.logsumexp(buckets, dim=-1, keepdim=True)
        # each of the `rest` tail classes is assumed to hold tail / rest; tempering raises each to 1/T
        t = float(temperature)
        if rest:
            log_tail_t = math.log(rest) + (log_tail - math.log(rest)) / t
        else:
            log_tail_t = log_tail
        buckets = torch.cat([lp / t, log_tail_t.unsqueeze(-1)], dim=-1)
        return buckets - torch.logsumexp(buckets, dim=-1, keepdim=True)

    def dense_logprobs(self) -> torch.Tensor:
        """A dense (..., V) log-probability tensor with the tail mass spread evenly over the other classes."""
        rest = self.num_classes - self.k
        shape = (*self.indices.shape[:-1], self.num_classes)
        if rest:
            fill = (self.tail_mass().clamp_min(1e-45) / rest).log()
        else:
            fill = torch.full(shape[:-1], -math.inf, device=self.logprobs.device)
        out = fill.unsqueeze(-1).expand(shape).clone()
        return out.scatter(-1, self.indices.long(), self.logprobs.float())


def student_bucket_logprobs(student_logits: torch.Tensor, topk: TopKLogits, temperature: float = 1.0) -> torch.Tensor:
    """Student log-probabilities (at ``temperature``) over the same k + 1 buckets as ``topk``; exact and
    differentiable: the tail bucket is ``logsumexp`` over the classes outside the kept ones."""
    if student_logits.shape[-1] != topk.num_classes:
        raise ValueError(f"student has {student_logits.shape[-1]} classes, the top-k teacher {topk.num_classes}")
    z = student_logits.float() / temperature
    log_z = torch.logsumexp(z, dim=-1, keepdim=True)
    idx = topk.indices.long()
    kept = z.gather(-1, idx)
    if topk.k == topk.num_classes:
        tail = torch.full_like(log_z, -math.inf)
    else:
        masked = z.scatter(-1, idx, -math.inf)
        tail = torch.logsumexp(masked, dim=-1, keepdim=True)
    return torch.cat([kept, tail], dim=-1) - log_z


def bucket_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the last dimension, (...,), with 0 * log 0 = 0 for empty teacher buckets."""
    p = teacher_logp.exp()
    diff = torch.where(p > 0, teacher_logp - student_logp, torch.zeros_like(p))
    return (p * diff).sum(-1)
