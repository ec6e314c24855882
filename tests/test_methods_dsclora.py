"""DSCLoRA and the spatial affinity: hand-computed values, invariances, gradient flow (student LoRA factors yes,
teacher never), and the config rule that the student must carry ConvLoRA layers."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import ConfigError
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.dense.affinity import affinity_distance, spatial_affinity
from distill.methods.dense.dsclora import DSCF_TARGETS, DSCLoRA
from distill.models.conv_lora import apply_conv_lora
from distill.tasks.super_resolution.models import span

YAML_EXAMPLES = {
    "dsclora": "{name: dsclora, lambda_gt: 0.5, lambda_teacher: 0.5, lambda_affinity: 10.0, student: [b1, b2, b3]}",
    "l1": "{name: l1}",
}


def test_affinity_hand_case() -> None:
    """Positions (1, 0) and (1, 1): A = [[1, 1/sqrt 2], [1/sqrt 2, 1]]."""
    f = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # C = 2 channels, 1 x 2 positions
    a = spatial_affinity(f)
    r = 1 / math.sqrt(2)
    assert torch.allclose(a, torch.tensor([[[1.0, r], [r, 1.0]]]), atol=1e-6)


def test_affinity_is_zero_for_identical_features_and_invariant_to_positive_scaling_per_position() -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 5, 3, 4)
    assert float(affinity_distance(f, f.clone())) == 0.0
    scale = torch.rand(2, 1, 3, 4) * 5 + 0.1  # a positive factor per position
    assert float(affinity_distance(f * scale, f)) < 1e-5
    # teacher and student may differ in channels, not in spatial size
    assert affinity_distance(torch.randn(2, 3, 3, 4), torch.randn(2, 7, 3, 4)).shape == ()
    with pytest.raises(ValueError, match="equal spatial sizes"):
        affinity_distance(torch.randn(1, 3, 3, 4), torch.randn(1, 3, 2, 4))


def test_affinity_distance_hand_value() -> None:
    """Student positions (1, 0), (0, 1) (A = I); teacher (1, 0), (1, 0) (A = all ones): mean |diff| = 2/4."""
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    assert math.isclose(float(affinity_distance(s, t)), 0.5, rel_tol=1e-6)


def test_total_loss_hand_computed() -> None:
    hr = torch.zeros(1, 3, 2, 2)
    sr = torch.full((1, 3, 2, 2), 0.5)
    sr_t = torch.full((1, 3, 2, 2), 0.25)
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    ft = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    m = DSCLoRA(lambda_gt=0.5, lambda_teacher=0.5, lambda_affinity=10.0, student=["f"])
    terms = m(StepInputs(ModelOutput(sr, {"f": fs}), ModelOutput(sr_t, {"f": ft}), hr))
    assert math.isclose(float(terms["gt"]), 0.25, rel_tol=1e-6)  # 0.5 * |0.5 - 0|
    assert math.isclose(float(terms["teacher"]), 0.125, rel_tol=1e-6)  # 0.5 * |0.5 - 0.25|
    assert math.isclose(float(terms["affinity"]), 5.0, rel_tol=1e-6)  # 10 * 0.5
    no_aff = DSCLoRA(lambda_affinity=0.0)
    assert no_aff.student_taps() == [] and no_aff.teacher_taps() == []


def test_gradients_reach_the_lora_factors_and_never_the_teacher() -> None:
    from distill.core.taps import FeatureTaps

    torch.manual_seed(0)
    student = span(2, channels=8, num_blocks=3)
    apply_conv_lora(student, {"conv_2": (2, 4.0), "blocks.0.c1_r": (2, 4.0), "blocks.2.c3_r": (2, 4.0)})
    for m in student.modules():
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B, std=0.01)  # with B = 0 the gradient of A is 0 by construction
    teacher = span(2, channels=12, num_blocks=3)
    x, hr = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 12, 12)
    taps = ["b1", "b2", "b3"]
    with FeatureTaps(student, taps).capture() as fs:
        ys = student(x)
    with FeatureTaps(teacher, taps).capture() as ft:
        yt = teacher(x)
    method = DSCLoRA()
    s_out, t_out = ModelOutput(ys, dict(fs)), ModelOutput(yt, dict(ft))
    method.setup(s_out, t_out, RunInfo())
    sum(method(StepInputs(s_out, t_out, hr)).values()).backward()
    lora = {n: p for n, p in student.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    assert all(p.grad is None for n, p in student.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for p in teacher.parameters())


def test_dscf_placement_names_span_convolutions() -> None:
    model = span(2)
    names = dict(model.named_modules())
    assert all(isinstance(names[n], torch.nn.Conv2d) for n in DSCF_TARGETS)
    assert DSCF_TARGETS["conv_2"] == (8, 16.0) and DSCF_TARGETS["blocks.5.c3_r"] == (2, 4.0)


def test_a_student_without_conv_lora_is_refused_naming_the_key(tmp_path) -> None:
    from distill.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: super_resolution\ndata: {source: textures, textures: {train_size: 8, eval_size: 4}}\n"
                   "student: {arch: span}\nteacher: {arch: span, weights: random}\n"
                   "methods: [{name: dsclora}]\n")
    with pytest.raises((ConfigError, ValueError), match="student.conv_lora"):
        load_config(str(cfg))
    with pytest.raises(ValueError, match="lambda_gt"):
        DSCLoRA(lambda_gt=-1.0)
