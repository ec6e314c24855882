"""KD^3 (arXiv 2307.11469, reconstructed): the selector's limits, the beta ramp, MixDistribution's identity cases,
the InfoNCE hand case, weighted feature alignment, the shared (frozen) teacher classifier, the web-pool shifts and
the per-epoch checkpointed training resuming to the same student."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.pipelines.methods.kd3 import (
    SHIFTS,
    KD3Options,
    KD3Student,
    apply_shift,
    beta_schedule,
    feature_alignment,
    info_nce,
    kd3_train,
    mix_distribution,
    select_instances,
    shared_kd_loss,
)
from distill.pipelines.pipeline import StageContext


def test_selector_limits_and_hand_values():
    p_t = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    p_s = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    sel, y, w = select_instances(p_t, p_s, 0.0, 0.7)  # beta 0: the teacher's confidence threshold
    assert sel.tolist() == [True, False, True] and y.tolist() == [0, 0, 1]
    assert torch.allclose(w, torch.tensor([0.8, 0.6, 0.9]))
    sel, y, w = select_instances(p_t, p_s, 0.5, 0.7)  # p = [[.5,.5], [.8,.2], [.3,.7]]
    assert sel.tolist() == [False, True, True] and y.tolist()[1:] == [0, 1]
    assert torch.allclose(w, torch.tensor([0.5, 0.8, 0.7]))
    assert select_instances(p_t, p_s, 0.3, 0.0)[0].all()  # tau 0 keeps everything


def test_beta_ramp():
    assert beta_schedule(0, 10) == 0.0 and beta_schedule(9, 10) == 0.5
    assert math.isclose(beta_schedule(3, 4, 0.6), 0.6) and beta_schedule(0, 1) == 0.0


def test_mix_distribution_identity_cases_and_style_swap():
    torch.manual_seed(0)
    f = torch.randn(4, 3, 5, 5) * 2 + 1
    perm = torch.tensor([1, 0, 3, 2])
    assert torch.allclose(mix_distribution(f, torch.ones(4), perm), f, atol=1e-4)
    assert torch.allclose(mix_distribution(f, torch.rand(4), torch.arange(4)), f, atol=1e-4)
    out = mix_distribution(f, torch.zeros(4), perm)  # lambda 0: instance i takes instance perm[i]'s statistics
    assert torch.allclose(out.mean((2, 3)), f[perm].mean((2, 3)), atol=1e-4)
    assert torch.allclose(out.std((2, 3), unbiased=False), f[perm].std((2, 3), unbiased=False), atol=1e-3)


def test_info_nce_hand_case():
    b = 4
    e = torch.eye(b)
    for tau in (0.5, 0.1):
        want = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + b - 1))
        assert math.isclose(float(info_nce(e, e, tau)), want, rel_tol=1e-4, abs_tol=1e-7)
        assert math.isclose(float(info_nce(3 * e, 0.5 * e, tau)), want, rel_tol=1e-4, abs_tol=1e-7)  # normalised


def test_feature_alignment_hand_value():
    a = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    h = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # squared distances 2 and 4
    assert math.isclose(float(feature_alignment(a, h, torch.tensor([1.0, 3.0]))), (2 + 12) / 4)


def test_shared_classifier_is_the_teachers_and_frozen():
    fc = nn.Linear(6, 10)
    s = KD3Student(10, (4, 8), teacher_fc=fc)
    x = torch.randn(5, 3, 16, 16)
    h = s.embed(s.first(x))
    z, a = s.head(h)
    assert torch.allclose(z, a @ fc.weight.T + fc.bias, atol=1e-6)
    loss = shared_kd_loss(s(x), torch.randn(5, 10)) + feature_alignment(a, torch.randn(5, 6), torch.ones(5))
    loss.backward()
    assert fc.weight.grad is None and "w_t" not in dict(s.named_parameters())
    assert s.adapter.weight.grad is not None and s.first[0].weight.grad.abs().sum() > 0
    own = KD3Student(10, (4, 8))
    assert not own.shared and own(x).shape == (5, 10)


def test_kd_loss_zero_at_the_teacher():
    z = torch.randn(3, 10)
    assert float(shared_kd_loss(z, z)) < 1e-6
    assert math.isclose(float(shared_kd_loss(torch.zeros(1, 2), torch.tensor([[4.0, 0.0]]), 4.0)),
                        16 * float(torch.nn.functional.kl_div(torch.log(torch.tensor([0.5, 0.5])),
                                                              torch.softmax(torch.tensor([1.0, 0.0]), 0),
                                                              reduction="sum")), rel_tol=1e-5)


def test_shifts_keep_shape_and_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    for s in SHIFTS:
        out = apply_shift(img, s, g)
        assert out.shape == img.shape and out.dtype == torch.uint8, s
    assert torch.equal(apply_shift(torch.full((3, 2, 2), 0b10110111, dtype=torch.uint8), "posterise", g),
                       torch.full((3, 2, 2), 0b10100000, dtype=torch.uint8))
    gray = apply_shift(img, "grayscale", g)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert apply_shift(img, "contrast", g).float().std() < 0.5 * img.float().std()
    assert apply_shift(img, "blur", g).float().std() < img.float().std()
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(img, "sepia", g)


class Interrupt(Exception):
    pass


def test_kd3_training_resumes_to_the_same_student(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(20, 3, 16, 16)
    t_logits = torch.randn(20, 2, 10) * 3
    t_feat = torch.randn(20, 2, 6)
    fc = nn.Linear(6, 10)
    o = KD3Options(data={"path": "unused"}, epochs=3, batch_size=8, widths=[4, 8], tau_sel=0.3, seed=1)
    full, hist = kd3_train(x, t_logits, t_feat, fc, 10, o)
    assert len(hist) == 3 and hist[0]["selected"] == int((t_logits[:, 0].softmax(-1).max(-1).values >= 0.3).sum())
    ctx = StageContext("kd3", tmp_path, 0, None, log=lambda m: None)
    save = ctx.save_state

    def crash(state):
        save(state)
        raise Interrupt

    ctx.save_state = crash  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        kd3_train(x, t_logits, t_feat, fc, 10, o, ctx)
    ctx.save_state = save  # type: ignore[method-assign]
    assert ctx.load_state()["epoch"] == 1
    resumed, hist2 = kd3_train(x, t_logits, t_feat, fc, 10, o, ctx)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["selected"] for h in hist] == [h["selected"] for h in hist2]
