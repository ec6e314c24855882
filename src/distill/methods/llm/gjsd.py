"""Generalised Jensen-Shannon divergence in TRL's convention (``GKDTrainer.generalized_jsd_loss`` since PR
#3043): with M = beta p + (1 - beta) q (probability space, not detached),
D = beta KL(p || M) + (1 - beta) KL(q || M) for 0 < beta < 1; beta = 0 is KL(p || q) (forward) and beta = 1 is
KL(q || p) (reverse) exactly. The interior tends to beta * FKL as beta -> 0 and (1 - beta) * RKL as beta -> 1,
so the endpoints are not continuous in scale. DistiLLM's ``js_distance(lambda)`` is this with beta = 1 - lambda.
Top-k teacher: bucketed (an f-divergence).

Paper: On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes (GKD), ICLR 2024,
arXiv:2306.13649; code: https://github.com/huggingface/trl.
"""

from __future__ import annotations

from distill.core.method import register_method
from distill.core.topk import Missing
from distill.methods.llm.chunked import RowKernel, forward_kl_kernel, reverse_kl_kernel
from distill.methods.llm.divergences import Reduction, TokenDivergence, generalized_jsd


@register_method("gjsd", family="llm", paper="On-Policy Distillation of Language Models: Learning from "
                 "Self-Generated Mistakes (GKD)", year=2024, arxiv="2306.13649", venue="ICLR",
                 repo="https://github.com/huggingface/trl", aliases=("jsd", "generalized_jsd"))
class GeneralizedJSD(TokenDivergence):
    """Generalised Jensen-Shannon divergence in TRL's convention (``GKDTrainer.generalized_jsd_loss`` since PR
    #3043): with M = beta p + (1 - beta) q (probability space, not detached),
    D = beta KL(p || M) + (1 - beta) KL(q || M) for 0 < beta < 1; beta = 0 is KL(p || q) (forward) and beta = 1 is
    KL(q || p) (reverse) exactly."""

    name = "gjsd"

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, t2_scale: bool = False,
                 reduction: Reduction = "token_mean", missing: Missing = "symmetric_uniform"):
        super().__init__(temperature, t2_scale, reduction, missing)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if missing == "zero" and beta == 1.0:
            raise ValueError("missing: 'zero' with beta = 1 (reverse KL) weighs the student's tail by log(q / 0); use "
                             "'symmetric_uniform' or beta < 1")
        self.beta = float(beta)

    def divergence(self, q_logp, p_logp):
        return generalized_jsd(q_logp, p_logp, self.beta)

    def chunk_kernel(self) -> RowKernel | None:
        if self.beta == 0.0:
            return forward_kl_kernel(self.temperature)
        if self.beta == 1.0:
            return reverse_kl_kernel(self.temperature)
        return None
