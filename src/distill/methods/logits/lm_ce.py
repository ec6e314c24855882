"""L = -(1/N) sum_{valid (b, t)} log q(y_{b, t+1} | y_{b, <=t}): shifted next-token cross-entropy with the
-100 labels (prompt, padding) skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX
from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs
from distill.core.topk import row_block
from distill.methods.llm.chunked import chunked_token_sum, cross_entropy_kernel, normaliser
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
                                      lambda z, part: F.cross_entropy(z, targets[part], reduction="none"),
                                      lambda part, out=None: targets[part], cross_entropy_kernel())
            return {"loss": total / normaliser(mask, "token_mean", inputs.num_tokens)}
        if inputs.num_tokens is not None:
            total = next_token_ce(inputs.student.logits, inputs.labels, reduction="sum")
            return {"loss": total / max(float(inputs.num_tokens), 1.0)}
        return {"loss": next_token_ce(inputs.student.logits, inputs.labels)}


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Shifted cross-entropy over the labels that are not -100 (``mean`` over them, or ``sum``), computed block by
    block with its gradient written out (:class:`_CrossEntropyRows`: the same values and gradient as
    ``F.cross_entropy``, faster over an LM vocabulary on a CPU)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    z = shift_logits(logits)
    y = labels[:, 1:]
    valid = y != IGNORE_INDEX
    if reduction == "mean" and not bool(valid.any()):
        return z.float().sum() * 0.0
    v = z.shape[-1]
    z = (z if z.dtype == torch.float64 else z.float()).reshape(-1, v)
    ids = y.where(valid, 0).reshape(-1)
    if bool(((ids < 0) | (ids >= v)).any()):
        raise ValueError(f"token labels must be in [0, {v}) or -100, got {int(ids.min())}..{int(ids.max())}")
    with torch.autocast(z.device.type, enabled=False):  # float32 throughout, whatever autocast is on
        d = _CrossEntropyRows.apply(z, ids)
    total = d.where(valid.reshape(-1), 0.0).sum()
    return total / valid.sum() if reduction == "mean" else total


class _CrossEntropyRows(torch.autograd.Function):
    """(N, V) logits z, (N,) ids -> (N,) values logsumexp(z) - z_y, a block of rows at a time; the backward pass
    writes g (softmax(z) - onehot(y)) block by block from the saved logits and log-normalisers (no tensor of the
    logits' size besides the gradient)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        n, v = z.shape
        log_z = z.new_empty(n, 1)
        step = row_block(v, z.device)
        for a in range(0, n, step):
            log_z[a:a + step] = torch.logsumexp(z[a:a + step], -1, keepdim=True)
        ctx.save_for_backward(z, ids, log_z)
        return (log_z - z.gather(-1, ids.view(-1, 1))).view(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        z, ids, log_z = ctx.saved_tensors
        n, v = z.shape
        g = g.to(z.dtype).view(-1, 1)
        grad = torch.empty_like(z)
        step = row_block(v, z.device)
        for a in range(0, n, step):
            b = slice(a, a + step)
            torch.sub(z[b], log_z[b], out=grad[b]).exp_().mul_(g[b])
        grad.scatter_add_(-1, ids.view(-1, 1), -g)
        return grad, None
