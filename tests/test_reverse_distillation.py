"""Reverse distillation (row 12): the cosine-map loss and anomaly map against hand-computed values, their
invariances, the level weights of both modes, and gradients that reach the student but never the encoder."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import ConfigError, parse_config
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.dense.reverse_distillation import (
    ReverseDistillation,
    anomaly_map,
    cosine_map_distance,
    gaussian_filter,
    image_scores,
)
from distill.tasks.anomaly.models import FeatureMeanBaseline, dbfad_student, encoder_levels, rd4ad_student


def _pair(angle: float, b: int = 2, h: int = 2, w: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher maps of unit vector e1 everywhere, student maps at ``angle`` from it (2 channels)."""
    t = torch.zeros(b, 2, h, w)
    t[:, 0] = 1.0
    s = torch.zeros(b, 2, h, w)
    s[:, 0], s[:, 1] = math.cos(angle), math.sin(angle)
    return s, t


@pytest.mark.parametrize("mode", ["dbfad", "rd4ad"])
def test_identical_maps_give_zero_loss_and_zero_map(mode):
    feats = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)]
    assert cosine_map_distance(feats, feats, mode).item() == pytest.approx(0.0, abs=1e-6)
    m = anomaly_map(feats, feats, (8, 8), mode, sigma=4.0)
    assert m.shape == (3, 8, 8)
    assert m.abs().max().item() < 1e-6


def test_orthogonal_vectors_hand_values():
    s, t = _pair(math.pi / 2)  # 1 - cos = 1 at every pixel; B = 2, H = W = 2
    # dbfad: (1/K) sum_k 1/(HW) sum_{b,u} 1 = (1/1) * (2 * 4) / 4 = 2 (summed over the batch)
    assert cosine_map_distance([s], [t], "dbfad").item() == pytest.approx(2.0)
    # rd4ad: flattened vectors are orthogonal too: mean_b (1 - 0) = 1
    assert cosine_map_distance([s], [t], "rd4ad").item() == pytest.approx(1.0)
    # 45 degrees: 1 - cos = 1 - sqrt(2)/2 per pixel
    s, t = _pair(math.pi / 4)
    assert cosine_map_distance([s], [t], "dbfad").item() == pytest.approx(2 * (1 - math.sqrt(0.5)), rel=1e-5)
    # two levels in dbfad mode are averaged: (2 + 0) / 2
    s2, t2 = _pair(math.pi / 2)
    assert cosine_map_distance([s2, t2], [t2, t2], "dbfad").item() == pytest.approx(1.0)


def test_per_pixel_rescaling_leaves_dbfad_loss_unchanged():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)
    c = torch.rand(2, 1, 6, 6) + 0.1
    base = cosine_map_distance([s], [t], "dbfad")
    assert cosine_map_distance([s * c], [t], "dbfad").item() == pytest.approx(base.item(), rel=1e-5)
    assert cosine_map_distance([s], [t * c], "dbfad").item() == pytest.approx(base.item(), rel=1e-5)
    # the flattened (rd4ad) cosine is invariant to one scale per sample, not per pixel
    assert cosine_map_distance([s * 3.0], [t], "rd4ad").item() == pytest.approx(
        cosine_map_distance([s], [t], "rd4ad").item(), rel=1e-5)
    assert cosine_map_distance([s * c], [t], "rd4ad").item() != pytest.approx(
        cosine_map_distance([s], [t], "rd4ad").item(), rel=1e-3)


def test_level_weight_one_over_hw_only_in_dbfad_mode():
    s1, t1 = _pair(math.pi / 2, b=1, h=4, w=4)  # distance 1 at 4x4 (HW = 16)
    s2, t2 = _pair(math.pi / 2, b=1, h=2, w=2)  # distance 1 at 2x2 (HW = 4)
    dbfad = anomaly_map([s1, s2], [t1, t2], (4, 4), "dbfad", sigma=0.0)
    rd = anomaly_map([s1, s2], [t1, t2], (4, 4), "rd4ad", sigma=0.0)
    assert torch.allclose(dbfad, torch.full((1, 4, 4), 1 / 16 + 1 / 4))
    assert torch.allclose(rd, torch.full((1, 4, 4), 2.0))
    assert image_scores(rd).tolist() == [2.0]


