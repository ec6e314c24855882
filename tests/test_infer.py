"""INFER (arXiv 2408.06927): budget arithmetic, one UFC broadcast over the natural set, gradients reaching u and
never the teacher, static labels as the teachers' mean logits, the mixup targets, and the dd_evaluate training
loop resuming to the same student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.models import MODELS
from distill.pipelines.methods.dd_eval import EvalOptions, augmentation_bank, clamp_valid, dd_train, pixel_bounds
from distill.pipelines.methods.infer import (
    ipc_init,
    mix_targets,
    static_labels,
    static_mixup,
    ufc_loss,
    ufc_optimise,
)
from distill.pipelines.methods.nrr_dd import dbr_loss  # noqa: F401  (registers the dbr label scheme)
from distill.pipelines.pipeline import StageContext


def test_budget_arithmetic():
    assert ipc_init(10, 4, 10) == 7 and 10 * 7 + 4 * 7 == 98 <= 100
    assert ipc_init(50, 4, 100) == 48 and 100 * 48 + 4 * 48 <= 100 * 50
    assert ipc_init(1, 4, 10) == 0  # too small a budget: the stage refuses it


def _teacher(depth: int = 20) -> nn.Module:
    torch.manual_seed(depth)
    return MODELS[f"resnet{depth}"](num_classes=10).eval()


def test_one_ufc_is_broadcast_and_only_u_gets_gradient():
    t = _teacher()
    x = clamp_valid(torch.randn(10, 3, 32, 32))
    before = [p.clone() for p in t.parameters()]
    g = torch.Generator().manual_seed(0)
    u1 = ufc_optimise(t, x, torch.arange(10), iterations=3, lr=0.1, generator=g)
    assert u1.shape == (1, 3, 32, 32) and u1.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, t.parameters()))
    assert all(not p.requires_grad and p.grad is None for p in t.parameters())  # frozen, never a gradient
    u = torch.zeros(1, 3, 32, 32, requires_grad=True)
    loss = ufc_loss(t, x, u, torch.arange(10), (0, 0))
    loss.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.parameters())
    # the gradient of a shared u is the sum of the per-image gradients of (x_c + u)
    xs = (x + 0).requires_grad_(True)
    ufc_loss(t, xs, torch.zeros(1, 3, 32, 32), torch.arange(10), (0, 0)).backward()
    assert torch.allclose(u.grad[0], xs.grad.sum(0), atol=1e-6)


def test_roll_shifts_the_input():
    t = _teacher()
    x = clamp_valid(torch.randn(10, 3, 32, 32))
    u = torch.zeros(1, 3, 32, 32)
    a = ufc_loss(t, x, u, torch.arange(10), (2, 3))
    b = ufc_loss(t, torch.roll(x, shifts=(2, 3), dims=(2, 3)), u, torch.arange(10), (0, 0))
    assert torch.allclose(a, b)


def test_static_labels_are_the_mean_of_the_teachers_logits():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = (a(x) + b(x)) / 2
    assert torch.allclose(static_labels([a, b], x), want, atol=1e-6)


def test_mixup_targets_follow_the_images():
    assert torch.equal(mix_targets(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0]), 1.0), torch.tensor([1.0, 2.0]))
    assert torch.allclose(mix_targets(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0]), 0.25),
                          torch.tensor([4.0, 5.75]))
    # image n is the constant n and its label logits are (n, -n): the mixed image's value is the mixed target's
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 4, 4).contiguous()
    s = torch.stack([torch.arange(6.0), -torch.arange(6.0)], 1)
    xb, target = static_mixup(x, s, 16, 0.8, torch.Generator().manual_seed(3))
    assert xb.shape == (16, 3, 4, 4)
    assert torch.allclose(xb[:, 0, 0, 0], target[:, 0], atol=1e-5) and torch.allclose(target[:, 1], -target[:, 0])


def test_clamp_keeps_pixels_valid():
    lo, hi = pixel_bounds()
    y = clamp_valid(torch.randn(4, 3, 8, 8) * 10)
    assert (y >= lo - 1e-6).all() and (y <= hi + 1e-6).all()
    from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD

    px = y * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert px.min() >= -1e-6 and px.max() <= 1 + 1e-6


def test_augmentation_bank_views_and_labels():
    x = torch.randn(3, 3, 8, 8)
    y = torch.tensor([0, 1, 2])
    bx, by, base, view = augmentation_bank(x, y, 3, 4, seed=0)
    assert bx.shape == (12, 3, 8, 8) and torch.allclose(by.sum(1), torch.ones(12))
    assert torch.equal(bx[0], x[0]) and torch.equal(bx[1], x[0].flip(-1))
    assert torch.equal(by[0], torch.tensor([1.0, 0, 0])) and base.tolist()[:4] == [0, 0, 0, 0]
    assert view.tolist()[:4] == [0, 1, 2, 3]
    assert torch.equal(augmentation_bank(x, y, 3, 4, seed=0)[0], bx)  # fixed by the seed


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("labels", ["soft", "static", "dbr"])
def test_dd_train_resumes_to_the_same_student(tmp_path, labels):
    torch.manual_seed(0)
    x, y = torch.randn(12, 3, 16, 16), torch.arange(12) % 3
    s = torch.randn(12, 3)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    o = EvalOptions(data={"path": "unused"}, labels=labels, steps=6, batch_size=4, views=2, widths=[4, 8],
                    checkpoint_every=2, seed=1)
    full = dd_train(x, y, 3, o, teacher, s)
    ctx = StageContext("e", tmp_path, 0, None, log=lambda m: None)
    save = ctx.save_state

    def crash(state):
        save(state)
        raise Interrupt

    ctx.save_state = crash  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        dd_train(x, y, 3, o, teacher, s, ctx)
    ctx.save_state = save  # type: ignore[method-assign]
    assert ctx.load_state()["step"] == 2
    resumed = dd_train(x, y, 3, o, teacher, s, ctx)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in teacher.parameters())
