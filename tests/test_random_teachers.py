"""Random teachers (row 13): the DINO cross-entropy against hand-computed values, the head's constraints, the
student initialisations, a frozen teacher that never moves, and the probes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from distill.config import ConfigError, parse_config
from distill.core.outputs import ModelOutput, StepInputs
from distill.methods.logits.random_teachers import RandomTeachers, dino_cross_entropy, interpolated_init
from distill.models.dino import DINOHead, dino_resnet
from distill.pipelines.random_teachers import (
    RandomTeachersConfig,
    build_student,
    build_teacher,
    knn_probe,
    linear_probe,
    self_distill,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "random_teachers" / "cifar10_resnet20.yaml"
SMALL = {"depth": 8, "hidden": 16, "bottleneck": 8, "out_dim": 32}


def _cfg(**kw) -> RandomTeachersConfig:
    return RandomTeachersConfig(pipeline="random_teachers", data="x", output_dir="runs/x", model=SMALL, **kw)


def test_cross_entropy_hand_values():
    zt = torch.tensor([[0.0, math.log(3.0)]])  # teacher probabilities (1/4, 3/4)
    zs = torch.zeros(1, 2)  # student (1/2, 1/2)
    ce, kl = dino_cross_entropy(zs, zt)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ce.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert kl.item() == pytest.approx(math.log(2.0) - h, rel=1e-5)
    # tau_T = 0.5 squares the teacher's odds: (1/10, 9/10); tau_S = 2 halves the student's logits
    ce, _ = dino_cross_entropy(torch.tensor([[0.0, 2.0]]), zt, student_temp=2.0, teacher_temp=0.5)
    ps1 = math.exp(1.0) / (1 + math.exp(1.0))
    assert ce.item() == pytest.approx(-(0.1 * math.log(1 - ps1) + 0.9 * math.log(ps1)), rel=1e-5)
    # a centre shifts both sides equally: with equal logits the KL stays 0
    _, kl = dino_cross_entropy(zt, zt, center=torch.tensor([0.3, -0.2]))
    assert abs(kl.item()) < 1e-6


def test_method_centre_follows_the_teacher_mean():
    m = RandomTeachers(center_momentum=0.9)
    zt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    zs = torch.zeros(3, 2, requires_grad=True)
    out = m(StepInputs(ModelOutput(zs, {}), ModelOutput(zt, {}), None, 0.0, 0, 0))
    assert set(out) == {"dino_ce"}
    assert torch.allclose(m.center, 0.1 * zt.mean(0))
    out["dino_ce"].backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="center_momentum"):
        RandomTeachers(center_momentum=1.5)


def test_head_outputs_are_cosines_with_unit_rows():
    torch.manual_seed(0)
    head = DINOHead(8, hidden=16, bottleneck=4, out_dim=50)
    with torch.no_grad():
        head.last.weight.mul_(7.0)  # the forward re-normalises the rows whatever their stored norm
    p = head(torch.randn(20, 8) * 10)
    assert p.shape == (20, 50) and p.abs().max() <= 1.0 + 1e-6
    assert torch.allclose(head.last_weight().norm(dim=1), torch.ones(50), atol=1e-6)
    assert head.last.bias is None and torch.all(head.bottleneck.bias == 0)


def test_exact_copy_in_eval_mode_has_zero_kl_and_zero_gradient():
    teacher = build_teacher(_cfg()).double()  # float64: the zero is exact up to rounding at 1e-12
    student = build_student(_cfg(), teacher, seed=0).eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ce, kl = dino_cross_entropy(student(x).double(), teacher(x).double())
    ce.backward()
    assert abs(kl.item()) < 1e-10
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) < 1e-10
    # in train mode (batch statistics) the same copy gets a gradient
    student.zero_grad()
    student.train()
    dino_cross_entropy(student(x).double(), teacher(x).double())[0].backward()
    assert max(p.grad.abs().max().item() for p in student.parameters() if p.grad is not None) > 1e-6


def test_interpolated_init_endpoints_and_normalisation():
    torch.manual_seed(0)
    t, r, s = dino_resnet(**SMALL), dino_resnet(**SMALL), dino_resnet(**SMALL)
    interpolated_init(s, t, r, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), t.state_dict().values(), strict=True))
    interpolated_init(s, t, r, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), r.parameters(), strict=True))
    interpolated_init(s, t, r, 0.5, normalize=True)
    w = next(iter(s.parameters()))
    expect = (0.5 * next(iter(t.parameters())) + 0.5 * next(iter(r.parameters()))) / math.sqrt(0.5)
    assert torch.allclose(w, expect)
    # the a = 1 arm of the pipeline is seeded by the run's seed, not the teacher's
    teacher = build_teacher(_cfg())
    s1 = build_student(_cfg(init="interpolated", a=1.0), teacher, seed=1)
    assert not torch.equal(next(iter(s1.parameters())), next(iter(teacher.parameters())))


def test_self_distillation_moves_the_student_and_never_the_teacher():
    teacher = build_teacher(_cfg())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(_cfg(), teacher, seed=0)
    s_before = [p.clone() for p in student.parameters()]
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    log: list[dict] = []
    self_distill(teacher, student, images, _cfg(epochs=2, batch_size=8), seed=0, log=log)
    for k, v in teacher.state_dict().items():  # parameters and BN buffers bit-identical
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), s_before, strict=True))
    assert len(log) >= 2


def test_probes_on_separable_features():
    torch.manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 5) + 4.0 * y[:, None].float()
    assert linear_probe(x[:100], y[:100], x[100:], y[100:], epochs=30, lr=0.05) > 0.95
    assert knn_probe(x[:100], y[:100], x[100:], y[100:], k=5) > 0.95
    # hand case: the 1-NN of each test point is the training point it equals
    tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert knn_probe(tr, torch.tensor([0, 1, 2]), tr.flip(0), torch.tensor([2, 1, 0]), k=1) == 1.0


def test_recipe_validates_and_bad_keys_are_named():
    raw = yaml.safe_load(RECIPE.read_text())
    cfg = RandomTeachersConfig(**raw)
    assert cfg.init == "teacher" and cfg.model.out_dim == 4096 and cfg.center_momentum is None
    with pytest.raises(ValidationError, match="epochz"):
        RandomTeachersConfig(**{**raw, "epochz": 3})
    with pytest.raises(ValidationError, match="init"):
        RandomTeachersConfig(**{**raw, "init": "copy"})


def test_methods_list_refuses_the_pipeline_method():
    raw = {"task": "image_classification", "data": {"train": "x.npz"}, "student": {"arch": "resnet20"},
           "teacher": {"arch": "resnet20", "weights": "random"}, "methods": [{"name": "random_teachers"}]}
    with pytest.raises(ConfigError, match="pipeline"):
        parse_config(raw)
