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
    # at T = 2, tail assumed even (0.1 each): weights sqrt(.5), sqrt(.3), 2*sqrt(.1)
    w = torch.tensor([math.sqrt(0.5), math.sqrt(0.3), 2 * math.sqrt(0.1)])
    assert torch.allclose(top.bucket_logprobs(2.0).exp()[0], w / w.sum(), atol=1e-6)


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
