"""Forward KL per token: D = KL(p || q) = sum_v p_v (log p_v - log q_v), mode covering.

``ce_form=True`` returns -sum_v p_v log q_v instead (DistiLLM's ``forward_kl``: same gradient, value shifted by
the teacher entropy). Top-k teacher: bucketed KL (a lower bound, exact gradient on the buckets).

Paper: A Survey on Knowledge Distillation of Large Language Models, 2024, arXiv:2402.13116; code:
https://github.com/huggingface/trl.
"""

from __future__ import annotations

from distill.core.method import register_method
from distill.core.topk import Missing
from distill.methods.llm.chunked import RowKernel, forward_kl_kernel
from distill.methods.llm.divergences import SURVEY, Reduction, TokenDivergence, forward_kl


@register_method("fkl", **SURVEY, repo="https://github.com/huggingface/trl", aliases=("forward_kl",))
class ForwardKL(TokenDivergence):
    """Forward KL per token: D = KL(p || q) = sum_v p_v (log p_v - log q_v), mode covering."""

    name = "fkl"

    def __init__(self, ce_form: bool = False, temperature: float = 1.0, t2_scale: bool = False,
                 reduction: Reduction = "token_mean", missing: Missing = "symmetric_uniform"):
        super().__init__(temperature, t2_scale, reduction, missing)
        self.ce_form = bool(ce_form)

    def divergence(self, q_logp, p_logp):
        return forward_kl(q_logp, p_logp, self.ce_form)

    def chunk_kernel(self) -> RowKernel:
        return forward_kl_kernel(self.temperature, self.ce_form)
