"""LSF-IDM: hand-computed loss values, the fused-label equivalence at T=1, the T^2 gradient scale, gradient flow
through a text student with a frozen or precomputed teacher, and its YAML example."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from distill.config import parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.precomputed import PrecomputedTeacher
from distill.core.teachers import FrozenTeacher
from distill.data.text import TokenizedText
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.lsf_idm import LSFIDM, fused_target
from distill.models.text_students import BiLSTMClassifier, TextCNN
from distill.tasks.text import TextClassification
from distill.train.module import DistillModule

YAML_EXAMPLES = {
    "lsf_idm": "{name: lsf_idm, alpha: 0.5, temperature: 2.0}",
}


def step(zs, zt, labels):
    return StepInputs(ModelOutput(zs), ModelOutput(zt), labels)


def test_hand_value_two_classes():
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[2 * math.log(3.0), 0.0]])  # softmax(zt / 2) = (3/4, 1/4)
    y = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    out = LSFIDM(alpha=0.3, temperature=2.0)(step(zs, zt, y))
    assert out["ce"].item() == pytest.approx(0.3 * math.log(2.0), abs=1e-6)
    assert out["kl"].item() == pytest.approx(0.7 * 4 * kl, abs=1e-6)


def test_defaults_follow_the_quoted_recipe_and_provenance():
    m = LSFIDM()
    assert m.alpha == 0.5 and m.temperature == 2.0 and m.needs_labels and m.needs_teacher
    entry = METHODS.entry("lsf_idm")
    assert entry.provenance is not None and entry.provenance.arxiv == "2308.01237"
    assert METHODS.canonical("lsfidm") == "lsf_idm"
    with pytest.raises(ValueError, match="alpha"):
        LSFIDM(alpha=1.5)


def test_alpha_one_is_cross_entropy_and_equal_logits_give_zero_kl():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    total = sum(LSFIDM(alpha=1.0)(step(zs, zt, y)).values())
    assert total.item() == pytest.approx(F.cross_entropy(zs, y).item(), abs=1e-6)
    assert LSFIDM()(step(zs, zs.clone(), y))["kl"].abs().item() < 1e-6
    assert not LSFIDM(alpha=0.0).needs_labels


def test_t1_gradient_equals_cross_entropy_against_the_fused_label():
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(5, 4, generator=g, requires_grad=True)
    zt = torch.randn(5, 4, generator=g)
    y = torch.randint(0, 4, (5,), generator=g)
    alpha = 0.3
    (grad,) = torch.autograd.grad(sum(LSFIDM(alpha, 1.0)(step(zs, zt, y)).values()), zs)
    target = fused_target(y, zt, alpha)
    assert torch.allclose(target.sum(1), torch.ones(5))
    (ref,) = torch.autograd.grad(F.cross_entropy(zs, target), zs)
    assert torch.allclose(grad, ref, atol=1e-6)


def test_t_squared_keeps_soft_gradients_comparable_across_temperatures():
    g = torch.Generator().manual_seed(2)
    zs = torch.randn(8, 5, generator=g, requires_grad=True)
    zt = torch.randn(8, 5, generator=g)
    y = torch.zeros(8, dtype=torch.long)
    norms = []
    for t in (8.0, 16.0):
        (grad,) = torch.autograd.grad(LSFIDM(0.0, t)(step(zs, zt, y))["kl"], zs)
        norms.append(grad.norm().item())
    # for large T the gradient tends to (z_s - z_t centred) / (K B): same scale at both temperatures
    assert norms[1] == pytest.approx(norms[0], rel=0.05)
    zc = (zs - zs.mean(1, keepdim=True)) - (zt - zt.mean(1, keepdim=True))
    assert norms[1] == pytest.approx((zc / (5 * 8)).norm().item(), rel=0.05)


def tiny_text(n: int = 12, vocab: int = 50, width: int = 7) -> TokenizedText:
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    ids = torch.randint(1, vocab, (n, width), generator=g)
    ids[torch.arange(width)[None, :] >= lengths[:, None]] = 0
    return TokenizedText(ids, lengths, torch.randint(0, 2, (n,), generator=g), ["0", "1"])


@pytest.mark.parametrize("precompute", [False, True])
def test_gradients_reach_the_student_never_the_teacher(precompute):
    data, task = tiny_text(), TextClassification()
    torch.manual_seed(0)
    student = BiLSTMClassifier(2, vocab_size=50, embed_dim=8, hidden_size=6, dropout=0.0)
    teacher_model = TextCNN(2, vocab_size=50, embed_dim=8, kernel_sizes=(2, 3), channels=4, dropout=0.0)
    teacher = (PrecomputedTeacher.from_model(teacher_model, task, data, batch_size=5) if precompute
               else FrozenTeacher(teacher_model))
    module = DistillModule(student, Composite({"lsf_idm": LSFIDM()}), teacher, task)
    batch = task.fetch(data, torch.tensor([7, 2, 9, 0]))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert set(terms) == {"lsf_idm.ce", "lsf_idm.kl"} and terms["lsf_idm.kl"].item() > 0
    loss.backward()
    assert student.embedding.weight.grad is not None and student.embedding.weight.grad.abs().sum() > 0
    assert student.lstm.weight_hh_l0.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher_model.parameters())
    if precompute:
        assert not teacher.logits.requires_grad


def test_yaml_example_builds_in_a_text_config():
    raw = {"task": "text_classification", "data": {"train": "train.tsv", "eval": "dev.tsv"},
           "student": {"arch": "bilstm"}, "teacher": {"arch": "minilm", "weights": "random"},
           "methods": [yaml.safe_load(YAML_EXAMPLES["lsf_idm"])], "train": {"epochs": 1}}
    comp = build_methods(parse_config(raw).methods)
    method = comp.methods["lsf_idm"]
    assert isinstance(method, LSFIDM) and method.alpha == 0.5 and method.kl_weight == 0.5
