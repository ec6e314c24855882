"""Reverse KL per token: D = KL(q || p) = sum_v q_v (log q_v - log p_v), mode seeking.
Top-k teacher: bucketed (the student's tail mass is compared with the teacher's tail mass).

Paper: A Survey on Knowledge Distillation of Large Language Models, 2024, arXiv:2402.13116; code:
https://github.com/huggingface/trl.
"""

from __future__ import annotations

from distill.core.method import register_method
from distill.methods.llm.chunked import RowKernel, reverse_kl_kernel
from distill.methods.llm.divergences import SURVEY, TokenDivergence, reverse_kl


@register_method("rkl", **SURVEY, repo="https://github.com/huggingface/trl", aliases=("reverse_kl",))
class ReverseKL(TokenDivergence):
    """Reverse KL per token: D = KL(q || p) = sum_v q_v (log q_v - log p_v), mode seeking."""

    name = "rkl"

    zero_tail_ok = False

    def divergence(self, q_logp, p_logp):
        return reverse_kl(q_logp, p_logp)

    def chunk_kernel(self) -> RowKernel:
        return reverse_kl_kernel(self.temperature)
