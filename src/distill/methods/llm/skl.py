"""DistiLLM's skew KL: D = KL(p || alpha p + (1 - alpha) q), alpha in [0, 1] (default 0.1); the mixture is in
probability space and not detached. alpha = 0 gives FKL. DistiLLM returns the cross-entropy form
-sum p log mix (``ce_form=True``); the default is the true KL. Top-k teacher: bucketed.

Paper: DistiLLM: Towards Streamlined Distillation for Large Language Models, ICML 2024, arXiv:2402.03898; code:
https://github.com/jongwooko/distillm.
"""

from __future__ import annotations

from distill.core.method import register_method
from distill.core.topk import Missing
from distill.methods.llm.divergences import DISTILLM, Reduction, TokenDivergence, skew_forward_kl


@register_method("skl", **DISTILLM, aliases=("skew_kl", "skew_forward_kl"))
class SkewForwardKL(TokenDivergence):
    """DistiLLM's skew KL: D = KL(p || alpha p + (1 - alpha) q), alpha in [0, 1] (default 0.1); the mixture is in
    probability space and not detached."""

    name = "skl"

    def __init__(self, alpha: float = 0.1, ce_form: bool = False, temperature: float = 1.0, t2_scale: bool = False,
                 reduction: Reduction = "token_mean", missing: Missing = "symmetric_uniform"):
        super().__init__(temperature, t2_scale, reduction, missing)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.ce_form = bool(ce_form)

    def divergence(self, q_logp, p_logp):
        return skew_forward_kl(q_logp, p_logp, self.alpha, self.ce_form)
