"""The analytic chunk kernels of :mod:`distill.methods.llm.chunked` (forward and reverse KL): their gradient
against finite differences in float64, their values and gradients against the autograd route and the dense
divergences, the chunks they decline (non-finite entries) and that a live-teacher step really runs them."""

from __future__ import annotations

import pytest
import torch

from distill.core.hidden import HiddenStates
from distill.core.outputs import ModelOutput, StepInputs
from distill.methods import METHODS
from distill.methods.llm import chunked
from distill.methods.llm.chunked import (
    chunked_token_sum,
    forward_kl_kernel,
    reverse_kl_kernel,
    teacher_rows,
    total_variation_kernel,
)
from distill.methods.llm.divergences import forward_kl, reverse_kl, total_variation

KERNELS = {"fkl": lambda tau: forward_kl_kernel(tau), "fkl_ce": lambda tau: forward_kl_kernel(tau, ce_form=True),
           "rkl": lambda tau: reverse_kl_kernel(tau), "tvd": lambda tau: total_variation_kernel(tau)}


def reference(name: str, zs: torch.Tensor, zt: torch.Tensor, tau: float) -> torch.Tensor:
    q, p = torch.log_softmax(zs / tau, -1), torch.log_softmax(zt / tau, -1)
    if name == "rkl":
        return reverse_kl(q, p)
    if name == "tvd":
        return total_variation(q, p)
    return forward_kl(q, p, ce_form=name == "fkl_ce")


