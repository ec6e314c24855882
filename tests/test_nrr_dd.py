"""NRR-DD (arXiv 2503.18267, reconstructed): the mask, frozen critical pixels, the epsilon limits (identity and
SRe2L's update), RDED / CIDD selection on hand values, DBR, and the shared BN-matching term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.models import MODELS
from distill.pipelines.methods.dd_eval import BNStats, bn_matching, clamp_valid, pixel_bounds, soft_ce
from distill.pipelines.methods.nrr_dd import (
    cam,
    cidd_select,
    dbr_loss,
    nrr_mask,
    nrr_refine,
    random_resized_crops,
    rded_select,
)


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    m = MODELS["resnet20"](num_classes=10).eval()
    for mod in m.modules():  # non-trivial running statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def _images(n: int = 4) -> torch.Tensor:
    torch.manual_seed(1)
    return clamp_valid(torch.randn(n, 3, 32, 32))


def test_mask_hand_values():
    c = torch.tensor([0.0, 0.2, 0.5, 0.9])
    assert torch.allclose(nrr_mask(c, 0.5), torch.tensor([0.5, 0.3, 0.0, 0.0]))
    assert torch.equal(nrr_mask(c, 0.0), torch.zeros(4))


def test_cam_is_min_max_normalised_class_map():
    t, x = _teacher(), _images()
    y = torch.tensor([0, 1, 2, 3])
    c = cam(t, x, y)
    assert c.shape == (4, 1, 32, 32)
    hi = c.amax((1, 2, 3))
    assert torch.allclose(c.amin((1, 2, 3)), torch.zeros(4))
    assert ((hi - 1).abs() < 1e-6).sum() >= 3 and ((hi == 0) | ((hi - 1).abs() < 1e-6)).all()  # a map of 0s stays 0
    # another class gives another map
    assert not torch.allclose(c, cam(t, x, (y + 5) % 10))


def test_critical_pixels_stay_frozen_and_others_move():
    t, x = _teacher(), _images()
    y = torch.tensor([0, 1, 2, 3])
    before = [p.clone() for p in t.parameters()]
    c = cam(t, x, y)
    out = nrr_refine(t, x, y, epsilon=0.5, iterations=3, lr=0.05, bn_weight=0.01, recompute_every=100)
    critical = (c >= 0.5).expand_as(x)
    assert critical.any() and torch.equal(out[critical], x[critical])
    assert (out[~critical] != x[~critical]).float().mean() > 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, t.parameters()))  # the teacher is not changed
    lo, hi = pixel_bounds()
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()


def test_epsilon_zero_is_identity_and_full_mask_is_sre2l():
    t, x = _teacher(), _images(3)
    y = torch.tensor([4, 5, 6])
    assert torch.equal(nrr_refine(t, x, y, epsilon=0.0, iterations=2, lr=0.1), x)
    assert torch.equal(nrr_refine(t, x, y, epsilon=-1.0, iterations=2, lr=0.1), x)
    # SRe2L: one Adam step on CE + bn_weight * BN over the whole image, then the valid-range clamp
    out = nrr_refine(t, x, y, iterations=1, lr=0.1, bn_weight=0.01, full_mask=True)
    ref = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1, betas=(0.5, 0.9))
    logits, bn = bn_matching(t, ref)
    (F.cross_entropy(logits, y) + 0.01 * bn).backward()
    opt.step()
    assert torch.allclose(out, clamp_valid(ref.detach()), atol=1e-6)


def test_rded_keeps_each_images_argmin_then_the_lowest():
    ce = torch.tensor([3.0, 1.0, 0.5, 2.0, 4.0, 5.0])  # 3 images x 2 crops
    assert rded_select(ce, 2, 2).tolist() == [2, 1]  # image 1's crop 0 (0.5), image 0's crop 1 (1.0)
    assert rded_select(ce, 2, 3).tolist() == [2, 1, 4]


def test_cidd_keeps_high_cam_ratio_then_lowest_confidence_one_per_image():
    ratio = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.6])  # 3 images x 2 crops
    conf = torch.tensor([0.9, 0.2, 0.01, 0.3, 0.05, 0.1])
    # top half by ratio: rows 0, 1, 3; by confidence 1 (0.2), 3 (0.3), 0 (0.9): rows 1 and 0 share image 0
    assert cidd_select(ratio, conf, 2, 2, keep=0.5).tolist() == [1, 3]
    with pytest.raises(ValueError, match="distinct source images"):
        cidd_select(ratio, conf, 2, 3, keep=0.5)


def test_full_scale_crop_is_the_image():
    x = _images(2)
    crops, boxes = random_resized_crops(x, 2, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    assert torch.equal(crops[0], x[0]) and torch.equal(crops[3], x[1])
    assert boxes.tolist()[0] == [0, 32, 0, 32]


def test_dbr_hand_values_zero_at_the_teacher_and_gradients():
    y_org = torch.tensor([[1.0, 0.0]])
    y_mix = torch.tensor([[0.75, 0.25]])
    z_t = torch.tensor([[2.0, 0.0]])
    z_s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    # student uniform: d_org^S = d_aug^S = log 2; teacher: log-softmax [-log(1+e^-2), -2-log(1+e^-2)]
    lt = torch.log_softmax(z_t, -1)[0]
    t_org, t_aug = -lt[0], -(0.75 * lt[0] + 0.25 * lt[1])
    ln2 = torch.log(torch.tensor(2.0))
    want = ln2 + 0.5 * ((ln2 - t_org).abs() + (ln2 - t_aug).abs())
    loss = dbr_loss(z_s, z_t, y_org, y_mix, weight=0.5)
    assert torch.allclose(loss, want)
    loss.backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    # student == teacher: only the label term is left
    z = torch.randn(5, 10)
    ym = torch.softmax(torch.randn(5, 10), -1)
    yo = F.one_hot(torch.arange(5), 10).float()
    assert torch.allclose(dbr_loss(z, z, yo, ym), soft_ce(z, ym).mean())
    # the teacher side gets no gradient
    zt = torch.randn(5, 10, requires_grad=True)
    dbr_loss(torch.randn(5, 10, requires_grad=True), zt, yo, ym).backward()
    assert zt.grad is None


def test_bn_term_hand_value_and_zero_at_running_statistics():
    bn = nn.BatchNorm2d(2).eval()
    x = torch.randn(6, 2, 4, 4)
    with BNStats(bn) as h:
        bn(x)
        mu, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        assert torch.allclose(h.loss(), torch.linalg.vector_norm(mu) + torch.linalg.vector_norm(var - 1))
        assert torch.allclose(h.loss(first=10.0), 10 * h.loss())
    bn.running_mean.copy_(mu)
    bn.running_var.copy_(var)
    with BNStats(bn) as h:
        bn(x)
        assert float(h.loss()) < 1e-6
    assert not bn._forward_hooks  # hooks removed on exit
