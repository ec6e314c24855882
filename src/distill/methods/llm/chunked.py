"""Token losses computed from a language model's hidden states and head, a chunk of tokens at a time.

The student's logits are never materialised for the whole batch. Only the valid (loss-bearing) positions are
gathered, (N, H) rows of the final hidden states; the loss walks through them ``chunk_tokens`` rows at a time:
logits of the chunk (chunk, V), the teacher's rows for the same positions (its logits from its own hidden states
and head, or its stored top-k), the per-token divergence, and at once its gradient with respect to the chunk's
logits (autograd on the chunk alone). That gradient is turned into the gradients of the hidden rows
(g @ W) and of the head (g.T @ h) before the next chunk, so a chunk's (chunk, V) tensors are freed when it is done
and nothing of size V is recomputed in the backward pass: :class:`_ChunkedHeadLoss` returns the summed loss and
hands the stored gradients (scaled by the incoming gradient) to autograd.

This is exact: every token's divergence depends only on its own logits row, so the sum over chunks is the sum
over the batch, and the gradients are the dense ones up to float summation order. Its cost is one (V, H) float
buffer for the head's gradient (what the head's ``.grad`` holds anyway). The loss must be a sum of per-token
terms with weights known before the backward pass (``token_mean``, ``sum``, ``batch_mean``); a per-token map
(``reduction: none``) is refused here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distill.core.hidden import HiddenStates
from distill.core.outputs import ModelOutput
from distill.core.topk import TopKLogits

#: per-token loss of a chunk: (student logits rows (n, V) float32, rows slice) -> (n,) values
RowLoss = Callable[[torch.Tensor, slice], torch.Tensor]
#: the teacher's part of a chunk: dense logits rows (n, V) or the stored top-k of those rows
TeacherRows = Callable[[slice], "torch.Tensor | TopKLogits"]


def teacher_rows(teacher: ModelOutput, length: int, mask: torch.Tensor) -> TeacherRows:
    """The teacher's shifted outputs at the valid positions ``mask`` (B, length - 1), served by row range: logits
    computed from its hidden states and head (no gradient), or its dense logits, or its top-k. A teacher wider than
    the student (a cache stored at the dataset's width, served for a batch padded to its own longest row) is cut
    to the student's positions."""
    n = length - 1
    if teacher.hidden is not None:
        states = teacher.hidden
        rows = states.hidden[:, :n][mask].detach()

        def from_hidden(part: slice) -> torch.Tensor:
            with torch.no_grad():
                return states.logits_of(rows[part]).float()

        return from_hidden
    if teacher.is_sparse:
        top = teacher.topk
        idx, lp = top.indices[:, :n][mask], top.logprobs[:, :n][mask].detach()
        return lambda part: TopKLogits(idx[part], lp[part], top.num_classes)
    logits = teacher.logits[:, :n][mask].detach()
    return lambda part: logits[part].float()


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum of ``row_loss`` over the rows of ``hidden_rows`` @ ``weight``.T (+ ``bias``), chunk by chunk; the
    gradients are computed in the forward pass and scaled by the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, hidden_rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                states: HiddenStates, row_loss: RowLoss) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = bias is not None and ctx.needs_input_grad[2]
        grads = want_h or want_w or want_b
        grad_h = torch.zeros_like(hidden_rows) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        grad_b = torch.zeros_like(bias) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden_rows.device)
        step = states.chunk_tokens
        for lo in range(0, hidden_rows.shape[0], step):
            part = slice(lo, min(lo + step, hidden_rows.shape[0]))
            h = hidden_rows[part]
            z = torch.nn.functional.linear(h, weight, bias).float()
            with torch.enable_grad():
                z.requires_grad_(grads)
                d = row_loss(states.align(states.transform(z)), part).sum()
            if grads:
                (g,) = torch.autograd.grad(d, z)
                with torch.autocast(h.device.type, enabled=False):  # in the parameters' own dtypes
                    g = g.to(weight.dtype)
                    if grad_h is not None:
                        grad_h[part] = g @ weight
                    if grad_w is not None:
                        grad_w.addmm_(g.t(), h.to(weight.dtype))
                    if grad_b is not None:
                        grad_b.add_(g.sum(0))
            total += d.detach()
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        out = [next(saved) * grad_out if present else None for present in ctx.present]
        return out[0], out[1], out[2], None, None


def chunked_token_sum(student: HiddenStates, mask: torch.Tensor, row_loss: RowLoss) -> torch.Tensor:
    """sum over the valid positions ``mask`` (B, T - 1) of ``row_loss`` on the student's shifted logits, computed
    from its hidden states chunk by chunk (exact value and gradients; no (B, T, V) tensor)."""
    rows = student.hidden[:, : mask.shape[1]][mask]
    weight, bias = student.head()
    return _ChunkedHeadLoss.apply(rows, weight, bias, student, row_loss)


def normaliser(mask: torch.Tensor, reduction: str, num_tokens: float | None) -> float | torch.Tensor:
    """What a summed token loss is divided by: the step's tokens per micro-batch (``num_tokens``, set by the
    trainer) or this batch's valid tokens for ``token_mean``; the batch size for ``batch_mean``; 1 for ``sum``."""
    if reduction == "token_mean":
        return max(float(num_tokens), 1.0) if num_tokens is not None else mask.sum().clamp_min(1)
    if reduction == "batch_mean":
        return float(mask.shape[0])
    if reduction == "sum":
        return 1.0
    raise ValueError(f"reduction {reduction!r} returns the per-token map, which chunked losses (data.chunk_tokens) "
                     "do not give; use token_mean, sum or batch_mean")
