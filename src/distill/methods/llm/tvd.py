"""Total variation distance per token: D = 1/2 sum_v |p_v - q_v| (DistillKit multiplies by tau^2:
``t2_scale=True``). Top-k teacher: bucketed, i.e. 1/2 (sum_K |p_i - q_i| + |P_tail - Q_tail|).

Paper: A Survey on Knowledge Distillation of Large Language Models, 2024, arXiv:2402.13116; code:
https://github.com/arcee-ai/DistillKit.
"""

from __future__ import annotations

from distill.core.method import register_method
from distill.methods.llm.chunked import RowKernel, total_variation_kernel
from distill.methods.llm.divergences import SURVEY, TokenDivergence, total_variation


@register_method("tvd", **SURVEY, repo="https://github.com/arcee-ai/DistillKit", aliases=("total_variation",))
class TotalVariation(TokenDivergence):
    """Total variation distance per token: D = 1/2 sum_v |p_v - q_v| (DistillKit multiplies by tau^2:
    ``t2_scale=True``)."""

    name = "tvd"

    def divergence(self, q_logp, p_logp):
        return total_variation(q_logp, p_logp)

    def chunk_kernel(self) -> RowKernel:
        return total_variation_kernel(self.temperature)
