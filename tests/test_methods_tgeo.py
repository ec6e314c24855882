"""TGeo-KD: fixed-ratio limit, the look-ahead meta-gradient against finite differences, the T̄ table, the detached
relation input, Adam on buffers, gradient flow, and a short real run that learns ω and resumes bit for bit."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TinyCNN, demo_subset

from distill.config import parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.logits import KD
from distill.methods.tgeo import OMEGA, TGeoKD, label_targets, per_sample_terms
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

YAML_EXAMPLES = {
    "tgeo": "{name: tgeo, weight: 1.0, temperature: 4.0, hidden: 64, meta_lr: 0.001, inner_lr: 0.05, "
            "update_every: 1, val_batch_size: 0}",
}

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def base_config() -> dict:
    return {
        "output_dir": "runs/x",
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2, "val_per_class": 1},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet20", "weights": "random"},
        "methods": [],
        "train": {"epochs": 1, "batch_size": 8},
    }


@pytest.mark.parametrize("name", sorted(YAML_EXAMPLES))
def test_yaml_examples_validate_and_build(name):
    raw = base_config()
    raw["methods"] = [yaml.safe_load(YAML_EXAMPLES[name])]
    comp = build_methods(parse_config(raw).methods)
    method = comp.methods[name]
    assert isinstance(method, METHODS.get(name)) and METHODS.canonical("tgeo_kd") == "tgeo"
    assert method.inner_lr == 0.05 and method.update_every == 1 and method.hidden == 64
    entry = METHODS.entry(name)
    assert entry.provenance is not None and entry.provenance.arxiv == "2312.15112"


# -- small pieces --------------------------------------------------------------------------------------------------
class DirectTask:
    """A task whose forward is ``model(batch.inputs)`` (for a linear student on plain vectors)."""

    def forward(self, model, batch):
        return model(batch.inputs)


def linear_setup(method: TGeoKD, student: torch.nn.Module, val: Batch, calls: list | None = None,
                 classes: int = 4) -> None:
    def val_batch(step, size):
        if calls is not None:
            calls.append((step, size))
        return val

    zs = torch.zeros(2, classes)
    method.setup(ModelOutput(zs), ModelOutput(zs), RunInfo(batch_size=6, student=student, task=DirectTask(),
                                                           val_batch=val_batch))


def restated_alpha(r, w1, b1, w2, b2):
    """alpha = sigmoid(w2 . relu(w1 r + b1) + b2), written out."""
    h = torch.clamp(r @ w1.T + b1, min=0)
    return 1 / (1 + torch.exp(-(h @ w2.T + b2)[:, 0]))


def restated_loss(zs, zt, y, alpha, t):
    """(1/B) sum_i [alpha_i t^2 sum_c p_t log(p_t / p_s) + (1 - alpha_i) (-log softmax(z_s)_y)], written out."""
    ps = torch.exp(zs / t) / torch.exp(zs / t).sum(1, keepdim=True)
    pt = torch.exp(zt / t) / torch.exp(zt / t).sum(1, keepdim=True)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    ce = -(zs - zs.logsumexp(1, keepdim=True)).gather(1, y[:, None])[:, 0]
    return (alpha * t * t * kl + (1 - alpha) * ce).mean()


def test_constant_ratio_is_fixed_alpha_kd():
    torch.manual_seed(0)
    method = TGeoKD(temperature=4.0, hidden=8)
    linear_setup(method, torch.nn.Linear(3, 5), Batch(torch.randn(4, 3), torch.arange(4)), classes=5)
    a = 0.3
    method.omega_w1.zero_()
    method.omega_b1.zero_()
    method.omega_w2.zero_()
    method.omega_b2.fill_(math.log(a / (1 - a)))
    method.eval()
    zs, zt, y = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3, torch.tensor([0, 1, 2, 3, 4, 0])
    loss = method(StepInputs(ModelOutput(zs), ModelOutput(zt), y))["loss"]
    kd = KD(temperature=4.0, ce_weight=1 - a, kl_weight=a)(StepInputs(ModelOutput(zs), ModelOutput(zt), y))
    assert torch.allclose(method.alpha(zs, zt, y), torch.full((6,), a), atol=1e-6)
    assert abs(loss.item() - sum(kd.values()).item()) < 1e-5
    # hand case: equal logits give KL = 0 and CE = log C, so the loss is (1 - a) log C
    zeros = torch.zeros(2, 5)
    hand = method(StepInputs(ModelOutput(zeros), ModelOutput(zeros), torch.tensor([1, 3])))["loss"]
    assert abs(hand.item() - (1 - a) * math.log(5)) < 1e-6


def test_lookahead_gradient_matches_finite_differences():
    torch.manual_seed(1)
    t, eta = 2.0, 0.7
    student = torch.nn.Linear(3, 4).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 2])
    zt = torch.randn(6, 4, dtype=torch.float64) * 2
    xv, yv = torch.randn(5, 3, dtype=torch.float64), torch.tensor([3, 2, 1, 0, 0])
    method = TGeoKD(temperature=t, hidden=8, inner_lr=eta)
    linear_setup(method, student, Batch(xv, yv))
    method.double()
    omega = [w.clone() for w in method.omega()]
    zs = student(x)
    r = method.relations(zs, zt, y)
    kl, ce = per_sample_terms(zs, zt, label_targets(y, 4), t)
    grads = method.lookahead_grad(r, kl, ce, Batch(xv, yv))
    assert all(p.grad is None for p in student.parameters())  # the meta step leaves θ's .grad alone

    def val_after_lookahead(w):
        weight, bias = student.weight.detach().clone().requires_grad_(), student.bias.detach().clone().requires_grad_()
        train = restated_loss(x @ weight.T + bias, zt, y, restated_alpha(r, *w), t)
        gw, gb = torch.autograd.grad(train, [weight, bias])
        return F.cross_entropy(xv @ (weight - eta * gw).T + (bias - eta * gb), yv).item()

    eps = 1e-6
    direction = [torch.randn_like(w) for w in omega]
    plus = val_after_lookahead([w + eps * d for w, d in zip(omega, direction)])
    minus = val_after_lookahead([w - eps * d for w, d in zip(omega, direction)])
    numeric = (plus - minus) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    assert abs(analytic) > 1e-6
    assert abs(numeric - analytic) < 1e-5 * max(1.0, abs(analytic))
    for k in (1, 3):  # single coordinates: b1[0] and b2
        e = [torch.zeros_like(w) for w in omega]
        e[k].view(-1)[0] = eps
        numeric = (val_after_lookahead([w + d for w, d in zip(omega, e)])
                   - val_after_lookahead([w - d for w, d in zip(omega, e)])) / (2 * eps)
        assert abs(numeric - grads[k].view(-1)[0].item()) < 1e-5 * max(1.0, abs(numeric))


def test_class_average_table_is_the_class_mean_of_teacher_probabilities():
    torch.manual_seed(2)
    method = TGeoKD(temperature=3.0)
    linear_setup(method, torch.nn.Linear(3, 5), Batch(torch.randn(4, 3), torch.arange(4)), classes=5)
    logits = torch.randn(12, 5) * 2
    labels = torch.tensor([0, 1, 1, 2, 0, -100, 1, 0, 2, 2, 1, 0])  # class 3 and 4 unseen, one unlabelled row
    pairs = [(Batch(None, labels[i:i + 5]), ModelOutput(logits[i:i + 5])) for i in range(0, 12, 5)]
    method.teacher_pass(iter(pairs))
    table = method.class_mean
    p = F.softmax(logits / 3.0, dim=1)
    for c in range(3):
        assert torch.allclose(table[c], p[labels == c].mean(0), atol=1e-6)
    assert torch.allclose(table[3:], torch.full((2, 5), 0.2))
    assert torch.allclose(table.sum(1), torch.ones(5), atol=1e-6)


def test_alpha_in_unit_interval_and_no_gradient_through_relations():
    torch.manual_seed(3)
    method = TGeoKD(temperature=4.0, hidden=16)
    linear_setup(method, torch.nn.Linear(3, 6), Batch(torch.randn(4, 3), torch.arange(4)), classes=6)
    with torch.no_grad():
        method.omega_w1.mul_(5)
        method.omega_b2.fill_(0.5)
    method.eval()
    zs = (torch.randn(8, 6) * 3).requires_grad_()
    zt, y = torch.randn(8, 6) * 3, torch.randint(0, 6, (8,))
    alpha = method.alpha(zs, zt, y)
    assert bool(((alpha > 0) & (alpha < 1)).all()) and alpha.std() > 0
    method(StepInputs(ModelOutput(zs), ModelOutput(zt), y))["loss"].backward()
    # the same loss with alpha a constant: any gradient through r_i would make the two differ
    leaf = zs.detach().clone().requires_grad_()
    restated_loss(leaf, zt, y, alpha, 4.0).backward()
    assert torch.allclose(zs.grad, leaf.grad, atol=1e-6)


def test_adam_on_buffers_matches_torch_adam_and_update_every():
    torch.manual_seed(4)
    calls: list = []
    method = TGeoKD(hidden=4, meta_lr=0.01, update_every=2, val_batch_size=3)
    linear_setup(method, torch.nn.Linear(3, 4), Batch(torch.randn(4, 3), torch.tensor([0, 1, 2, 3])), calls)
    params = [torch.nn.Parameter(w.clone()) for w in method.omega()]
    reference = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(3):
        grads = [torch.randn_like(w) for w in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        reference.step()
        method.adam_step_(grads)
    assert all(torch.allclose(p, w, atol=1e-7) for p, w in zip(params, method.omega()))
    assert int(method.adam_step) == 3
    # ω updates on steps 0, 2, 4 only, each with the next validation batch
    student = method._student
    method.train()
    for step in range(5):
        zs = student(torch.randn(6, 3))
        method(StepInputs(ModelOutput(zs), ModelOutput(torch.randn(6, 4)), torch.randint(0, 4, (6,)), step=step))
    assert calls == [(0, 3), (1, 3), (2, 3)] and int(method.adam_step) == 6


# -- through the real module and trainer --------------------------------------------------------------------------
def make_task(augment: bool = True) -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4) if augment else None)


def make_module(**options) -> DistillModule:
    torch.manual_seed(0)
    return DistillModule(TinyCNN(4), Composite({"tgeo": TGeoKD(hidden=8, **options)}), FrozenTeacher(TinyCNN(8)),
                         make_task())


def test_gradients_reach_student_never_teacher_and_omega_learns_outside_the_optimiser():
    module = make_module(meta_lr=0.01)
    task = module.task
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    val = task.prepare(task.fetch(demo_subset("test", 1), torch.arange(10)), train=False, generator=None)
    with pytest.raises(ValueError, match="data.val_per_class"):
        module.setup(batch)
    module.setup(batch, RunInfo(num_train_examples=20, batch_size=20, student=module.student, task=task,
                                val_batch=lambda step, size: val))
    method = module.methods.methods["tgeo"]
    assert list(method.parameters()) == []
    assert set(method.state_dict()) == {f"{k}_{n}" for k in ("omega", "adam_m", "adam_v") for n in OMEGA} | {
        "adam_step", "class_mean"}
    assert not any("student" in k or "teacher" in k or "caller" in k for k in method.state_dict())
    before = [w.clone() for w in method.omega()]
    reference = copy.deepcopy(module.student).train()
    module.train()
    loss, terms, _ = module(batch, step=0)
    assert set(terms) == {"tgeo"} and torch.isfinite(loss)
    assert all(p.grad is None for p in module.student.parameters())  # the look-ahead used autograd.grad only
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    teacher = module.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters()) and not teacher.training
    assert int(method.adam_step) == 1 and any(not torch.equal(a, b) for a, b in zip(before, method.omega()))
    # the validation forward ran on copies of the BatchNorm statistics: only the main forward moved them
    with torch.no_grad():
        reference(batch.inputs)
    for (k, a), b in zip(reference.state_dict().items(), module.student.state_dict().values()):
        if "running" in k or "num_batches" in k:
            assert torch.equal(a, b), k


def fit_run(tmp_path, name, max_steps=None):
    module = make_module(meta_lr=0.01)
    cfg = TrainConfig(epochs=2, batch_size=10, lr=0.05, schedule="cosine", progress=False, deterministic=True,
                      checkpoint_every=3, max_steps=max_steps, log_every=1)
    trainer = Trainer(module, demo_subset("train", 4), None, cfg, tmp_path / name, val_data=demo_subset("test", 2))
    return module, trainer.fit()


def test_real_run_learns_omega_and_resumes_bit_identically(tmp_path):
    initial, _ = fit_run(tmp_path, "init", max_steps=0)
    full, summary = fit_run(tmp_path, "full")
    method = full.methods.methods["tgeo"]
    assert summary["steps"] == 8 and int(method.adam_step) == 8
    assert any(not torch.equal(a, b) for a, b in zip(initial.methods.methods["tgeo"].omega(), method.omega()))
    assert torch.allclose(method.class_mean.sum(1), torch.ones(10), atol=1e-5)
    # T̄ from the real teacher pass: the class means of the teacher's tempered softmax on the unaugmented set
    data, task = demo_subset("train", 4), make_task(augment=False)
    with torch.no_grad():
        probs = F.softmax(full.teacher.model(task.prepare(task.fetch(data, torch.arange(40)), train=False,
                                                          generator=None).inputs) / 4.0, 1)
    expected = torch.stack([probs[data.labels == c].mean(0) for c in range(10)])
    assert torch.allclose(method.class_mean, expected, atol=1e-5)

    fit_run(tmp_path, "split", max_steps=5)  # stops after step 5; last checkpoint at step 3
    resumed, summary = fit_run(tmp_path, "split")
    assert summary["steps"] == 8
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
