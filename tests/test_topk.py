"""Top-k teacher distributions: bucketed divergences against hand values and the dense KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.topk import TopKLogits, bucket_kl, student_bucket_logprobs
from distill.methods.logits import KD


def test_bucket_logprobs_hand_values():
    # teacher probs [0.5, 0.3, 0.1, 0.1]; keep top-2 -> buckets [0.5, 0.3, 0.2]
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    top = TopKLogits.from_logits(p.log(), 2)
    assert top.indices.tolist() == [[0, 1]]
    assert torch.allclose(top.bucket_logprobs().exp(), torch.tensor([[0.5, 0.3, 0.2]]), atol=1e-6)
    # "spread" at T = 2: the tail assumed even (0.1 each), each re-tempered: weights sqrt(.5), sqrt(.3), 2*sqrt(.1)
    w = torch.tensor([math.sqrt(0.5), math.sqrt(0.3), 2 * math.sqrt(0.1)])
    assert torch.allclose(top.bucket_logprobs(2.0, "spread").exp()[0], w / w.sum(), atol=1e-6)
    # the default (DistillKit's symmetric_uniform) re-tempers the tail as one bucket: sqrt(.2)
    w = torch.tensor([math.sqrt(0.5), math.sqrt(0.3), math.sqrt(0.2)])
    assert torch.allclose(top.bucket_logprobs(2.0).exp()[0], w / w.sum(), atol=1e-6)


def test_distillkit_sparse_case_of_the_spec():
    """../shared/methods/llm.md, test 5: V = 5, p = (.5, .3, .1, .06, .04), q = (.3, .3, .2, .1, .1), top-2."""
    from distill.core.outputs import StepInputs
    from distill.methods.llm.fkl import ForwardKL
    from distill.methods.llm.tvd import TotalVariation

    p = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1])
    top = TopKLogits.from_logits(p.log()[None], 2)
    zs = q.log()[None]
    kl = {m: bucket_kl(top.bucket_logprobs(1.0, m), student_bucket_logprobs(zs, top)).item()
          for m in ("zero", "symmetric_uniform")}
    assert kl["zero"] == pytest.approx(0.542410, abs=1e-6)
    assert kl["symmetric_uniform"] == pytest.approx(0.116783, abs=1e-6)
    # through the LM methods: (B, T, V) with T = 2 (the last position is shifted out)
    teacher = ModelOutput(None, topk=TopKLogits(top.indices[None].repeat(1, 2, 1), top.logprobs[None].repeat(1, 2, 1),
                                                5))
    student = ModelOutput(zs[None].repeat(1, 2, 1))
    step = StepInputs(student=student, teacher=teacher, labels=None)
    for mode, want_kl, want_tvd in (("zero", 0.542410, 0.4), ("symmetric_uniform", 0.116783, 0.2)):
        assert ForwardKL(missing=mode)(step)["loss"].item() == pytest.approx(want_kl, abs=1e-5)
        assert TotalVariation(missing=mode)(step)["loss"].item() == pytest.approx(want_tvd, abs=1e-5)
    # with p = (.5, .3, .1, .1) and q = (.4, .2, .2, .2) the tails are proportional: symmetric is the exact KL
    p2, q2 = torch.tensor([0.5, 0.3, 0.1, 0.1]), torch.tensor([0.4, 0.2, 0.2, 0.2])
    top2 = TopKLogits.from_logits(p2.log()[None], 2)
    exact = float((p2 * (p2 / q2).log()).sum())
    assert exact == pytest.approx(0.094582, abs=1e-6)
    got = bucket_kl(top2.bucket_logprobs(), student_bucket_logprobs(q2.log()[None], top2)).item()
    assert got == pytest.approx(exact, abs=1e-6)


def test_distillkit_retempering_of_the_spec():
    """Stored (0.5, 0.3) with a 0.2 tail, a = T_gen / T_distill = 0.5 (T = 2)."""
    top = TopKLogits(torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.3]]).log(), 5)
    sym = top.bucket_logprobs(2.0, "symmetric_uniform").exp()[0]
    assert torch.allclose(sym, torch.tensor([0.415446, 0.321803, 0.262751]), atol=1e-6)
    zero = top.bucket_logprobs(2.0, "zero").exp()[0]
    assert torch.allclose(zero[:2], torch.tensor([0.563508, 0.436492]), atol=1e-6) and zero[2] == 0
    with pytest.raises(ValueError, match="missing must be one of"):
        top.bucket_logprobs(2.0, "uniform")


def test_zero_mode_is_refused_where_the_student_tail_would_meet_log_zero():
    from distill.methods.llm.gjsd import GeneralizedJSD
    from distill.methods.llm.rkl import ReverseKL
    from distill.methods.llm.srkl import SkewReverseKL

    for build in (lambda: ReverseKL(missing="zero"), lambda: GeneralizedJSD(beta=1.0, missing="zero"),
                  lambda: SkewReverseKL(alpha=0.0, missing="zero")):
        with pytest.raises(ValueError, match="missing: 'zero'"):
            build()
    GeneralizedJSD(beta=0.5, missing="zero")  # M keeps half the student's tail: finite


def test_student_buckets_and_kl_match_hand_computation():
    zs = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    q = F.softmax(zs, -1)[0]
    top = TopKLogits(torch.tensor([[3, 0]]), torch.tensor([[math.log(0.6), math.log(0.3)]]), 4)
    sb = student_bucket_logprobs(zs, top).exp()[0]
    assert torch.allclose(sb, torch.stack([q[3], q[0], q[1] + q[2]]), atol=1e-6)
    expected = 0.6 * math.log(0.6 / q[3]) + 0.3 * math.log(0.3 / q[0]) + 0.1 * math.log(0.1 / (q[1] + q[2]))
    kl = bucket_kl(top.bucket_logprobs(), student_bucket_logprobs(zs, top))
    assert kl.item() == pytest.approx(float(expected), abs=1e-6)


def test_full_k_equals_dense_kd_and_small_k_is_a_lower_bound():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g) * 3
    kd = KD(temperature=1.0)
    dense = kd(StepInputs(ModelOutput(zs), ModelOutput(zt), None))["kl"]
    full = kd(StepInputs(ModelOutput(zs), ModelOutput(None, topk=TopKLogits.from_logits(zt, 10)), None))["kl"]
    assert full.item() == pytest.approx(dense.item(), rel=1e-5)
    prev = 0.0
    for k in (1, 3, 6, 9):
        sparse = kd(StepInputs(ModelOutput(zs), ModelOutput(None, topk=TopKLogits.from_logits(zt, k)), None))["kl"]
        assert prev - 1e-6 <= sparse.item() <= dense.item() + 1e-6  # coarser buckets never exceed the dense KL
        prev = sparse.item()


def test_sparse_kd_gradients_reach_student_only():
    zs = torch.randn(4, 7, requires_grad=True)
    zt = torch.randn(4, 7, requires_grad=True)
    top = TopKLogits.from_logits(zt.detach(), 3)
    loss = KD(temperature=4.0)(StepInputs(ModelOutput(zs), ModelOutput(None, topk=top), None))["kl"]
    loss.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def test_methods_needing_dense_logits_refuse_a_topk_teacher():
    from distill.methods.logit_variants import LogitStandardizedKD
    from distill.train.module import DistillModule

    class Sparse:
        def __call__(self, batch, task, taps):
            return ModelOutput(None, topk=TopKLogits.from_logits(torch.randn(len(batch.inputs), 10), 3))

    class Task:
        def forward(self, model, batch):
            return model(batch.inputs)

    from distill.core.batch import Batch
    module = DistillModule(torch.nn.Linear(4, 10), Composite({"lskd": LogitStandardizedKD()}), Sparse(), Task())
    with pytest.raises(ValueError, match=r"top-3 .*\['lskd'\] need dense logits"):
        module.run_teacher(Batch(inputs=torch.randn(2, 4)))


def test_dense_logprobs_spreads_tail_evenly():
    top = TopKLogits(torch.tensor([2]), torch.tensor([math.log(0.7)]), 4)
    assert torch.allclose(top.dense_logprobs().exp(), torch.tensor([0.1, 0.1, 0.7, 0.1]), atol=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        TopKLogits(torch.zeros(5, dtype=torch.long), torch.zeros(5), 4)


def _plain_student_buckets(z: torch.Tensor, top: TopKLogits, t: float) -> torch.Tensor:
    """The bucket formula as plain autograd sees it (what the blocked function with its own gradient replaces)."""
    z = z / t
    log_z = torch.logsumexp(z, -1, keepdim=True)
    idx = top.indices.long()
    tail = (torch.logsumexp(z.scatter(-1, idx, -math.inf), -1, keepdim=True) if top.k < top.num_classes
            else torch.full_like(log_z, -math.inf))
    return torch.cat([z.gather(-1, idx), tail], -1) - log_z


@pytest.mark.parametrize("case", ["t1", "t2", "all_kept", "repeated_ids", "masked_vocab", "many_blocks"])
def test_student_buckets_value_and_gradient_equal_plain_autograd(case):
    gen = torch.Generator().manual_seed(3)
    b, n, v, k, t = 2, 5, 60, 6, 1.0
    if case == "t2":
        t = 2.5
    if case == "all_kept":
        k = v
    if case == "many_blocks":  # more rows than one block of the CPU's (2**20 // v rows)
        b, n, v, k, t = 1, 2500, 1000, 8, 0.7
    z = torch.randn(b, n, v, generator=gen, dtype=torch.float64) * 3
    live = v - 4 if case == "masked_vocab" else v
    if case == "masked_vocab":
        z[..., live:] = -math.inf  # padded vocabulary rows, as align_vocab leaves them
    idx = torch.stack([torch.randperm(live, generator=gen)[:k] for _ in range(b * n)]).reshape(b, n, k)
    if case == "repeated_ids":
        idx[..., 1] = idx[..., 0]
    top = TopKLogits(idx, torch.zeros(b, n, k), v)
    g = torch.randn(b, n, k + 1, generator=gen, dtype=torch.float64)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, want = student_bucket_logprobs(za, top, t), _plain_student_buckets(zb, top, t)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite], want[finite], rtol=0, atol=1e-12)
    (got.where(finite, 0) * g).sum().backward()
    (want.where(finite, 0) * g).sum().backward()
    assert torch.isfinite(za.grad).all()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-9, atol=1e-12)


def test_student_buckets_gradcheck():
    z = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    top = TopKLogits(torch.tensor([[0, 5], [3, 4], [11, 2]]), torch.zeros(3, 2), 12)
    assert torch.autograd.gradcheck(lambda x: student_bucket_logprobs(x, top, 1.7), (z,))
