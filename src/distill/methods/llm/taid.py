"""TAID as SakanaAI/TAID's ``src/distil_losses/taid.py`` computes it.

Target: p_t = softmax((1 - t) sg(z_S) + t z_T) (a geometric mixture q^(1-t) p^t in logit space, the student
detached, fp32, tau = 1). Loss (forward direction, cross-entropy form of KL(p_t || q)):
J = -(1/N) sum_{valid (b, t)} sum_v p_t,v log q_v.

Update of t after each *training* batch, with J.detach() (the batch itself used the old t):
first call: prev <- J; then delta = (prev - J) / (prev + 1e-15), m <- beta m + (1 - beta) delta,
Delta = alpha sigmoid(m) (1 - t), t_lin = t_start + (t_end - t_start) * step / total_steps and
t <- min(t_end, max(t_lin, t + Delta)); prev <- J. ``disable_adaptive``: t = t_lin. step / total_steps is the
trainer's ``progress`` (optimiser steps done / total). t, m and prev are buffers, saved with checkpoints.

Deviation from the official code: there the update also runs on validation batches; here only in training
mode (``self.training``). Teacher log-probs may replace teacher logits (the softmax cancels a per-row shift);
with a top-k teacher the densified distribution (tail spread evenly) is used, an approximation.

Paper: TAID: Temporally Adaptive Interpolated Distillation for Efficient Knowledge Transfer in Language Models, ICLR
2025, arXiv:2501.16937; code: https://github.com/SakanaAI/TAID.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_teacher
from distill.core.topk import TopKLogits, row_block
from distill.methods.llm.chunked import chunked_token_sum, normaliser, teacher_rows
from distill.methods.llm.divergences import (
    cross_entropy_form,
    reduce_tokens,
    shift_logits,
    shifted_teacher,
    token_mask,
)


@register_method("taid", family="llm", paper="TAID: Temporally Adaptive Interpolated Distillation for Efficient "
                 "Knowledge Transfer in Language Models", year=2025, arxiv="2501.16937", venue="ICLR",
                 repo="https://github.com/SakanaAI/TAID")
class TAID(Method):
    """TAID as SakanaAI/TAID's ``src/distil_losses/taid.py`` computes it."""

    tasks = frozenset({"causal_lm"})

    needs_teacher = True
    accepts_topk_teacher = True
    accepts_hidden_states = True

    def __init__(self, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99,
                 disable_adaptive: bool = False):
        super().__init__()
        if not 0.0 <= t_start < 1.0:
            raise ValueError(f"t_start must be in [0, 1), got {t_start}")
        if not 0.0 < t_end <= 1.0:
            raise ValueError(f"t_end must be in (0, 1], got {t_end}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.t_start, self.t_end, self.alpha, self.beta = float(t_start), float(t_end), float(alpha), float(beta)
        self.disable_adaptive = bool(disable_adaptive)
        self.register_buffer("t", torch.tensor(float(t_start), dtype=torch.float64))
        self.register_buffer("m", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("prev", torch.tensor(math.nan, dtype=torch.float64))

    @staticmethod
    def interpolated_target(zs: torch.Tensor, teacher_logp: torch.Tensor, t: float) -> torch.Tensor:
        """log p_t = log_softmax((1 - t) sg(z_S) + t z_T) (teacher logits or log-probs)."""
        return F.log_softmax((1.0 - t) * zs.detach().float() + t * teacher_logp.float(), dim=-1)

    def update(self, loss: float, progress: float) -> None:
        """The official update of t, m and prev after a training batch with loss J = ``loss``."""
        t_lin = self.t_start + (self.t_end - self.t_start) * float(progress)
        if self.disable_adaptive:
            self.t.fill_(min(self.t_end, t_lin))
            self.prev.fill_(loss)
            return
        if math.isnan(float(self.prev)):
            self.prev.fill_(loss)
            return
        prev = float(self.prev)
        delta = (prev - loss) / (prev + 1e-15)
        m = self.beta * float(self.m) + (1.0 - self.beta) * delta
        t = float(self.t)
        step = self.alpha * (1.0 / (1.0 + math.exp(-m))) * (1.0 - t)
        self.m.fill_(m)
        self.t.fill_(min(self.t_end, max(t_lin, t + step)))
        self.prev.fill_(loss)

    def row_loss(self, zs: torch.Tensor, teacher: torch.Tensor | TopKLogits, t: float) -> torch.Tensor:
        """Per-token -sum_v p_t,v log q_v from student logits ``zs`` (..., V) and the teacher's logits or top-k at
        the same positions (a top-k teacher densified: its tail spread evenly), by :func:`taid_rows`."""
        return taid_rows(zs, teacher, t)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        teacher = require_teacher(inputs, "taid")
        t = float(self.t)
        if inputs.student.hidden is not None:
            student = inputs.student.hidden
            b, n, _ = student.shape
            mask = token_mask(inputs.labels, b, n, student.hidden.device)
            rows = teacher_rows(teacher, n, mask)
            total = chunked_token_sum(student, mask, lambda z, part: self.row_loss(z, rows(part), t))
            loss = total / normaliser(mask, "token_mean", inputs.num_tokens)
        else:
            zs = shift_logits(inputs.student.logits)
            d = self.row_loss(zs, shifted_teacher(teacher, zs.shape[1] + 1), t)
            b, n = inputs.student.logits.shape[:2]
            loss = reduce_tokens(d, token_mask(inputs.labels, b, n, zs.device), "token_mean", inputs.num_tokens)
        if self.training:
            self.update(float(loss.detach()), inputs.progress)
        return {"loss": loss}


def taid_rows(zs: torch.Tensor, teacher: torch.Tensor | TopKLogits, t: float) -> torch.Tensor:
    """-sum_v p_t,v log q_v per row of student logits ``zs`` (..., V), with q = softmax(z_S) and
    p_t = softmax((1 - t) sg(z_S) + t z_T) from teacher logits / log-probs (..., V) or a top-k teacher (densified
    block by block, :meth:`TopKLogits.dense_logprobs`). Entries where log p_t or log q is -inf (a padded vocabulary
    row) are left out of the sum, as :func:`~distill.methods.llm.divergences.cross_entropy_form` does.

    As p_t is detached, the gradient is written out: d/dz_v = q_v sum_(u kept) p_t,u - [v kept] p_t,v (q_v - p_t,v
    when nothing is -inf). Rows go in blocks that stay in cache and no autograd graph over the vocabulary is built,
    about 4x faster on a CPU than autograd on the formula (which :func:`taid_rows_reference` keeps, for tests)."""
    v = zs.shape[-1]
    lead = zs.shape[:-1]
    z = (zs if zs.dtype == torch.float64 else zs.float()).reshape(-1, v)
    if isinstance(teacher, TopKLogits):
        k = teacher.k
        top = TopKLogits(teacher.indices.reshape(-1, k), teacher.logprobs.detach().reshape(-1, k), teacher.num_classes)
    else:
        if teacher.shape != zs.shape:
            raise ValueError(f"student logits {tuple(zs.shape)} and teacher logits {tuple(teacher.shape)} differ")
        top = teacher.detach().reshape(-1, v)
    with torch.autocast(z.device.type, enabled=False):  # float32 throughout, whatever autocast is on
        return _TAIDRows.apply(z, top, float(t)).reshape(lead)


def taid_rows_reference(zs: torch.Tensor, teacher: torch.Tensor | TopKLogits, t: float) -> torch.Tensor:
    """:func:`taid_rows` by autograd on the formula (the official code's computation)."""
    zs = zs.float()
    zt = teacher.dense_logprobs() if isinstance(teacher, TopKLogits) else teacher.detach().float()
    target = TAID.interpolated_target(zs, zt.detach(), t)
    return cross_entropy_form(target, F.log_softmax(zs, dim=-1))


class _TAIDRows(torch.autograd.Function):
    """(N, V) student logits, the teacher's (N, V) logits or (N, k) top-k, t -> (N,) TAID row losses; the gradient
    of each row is computed with its value and scaled by the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, teacher: torch.Tensor | TopKLogits, t: float) -> torch.Tensor:  # type: ignore[override]
        n, v = z.shape
        loss = z.new_empty(n)
        grad = torch.empty_like(z)
        step = row_block(v, z.device)
        for a in range(0, n, step):
            b = slice(a, a + step)
            zc = z[b]
            if isinstance(teacher, TopKLogits):
                zt = TopKLogits(teacher.indices[b], teacher.logprobs[b], teacher.num_classes).dense_logprobs()
            else:
                zt = teacher[b]
            zt = zt.to(z.dtype)
            log_p = torch.log_softmax(zt.mul(t).add_(zc, alpha=1.0 - t) if t != 1.0 else zt, -1)
            log_q = zc - torch.logsumexp(zc, -1, keepdim=True)
            p, q = log_p.exp(), log_q.exp()
            if torch.isfinite(log_p.sum() + log_q.sum()):
                loss[b] = -(p * log_q).sum(-1)
                grad[b] = q.sub_(p)
            else:
                ok = ~(torch.isneginf(log_p) | torch.isneginf(log_q))
                p = p.where(ok, 0.0)
                loss[b] = -(p * log_q.where(ok, 0.0)).sum(-1)
                grad[b] = q.mul_(p.sum(-1, keepdim=True)).sub_(p)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype).unsqueeze(-1), None, None

