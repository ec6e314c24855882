"""Meta-DMoE (pipelines.md row 22): the expert mask, the aggregator's invariance to the experts' order, the inner
step by hand, ilr = 0, and the second-order gradient into the aggregator against finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.pipelines.meta_dmoe import (
    FeatureAggregator,
    adapt,
    adapted_params,
    drop_expert,
    expert_tokens,
    features_and_logits,
    meta_step,
)


class Tiny(nn.Module):
    def __init__(self, d_in: int = 4, dim: int = 8, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, dim), nn.Tanh())
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def setup(dtype=torch.float32):
    torch.manual_seed(0)
    student = Tiny().to(dtype)
    agg = FeatureAggregator(8, heads=2, dropout=0.0).to(dtype)
    x = torch.randn(10, 4, dtype=dtype)
    y = torch.randint(0, 3, (10,))
    tokens = torch.randn(10, 3, 8, dtype=dtype)
    return student, agg, x, y, tokens


def test_mask_removes_exactly_the_domains_expert_in_order():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    out = drop_expert(tokens, 1)
    assert out.shape == (2, 3, 3)
    assert torch.equal(out, tokens[:, [0, 2, 3]])
    assert drop_expert(tokens, None) is tokens
    with pytest.raises(ValueError, match="outside 0..3"):
        drop_expert(tokens, 4)


def test_aggregator_ignores_the_order_of_the_experts():
    _, agg, _, _, tokens = setup()
    agg.eval()
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(agg(tokens), agg(tokens[:, perm]))


def test_inner_step_by_hand():
    """theta' = theta - a * grad mean((phi - t)^2): for the head (which the inner loss does not reach) theta' =
    theta; for the body, the gradient computed by hand through tanh."""
    student, agg, x, _, tokens = setup(torch.float64)
    agg.eval()
    a = 0.3
    fast = adapted_params(student, agg, x, tokens, a, create_graph=False)
    assert torch.equal(fast["fc.weight"], student.fc.weight) and torch.equal(fast["fc.bias"], student.fc.bias)
    with torch.no_grad():
        t = agg(tokens)
        w, b = student.body[0].weight, student.body[0].bias
        h = torch.tanh(x @ w.T + b)
        dh = 2 * (h - t) / h.numel()  # d mean / d h
        dz = dh * (1 - h * h)
        gw, gb = dz.T @ x, dz.sum(0)
    torch.testing.assert_close(fast["body.0.weight"], w - a * gw)
    torch.testing.assert_close(fast["body.0.bias"], b - a * gb)


def test_zero_inner_lr_is_the_plain_query_loss_and_no_aggregator_gradient():
    student, agg, x, y, tokens = setup()
    loss = meta_step(student, agg, x, y, tokens, domain_expert=0, sup_size=4, inner_lr=0.0)
    with torch.no_grad():
        plain = F.cross_entropy(student(x[4:]), y[4:])
    torch.testing.assert_close(loss, plain)
    loss.backward()
    grads = [p.grad for p in agg.parameters() if p.grad is not None]
    assert all(float(g.abs().max()) == 0.0 for g in grads)
    assert student.body[0].weight.grad is not None and student.fc.weight.grad is not None


def test_second_order_gradient_reaches_the_aggregator_and_matches_finite_differences():
    student, agg, x, y, tokens = setup(torch.float64)
    kw = dict(domain_expert=2, sup_size=5, inner_lr=0.5)
    meta_step(student, agg, x, y, tokens, **kw).backward()
    p = agg.mlp[3].bias  # a parameter the outer loss reaches only through the inner step
    eps = 1e-6
    for i in range(3):
        with torch.no_grad():
            p[i] += eps
        up = float(meta_step(student, agg, x, y, tokens, **kw).detach())
        with torch.no_grad():
            p[i] -= 2 * eps
        down = float(meta_step(student, agg, x, y, tokens, **kw).detach())
        with torch.no_grad():
            p[i] += eps
        assert abs(p.grad[i].item() - (up - down) / (2 * eps)) < 1e-6 * max(1.0, abs(p.grad[i].item())) + 1e-9
    assert float(p.grad.abs().sum()) > 0
    # first order: the inner step is a constant, so the aggregator gets nothing
    agg.zero_grad(set_to_none=True)
    meta_step(student, agg, x, y, tokens, first_order=True, **kw).backward()
    assert all(q.grad is None for q in agg.parameters())


def test_adapt_changes_a_copy_only_and_moves_features_toward_the_teacher():
    student, agg, x, _, tokens = setup()
    agg.eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    adapted = adapt(student, agg, x, tokens, inner_lr=1.0)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    with torch.no_grad():
        t = agg(tokens)
        f0, _ = features_and_logits(student, dict(student.named_parameters()), x)
        f1, _ = features_and_logits(adapted, dict(adapted.named_parameters()), x)
    assert float((f1 - t).pow(2).mean()) < float((f0 - t).pow(2).mean())
    assert torch.equal(adapted.fc.weight, student.fc.weight)


def test_expert_tokens_stack_pooled_features_without_gradients():
    experts = [Tiny(), Tiny()]
    x = torch.randn(5, 4)
    tok = expert_tokens(experts, x)
    assert tok.shape == (5, 2, 8) and not tok.requires_grad
    torch.testing.assert_close(tok[:, 1], experts[1].body(x).detach())