class KernelLoss(torch.autograd.Function):
    """sum of a kernel's row values, its gradient the kernel's (what gradcheck compares to finite differences)."""

    @staticmethod
    def forward(ctx, zs, zt, kernel):  # type: ignore[override]
        value, grad = kernel(zs.detach().clone(), zt.detach().clone(), torch.empty_like(zs), torch.empty_like(zs))
        ctx.save_for_backward(grad)
        return value.sum()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return grad_out * ctx.saved_tensors[0], None, None


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kernel_gradient_passes_gradcheck_in_float64(name, tau):
    g = torch.Generator().manual_seed(3)
    zs = (3 * torch.randn(4, 9, generator=g, dtype=torch.float64)).requires_grad_(True)
    zt = 3 * torch.randn(4, 9, generator=g, dtype=torch.float64)
    kernel = KERNELS[name](tau)
    assert torch.autograd.gradcheck(lambda z: KernelLoss.apply(z, zt, kernel), (zs,), eps=1e-6, atol=1e-7)
    # and the values are the divergence's
    value, _ = kernel(zs.detach().clone(), zt.clone(), torch.empty_like(zt), torch.empty_like(zt))
    torch.testing.assert_close(value, reference(name, zs.detach(), zt, tau), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_equals_autograd_on_the_dense_divergence_in_float32(name):
    g = torch.Generator().manual_seed(4)
    zs, zt = 4 * torch.randn(6, 1000, generator=g), 4 * torch.randn(6, 1000, generator=g)
    tau = 1.5
    value, grad = KERNELS[name](tau)(zs.clone(), zt.clone(), torch.empty_like(zs), torch.empty_like(zs))
    z = zs.clone().requires_grad_(True)
    want = reference(name, z, zt, tau)
    (want_grad,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(value, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fkl", "fkl_ce", "rkl"])
def test_kernel_declines_rows_with_minus_infinity(name):
    """A -inf logit (a padded head column, an impossible token) gives a chunk the guarded autograd route (the
    KL family: log 0 enters; total variation needs no guard)."""
    zs, zt = torch.randn(3, 20), torch.randn(3, 20)
    zt[1, 4] = -torch.inf
    zs[2, 7] = -torch.inf
    assert KERNELS[name](1.0)(zs.clone(), zt.clone(), torch.empty_like(zs), torch.empty_like(zs)) is None


def chunk_case(seed: int = 0, rows: int = 23, hidden: int = 16, vocab: int = 257, teacher_vocab: int | None = None):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(2, rows, hidden, generator=g)
    ws = (0.5 * torch.randn(vocab, hidden, generator=g)).requires_grad_(True)
    ht = torch.randn(2, rows, hidden + 4, generator=g)
    wt = 0.5 * torch.randn(teacher_vocab or vocab, hidden + 4, generator=g)
    mask = torch.rand(2, rows - 1, generator=g) > 0.3
    return hs, ws, ht, wt, mask


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd"])
@pytest.mark.parametrize("teacher_vocab", [None, 250])
def test_chunked_sum_with_the_kernel_equals_the_autograd_route_and_the_dense_loss(name, teacher_vocab, monkeypatch):
    """The whole chunked sum (head matmuls into buffers, kernel, head gradients) against autograd on each chunk and
    against the dense loss over the full logits; with a teacher head narrower than the vocabulary (-inf columns)
    the kernel declines and the guarded route gives the same as the dense loss."""
    vocab = 257
    hs, ws, ht, wt, mask = chunk_case(teacher_vocab=teacher_vocab, vocab=vocab)
    method = METHODS.get(name)(temperature=1.3)
    teacher = ModelOutput(None, hidden=HiddenStates(ht, wt, None, vocab, 5))  # type: ignore[arg-type]
    calls = {"taken": 0, "declined": 0}
    kernel = method.chunk_kernel()

    def counting(*a):
        out = kernel(*a)
        calls["taken" if out is not None else "declined"] += 1
        return out

    results = []
    rows = teacher_rows(teacher, hs.shape[1], mask)

    def row_loss(z, part):
        return method.divergence(*method.pair_log_probs(z, rows(part)))

    for use_kernel in (True, False):
        h = hs.clone().requires_grad_(True)
        ws.grad = None
        student = HiddenStates(h, ws, None, vocab, 5)
        total = chunked_token_sum(student, mask, row_loss, rows, counting if use_kernel else None)
        (total * 0.7).backward()
        results.append((total.detach(), h.grad, ws.grad.clone()))
    n_chunks = -(-int(mask.sum()) // 5)
    if teacher_vocab is None or name == "tvd":  # tvd has no log of a zero probability: -inf columns are fine
        assert calls == {"taken": n_chunks, "declined": 0}
    else:
        assert calls == {"taken": 0, "declined": n_chunks}
    # dense: full logits, the method's own masked divergence
    h = hs.clone().requires_grad_(True)
    ws.grad = None
    zs = (h @ ws.T)[:, :-1]
    zt = torch.nn.functional.pad(ht @ wt.T, (0, vocab - wt.shape[0]), value=-torch.inf)[:, :-1]
    d = method.divergence(*method.pair_log_probs(zs, zt))
    (d[mask].sum() * 0.7).backward()
    dense = (d[mask].sum().detach(), h.grad, ws.grad.clone())
    for got in results:
        for x, y in zip(got, dense, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_a_live_teacher_fkl_step_runs_the_kernel_on_every_chunk(monkeypatch):
    """The path a distillation step takes: TokenDivergence.chunked_loss hands its kernel to the chunked sum."""
    hs, ws, ht, wt, mask = chunk_case(seed=1)
    seen = []
    real = chunked.chunked_token_sum

    def spy(student, mask, row_loss, teacher=None, kernel=None):
        seen.append(kernel)
        return real(student, mask, row_loss, teacher, kernel)

    monkeypatch.setattr("distill.methods.llm.divergences.chunked_token_sum", spy)
    labels = torch.where(torch.nn.functional.pad(mask, (1, 0), value=True), 5, -100)
    for name, options, has_kernel in (("fkl", {}, True), ("rkl", {}, True), ("gjsd", {"beta": 0.0}, True),
                                      ("gjsd", {"beta": 1.0}, True), ("gjsd", {"beta": 0.5}, False),
                                      ("tvd", {}, True), ("skl", {"alpha": 0.1}, False)):
        seen.clear()
        inputs = StepInputs(ModelOutput(None, hidden=HiddenStates(hs, ws, None, 257, 4)),  # type: ignore[arg-type]
                            ModelOutput(None, hidden=HiddenStates(ht, wt, None, 257, 4)), labels)  # type: ignore[arg-type]
        METHODS.get(name)(**options)(inputs)["loss"].backward()
        assert (seen[0] is not None) == has_kernel, name


@pytest.mark.parametrize("name, options", [("fkl", {}), ("fkl", {"temperature": 2.0, "ce_form": True}),
                                           ("rkl", {}), ("tvd", {"temperature": 1.5}), ("gjsd", {"beta": 0.0}),
                                           ("gjsd", {"beta": 1.0})])
@pytest.mark.parametrize("layout", ["one_block", "many_blocks", "masked_vocab"])
def test_dense_kernel_path_equals_autograd_on_the_formula(name, options, layout):
    """A live (dense) teacher's token loss through the blocked kernels (dense_kernel_divergence) against autograd
    on the guarded formula (token_divergence): values, the reduced loss and the student's gradient; a block with
    -inf entries is declined by the kernel and takes autograd."""
    method = METHODS.get(name)(**options)
    g = torch.Generator().manual_seed(11)
    b, n, v = (2, 6, 30) if layout != "many_blocks" else (2, 700, 1500)  # 2**20 // 1500 = 699 rows a block
    zs = 2 * torch.randn(b, n, v, generator=g, dtype=torch.float64)
    zt = 2 * torch.randn(b, n, v, generator=g, dtype=torch.float64)
    if layout == "masked_vocab":
        zs[..., -2:] = float("-inf")
        zt[..., -2:] = float("-inf")
    labels = torch.randint(0, v, (b, n), generator=g)
    labels[0, 3] = -100
    za, zb = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    fast = method.dense_kernel_divergence(StepInputs(ModelOutput(za), ModelOutput(zt), labels))
    slow = method.token_divergence(StepInputs(ModelOutput(zb), ModelOutput(zt), labels))
    assert fast is not None
    # the autograd route computes in float32 (pair_log_probs), the kernels in the logits' float64
    torch.testing.assert_close(fast[0].to(slow[0].dtype), slow[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(fast[1], slow[1])
    weights = torch.randn(b, n - 1, generator=g, dtype=torch.float64)
    (fast[0] * weights).sum().backward()
    (slow[0] * weights).sum().backward()
    assert torch.isfinite(za.grad).all()
    if name == "tvd":  # sign(q - p) may flip between float32 and float64 where q and p nearly tie
        assert float((za.grad - zb.grad).abs().sum() / zb.grad.abs().sum()) < 1e-4
    else:
        torch.testing.assert_close(za.grad, zb.grad, rtol=1e-5, atol=1e-6)
    full = method(StepInputs(ModelOutput(zs), ModelOutput(zt), labels))["loss"]
    torch.testing.assert_close(full.to(slow[0].dtype), (slow[0] * slow[1]).sum() / slow[1].sum())


def test_dense_kernel_path_is_skipped_without_a_kernel_or_with_a_top_k_teacher():
    from distill.core.topk import TopKLogits

    zs, zt = torch.randn(1, 4, 10), torch.randn(1, 4, 10)
    assert METHODS.get("skl")().dense_kernel_divergence(StepInputs(ModelOutput(zs), ModelOutput(zt), None)) is None
    top = ModelOutput(None, topk=TopKLogits.from_logits(zt, 3))
    assert METHODS.get("fkl")().dense_kernel_divergence(StepInputs(ModelOutput(zs), top, None)) is None


def test_a_top_k_teacher_chunk_computes_the_student_head_once(monkeypatch):
    """The kernels take dense teachers only; with a stored top-k teacher each chunk's student logits are computed
    once (by the autograd route), not first into the kernel's buffer for nothing; the loss is the dense-logits one."""
    from distill.core.topk import TopKLogits

    hs, ws, ht, wt, mask = chunk_case(seed=2)
    calls = []
    real = chunked.head_logits

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "head_logits", spy)
    top = TopKLogits.from_logits(ht @ wt.T, 7)
    labels = torch.where(torch.nn.functional.pad(mask, (1, 0), value=True), 5, -100)
    h = hs.clone().requires_grad_(True)
    inputs = StepInputs(ModelOutput(None, hidden=HiddenStates(h, ws, None, 257, 4)),  # type: ignore[arg-type]
                        ModelOutput(None, topk=top), labels)
    loss = METHODS.get("fkl")()(inputs)["loss"]
    assert len(calls) == -(-int(mask.sum()) // 4)
    dense = METHODS.get("fkl")()(StepInputs(ModelOutput(hs @ ws.T), ModelOutput(None, topk=top), labels))["loss"]
    torch.testing.assert_close(loss, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["one_block", "many_blocks", "masked_vocab", "all_ignored"])
def test_next_token_ce_by_the_kernel_equals_torch_cross_entropy(layout):
    """lm_ce's full-logits path (the blocked CE kernel) against F.cross_entropy with ignore_index: the mean and
    summed loss and the gradient; ignored (-100) positions add nothing; a block whose target logit is -inf is
    declined by the kernel (autograd takes it) and gives what torch gives."""
    import torch.nn.functional as F

    from distill.methods.logits.lm_ce import next_token_ce

    g = torch.Generator().manual_seed(4)
    b, n, v = (2, 6, 30) if layout != "many_blocks" else (2, 700, 1500)
    zs = 2 * torch.randn(b, n, v, generator=g)
    labels = torch.randint(0, v, (b, n), generator=g)
    labels[0, 2] = -100
    if layout == "masked_vocab":
        zs[..., -2:] = float("-inf")
        labels = labels.clamp_max(v - 3)
    if layout == "all_ignored":
        labels[:] = -100
    for reduction in ("mean", "sum"):
        za, zb = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
        got = next_token_ce(za, labels, reduction)
        if layout == "all_ignored" and reduction == "mean":
            want = zb.sum() * 0.0
        else:
            want = F.cross_entropy(zb[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100,
                                   reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        (got * 1.3).backward()
        (want * 1.3).backward()
        torch.testing.assert_close(za.grad, zb.grad, rtol=1e-5, atol=1e-7)
        assert za.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_cross_entropy_kernel_passes_gradcheck_and_the_chunked_path_takes_it(monkeypatch):
    from distill.methods.llm.chunked import cross_entropy_kernel

    g = torch.Generator().manual_seed(6)
    zs = (3 * torch.randn(4, 9, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.tensor([0, 8, 3, 3])
    kernel = cross_entropy_kernel()
    assert torch.autograd.gradcheck(lambda z: KernelLoss.apply(z, y, kernel), (zs,), eps=1e-6, atol=1e-7)
    value, _ = kernel(zs.detach().clone(), y, torch.empty_like(zs), torch.empty_like(zs))
    torch.testing.assert_close(value, torch.nn.functional.cross_entropy(zs.detach(), y, reduction="none"))
    # lm_ce from hidden states: every chunk by the kernel, the same loss and gradients as the full logits
    hs, ws, _, _, mask = chunk_case(seed=3)
    labels = torch.where(torch.nn.functional.pad(mask, (1, 0), value=True), 7, -100)
    calls = {"taken": 0, "declined": 0}
    real = chunked.cross_entropy_kernel

    def counting():
        inner = real()

        def k(*a):
            out = inner(*a)
            calls["taken" if out is not None else "declined"] += 1
            return out
        return k

    monkeypatch.setattr("distill.methods.logits.lm_ce.cross_entropy_kernel", counting)
    ce = METHODS.get("lm_ce")()
    h = hs.clone().requires_grad_(True)
    chunked_loss = ce(StepInputs(ModelOutput(None, hidden=HiddenStates(h, ws, None, 257, 4)), None,  # type: ignore[arg-type]
                                 labels))["loss"]
    chunked_loss.backward()
    assert calls == {"taken": -(-int(mask.sum()) // 4), "declined": 0}
    h2 = hs.clone().requires_grad_(True)
    full = ce(StepInputs(ModelOutput(h2 @ ws.T), None, labels))["loss"]
    full.backward()
    torch.testing.assert_close(chunked_loss, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-6)


def test_blocked_lm_losses_compute_in_float32_under_autocast():
    """bf16 autocast around a step must not reach the blocked losses' row products (the kernels' bmm): values and
    gradients equal the ones computed without autocast."""
    from distill.core.topk import TopKLogits, student_bucket_logprobs
    from distill.methods.llm.taid import taid_rows
    from distill.methods.logits.lm_ce import next_token_ce

    g = torch.Generator().manual_seed(8)
    zs, zt = 3 * torch.randn(2, 9, 400, generator=g), 3 * torch.randn(2, 9, 400, generator=g)
    labels = torch.randint(0, 400, (2, 9), generator=g)
    top = TopKLogits.from_logits(zt, 8)
    losses = {
        "fkl": lambda z: METHODS.get("fkl")()(StepInputs(ModelOutput(z), ModelOutput(zt), None))["loss"],
        "rkl": lambda z: METHODS.get("rkl")()(StepInputs(ModelOutput(z), ModelOutput(zt), None))["loss"],
        "buckets": lambda z: student_bucket_logprobs(z, top).exp()[..., -1].sum(),
        "taid": lambda z: taid_rows(z, top, 0.4).sum(),
        "ce": lambda z: next_token_ce(z, labels),
    }
    for name, loss in losses.items():
        results = []
        for bf16 in (False, True):
            z = zs.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                value = loss(z)
            value.backward()
            results.append((value.detach(), z.grad))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-8, msg=name)
