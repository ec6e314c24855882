"""MST-Distill (pipelines.md row 24): the spec's tests -- the balance loss, the mask hook, routing with k = 1, and the
gate's gradients -- plus KL_tau by hand and the stage-1 loss's pairs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.pipelines.mst_distill import (
    GateNet,
    MaskNet,
    balance_loss,
    co_training_loss,
    kl_tau,
    mask_loss,
    masked,
    routed_loss,
)


def test_kl_tau_by_hand():
    p, q = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    tau = 2.0
    a = 1 / (1 + math.exp(-1.0))  # softmax([1, 0])[0]
    want = tau ** 2 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    assert abs(float(kl_tau(p, q, tau)) - want) < 1e-6
    assert float(kl_tau(p, p, tau)) == pytest.approx(0.0, abs=1e-7)


def test_co_training_has_every_ce_and_all_six_directed_pairs_undetached():
    torch.manual_seed(0)
    z = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 0])
    want = sum(F.cross_entropy(t, y) for t in z) + sum(kl_tau(z[j], z[i]) for i in range(3) for j in range(3)
                                                       if i != j)
    loss = co_training_loss(z, y)
    torch.testing.assert_close(loss, want)
    # the pair terms reach both ends (mutual learning): drop the CE and every logit still gets a gradient
    (loss - sum(F.cross_entropy(t, y) for t in z)).backward()
    assert all(float(t.grad.abs().sum()) > 0 for t in z)


def test_balance_loss_is_zero_for_uniform_mean_gates_and_positive_otherwise():
    g = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]])
    assert float(balance_loss(g)) == pytest.approx(0.0, abs=1e-7)
    skew = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4)
    u = 0.25
    want = sum(u * (math.log(u) - math.log(m)) for m in (0.7, 0.1, 0.1, 0.1)) / 4
    assert float(balance_loss(skew)) == pytest.approx(want, rel=1e-6)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Ones(nn.Module):
    def forward(self, f):
        return torch.ones_like(f)


def test_a_mask_of_ones_leaves_the_teachers_logits_unchanged_and_a_real_mask_changes_them():
    torch.manual_seed(0)
    t, x = TwoLayer(), torch.randn(5, 6)
    plain = t(x)
    with masked(t, "fc1", Ones()):
        torch.testing.assert_close(t(x), plain)
    net = MaskNet(12, heads=3, factor=2)
    with masked(t, "fc1", net):
        out = t(x)
    assert not torch.allclose(out, plain)
    torch.testing.assert_close(t(x), plain)  # the hook is gone afterwards
    m = net(torch.randn(5, 12)).detach()
    assert m.shape == (5, 12) and float(m.min()) > 0 and float(m.max()) < 1
    conv = MaskNet(8, heads=2, factor=2, spatial=True)
    assert conv(torch.randn(2, 8, 6, 6)).shape == (2, 8, 1, 1)


def test_mask_loss_steps_the_masknet_only():
    torch.manual_seed(0)
    t, x = TwoLayer(), torch.randn(5, 6)
    for p in t.parameters():
        p.requires_grad_(False)
    s_logits = torch.randn(5, 3, requires_grad=True)
    net = MaskNet(12, heads=3)
    with masked(t, "fc1", net):
        mask_loss(s_logits, t(x)).backward()
    assert s_logits.grad is None
    assert all(p.grad is not None for p in net.parameters())


def test_k1_routing_is_kl_to_each_examples_argmax_teacher_and_the_gate_learns_from_balance_only():
    torch.manual_seed(0)
    b, c, e = 6, 5, 4
    s = torch.randn(b, c, requires_grad=True)
    teachers = torch.randn(e, b, c)
    gate = GateNet(c, e)
    g = gate(s)
    y = torch.randint(0, c, (b,))
    loss, terms = routed_loss(s, y, teachers, g, k=1)
    best = g.argmax(-1)
    want_kd = torch.stack([kl_tau(teachers[best[i], i:i + 1], s[i:i + 1]) for i in range(b)]).mean()
    torch.testing.assert_close(terms["kd"], want_kd.detach())
    assert torch.equal(terms["routes"][:, 0], best)
    # the KD term gives the gate no gradient (top-k is not differentiable): only w_lb does
    loss_kd, _ = routed_loss(s, y, teachers, gate(s), k=1, w_task=0.0, w_lb=0.0)
    gate.zero_grad()
    loss_kd.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in gate.parameters())
    gate.zero_grad()
    loss_lb, _ = routed_loss(s, y, teachers, gate(s), k=1, w_task=0.0, w_kl=0.0)
    loss_lb.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in gate.parameters())
    # k = 2 averages the two best teachers' terms
    g2 = gate(s).detach()
    _, t3 = routed_loss(s, y, teachers, g2, k=2)
    top = g2.topk(2, -1).indices
    want2 = sum(torch.stack([kl_tau(teachers[top[i, j], i:i + 1], s[i:i + 1]) for i in range(b)]).mean()
                for j in range(2)) / 2
    torch.testing.assert_close(t3["kd"], want2.detach())
