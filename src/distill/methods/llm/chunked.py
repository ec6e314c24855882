"""Token losses computed from a language model's hidden states and head, a chunk of tokens at a time.

The student's logits are never materialised for the whole batch. Only the valid (loss-bearing) positions are
gathered, (N, H) rows of the final hidden states; the loss walks through them ``chunk_tokens`` rows at a time:
logits of the chunk (chunk, V), the teacher's rows for the same positions (its logits from its own hidden states
and head, or its stored top-k), the per-token divergence, and at once its gradient with respect to the chunk's
logits (by the divergence's analytic kernel, or by autograd on the chunk alone). That gradient is turned into
the gradients of the hidden rows (g @ W) and of the head (g.T @ h) before the next chunk, so a chunk's (chunk, V)
tensors are freed (or reused) when it is done and nothing of size V is recomputed in the backward pass:
:class:`_ChunkedHeadLoss` returns the summed loss and hands the stored gradients (scaled by the incoming gradient)
to autograd.

This is exact: every token's divergence depends only on its own logits row, so the sum over chunks is the sum
over the batch, and the gradients are the dense ones up to float summation order. Its cost is one (V, H) float
buffer for the head's gradient (what the head's ``.grad`` holds anyway) and, with a kernel, four (chunk, V) float32
buffers. The loss must be a sum of per-token
terms with weights known before the backward pass (``token_mean``, ``sum``, ``batch_mean``); a per-token map
(``reduction: none``) is refused here.

Analytic kernels. A divergence whose gradient with respect to the student's logits has a closed form (forward KL:
(q - p) / tau; reverse KL: q (log q - log p - KL) / tau; total variation: q (s - sum_v s_v q_v) / (2 tau),
s = sign(q - p); ``gjsd`` at beta 0 and 1 uses the KL ones) hands a :data:`RowKernel` that computes a chunk's
per-row values and that gradient directly, in place in preallocated (chunk, V) buffers: no autograd graph per
chunk, no saved softmaxes, about half the elementwise passes over the vocabulary, and the same buffers reused by
every chunk (the head products are written into them). A kernel declines a chunk (returns None) where an entry is not
finite (a -inf column of a padded head, an empty probability), and that chunk takes the autograd route with the
guarded formulas of :mod:`.divergences`; divergences without a kernel, and top-k teachers, always take it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from distill.core.hidden import HiddenStates
from distill.core.outputs import ModelOutput
from distill.core.topk import TopKLogits, row_block

#: per-token loss of a chunk: (student logits rows (n, V) float32, rows slice) -> (n,) values
RowLoss = Callable[[torch.Tensor, slice], torch.Tensor]
#: the teacher's part of a chunk: dense logits rows (n, V) or the stored top-k of those rows; ``out``: a (>= n, V)
#: float32 buffer to write dense rows into (the returned tensor is then a view of it, free to be overwritten)
TeacherRows = Callable[..., "torch.Tensor | TopKLogits"]
#: an analytic chunk kernel: (student logits (n, V) float32, teacher logits (n, V) float32 or top-k, two (n, V)
#: scratch buffers) -> (per-row values (n,), gradient of their sum w.r.t. the student logits (n, V)), or None to
#: leave the chunk to the autograd route. It may overwrite its two logits tensors and the buffers.
RowKernel = Callable[[torch.Tensor, "torch.Tensor | TopKLogits", torch.Tensor, torch.Tensor],
                     "tuple[torch.Tensor, torch.Tensor] | None"]


def _plain_float32(*tensors: torch.Tensor | None) -> bool:
    """True when the head's matrix product can be written into a float32 buffer as is (float32 operands, no
    autocast changing its dtype)."""
    if any(t is not None and t.dtype != torch.float32 for t in tensors):
        return False
    device = next(t for t in tensors if t is not None).device.type
    return not torch.is_autocast_enabled(device)


def head_logits(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, vocab_size: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 logits (n, vocab_size) of hidden ``rows`` (n, H) under a head (V_model, H), cut or -inf padded to
    the vocabulary; written into ``out[:n]`` where the head is float32 and as wide as the vocabulary."""
    if weight.shape[0] > vocab_size:
        weight, bias = weight[:vocab_size], None if bias is None else bias[:vocab_size]
    if out is not None and weight.shape[0] == vocab_size and _plain_float32(rows, weight, bias):
        dest = out[: rows.shape[0]]
        if bias is None:
            return torch.mm(rows, weight.t(), out=dest)
        return torch.addmm(bias, rows, weight.t(), out=dest)
    z = torch.nn.functional.linear(rows, weight, bias).float()
    missing = vocab_size - z.shape[-1]
    if missing > 0:
        z = torch.cat([z, z.new_full((z.shape[0], missing), -math.inf)], dim=-1)
    if out is not None:
        return out[: z.shape[0]].copy_(z)
    return z


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a_nv b_nv per row, (n, 1), as a batched matrix product (no (n, V) temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1, 1)


