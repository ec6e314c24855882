"""Maths and gradient flow of the continual methods (OnPro, Dynamic Y-KD, Cr-KD) and checkpoint averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.methods.continual.crkd import CrKD, class_relation_kd, relation_weights, sinkhorn
from distill.methods.continual.dynamic_ykd import DynamicYKD, averaged_head, centred_l2
from distill.methods.continual.onpro import (
    OnPro,
    apportion,
    ope_loss,
    pair_probabilities,
    rotate,
    sup_nt_xent,
)
from distill.streams.learners import TaskInfo
from distill.train.averaging import average_checkpoints, average_states, ema_states, interpolate
from distill.train.checkpoint import load_weights, save_weights


def info(i: int, seen: list[int], new: list[int], kind: str = "class_incremental", n: int = 10) -> TaskInfo:
    return TaskInfo(i, kind, tuple(seen), tuple(new), n)


# ---- OnPro -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,tau", [(2, 0.5), (3, 0.5), (4, 0.2)])
def test_ope_hand_case_orthonormal_prototypes(k, tau):
    protos = torch.eye(8)[:k]
    y = torch.arange(k).repeat_interleave(2)
    z = protos[y]
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * k - 2))
    assert float(ope_loss(z, z.clone(), y, tau)) == pytest.approx(expected, rel=1e-5)


def test_ope_invariant_to_permutation_within_class_and_rescaling():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    base = ope_loss(z1, z2, y)
    perm = torch.tensor([2, 0, 1, 4, 5, 3, 6, 8, 7, 11, 9, 10])  # within each class
    assert torch.allclose(ope_loss(z1[perm], z2[perm], y), base, atol=1e-6)
    scale = torch.rand(12, 1, generator=g) * 5 + 0.1
    assert torch.allclose(ope_loss(z1 * scale, z2 * 3.0, y), base, atol=1e-5)
    # and it is not a constant: other views give another value
    assert not torch.allclose(ope_loss(z1, torch.randn(12, 6, generator=g), y), base)


def test_apf_pair_probabilities_and_counts():
    protos = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]]), dim=1)
    pairs, probs = pair_probabilities(protos)
    assert len(pairs) == 6 and float(probs.sum()) == pytest.approx(1.0)
    assert pairs[int(probs.argmax())].tolist() == [0, 1]  # the closest pair is the most likely
    for n in (1, 7, 13, 100):
        counts = apportion(probs, n)
        assert int(counts.sum()) == n and (counts >= 0).all()
    assert apportion(torch.tensor([0.5, 0.25, 0.25]), 4).tolist() == [2, 1, 1]


def test_rotation_labels():
    x = torch.randn(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4])
    xr, yr = rotate(x, y, 10)
    assert xr.shape == (20, 1, 8, 8)
    assert len(torch.unique(yr // 10)) == 4 and torch.equal(yr % 10, y.repeat(4))
    assert torch.equal(xr[5:10], torch.rot90(x, 1, dims=(2, 3)))


def test_sup_nt_xent_hand_case():
    sim = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    # rows 0 and 1 have one positive each, row 2 none (left out)
    r0 = -(0.5 / tau - math.log(math.exp(0.5 / tau) + math.exp(0.0)))
    r1 = -(0.5 / tau - math.log(math.exp(0.5 / tau) + math.exp(0.2 / tau)))
    assert float(sup_nt_xent(sim, labels, tau)) == pytest.approx((r0 + r1) / 2, rel=1e-6)


def _fill_buffer(learner: OnPro, classes: list[int]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 8, 8, generator=g)
    y = torch.tensor(classes).repeat(20)[:40]
    learner.after_step(x, y, g)


def test_onpro_gradients_reach_encoder_projector_head():
    torch.manual_seed(0)
    learner = OnPro(10, 1, width=8, feature_dim=16, proj_dim=8, buffer_size=30, buffer_batch=12)
    learner.begin_task(info(0, [0, 1], [0, 1]))
    _fill_buffer(learner, [0, 1])
    learner.begin_task(info(1, [0, 1, 2, 3], [2, 3]))
    _fill_buffer(learner, [2, 3])
    assert learner.buffer_rows() == 30 and int(learner.n_seen) == 80  # reservoir keeps the size
    g = torch.Generator().manual_seed(2)
    terms = learner.loss(torch.randn(6, 1, 8, 8), torch.tensor([2, 3, 2, 3, 2, 3]), g)
    assert {"instance", "ope", "instance_buffer", "ope_buffer", "ce_buffer"} <= set(terms)
    assert "ce" not in terms  # later tasks: CE only on the APF-mixed buffer batch
    sum(terms.values()).backward()
    for name in ("encoder.trunk.0.weight", "projector.2.weight", "head.weight"):
        grad = dict(learner.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert learner.proto_valid.any()  # the buffer OPE refreshed the prototypes APF uses


# ---- Dynamic Y-KD ------------------------------------------------------------------------------------------------
def test_centred_l2_hand_value():
    s = torch.tensor([[1.0, 3.0]])  # centred: [-1, 1]
    t = torch.tensor([[0.0, 0.0]])  # centred: [0, 0]
    assert float(centred_l2(s, t)) == pytest.approx(1.0)
    assert float(centred_l2(s + 5.0, s)) == pytest.approx(0.0)  # a shift of all logits is not penalised


def test_averaging_limits():
    g = torch.Generator().manual_seed(0)
    new_w, new_b = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    old_w, old_b = torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    w1, b1 = averaged_head(new_w, new_b, old_w, old_b, 1.0)
    assert torch.equal(w1, new_w) and torch.equal(b1, new_b)
    w0, b0 = averaged_head(new_w, new_b, old_w, old_b, 0.0)
    assert torch.equal(w0[:3, :4], old_w) and torch.equal(w0[:3, 4:], torch.zeros(3, 4))
    assert torch.equal(b0[:3], old_b) and torch.equal(w0[3:], new_w[3:])
    wh, _ = averaged_head(new_w, new_b, old_w, old_b, 0.25)
    assert torch.allclose(wh[:3, :4], 0.25 * new_w[:3, :4] + 0.75 * old_w)


def _ykd(**kw) -> DynamicYKD:
    torch.manual_seed(0)
    learner = DynamicYKD(10, 1, width=8, feature_dim=16, **kw)
    learner.begin_task(info(0, [0, 1, 2], [0, 1, 2]))
    return learner


def test_ykd_head_grows_and_teacher_shares_the_trunk():
    learner = _ykd(trunk_trainable=False)
    assert learner.head.in_features == 16
    learner.begin_task(info(1, [0, 1, 2, 3, 4], [3, 4]))
    assert learner.head.in_features == 32 and learner.head.out_features == 5
    learner.begin_task(info(2, [0, 1, 2, 3, 4, 5], [5]))
    assert learner.head.in_features == 48 and learner.head.out_features == 6
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([5, 0, 1, 5, 3, 4, 5, 2])
    calls = learner.trunk_calls
    terms = learner.loss(x, y, torch.Generator())
    assert learner.trunk_calls == calls + 1  # the teacher made no second trunk pass
    assert set(terms) == {"ce", "kd"}
    sum(terms.values()).backward()
    named = dict(learner.named_parameters())
    assert named["branches.2.0.weight"].grad.abs().sum() > 0 and named["head.weight"].grad.abs().sum() > 0
    for name, p in named.items():
        if name.startswith(("teacher", "trunk", "branches.0", "branches.1")):
            assert p.grad is None, name  # teacher, frozen trunk and old branches get no gradient


def test_ykd_no_drift_with_frozen_trunk():
    learner = _ykd(trunk_trainable=False)
    learner.begin_task(info(1, [0, 1, 2, 3, 4], [3, 4]))
    x = torch.randn(16, 1, 8, 8)
    before = learner.teacher_logits(x, learner.trunk(x)).clone()
    opt = torch.optim.SGD(learner.trainable(), lr=0.5)
    sum(learner.loss(x, torch.tensor([3, 4] * 8), torch.Generator()).values()).backward()
    opt.step()
    assert torch.equal(learner.teacher_logits(x, learner.trunk(x)), before)


def test_ykd_old_logits_unchanged_at_the_start_of_a_task():
    learner = _ykd()
    x = torch.randn(4, 1, 8, 8)
    old = learner.predict(x)[:, :3]
    learner.begin_task(info(1, [0, 1, 2, 3, 4], [3, 4]))
    assert torch.allclose(learner.predict(x)[:, :3], old, atol=1e-6)


# ---- Cr-KD -------------------------------------------------------------------------------------------------------
def test_crkd_limit_is_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    heads = torch.randn(2, 6, 5, generator=g)
    soft_ce = -(F.softmax(old, 1) * F.log_softmax(new, 1)).sum(1).mean()
    assert torch.allclose(class_relation_kd(old, new, heads, 1.0, 1.0, learned_weight=False), soft_ce)


def test_crkd_weights_mean_one_and_shift_invariance():
    g = torch.Generator().manual_seed(0)
    heads = torch.randn(4, 10, 7, generator=g)
    w = relation_weights(heads, 0.4, 3)
    assert float(w.mean()) == pytest.approx(1.0) and w.shape == (4, 10) and w.std() > 0
    old, new = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    a = class_relation_kd(old, new, heads, 0.1, 4.0)
    assert torch.allclose(class_relation_kd(old + 2.5, new, heads, 0.1, 4.0), a, atol=1e-6)
    # hand value of one row, one head: T^2 * w * soft CE with w = 1 after normalisation
    o, n, h = old[:1], new[:1], heads[:1, :1]
    t = 0.1 * 4.0
    hand = 16.0 * -(F.softmax(o / t, 1) * F.log_softmax(n / t, 1)).sum()
    assert torch.allclose(class_relation_kd(o, n, h, 0.1, 4.0), hand)


def test_sinkhorn_rows_and_cluster_totals():
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(12, 4, generator=g) * 2 - 1
    q = sinkhorn(logits, 0.05, 3)
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-5)
    q = sinkhorn(logits, 0.5, 200)
    assert torch.allclose(q.sum(0), torch.full((4,), 3.0), atol=1e-3)


def test_crkd_gradients():
    torch.manual_seed(0)
    learner = CrKD(10, 1, width=8, feature_dim=16, heads=2, hidden=16, proj=8)
    learner.begin_task(info(0, [0, 1, 2], [0, 1, 2], "novel_classes"))
    learner.begin_task(info(1, [0, 1, 2, 5, 6], [5, 6], "novel_classes"))
    x = torch.randn(8, 1, 8, 8)
    y = torch.tensor([0, 1, 2, -100, -100, -100, 0, -100])
    terms = learner.loss(x, y, torch.Generator().manual_seed(3))
    assert set(terms) == {"cluster", "kd"}
    terms["kd"].backward()  # the KD term alone
    named = dict(learner.named_parameters())
    assert named["known_prototypes"].grad.abs().sum() > 0
    assert named["novel_heads.0.prototypes"].grad.abs().sum() > 0  # the learnable weighting is not detached
    assert named["encoder.trunk.0.weight"].grad is None  # frozen trunk during discovery
    assert all(p.grad is None for n, p in named.items() if n.startswith("teacher"))
    learner.zero_grad()
    learner.weighting = "constant"
    learner.loss(x, y, torch.Generator().manual_seed(3))["kd"].backward()
    grad = learner.novel_heads[0].prototypes.grad
    assert grad is None or not grad.any()  # the constant weighting sends nothing to the novel heads


# ---- checkpoint averaging ----------------------------------------------------------------------------------------
def test_average_states_and_ema_hand_values(tmp_path):
    a = {"w": torch.tensor([1.0, 2.0]), "head": torch.zeros(2, 2), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "head": torch.ones(3, 2), "n": torch.tensor(7)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(avg["head"], b["head"]) and int(avg["n"]) == 7  # grown / integer tensors: from the last
    assert torch.allclose(interpolate(a, b, 0.25)["w"], torch.tensor([1.5, 3.0]))
    c = {"w": torch.tensor([5.0, 10.0]), "head": torch.ones(3, 2), "n": torch.tensor(8)}
    # EMA decay 0.5: ((1+3)/2 + 5)/2 = 3.5
    assert torch.allclose(ema_states([a, b, c], 0.5)["w"], torch.tensor([3.5, 7.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        average_states([a, b], [0.5, 0.6])
    save_weights(tmp_path / "a.safetensors", {"w": a["w"]})
    save_weights(tmp_path / "b.safetensors", {"w": b["w"]})
    average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "avg.safetensors",
                        weights=[0.75, 0.25])
    assert torch.allclose(load_weights(tmp_path / "avg.safetensors")["w"], torch.tensor([1.5, 3.0]))
