"""DisWOT (CVPR 2023): the relation and semantic metrics on hand cases, the scoring re-initialisation, the S1
space, regularised evolution and the diswot_search stage."""

from __future__ import annotations

import math

import pytest
import torch

from distill.models import MODELS, resnet20
from distill.pipelines.methods.diswot import (
    _class_grams,
    count_macs,
    count_params,
    diswot_reinit,
    evolve,
    net_signals,
    relation_metric,
    s1_space,
    score_candidates,
    semantic_metric,
)


def test_relation_metric_hand_case_and_invariances():
    # teacher rows orthogonal: G^ = I; student rows equal: G^ rows [1, 1]/sqrt2.
    # ||I - G^_S||^2 = 2 [(1 - 1/sqrt2)^2 + 1/2] = 4 - 2 sqrt2; divided by B^2 = 4
    a_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a_s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert relation_metric(a_t, a_s).item() == pytest.approx(1 - math.sqrt(2) / 2)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 7, 2, 2, generator=g, dtype=torch.float64)
    assert relation_metric(a, a.clone()).item() == pytest.approx(0.0, abs=1e-12)
    base = relation_metric(a, b).item()
    assert base > 0
    assert relation_metric(3.5 * a, 0.2 * b).item() == pytest.approx(base, rel=1e-9)


def test_semantic_metric_rank_one_hand_case():
    rows = _class_grams(torch.tensor([[1.0, -2.0]]))[0]
    v = torch.tensor([1.0, -2.0], dtype=torch.float64) / math.sqrt(5)
    assert torch.allclose(rows, torch.stack([v, -v]))
    # g_T = [1, -2], g_S = [1, 2]: rows [1,-2]/sqrt5, [-1,2]/sqrt5 against [1,2]/sqrt5 twice:
    # squared differences 16/5 + 4/5 = 4; divided by K D = 2
    assert semantic_metric(torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, 2.0]])).item() == pytest.approx(2.0)
    g = torch.Generator().manual_seed(1)
    gt, gs = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    scale = torch.tensor([[2.0], [0.1], [7.0]])  # a positive rescaling of each class's gradient
    assert semantic_metric(gt, gs).item() == pytest.approx(semantic_metric(gt * scale, gs).item(), rel=1e-9)
    with pytest.raises(ValueError, match="same final width"):
        semantic_metric(torch.randn(3, 4), torch.randn(3, 5))


def test_reinit_follows_the_paper():
    m = diswot_reinit(resnet20(), seed=0)
    w = torch.cat([p.weight.flatten() for p in m.modules() if isinstance(p, torch.nn.Conv2d)])
    assert w.std().item() == pytest.approx(1.0, abs=0.02) and abs(w.mean().item()) < 0.02
    assert m.linear.bias.abs().sum() == 0
    assert all(float(b.weight.detach().min()) == 1.0 and float(b.bias.detach().abs().max()) == 0.0
               for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))


def _batch():
    from helpers import demo_subset

    from distill.pipelines.kinds import normalise

    d = demo_subset("train", 2)
    return normalise(d.images), d.labels


def test_same_net_scores_zero_and_others_do_not():
    x, y = _batch()
    build = lambda a: MODELS["resnet_depths"](num_classes=10, depths=a)  # noqa: E731
    scores = score_candidates(resnet20(), build, [(3, 3, 3), (1, 1, 1)], x, y, seed=4)
    assert scores[(3, 3, 3)]["m_s"] == pytest.approx(0.0, abs=1e-12)
    assert scores[(3, 3, 3)]["m_r"] == pytest.approx(0.0, abs=1e-12)
    assert scores[(1, 1, 1)]["score"] < 0 and scores[(1, 1, 1)]["m_r"] > 0 and scores[(1, 1, 1)]["m_s"] > 0


def test_signals_are_the_last_stage_and_the_fc_gradient():
    x, y = _batch()
    m = diswot_reinit(resnet20(), 0)
    a, g = net_signals(m, x, y)
    assert a.shape == (len(x), 64, 8, 8) and g.shape == (10, 64)
    assert all(p.grad is None for p in m.parameters())  # cleared after


def test_s1_space_params_and_macs():
    space = s1_space()
    assert len(space) == 64 and (3, 3, 3) in space and (7, 7, 7) in space
    r20 = MODELS["resnet_depths"](depths=(3, 3, 3))
    assert count_params(r20) == count_params(resnet20()) == 269722
    assert count_macs(r20) == count_macs(resnet20())
    assert 40e6 < count_macs(r20) < 42e6  # ~41 MMAC per 32x32 image (spec F0)
    assert count_params(MODELS["resnet_depths"](depths=(7, 7, 7))) == count_params(MODELS["resnet44"]())


def test_evolution_finds_the_target_and_respects_the_budget():
    choices = [[1, 3, 5, 7]] * 3
    target = (5, 1, 7)
    for seed in range(3):
        best, score, history = evolve(choices, lambda a: -sum(abs(u - v) for u, v in zip(a, target)), cycles=200,
                                      population=10, sample=3, seed=seed)
        assert best == target and score == 0
    allowed = lambda a: sum(a) <= 9  # noqa: E731
    best, _, history = evolve(choices, lambda a: sum(a), cycles=100, population=8, sample=3, allowed=allowed)
    assert all(allowed(a) for a in history) and sum(best) == 9


def test_diswot_stage_ranks_and_feeds_a_training_stage(tmp_path):
    from conftest import REPO

    from distill.config import read_yaml
    from distill.pipelines.pipeline import load_stage, parse_pipeline, run_pipeline, stage_dataset

    raw = read_yaml(REPO / "configs" / "pipelines" / "tiny_diswot.yaml")
    raw["output_dir"] = str(tmp_path / "out")
    report = run_pipeline(parse_pipeline(raw, base_dir=REPO / "configs" / "pipelines"), log=lambda m: None)
    art = load_stage(tmp_path / "out", "search")
    t = art.table("ranking")
    assert t["depths"].shape == (8, 3) and (t["score"][:-1] >= t["score"][1:]).all()
    # the teacher is a random ResNet-20 = (3, 3, 3): that student is identical to it, scores 0 and wins
    assert t["depths"][0].tolist() == [3, 3, 3] and t["score"][0] == 0
    assert art.meta["winner"] == [3, 3, 3]
    distil = report["stages"][1]["meta"]
    assert distil["student"] == {"arch": "resnet_depths", "options": {"depths": [3, 3, 3]}}
    ds = stage_dataset(art, "ranking")
    assert len(ds) == 8 and ds.columns[0] == "depths"
