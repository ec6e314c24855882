"""Maths and gradient-flow tests of CE, KD, FitNet and AT against hand-computed values and restated references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.core.outputs import ModelOutput, StepInputs
from distill.methods.features import AttentionTransfer, FitNet, attention_map, conv_regressor
from distill.methods.logits import KD, CrossEntropy


def step(zs, zt=None, labels=None, fs=None, ft=None):
    return StepInputs(ModelOutput(zs, fs or {}), None if zt is None else ModelOutput(zt, ft or {}), labels)


def torchdistill_kd(zs, zt, y, T, alpha, beta=None, reduction="batchmean"):
    """torchdistill KDLoss restated: the alpha=0 / no-label branch returns the bare KL."""
    kl = nn.KLDivLoss(reduction=reduction)(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1))
    if alpha is None or alpha == 0 or y is None:
        return kl
    beta = 1 - alpha if beta is None else beta
    ce = nn.CrossEntropyLoss(reduction="mean" if reduction == "batchmean" else reduction)(zs, y)
    return alpha * ce + beta * (T**2) * kl


def test_ce_matches_hand_value():
    z = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    assert CrossEntropy()(step(z, labels=y))["loss"].item() == pytest.approx(expected, abs=1e-6)


def test_kd_hand_value_two_classes():
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (3/4, 1/4) at T = 1
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    out = KD(temperature=1.0)(step(zs, zt))
    assert out["kl"].item() == pytest.approx(kl, abs=1e-6)
    out = KD(temperature=2.0, kl_weight=0.5)(step(zs, zt * 2))  # same p_t at T = 2
    assert out["kl"].item() == pytest.approx(0.5 * 4 * kl, abs=1e-6)


@pytest.mark.parametrize("T,alpha,beta", [(4.0, 0.1, 0.9), (1.0, 0.5, None), (4.0, 0.0, None)])
def test_kd_matches_torchdistill(T, alpha, beta):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 10, generator=g) * 3, torch.randn(8, 10, generator=g) * 3
    y = torch.randint(0, 10, (8,), generator=g)
    kl_w = (1 - alpha) if beta is None else beta
    method = KD(temperature=T, ce_weight=alpha, kl_weight=kl_w, torchdistill_compat=True)
    ours = sum(method(step(zs, zt, y)).values())
    assert ours.item() == pytest.approx(torchdistill_kd(zs, zt, y, T, alpha, beta).item(), abs=1e-5)


def test_kd_identical_logits_and_shift_invariance():
    z = torch.randn(5, 7)
    assert KD()(step(z, z.clone()))["kl"].abs().item() < 1e-6
    zt = torch.randn(5, 7)
    a = KD()(step(z, zt))["kl"]
    b = KD()(step(z + torch.randn(5, 1), zt + torch.randn(5, 1)))["kl"]
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_kd_t1_equals_kl_div():
    zs, zt = torch.randn(6, 4), torch.randn(6, 4)
    ref = F.kl_div(F.log_softmax(zs, 1), F.softmax(zt, 1), reduction="batchmean")
    assert KD(temperature=1.0)(step(zs, zt))["kl"].item() == pytest.approx(ref.item(), abs=1e-6)


def test_fitnet_regressor_shapes_and_reductions():
    for hs, ht in [(32, 16), (16, 32), (16, 16), (18, 16)]:
        reg = conv_regressor(torch.Size([2, 8, hs, hs]), torch.Size([2, 12, ht, ht]))
        assert reg(torch.randn(2, 8, hs, hs)).shape == (2, 12, ht, ht)
    with pytest.raises(ValueError, match="no FitNet regressor"):
        conv_regressor(torch.Size([2, 8, 8, 8]), torch.Size([2, 8, 32, 32]))
    fs, ft = torch.randn(2, 4, 8, 8), torch.rand(2, 6, 8, 8)
    mean_m, sum_m = FitNet("a", "b"), FitNet("a", "b", reduction="sum")
    s, t = ModelOutput(torch.zeros(2, 3), {"a": fs}), ModelOutput(torch.zeros(2, 3), {"b": ft})
    mean_m.setup(s, t)
    sum_m.setup(s, t)
    sum_m.load_state_dict(mean_m.state_dict())
    inputs = StepInputs(s, t, None)
    lm, ls = mean_m(inputs)["loss"], sum_m(inputs)["loss"]
    assert ls.item() == pytest.approx(lm.item() * ft.numel(), rel=1e-5)
    ref = nn.MSELoss()(mean_m.regressor(fs), ft)
    assert lm.item() == pytest.approx(ref.item(), abs=1e-6)


def test_attention_map_scale_invariance_and_hand_case():
    a = torch.rand(3, 4, 5, 5)
    assert torch.allclose(attention_map(a), attention_map(2.5 * a), atol=1e-6)
    s = {"f": torch.tensor([[[[1.0, 0.0]]]])}
    t = {"f": torch.tensor([[[[0.0, 1.0]]]])}
    z = torch.zeros(1, 2)
    code = AttentionTransfer(["f"], mode="code")(step(z, z, fs=s, ft=t))["loss"]
    paper = AttentionTransfer(["f"], mode="paper")(step(z, z, fs=s, ft=t))["loss"]
    assert code.item() == pytest.approx(1.0, abs=1e-6)
    assert paper.item() == pytest.approx(math.sqrt(2), abs=1e-6)
    same = AttentionTransfer(["f"])(step(z, z, fs=s, ft=s))["loss"]
    assert same.item() == 0.0


def torchdistill_at(fs_list, ft_list, weights, mode):
    """torchdistill ATLoss restated (p = 2, equal sizes)."""
    total = 0.0
    for fs, ft, w in zip(fs_list, ft_list, weights):
        if mode == "code":
            qs = F.normalize(fs.pow(2).mean(1).view(fs.size(0), -1))
            qt = F.normalize(ft.pow(2).mean(1).view(ft.size(0), -1))
            total = total + w * (qs - qt).pow(2).mean()
        else:
            qs = F.normalize(fs.pow(2).sum(1).view(fs.size(0), -1))
            qt = F.normalize(ft.pow(2).sum(1).view(ft.size(0), -1))
            total = total + w * torch.norm(qs - qt, dim=1).sum()
    return total if mode == "code" else total / fs_list[0].size(0)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_at_matches_torchdistill(mode):
    g = torch.Generator().manual_seed(1)
    fs = [torch.randn(4, 8, 16, 16, generator=g), torch.randn(4, 16, 8, 8, generator=g)]
    ft = [torch.randn(4, 12, 16, 16, generator=g), torch.randn(4, 32, 8, 8, generator=g)]
    names = ["a", "b"]
    m = AttentionTransfer(names, weights=[1.0, 0.5], mode=mode)
    z = torch.zeros(4, 3)
    ours = m(step(z, z, fs=dict(zip(names, fs)), ft=dict(zip(names, ft))))["loss"]
    assert ours.item() == pytest.approx(torchdistill_at(fs, ft, [1.0, 0.5], mode).item(), abs=1e-5)


def test_at_pools_larger_map():
    fs = {"f": torch.rand(2, 3, 16, 16)}
    ft = {"f": torch.rand(2, 5, 8, 8)}
    z = torch.zeros(2, 3)
    loss = AttentionTransfer(["f"])(step(z, z, fs=fs, ft=ft))["loss"]
    ref = (attention_map(F.adaptive_avg_pool2d(fs["f"], (8, 8))) - attention_map(ft["f"])).pow(2).mean()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-7)


def test_ce_skips_unlabelled_and_takes_soft_targets():
    z = torch.randn(4, 3)
    y = torch.tensor([0, -100, 2, -100])
    expected = F.cross_entropy(z[[0, 2]], y[[0, 2]])
    assert CrossEntropy()(step(z, labels=y))["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    none = CrossEntropy()(step(z.requires_grad_(), labels=torch.full((4,), -100)))["loss"]
    assert none.item() == 0.0
    none.backward()  # still a graph, no NaN
    assert torch.isfinite(z.grad).all()
    soft = torch.tensor([[0.5, 0.5, 0.0]]).repeat(4, 1)
    ref = -(soft * F.log_softmax(z.detach(), 1)).sum(1).mean()
    assert CrossEntropy()(step(z.detach(), labels=soft))["loss"].item() == pytest.approx(ref.item(), abs=1e-6)
