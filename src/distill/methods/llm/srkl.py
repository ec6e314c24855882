"""DistiLLM's skew reverse KL: D = KL(q || (1 - alpha) p + alpha q), alpha in [0, 1] (default 0.1).
alpha = 0 gives RKL. Top-k teacher: bucketed.

Paper: DistiLLM: Towards Streamlined Distillation for Large Language Models, ICML 2024, arXiv:2402.03898; code:
https://github.com/jongwooko/distillm.
"""

from __future__ import annotations

from distill.core.method import register_method
from distill.core.topk import Missing
from distill.methods.llm.divergences import DISTILLM, Reduction, TokenDivergence, skew_reverse_kl


@register_method("srkl", **DISTILLM, aliases=("skew_rkl", "skew_reverse_kl"))
class SkewReverseKL(TokenDivergence):
    """DistiLLM's skew reverse KL: D = KL(q || (1 - alpha) p + alpha q), alpha in [0, 1] (default 0.1)."""

    name = "srkl"

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, t2_scale: bool = False,
                 reduction: Reduction = "token_mean", missing: Missing = "symmetric_uniform"):
        super().__init__(temperature, t2_scale, reduction, missing)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if missing == "zero" and alpha == 0.0:
            raise ValueError("missing: 'zero' with alpha = 0 (reverse KL) weighs the student's tail by log(q / 0); "
                             "use 'symmetric_uniform' or alpha > 0")
        self.alpha = float(alpha)

    def divergence(self, q_logp, p_logp):
        return skew_reverse_kl(q_logp, p_logp, self.alpha)
