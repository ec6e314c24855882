"""LEAF, Margin-MSE, pointwise score MSE and the label-only ranking loss: maths on hand-computed values and
gradient flow (student and the method's own parameters get gradients, the teacher never)."""

from __future__ import annotations

import math

import pytest
import torch

from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.retrieval import LEAF, MarginMSE, RankingNLL, ScoreMSE, margin_mse

YAML_EXAMPLES = {
    "leaf": "{name: leaf, reduction: sum}",
    "margin_mse": "{name: margin_mse}",
    "score_mse": "{name: score_mse}",
    "ranking_nll": "{name: ranking_nll, scale: 1.0}",
}


def step(student: torch.Tensor, teacher: torch.Tensor | None = None, labels: torch.Tensor | None = None):
    return StepInputs(ModelOutput(student), ModelOutput(teacher) if teacher is not None else None, labels)


def test_margin_mse_hand_case_and_official_single_negative_form():
    # spec's hand case: student margin 3 - 1 = 2, teacher margin 0.5 - (-0.5) = 1, so L = (2 - 1)^2 = 1
    s = torch.tensor([[3.0, 1.0]])
    t = torch.tensor([[0.5, -0.5]])
    assert MarginMSE()(step(s, t))["loss"].item() == pytest.approx(1.0)
    # two queries, one negative each: margins (2, -1) vs (1, 1) -> ((2-1)^2 + (-1-1)^2) / 2 = 2.5
    s = torch.tensor([[3.0, 1.0], [0.0, 1.0]])
    t = torch.tensor([[0.5, -0.5], [2.0, 1.0]])
    assert MarginMSE()(step(s, t))["loss"].item() == pytest.approx(2.5)


def test_margin_mse_multi_negative_averages_over_b_times_n():
    s = torch.tensor([[2.0, 1.0, 0.0, 4.0]])  # margins 1, 2, -2
    t = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # margins 0, 0, 0
    assert margin_mse(s, t).item() == pytest.approx((1 + 4 + 4) / 3)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    ms, mt = s[:, :1] - s[:, 1:], t[:, :1] - t[:, 1:]
    assert ms.shape == (5, 3) and margin_mse(s, t).item() == pytest.approx(((ms - mt) ** 2).mean().item())


def test_margin_mse_shift_invariant_not_scale_invariant():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    base = margin_mse(s, t)
    shifted = margin_mse(s + torch.randn(4, 1) * 5, t + torch.randn(4, 1) * 7)
    assert torch.allclose(base, shifted, atol=1e-5)
    assert not torch.allclose(base, margin_mse(3 * s, t))


def test_score_mse_is_pointwise_and_not_shift_invariant():
    s = torch.tensor([[3.0, 1.0]])
    t = torch.tensor([[0.5, -0.5]])
    assert ScoreMSE()(step(s, t))["loss"].item() == pytest.approx((2.5**2 + 1.5**2) / 2)
    assert ScoreMSE()(step(t + 1.0, t))["loss"].item() == pytest.approx(1.0)
    assert MarginMSE()(step(t + 1.0, t))["loss"].item() == pytest.approx(0.0)


def test_ranking_nll_hand_value():
    s = torch.tensor([[2.0, 0.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    out = RankingNLL()(step(s, labels=torch.tensor([0])))["loss"]
    assert out.item() == pytest.approx(expected, rel=1e-6)
    scaled = RankingNLL(scale=2.0)(step(s / 2, labels=torch.tensor([0])))["loss"]
    assert scaled.item() == pytest.approx(expected, rel=1e-6)


def test_leaf_loss_is_sum_of_squares_and_two_minus_two_cos_on_unit_vectors():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # ||y1 - t1||^2 = 0.16 + 0.64 = 0.8 = 2 - 2 * 0.6; second row 0 -> mean 0.4
    assert LEAF()(step(y, t))["loss"].item() == pytest.approx(0.4)
    assert LEAF(reduction="mean")(step(y, t))["loss"].item() == pytest.approx(0.4 / 2)
    cos = (y * t).sum(-1)
    assert LEAF()(step(y, t))["loss"].item() == pytest.approx((2 - 2 * cos).mean().item())


def test_leaf_identity_projection_with_equal_embeddings_is_zero_and_shapes():
    t = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    m = LEAF(projection=True, normalize=True)
    m.setup(ModelOutput(t.clone()), ModelOutput(t), RunInfo())
    assert m(step(t.clone(), t))["loss"].item() == pytest.approx(0.0, abs=1e-10)
    wide = LEAF(projection=True)
    wide.setup(ModelOutput(torch.randn(2, 3)), ModelOutput(torch.randn(2, 8)), RunInfo())
    assert wide.projection is not None and wide.projection.weight.shape == (8, 3)
    with pytest.raises(ValueError, match="dim 3, the teacher's 8"):
        LEAF().setup(ModelOutput(torch.randn(2, 3)), ModelOutput(torch.randn(2, 8)), RunInfo())


@pytest.mark.parametrize("method", [MarginMSE(), ScoreMSE()])
def test_ranking_gradients_reach_student_never_teacher(method):
    w = torch.randn(4, 3, requires_grad=True)  # stands for the student's parameters
    s = w * 2.0
    t = torch.randn(4, 3, requires_grad=True)
    method(step(s, t))["loss"].backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert t.grad is None


def test_leaf_gradients_reach_student_and_projection_never_teacher():
    w = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 7, requires_grad=True)
    m = LEAF(projection=True, normalize=True)
    m.setup(ModelOutput(w.detach()), ModelOutput(t.detach()), RunInfo())
    m(step(w * 1.0, t))["loss"].backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert t.grad is None


def test_ranking_methods_reject_misshaped_scores():
    with pytest.raises(ValueError, match=r"margin_mse: .*\(B, 1 \+ n\)"):
        MarginMSE()(step(torch.randn(3, 2), torch.randn(3, 3)))
    with pytest.raises(ValueError, match="needs a teacher"):
        ScoreMSE()(step(torch.randn(3, 2)))
