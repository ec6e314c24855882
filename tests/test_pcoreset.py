"""PCoreSet (arXiv 2506.00910): greedy k-center in probability space, the baselines, the dual-head student and
the per-round checkpointed ActiveKD loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.pipelines.methods.pcoreset import (
    DualHeadCNN,
    PCoreSetOptions,
    active_kd,
    coreset_select,
    dho_loss,
    dho_predict,
    entropy_select,
    pcoreset_select,
)
from distill.pipelines.pipeline import StageContext


def test_vertices_then_centroid():
    """Labelled: vertex e1. Pool: the centroid, e2, e3. Distances to e1: centroid sqrt(6)/3 = 0.816, e2 and e3
    sqrt(2): the uncovered vertices come first (e2 by the lower index, then e3), the centroid last."""
    eye = torch.eye(3)
    centroid = torch.full((1, 3), 1 / 3)
    pool = torch.cat([centroid, eye[1:2], eye[2:3]])
    assert pcoreset_select(pool, eye[0:1], 3).tolist() == [1, 2, 0]
    assert pcoreset_select(pool, eye[0:1], 1).tolist() == [1]
    # the centroid is sqrt(6)/3 from e1 but only sqrt(6)/3 from e2 as well: after e2 and e3 it is still that far
    assert torch.cdist(centroid, eye).min().item() == pytest.approx(math.sqrt(6) / 3)


def test_centres_change_the_choice():
    """With e2 already labelled, e3 is the only uncovered vertex: it is picked first."""
    eye = torch.eye(3)
    pool = torch.cat([torch.full((1, 3), 1 / 3), eye[2:3], eye[0:1]])
    assert pcoreset_select(pool, eye[0:2], 1).tolist() == [1]


def test_no_duplicates_and_budget():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(30, 5, generator=g).softmax(1)
    probs[7] = probs[3]  # an exact duplicate is never picked twice either
    pick = pcoreset_select(probs, probs[:0], 30)
    assert sorted(pick.tolist()) == list(range(30))
    with pytest.raises(ValueError, match="cannot select 31"):
        pcoreset_select(probs, probs[:0], 31)


def test_entropy_and_coreset_baselines():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    # entropies 0, ln 2, 0.325, 0.611: largest first
    assert entropy_select(probs, 2).tolist() == [1, 3]
    feats = torch.tensor([[1.0, 0.0], [10.0, 0.1], [0.0, 3.0], [1.0, 1.0]])
    # labelled [1, 0]: cosine distances 1 - cos = 0.00005, 1, 0.293: orthogonal first, scale ignored
    assert coreset_select(feats, torch.tensor([[2.0, 0.0]]), 2).tolist() == [2, 3]


def test_dho_prediction_and_loss():
    g = torch.Generator().manual_seed(1)
    z_ce, z_kd = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert torch.allclose(dho_predict(z_ce, z_kd, alpha=0.0), z_ce.softmax(1))
    p = dho_predict(z_ce, z_kd, 0.5, 2.0)
    assert torch.allclose(p, 0.5 * z_ce.softmax(1) + 0.5 * (z_kd / 2).softmax(1))
    y = torch.tensor([0, 1, 2, 3])
    # teacher = student KD head: the KD terms vanish and the loss is 0.5 CE
    assert dho_loss(z_ce, y, z_kd, z_kd.clone(), z_kd, z_kd.clone()).item() == pytest.approx(
        0.5 * F.cross_entropy(z_ce, y).item(), abs=1e-6)
    # a hand KD term: T^2 * sum p_t log(p_t / p_s) / B
    t = torch.randn(4, 6, generator=g)
    pt, ps = (t / 2).softmax(1), (z_kd / 2).softmax(1)
    kl = 4 * (pt * (pt.log() - ps.log())).sum() / 4
    expected = 0.5 * F.cross_entropy(z_ce, y) + 0.5 * kl
    assert dho_loss(z_ce, y, z_kd, t, temperature=2.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_reach_both_heads_not_the_teacher():
    model = DualHeadCNN(10, (4, 8))
    x = torch.randn(6, 3, 16, 16)
    teacher = torch.randn(6, 10, requires_grad=True)
    z_ce, z_kd, _ = model(x)
    dho_loss(z_ce[:3], torch.tensor([0, 1, 2]), z_kd[:3], teacher[:3].detach(), z_kd[3:],
             teacher[3:].detach()).backward()
    assert model.ce_head.weight.grad.abs().sum() > 0 and model.kd_head.weight.grad.abs().sum() > 0
    assert teacher.grad is None


def _tiny_problem():
    from helpers import demo_subset

    from distill.pipelines.kinds import normalise

    pool, test = demo_subset("train", 6), demo_subset("test", 2)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(len(pool), 2, 10, generator=g) * 3 + 4 * F.one_hot(pool.labels, 10)[:, None]
    return normalise(pool.images), pool.labels, t, normalise(test.images), test.labels


class Interrupt(Exception):
    pass


def test_active_kd_resumes_to_the_same_result(tmp_path):
    x, y, t, xt, yt = _tiny_problem()
    o = PCoreSetOptions(rounds=3, per_round=3, steps=3, batch_size=4, widths=[4, 8], seed=2)
    full = active_kd(x, y, t, xt, yt, o)
    assert len(full["labelled"]) == 10 + 3 * 3 and len(full["accuracy"]) == 4
    assert len(set(full["labelled"].tolist())) == len(full["labelled"])
    assert full["round_of"].tolist() == [0] * 10 + [1] * 3 + [2] * 3 + [3] * 3

    ctx = StageContext("select", tmp_path, 0, None, log=lambda m: None)
    saves = []
    save = ctx.save_state

    def crash_after_two(state):
        save(state)
        saves.append(state["round"])
        if len(saves) == 2:
            raise Interrupt

    ctx.save_state = crash_after_two  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        active_kd(x, y, t, xt, yt, o, ctx)
    ctx.save_state = save  # type: ignore[method-assign]
    assert ctx.load_state()["round"] == 2
    resumed = active_kd(x, y, t, xt, yt, o, ctx)
    assert torch.equal(resumed["labelled"], full["labelled"])
    assert resumed["accuracy"] == full["accuracy"]


def test_strategies_differ_on_the_same_pool():
    x, y, t, xt, yt = _tiny_problem()
    picks = {}
    for s in ("random", "entropy", "pcoreset"):
        o = PCoreSetOptions(strategy=s, rounds=1, per_round=5, steps=3, batch_size=4, widths=[4, 8], seed=0)
        picks[s] = set(active_kd(x, y, t, xt, yt, o)["labelled"][10:].tolist())
    assert picks["random"] != picks["pcoreset"] or picks["entropy"] != picks["pcoreset"]


def test_teacher_space_selects_from_the_teacher_probabilities():
    x, y, t, xt, yt = _tiny_problem()
    o = PCoreSetOptions(rounds=1, per_round=4, steps=2, batch_size=4, widths=[4, 8], seed=0, space="teacher")
    got = active_kd(x, y, t, xt, yt, o)
    lab = got["labelled"][:10]
    mask = torch.ones(len(x), dtype=torch.bool)
    mask[lab] = False
    unl = mask.nonzero().flatten()
    probs = t[:, 0].double().softmax(-1)
    assert got["labelled"][10:].tolist() == unl[pcoreset_select(probs[unl], probs[lab], 4)].tolist()