def _shifted_exp(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """In place z <- z - max_v z; out <- exp(z); returns the row sums of out, (n, 1): then log-softmax(z) =
    z - log(sum) and softmax(z) = out / sum."""
    z.sub_(z.amax(-1, keepdim=True))
    torch.exp(z, out=out)
    return out.sum(-1, keepdim=True)


def _tempered_exps(zs: torch.Tensor, zt: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' shared start, in place: both logits divided by tau and shifted by their row max (a and b), q
    and p set to exp(a) and exp(b); returns their row sums (s_a, s_b)."""
    if temperature != 1.0:
        zs.div_(temperature)
        zt.div_(temperature)
    return _shifted_exp(zs, q), _shifted_exp(zt, p)


def forward_kl_kernel(temperature: float, ce_form: bool = False) -> RowKernel:
    """KL(p || q) per row (or -sum p log q with ``ce_form``) and its gradient (q - p) / tau w.r.t. the student's
    logits, with q = softmax(z_S / tau), p = softmax(z_T / tau). With a = z_S / tau - max, b = z_T / tau - max and
    their exp sums s_a, s_b: KL = sum_v p_v (b_v - a_v) + log s_a - log s_b (as sum_v p_v = 1); -sum p log q =
    log s_a - sum_v p_v a_v."""

    def kernel(zs: torch.Tensor, zt: torch.Tensor | TopKLogits, q: torch.Tensor, p: torch.Tensor):
        if isinstance(zt, TopKLogits):
            return None
        sa, sb = _tempered_exps(zs, zt, q, p, temperature)
        if ce_form:
            value = sa.log() - _row_dot(p, zs) / sb
        else:
            value = _row_dot(p, zt.sub_(zs)) / sb + (sa.log() - sb.log())
        if not bool(torch.isfinite(value).all()):
            return None
        q.mul_((sa * temperature).reciprocal())
        q.addcmul_(p, (sb * -temperature).reciprocal())
        return value.view(-1), q

    return kernel


def reverse_kl_kernel(temperature: float) -> RowKernel:
    """KL(q || p) per row and its gradient q_v (log q_v - log p_v - KL) / tau w.r.t. the student's logits. With
    a, b, s_a, s_b as in :func:`forward_kl_kernel`: log q_v - log p_v = (a_v - b_v) + log s_b - log s_a and
    KL = sum_v q_v (a_v - b_v) + log s_b - log s_a."""

    def kernel(zs: torch.Tensor, zt: torch.Tensor | TopKLogits, q: torch.Tensor, p: torch.Tensor):
        if isinstance(zt, TopKLogits):
            return None
        sa, sb = _tempered_exps(zs, zt, q, p, temperature)
        diff = zs.sub_(zt)  # a - b
        const = sb.log() - sa.log()
        value = _row_dot(q, diff) / sa + const
        if not bool(torch.isfinite(value).all()):
            return None
        diff.add_(const - value)  # log q - log p - KL
        q.mul_((sa * temperature).reciprocal())
        q.mul_(diff)
        return value.view(-1), q

    return kernel


def teacher_rows(teacher: ModelOutput, length: int, mask: torch.Tensor) -> TeacherRows:
    """The teacher's shifted outputs at the valid positions ``mask`` (B, length - 1), served by row range: logits
    computed from its hidden states and head (no gradient), or its dense logits, or its top-k. A teacher wider than
    the student (a cache stored at the dataset's width, served for a batch padded to its own longest row) is cut
    to the student's positions."""
    n = length - 1
    if teacher.hidden is not None:
        states = teacher.hidden
        rows = states.hidden[:, :n][mask].detach()
        weight, bias = states.weight.detach(), None if states.bias is None else states.bias.detach()

        def from_hidden(part: slice, out: torch.Tensor | None = None) -> torch.Tensor:
            with torch.no_grad():
                if states.transforms:  # a logit scale or soft-cap after the head (HiddenStates.transform)
                    return states.logits_of(rows[part]).float()
                return head_logits(rows[part], weight, bias, states.vocab_size, out)

        return from_hidden
    if teacher.is_sparse:
        top = teacher.topk
        idx, lp = top.indices[:, :n][mask], top.logprobs[:, :n][mask].detach()
        return lambda part, out=None: TopKLogits(idx[part], lp[part], top.num_classes)
    logits = teacher.logits[:, :n][mask].detach()

    def from_logits(part: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = logits[part]
        return rows.float() if out is None else out[: rows.shape[0]].copy_(rows)

    return from_logits



def total_variation_kernel(temperature: float) -> RowKernel:
    """TVD = 1/2 sum_v |p_v - q_v| per row and its gradient 1/2 q_j (s_j - sum_v s_v q_v) / tau w.r.t. the
    student's logits, s = sign(q - p) (0 where q = p, as autograd's gradient of abs at 0)."""

    def kernel(zs: torch.Tensor, zt: torch.Tensor | TopKLogits, q: torch.Tensor, p: torch.Tensor):
        if isinstance(zt, TopKLogits):
            return None
        sa, sb = _tempered_exps(zs, zt, q, p, temperature)
        q.mul_(sa.reciprocal())
        p.mul_(sb.reciprocal())
        diff = torch.sub(q, p, out=zs)
        sign = torch.sign(diff, out=zt)
        value = 0.5 * _row_dot(sign, diff)
        if not bool(torch.isfinite(value).all()):
            return None
        sign.sub_(_row_dot(sign, q))
        q.mul_(sign).mul_(0.5 / temperature)
        return value.view(-1), q

    return kernel

def cross_entropy_kernel() -> RowKernel:
    """Next-token cross-entropy -log q_y per row and its gradient q - onehot(y) w.r.t. the student's logits; the
    targets y (n,) (valid ids, no ignored rows) come where a teacher's rows would. With a = z - max and s = sum e^a:
    -log q_y = log s - a_y."""

    def kernel(zs: torch.Tensor, y: torch.Tensor | TopKLogits, q: torch.Tensor, p: torch.Tensor):
        if isinstance(y, TopKLogits) or y.is_floating_point():
            return None
        ids = y.view(-1, 1)
        s = _shifted_exp(zs, q)
        value = s.log() - zs.gather(-1, ids)
        if not bool(torch.isfinite(value).all()):
            return None
        q.mul_(s.reciprocal())
        q.scatter_add_(-1, ids, torch.full_like(value, -1.0))
        return value.view(-1), q

    return kernel


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum of ``row_loss`` over the rows of ``hidden_rows`` @ ``weight``.T (+ ``bias``), chunk by chunk; the
    gradients are computed in the forward pass (by ``kernel`` where it takes the chunk, else by autograd on the
    chunk) and scaled by the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, hidden_rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                states: HiddenStates, row_loss: RowLoss, teacher: TeacherRows | None,
                kernel: RowKernel | None) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = bias is not None and ctx.needs_input_grad[2]
        grads = want_h or want_w or want_b
        grad_h = torch.zeros_like(hidden_rows) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        grad_b = torch.zeros_like(bias) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden_rows.device)
        n_rows, step, vocab = hidden_rows.shape[0], states.chunk_tokens, states.vocab_size
        buffers = None
        if kernel is not None and teacher is not None and n_rows and not states.transforms:
            width = min(step, n_rows)  # four (chunk, V) float32 buffers, reused by every chunk
            buffers = torch.empty(4, width, vocab, dtype=torch.float32, device=hidden_rows.device).unbind(0)
        for lo in range(0, n_rows, step):
            part = slice(lo, min(lo + step, n_rows))
            h = hidden_rows[part]
            g = d = None
            if buffers is not None:
                zt = teacher(part, out=buffers[1])
                if isinstance(zt, TopKLogits):  # the kernels take dense teachers only: no head product for nothing
                    buffers = None
                else:
                    zs = head_logits(h, weight, bias, vocab, buffers[0])
                    m = zs.shape[0]
                    # a teacher of another width: the autograd route below refuses it with the vocabularies named
                    other_width = zt.is_floating_point() and zt.shape != zs.shape
                    with torch.autocast(h.device.type, enabled=False):  # the kernels' row dots in float32
                        done = None if other_width else kernel(zs, zt, buffers[2][:m], buffers[3][:m])  # type: ignore[misc]
                    if done is not None:
                        d, g = done[0].sum(), done[1]
            if d is None:
                z = head_logits(h, weight, bias, vocab)
                with torch.enable_grad():
                    z.requires_grad_(grads)
                    d = row_loss(states.transform(z), part).sum()  # the student's logit scale or soft-cap
                if grads:
                    (g,) = torch.autograd.grad(d, z)
            if grads:
                with torch.autocast(h.device.type, enabled=False):  # in the parameters' own dtypes
                    k = min(weight.shape[0], vocab)  # the head's rows inside the vocabulary
                    g, w = g[:, :k].to(weight.dtype), weight[:k]
                    if grad_h is not None:
                        if grad_h.dtype == g.dtype:
                            torch.mm(g, w, out=grad_h[part])
                        else:
                            grad_h[part] = g @ w
                    if grad_w is not None:
                        grad_w[:k].addmm_(g.t(), h.to(weight.dtype))
                    if grad_b is not None:
                        grad_b[:k].add_(g.sum(0))
            total += d.detach()
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        out = [next(saved) * grad_out if present else None for present in ctx.present]
        return out[0], out[1], out[2], None, None, None, None


class _DenseKernelRows(torch.autograd.Function):
    """Per-row values of a divergence between student logits z (N, V) and a dense teacher's (N, V), block by block:
    by ``kernel`` (values and gradient at once, in four block-sized buffers) where it takes the block, else by
    autograd on the block's ``row_loss``. The gradient is kept and scaled by the incoming one in the backward
    pass, so no autograd graph over the vocabulary is built."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, zt: torch.Tensor, kernel: RowKernel,  # type: ignore[override]
                row_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        n, v = z.shape
        values = z.new_empty(n)
        grad = torch.empty_like(z)
        step = row_block(v, z.device)
        buffers = torch.empty(4, min(step, n), v, dtype=z.dtype, device=z.device).unbind(0)
        for lo in range(0, n, step):
            part = slice(lo, min(lo + step, n))
            m = part.stop - lo
            done = kernel(buffers[0][:m].copy_(z[part]), buffers[1][:m].copy_(zt[part]), buffers[2][:m],
                          buffers[3][:m])
            if done is not None:
                values[part], grad[part] = done
                continue
            with torch.enable_grad():
                zc = z[part].detach().requires_grad_(True)
                d = row_loss(zc, zt[part])
                (g,) = torch.autograd.grad(d.sum(), zc)
            values[part], grad[part] = d.detach(), g
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype).unsqueeze(-1), None, None, None


def dense_kernel_rows(zs: torch.Tensor, zt: torch.Tensor, kernel: RowKernel,
                      row_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The per-token divergence map (...,) of student logits ``zs`` (..., V) against a dense teacher's ``zt``
    (detached), computed by a divergence's analytic ``kernel`` block by block (:class:`_DenseKernelRows`);
    ``row_loss(z, zt)`` (autograd) takes the blocks the kernel declines. Same values and gradients as autograd on
    ``row_loss`` over the whole tensor, 2-3x faster over an LM vocabulary on a CPU."""
    v = zs.shape[-1]
    z = zs if zs.dtype == torch.float64 else zs.float()
    if zs.shape != zt.shape:
        raise ValueError(f"student logits {tuple(zs.shape)} and teacher logits {tuple(zt.shape)} differ: align "
                         "the vocabularies (distill.tasks.causal_lm.align_vocab) first")
    t = zt.detach().to(z.dtype)
    with torch.autocast(z.device.type, enabled=False):  # float32 throughout (the kernels' row dots are bmm)
        return _DenseKernelRows.apply(z.reshape(-1, v), t.reshape(-1, v), kernel, row_loss).reshape(zs.shape[:-1])


def chunked_token_sum(student: HiddenStates, mask: torch.Tensor, row_loss: RowLoss,
                      teacher: TeacherRows | None = None, kernel: RowKernel | None = None) -> torch.Tensor:
    """sum over the valid positions ``mask`` (B, T - 1) of ``row_loss`` on the student's shifted logits, computed
    from its hidden states chunk by chunk (exact value and gradients; no (B, T, V) tensor). With ``teacher`` (its
    rows) and ``kernel``: the kernel's values and gradients where it takes a chunk, ``row_loss`` elsewhere."""
    rows = student.hidden[:, : mask.shape[1]][mask]
    return _ChunkedHeadLoss.apply(rows, student.weight, student.bias, student, row_loss, teacher, kernel)


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