def test_gaussian_filter_keeps_constants_and_mass_and_spreads_a_peak():
    const = torch.full((1, 16, 16), 3.0)
    assert torch.allclose(gaussian_filter(const, 2.0), const, atol=1e-5)
    peak = torch.zeros(1, 33, 33)
    peak[0, 16, 16] = 1.0
    out = gaussian_filter(peak, 2.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert out[0, 16, 16] < 0.1 and out[0, 16, 18] > 0.0
    # the separable kernel matches the 2-d Gaussian exp(-r^2 / 2 sigma^2), normalised
    yy, xx = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    g = torch.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 8.0)
    assert torch.allclose(out[0], g / g.sum(), atol=1e-5)


@pytest.mark.parametrize("builder", [dbfad_student, rd4ad_student])
def test_gradients_reach_decoder_never_encoder(builder):
    torch.manual_seed(0)
    student = builder(encoder="resnet20")
    teacher_like = builder(encoder="resnet20").encoder  # a stand-in teacher with other weights
    student.load_encoder(teacher_like)
    before = {k: v.clone() for k, v in student.encoder.state_dict().items()}
    student.train()
    assert not student.encoder.training  # frozen encoder: BN statistics never move
    x = torch.randn(2, 3, 32, 32)
    feats = student.encode(x)
    loss = cosine_map_distance(student.rebuild(feats), [feats[k] for k in student.levels],
                               "dbfad" if builder is dbfad_student else "rd4ad")
    loss.backward()
    assert all(p.grad is None for p in student.encoder.parameters())
    trainable = [p for n, p in student.named_parameters() if not n.startswith("encoder.")]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    for k, v in student.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the encoder holds exactly the teacher's weights
    for k, v in teacher_like.state_dict().items():
        assert torch.equal(student.encoder.state_dict()[k], v)


def test_method_reads_taps_and_refuses_bad_input():
    torch.manual_seed(0)
    levels = {f"f{k}": torch.randn(2, 4, 8 >> (k // 2), 8 >> (k // 2)) for k in range(4)}
    rebuilt = {f"out{k}": v + 0.1 * torch.randn_like(v) for k, v in enumerate(levels.values())}
    rebuilt = {k: v.requires_grad_() for k, v in rebuilt.items()}
    m = ReverseDistillation(mode="dbfad")
    assert m.student_taps() == ["out0", "out1", "out2", "out3"] and m.teacher_taps() == ["f0", "f1", "f2", "f3"]
    s, t = ModelOutput(torch.zeros(2, 8, 8), rebuilt), ModelOutput(torch.zeros(2, 10), levels)
    m.setup(s, t, RunInfo(num_train_examples=2, batch_size=2))
    terms = m(StepInputs(s, t, None, 0.0, 0, 0))
    expect = cosine_map_distance(list(rebuilt.values()), list(levels.values()), "dbfad")
    assert terms["rd"].item() == pytest.approx(expect.item())
    terms["rd"].backward()
    assert all(v.grad is not None for v in rebuilt.values())
    with pytest.raises(ValueError, match="mode"):
        ReverseDistillation(mode="l2")
    bad = ModelOutput(torch.zeros(2, 8, 8), {**rebuilt, "out3": torch.randn(2, 5, 2, 2)})
    with pytest.raises(ValueError, match="out3"):
        m.setup(bad, t, RunInfo(num_train_examples=2, batch_size=2))


def test_no_student_baseline_is_zero_on_the_mean_direction():
    torch.manual_seed(0)
    from distill.models import MODELS

    enc = MODELS["resnet20"](num_classes=10).eval()
    base = FeatureMeanBaseline(enc, (1, 2, 3), "rd4ad", sigma=0.0)
    x = torch.randn(4, 3, 32, 32)
    base.fit([x[:2], x[2:]])
    feats = encoder_levels(enc, x)
    assert torch.allclose(base.means[0], feats[1].mean(dim=(0, 2, 3)), atol=1e-5)
    maps = base(x)
    assert maps.shape == (4, 32, 32) and (maps >= -1e-6).all()


def test_config_rejects_bad_mode_naming_the_key():
    raw = {"task": "anomaly_detection", "data": {"texture": "brick"},
           "student": {"arch": "dbfad_student"}, "teacher": {"arch": "resnet56", "weights": "random"},
           "methods": [{"name": "reverse_distillation", "mode": "l2"}]}
    with pytest.raises(ConfigError, match=r"methods\[0\]|mode"):
        parse_config(raw)
