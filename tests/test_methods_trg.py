"""TRG: the kNN graph on a hand example, the three losses' fixed points, the tau_g schedule, and gradients that
reach the student and the projection but never the teacher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import TinyCNN, demo_subset

from distill.config import load_raw, parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods.relations.trg import (
    TRG,
    context_similarity,
    global_loss,
    inner_loss,
    knn_log_probs,
    knn_mask,
    local_loss,
    matched_tokens,
)
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"trg": "{name: trg, student: f3, tokens_per_image: 4, k: 8, alpha: 1.0, beta: 1.0, gamma: 1.0, "
                        "tau_start: 1.0, tau_end: 0.1}"}


def test_knn_mask_on_four_points_on_a_line():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    m = knn_mask(x, 1)
    assert m.nonzero().tolist() == [[0, 1], [1, 0], [2, 1], [3, 2]]
    m2 = knn_mask(x, 2)  # 0 -> {1, 3}, 1 -> {0, 3}, 3 -> {1, 0}, 7 -> {3, 1} (by value)
    assert [set(r.nonzero().flatten().tolist()) for r in m2] == [{1, 2}, {0, 2}, {1, 0}, {2, 1}]
    assert not m2.diagonal().any()


def test_knn_probabilities_hand_case():
    # kNN with k = 2 on (0, 1, 3, 7): node 0 has d^2 = 1 (to 1) and 9 (to 3); sigma = median of the mask's d^2
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    mask = knn_mask(x, 2)
    d2 = [1.0, 9.0, 1.0, 4.0, 4.0, 1.0, 16.0, 36.0]  # rows 0..3: (0-1, 0-3), (1-0, 1-3), (3-1, 3-0), (7-3, 7-1)
    sigma = sorted(d2)[3]  # torch's median of an even count: the lower middle value (4)
    a01, a02 = math.exp(-1 / (2 * sigma)), math.exp(-9 / (2 * sigma))
    p01 = math.exp(a01) / (math.exp(a01) + math.exp(a02))
    lp = knn_log_probs(x, mask)
    assert lp[0, 1].exp().item() == pytest.approx(p01, abs=1e-6)
    assert lp[0, 3].item() == float("-inf")
    assert torch.allclose(lp.exp().sum(1), torch.ones(4))


def test_identical_features_give_zero_local_and_inner():
    torch.manual_seed(0)
    t = torch.randn(16, 8)
    assert local_loss(t, t.clone(), k=4).item() == pytest.approx(0.0, abs=1e-6)
    assert local_loss(t, t.clone(), k=4, direction="ts").item() == pytest.approx(0.0, abs=1e-6)
    tok = torch.randn(2, 9, 8)
    assert inner_loss(tok, tok.clone()).item() == 0.0
    # a scaled copy keeps the local graph (sigma scales with it) but not the context softmax
    assert local_loss(3 * t, t, k=4).item() == pytest.approx(0.0, abs=1e-5)
    assert inner_loss(3 * tok, tok).item() > 0


def test_local_loss_direction_and_value_on_hand_case():
    xs = torch.tensor([[0.0], [2.0], [3.0], [7.0]])
    xt = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    mask = knn_mask(xt, 2)
    ps, pt = knn_log_probs(xs, mask).exp(), knn_log_probs(xt, mask).exp()
    kl_st = sum(float(ps[i, j] * (ps[i, j].log() - pt[i, j].log())) for i in range(4) for j in range(4)
                if mask[i, j]) / 4
    kl_ts = sum(float(pt[i, j] * (pt[i, j].log() - ps[i, j].log())) for i in range(4) for j in range(4)
                if mask[i, j]) / 4
    assert local_loss(xs, xt, k=2).item() == pytest.approx(kl_st, abs=1e-7)
    assert local_loss(xs, xt, k=2, direction="ts").item() == pytest.approx(kl_ts, abs=1e-7)
    assert kl_st > 0 and kl_ts > 0


def test_orthonormal_matching_tokens_with_small_tau_give_zero_global():
    e = torch.eye(6)
    assert global_loss(e, e, tau=0.01).item() == pytest.approx(0.0, abs=1e-6)
    assert global_loss(e, e, tau=1.0).item() == pytest.approx(math.log(1 + 5 * math.exp(-1)), abs=1e-6)


def test_context_similarity_rows_sum_to_one():
    cs = context_similarity(torch.randn(3, 5, 4))
    assert cs.shape == (3, 5, 5) and torch.allclose(cs.sum(-1), torch.ones(3, 5))


def test_tau_schedule_and_sampling_follow_step():
    m = TRG(tau_start=1.0, tau_end=0.1)
    assert [m.tau(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.55, 0.1])
    a, b = m.sample(4, 64, step=7, device=torch.device("cpu")), m.sample(4, 64, step=7, device=torch.device("cpu"))
    assert torch.equal(a, b) and a.shape == (4, 4)
    assert all(len(set(r.tolist())) == 4 for r in a)
    assert not torch.equal(a, m.sample(4, 64, step=8, device=torch.device("cpu")))


def test_matched_tokens_pool_the_larger_map():
    s, t = torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)
    ts, tt = matched_tokens(s, t)
    assert ts.shape == (2, 16, 16) and tt.shape == (2, 16, 32)
    with pytest.raises(ValueError, match="token count"):
        matched_tokens(torch.randn(2, 10, 4), torch.randn(2, 9, 4))


def test_forward_terms_and_weights():
    torch.manual_seed(0)
    fs, ft = torch.randn(4, 8, 4, 4), torch.randn(4, 12, 4, 4)
    out_s = ModelOutput(torch.randn(4, 10), {"f3": fs})
    out_t = ModelOutput(torch.randn(4, 10), {"f3": ft})
    m = TRG(student="f3", k=3, alpha=2.0, gamma=0.0)
    m.setup(out_s, out_t, RunInfo())
    terms = m(StepInputs(out_s, out_t, None, progress=0.3, step=5))
    assert set(terms) == {"inner", "local"}
    assert terms["inner"].item() == pytest.approx(2 * inner_loss(fs.flatten(2).transpose(1, 2),
                                                                 ft.flatten(2).transpose(1, 2)).item(), rel=1e-6)


def test_gradients_reach_student_and_projection_never_teacher():
    torch.manual_seed(0)
    method = TRG(student="f2", k=4)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(TinyCNN(8), Composite({"trg": method}), FrozenTeacher(TinyCNN(16)), task)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    backbone = [p for n, p in module.student.named_parameters() if not n.startswith("head")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)
    assert isinstance(method.proj, torch.nn.Linear)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.proj.parameters())
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.model.parameters())
    assert any(k.endswith("proj.weight") for k in module.state_dict())


def test_recipe_validates_and_bad_options_are_named():
    raw = load_raw(REPO / "configs" / "cifar10_rows" / "trg.yaml")
    cfg = parse_config(raw, base_dir=str(REPO / "configs" / "cifar10_rows"))
    trg = build_methods(cfg.methods).methods["trg"]
    assert (trg.student_feature, trg.teacher_feature, trg.n, trg.k) == ("f3", "f3", 4, 8)
    raw["methods"][2]["neighbours"] = 8
    with pytest.raises(ValueError, match="neighbours"):
        parse_config(raw, base_dir=str(REPO / "configs" / "cifar10_rows"))
    with pytest.raises(ValueError, match="k must"):
        TRG(k=0)
