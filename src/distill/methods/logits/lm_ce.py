"""L = -(1/N) sum_{valid (b, t)} log q(y_{b, t+1} | y_{b, <=t}): shifted next-token cross-entropy with the
-100 labels (prompt, padding) skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX
from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs
from distill.methods.llm.chunked import chunked_token_sum, normaliser
from distill.methods.llm.divergences import shift_logits


@register_method("lm_ce", family="supervised", paper="Next-token cross-entropy on the data (causal LM)",
                 aliases=("next_token_ce",))
class NextTokenCE(Method):
    """L = -(1/N) sum_{valid (b, t)} log q(y_{b, t+1} | y_{b, <=t}): shifted next-token cross-entropy with the
    -100 labels (prompt, padding) skipped."""

    tasks = frozenset({"causal_lm"})

    needs_teacher = False
    needs_labels = True
    accepts_hidden_states = True

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.labels is None:
            raise ValueError("method 'lm_ce' needs token labels, but the batch has none")
        y = inputs.labels[:, 1:]
        if inputs.student.hidden is not None:
            mask = y != IGNORE_INDEX
            targets = y[mask]
            total = chunked_token_sum(inputs.student.hidden, mask,
                                      lambda z, part: F.cross_entropy(z, targets[part], reduction="none"))
            return {"loss": total / normaliser(mask, "token_mean", inputs.num_tokens)}
        if inputs.num_tokens is not None:
            total = next_token_ce(inputs.student.logits, inputs.labels, reduction="sum")
            return {"loss": total / max(float(inputs.num_tokens), 1.0)}
        return {"loss": next_token_ce(inputs.student.logits, inputs.labels)}


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    z = shift_logits(logits).float()
    y = labels[:, 1:]
    if reduction == "mean" and not bool((y != IGNORE_INDEX).any()):
        return z.sum() * 0.0
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction)
