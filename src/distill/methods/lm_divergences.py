"""Deprecated import path, kept for one release; use distill.methods.llm.fkl, distill.methods.llm.gjsd,
distill.methods.llm.rkl, distill.methods.llm.skl, distill.methods.llm.srkl, distill.methods.llm.taid,
distill.methods.llm.tvd, distill.methods.logits.lm_ce.
"""

from distill.core.batch import IGNORE_INDEX
from distill.methods.llm.divergences import (
    REDUCTIONS,
    TAIL_FLOOR,
    Reduction,
    TokenDivergence,
    cross_entropy_form,
    forward_kl,
    generalized_jsd,
    kl,
    log_mixture,
    reduce_tokens,
    reverse_kl,
    shift_logits,
    shift_topk,
    skew_forward_kl,
    skew_reverse_kl,
    token_mask,
    total_variation,
)
from distill.methods.llm.fkl import ForwardKL
from distill.methods.llm.gjsd import GeneralizedJSD
from distill.methods.llm.rkl import ReverseKL
from distill.methods.llm.skl import SkewForwardKL
from distill.methods.llm.srkl import SkewReverseKL
from distill.methods.llm.taid import TAID
from distill.methods.llm.tvd import TotalVariation
from distill.methods.logits.lm_ce import NextTokenCE, next_token_ce

IGNORE = IGNORE_INDEX

__all__ = ["ForwardKL", "GeneralizedJSD", "IGNORE", "NextTokenCE", "REDUCTIONS", "Reduction", "ReverseKL",
    "SkewForwardKL", "SkewReverseKL", "TAID", "TAIL_FLOOR", "TokenDivergence", "TotalVariation",
    "cross_entropy_form", "forward_kl", "generalized_jsd", "kl", "log_mixture", "next_token_ce", "reduce_tokens",
    "reverse_kl", "shift_logits", "shift_topk", "skew_forward_kl", "skew_reverse_kl", "token_mask",
    "total_variation"]
