"""MIX-KD (mixup / mixstd / mixkd), DHO and LELP: maths against hand values and restated references, hooks,
gradient flow, and short real runs through the trainer."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TinyCNN, demo_subset

from distill.config import parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.taps import FeatureTaps
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.dual_head import A_GRID, B_GRID, DHO, combine_heads, search_combiner
from distill.methods.lelp import LELP, linear_readout, null_space_projector
from distill.methods.logits import KD, CrossEntropy
from distill.methods.mixup import MixKD, MixSTD, Mixup, mix_batch, mixstd_loss, sample_mixing
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

YAML_EXAMPLES = {
    "mixup": "{name: mixup, strategy: fmu, beta: 1.0}",
    "mixstd": "{name: mixstd, weight: 1.0, ce_weight: 0.1, kl_weight: 0.9}",
    "mixkd": "{name: mixkd, strategy: pmu, partmixup: 0.9, pmu_sampling: with_replacement, beta: 1.0}",
    "dho": "{name: dho, temperature: 2.0, ce_weight: 0.5, kd_weight: 0.5, kd_reduction: split, student: pooled}",
    "lelp": "{name: lelp, subclasses: 4, beta: 1.0, targets: cached, assign: labels}",
}

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def base_config() -> dict:
    return {
        "output_dir": "runs/x",
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
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
    assert isinstance(comp.methods[name], METHODS.get(name))
    entry = METHODS.entry(name)
    assert entry.provenance is not None and entry.provenance.arxiv


def make_task(augment: bool = True) -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4) if augment else None)


def prepared_batch(n: int = 20, per_class: int = 2, train: bool = True) -> Batch:
    task = make_task(augment=train)
    data = demo_subset("train", per_class)
    return task.prepare(task.fetch(data, torch.arange(n)), train=train, generator=torch.Generator().manual_seed(0))


def assert_teacher_untouched(teacher: torch.nn.Module) -> None:
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training


# ---------------------------------------------------------------------------------------------------------------
# MIX-KD
# ---------------------------------------------------------------------------------------------------------------
def official_mix(x, y, rp1, rp2, a, num_classes):
    """The official FMU/PMU arithmetic restated, given its draws (a: (B, 1) numpy array of lambdas)."""
    b = np.tile(a[..., None, None], [1, *x.shape[1:]])
    oh1 = torch.zeros(len(y), num_classes).scatter_(1, y[rp1].unsqueeze(1), 1)
    oh2 = torch.zeros(len(y), num_classes).scatter_(1, y[rp2].unsqueeze(1), 1)
    c = np.tile(a, [1, num_classes])
    xs = x[rp1] * torch.from_numpy(b).float() + x[rp2] * torch.from_numpy(1 - b).float()
    ys = oh1 * torch.from_numpy(c).float() + oh2 * torch.from_numpy(1 - c).float()
    return xs, ys


def test_mix_lambda_one_is_the_permuted_batch_and_targets_sum_to_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 5, 4, generator=g), torch.tensor([0, 1, 2, 3, 4, 1])
    rp1, rp2 = torch.randperm(6, generator=g), torch.randperm(6, generator=g)
    out = mix_batch(Batch(x, y, torch.arange(6)), rp1, rp2, torch.ones(6, dtype=torch.float64), 5)
    assert torch.equal(out.inputs, x[rp1])
    assert torch.equal(out.labels, F.one_hot(y[rp1], 5).float())
    assert torch.equal(out.indices, rp1)
    lam = torch.rand(6, generator=g, dtype=torch.float64)
    out = mix_batch(Batch(x, y, torch.arange(6)), rp1, rp2, lam, 5)
    assert torch.allclose(out.labels.sum(1), torch.ones(6))
    ref_x, ref_y = official_mix(x, y, rp1, rp2, lam.numpy()[:, None], 5)
    assert torch.allclose(out.inputs, ref_x, atol=1e-6) and torch.allclose(out.labels, ref_y, atol=1e-6)


def test_mix_hand_case_and_any_input_shape():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # non-image inputs (B, D)
    y = torch.tensor([0, 1])
    out = mix_batch(Batch(x, y), torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.25, 1.0]), 3)
    assert torch.allclose(out.inputs, torch.tensor([[0.25, 1.5], [0.0, 2.0]]))
    assert torch.allclose(out.labels, torch.tensor([[0.25, 0.75, 0.0], [0.0, 1.0, 0.0]]))
    # an unlabelled source row (-100) adds nothing: the target keeps only the labelled share
    out = mix_batch(Batch(x, torch.tensor([0, -100])), torch.tensor([0, 1]), torch.tensor([1, 0]),
                    torch.tensor([0.25, 1.0]), 3)
    assert torch.allclose(out.labels, torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_pmu_unmixed_fraction_matches_theory():
    b, p, trials = 64, 0.9, 300
    k = int(b * p)
    g = torch.Generator().manual_seed(1)
    with_repl = [float((sample_mixing(b, g, "pmu", 1.0, p)[2] == 1.0).float().mean()) for _ in range(trials)]
    expected = 1 - (1 - 1 / b) ** k  # ~0.59: with replacement far fewer rows than 90% stay unmixed
    assert abs(np.mean(with_repl) - expected) < 0.01
    exact = {float((sample_mixing(b, g, "pmu", 1.0, p, "exact")[2] == 1.0).sum()) for _ in range(20)}
    assert exact == {float(k)}
    fmu = sample_mixing(b, g, "fmu", 1.0)[2]
    assert not bool((fmu == 1.0).any()) and bool(((fmu > 0) & (fmu < 1)).all())


def test_mixing_draws_are_seeded():
    a = sample_mixing(16, torch.Generator().manual_seed(3), "pmu", 0.4)
    b = sample_mixing(16, torch.Generator().manual_seed(3), "pmu", 0.4)
    c = sample_mixing(16, torch.Generator().manual_seed(4), "pmu", 0.4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])


def official_mixstd(zs, zt, target, gamma, alpha):
    """MIXSTDLoss restated: unbiased per-row std, soft CE summed / B, batchmean KL without T^2."""
    stds, stdt = zs.std(-1, keepdim=True), zt.std(-1, keepdim=True)
    cls = gamma * (-F.log_softmax(zs / stds, -1) * target).sum() / zs.shape[0]
    kl = alpha * torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(zs / stds, 1), F.softmax(zt / stdt, 1))
    return cls, kl


def test_mixstd_matches_official_and_hand_value():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(8, 10, generator=g) * 3, torch.randn(8, 10, generator=g) * 3
    target = F.softmax(torch.randn(8, 10, generator=g), -1)
    ours = mixstd_loss(zs, zt, target, 0.1, 0.9)
    cls, kl = official_mixstd(zs, zt, target, 0.1, 0.9)
    assert ours["ce"].item() == pytest.approx(cls.item(), abs=1e-5)
    assert ours["kl"].item() == pytest.approx(kl.item(), abs=1e-5)
    # two classes: z_s = (1, -1) has unbiased std sqrt(2); z_t = (2, 0) also; so z/std = (1/sqrt2)(1,-1), (sqrt2, 0)
    s, r2 = torch.tensor([[1.0, -1.0]]), math.sqrt(2)
    ps1 = 1 / (1 + math.exp(-r2))  # softmax((1/sqrt2, -1/sqrt2))_0
    pt1 = 1 / (1 + math.exp(-r2))  # softmax((sqrt2, 0))_0
    out = MixSTD(ce_weight=1.0, kl_weight=1.0)(StepInputs(ModelOutput(s), ModelOutput(torch.tensor([[2.0, 0.0]])),
                                                          torch.tensor([0])))
    assert out["ce"].item() == pytest.approx(-math.log(ps1), abs=1e-6)
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-6)  # same scaled distribution: ps1 == pt1
    assert ps1 == pt1


def test_mixstd_affine_invariance_and_zero_kl():
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    base = mixstd_loss(zs, zt, y)
    moved = mixstd_loss(2.5 * zs + torch.randn(5, 1, generator=g), 0.3 * zt - 4.0, y)
    for k in base:
        assert moved[k].item() == pytest.approx(base[k].item(), abs=1e-5)
    same = mixstd_loss(3.0 * zt + 1.0, zt, y)["kl"]
    assert abs(same.item()) < 1e-6
    # hard labels with unlabelled rows: those rows are skipped by the CE term
    y2 = y.clone()
    y2[:2] = -100
    ref = 0.1 * F.cross_entropy(zs[2:] / zs[2:].std(-1, keepdim=True), y[2:])
    assert mixstd_loss(zs, zt, y2)["ce"].item() == pytest.approx(ref.item(), abs=1e-6)


def recording_models():
    """A student and a teacher that record the input of every forward call."""
    seen = {"student": [], "teacher": []}
    torch.manual_seed(0)
    student, teacher = TinyCNN(8), TinyCNN(16)
    student.register_forward_pre_hook(lambda m, inp: seen["student"].append(inp[0].detach().clone()))
    teacher.register_forward_pre_hook(lambda m, inp: seen["teacher"].append(inp[0].detach().clone()))
    return student, teacher, seen


def test_mixkd_teacher_sees_the_students_mixed_batch_and_gradients_flow():
    student, teacher, seen = recording_models()
    method = MixKD()
    module = DistillModule(student, Composite({"mixkd": method}), FrozenTeacher(teacher), make_task())
    batch = prepared_batch()
    module.setup(batch)
    seen["student"].clear()
    seen["teacher"].clear()
    loss, terms, _ = module(batch, generator=torch.Generator().manual_seed(7))
    assert set(terms) == {"mixkd.ce", "mixkd.kl"}
    xs, xt = seen["student"][-1], seen["teacher"][-1]
    assert torch.equal(xs, xt)
    rp1, rp2, lam = sample_mixing(20, torch.Generator().manual_seed(7), "pmu", 1.0, 0.9)
    expected = mix_batch(batch, rp1, rp2, lam, 10)
    assert torch.allclose(xs, expected.inputs) and not torch.allclose(xs, batch.inputs)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert_teacher_untouched(teacher)


def test_mixup_composes_with_ce_and_kd_in_a_real_run(tmp_path):
    torch.manual_seed(0)
    methods = Composite({"mixup": Mixup("fmu", 0.4), "ce": CrossEntropy(), "kd": KD(temperature=1.0)},
                        {"ce": 0.1, "kd": 0.9})
    module = DistillModule(TinyCNN(8), methods, FrozenTeacher(TinyCNN(16)), make_task())
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False)
    summary = Trainer(module, demo_subset("train", 2), demo_subset("test", 1), cfg, tmp_path).fit()
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# DHO
# ---------------------------------------------------------------------------------------------------------------
def dho_step(method: DHO, student: TinyCNN, x: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor) -> dict:
    with FeatureTaps(student, ["pooled"]).capture() as feats:
        logits = student(x)
    out = ModelOutput(logits, dict(feats))
    if method.head is None:
        method.setup(out.detach(), ModelOutput(zt), RunInfo())
    return method(StepInputs(out, ModelOutput(zt), labels))


def test_dho_combiner_endpoints_and_hand_value():
    g = torch.Generator().manual_seed(0)
    z_ce, z_kd = torch.randn(6, 5, generator=g) * 2, torch.randn(6, 5, generator=g) * 2
    assert torch.allclose(combine_heads(z_ce, z_kd, 1.0, 0.7), F.log_softmax(z_ce, -1), atol=1e-6)
    assert torch.allclose(combine_heads(z_ce, z_kd, 0.0, 1.0), F.log_softmax(z_kd, -1), atol=1e-6)
    mixed = combine_heads(z_ce, z_kd, 0.3, 2.0)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(6), atol=1e-6)
    # two classes by hand: a = 0.5, b = 2, z_ce = (0, 0), z_kd = (2 ln 3, 0) -> softmax(z_kd/2) = (3/4, 1/4)
    out = combine_heads(torch.zeros(1, 2), torch.tensor([[2 * math.log(3.0), 0.0]]), 0.5, 2.0)
    assert torch.allclose(out.exp(), torch.tensor([[0.625, 0.375]]), atol=1e-6)


def test_dho_losses_match_kl_div_and_labelled_ce():
    torch.manual_seed(0)
    student = TinyCNN(8)
    x = torch.randn(6, 3, 8, 8)
    zt = torch.randn(6, 10) * 3
    y = torch.tensor([1, -100, 3, -100, -100, 7])
    for reduction in ("all", "split", None):  # None: the default, the official KL(x_l) + KL(x_u)
        method = DHO(temperature=2.0, ce_weight=0.5, kd_weight=0.5,
                     **({} if reduction is None else {"kd_reduction": reduction}))
        torch.manual_seed(1)
        terms = dho_step(method, student, x, zt, y)
        with torch.no_grad(), FeatureTaps(student, ["pooled"]).capture() as f:
            z_ce = student(x)
        z_kd = method.head(f["pooled"])

        def kl(rows, z_kd=z_kd):
            return F.kl_div(F.log_softmax(z_kd[rows] / 2, 1), F.softmax(zt[rows] / 2, 1), reduction="batchmean")

        known = y != -100
        ref_kl = kl(torch.ones(6, dtype=torch.bool)) if reduction == "all" else kl(known) + kl(~known)
        assert terms["kd"].item() == pytest.approx(0.5 * 4 * ref_kl.item(), abs=1e-5)
        ref_ce = F.cross_entropy(z_ce[known], y[known])
        assert terms["ce"].item() == pytest.approx(0.5 * ref_ce.item(), abs=1e-5)


def test_dho_single_head_control_is_the_same_loss_on_the_students_own_head():
    torch.manual_seed(0)
    student = TinyCNN(8)
    x, zt = torch.randn(6, 3, 8, 8), torch.randn(6, 10) * 3
    y = torch.tensor([1, -100, 3, -100, -100, 7])
    method = DHO(temperature=2.0, ce_weight=0.5, kd_weight=0.5, kd_head="shared")
    with FeatureTaps(student, ["pooled"]).capture() as feats:
        z = student(x)
    method.setup(ModelOutput(z, dict(feats)).detach(), ModelOutput(zt), RunInfo())
    assert method.head is None and not list(method.parameters())  # no second head
    terms = method(StepInputs(ModelOutput(z, dict(feats)), ModelOutput(zt), y))
    known = y != -100

    def kl(rows):
        return F.kl_div(F.log_softmax(z[rows] / 2, 1), F.softmax(zt[rows] / 2, 1), reduction="batchmean")

    assert terms["kd"].item() == pytest.approx(0.5 * 4 * (kl(known) + kl(~known)).item(), abs=1e-5)
    assert terms["ce"].item() == pytest.approx(0.5 * F.cross_entropy(z[known], y[known]).item(), abs=1e-5)
    (terms["kd"] + terms["ce"]).backward()  # both terms reach the student's own head
    assert student.head.weight.grad.abs().sum() > 0
    assert method.inference_model(student) is student


def test_dho_gradient_routing_between_heads():
    torch.manual_seed(0)
    student, method = TinyCNN(8), DHO()
    x, zt, y = torch.randn(4, 3, 8, 8), torch.randn(4, 10), torch.tensor([0, 1, -100, 3])
    dho_step(method, student, x, zt, y)["kd"].backward()
    assert student.head.weight.grad is None or student.head.weight.grad.abs().sum() == 0
    assert method.head.weight.grad.abs().sum() > 0 and student.stage1[0].weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    dho_step(method, student, x, zt, y)["ce"].backward()
    assert method.head.weight.grad is None or method.head.weight.grad.abs().sum() == 0
    assert student.head.weight.grad.abs().sum() > 0 and student.stage1[0].weight.grad.abs().sum() > 0


def official_search(z_ce, z_kd, labels):
    """The official grid search restated: alpha weights the KD head, beta outer, first strict best kept."""
    best_acc, best_alpha, best_beta = 0, 0, 1.0
    p_ce = F.softmax(z_ce, 1)
    for beta in [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0]:
        p_kd = F.softmax(z_kd / beta, 1)
        for alpha in np.arange(0, 1.05, 0.05):
            acc = 100 * ((1 - alpha) * p_ce + alpha * p_kd).argmax(1).eq(labels).sum().item() / len(labels)
            if acc > best_acc:
                best_acc, best_alpha, best_beta = acc, alpha, beta
    return 1 - best_alpha, best_beta, best_acc / 100


def test_dho_grid_search_constructed_and_against_official():
    assert len(A_GRID) == 21 and A_GRID[0] == 0.0 and A_GRID[-1] == 1.0 and len(B_GRID) == 7
    # row 0 (label 0) needs a > 0.5 and row 1 (label 1) needs a < 0.684 at b = 0.5: only mixtures get both right
    z_ce = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    z_kd = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    a, b, acc = search_combiner(z_ce, z_kd, torch.tensor([0, 1]))
    assert acc == 1.0 and 0.0 < a < 1.0 and (a, b) == pytest.approx((0.65, 0.5))
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        z_ce, z_kd = torch.randn(40, 4, generator=g) * 2, torch.randn(40, 4, generator=g) * 2
        y = torch.randint(0, 4, (40,), generator=g)
        ours, ref = search_combiner(z_ce, z_kd, y), official_search(z_ce, z_kd, y)
        assert ours == pytest.approx(ref, abs=1e-6)
    y = torch.tensor([0, -100])  # unlabelled rows are ignored
    assert search_combiner(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 2), y)[2] == 1.0


def test_dho_gradient_flow_through_module():
    torch.manual_seed(0)
    student, teacher = TinyCNN(8), TinyCNN(16)
    method = DHO()
    module = DistillModule(student, Composite({"dho": method}), FrozenTeacher(teacher), make_task())
    batch = prepared_batch()
    batch.labels[::2] = -100
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert set(terms) == {"dho.kd", "dho.ce"}
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.parameters())
    assert_teacher_untouched(teacher)


def dho_run(tmp_path, val: bool):
    torch.manual_seed(0)
    method = DHO()
    module = DistillModule(TinyCNN(8), Composite({"dho": method}), FrozenTeacher(TinyCNN(16)), make_task())
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False)
    trainer = Trainer(module, demo_subset("train", 2), demo_subset("test", 1), cfg, tmp_path,
                      val_data=demo_subset("test", 2) if val else None)
    return method, module, trainer, trainer.fit()


def test_dho_fits_combiner_on_val_split(tmp_path):
    method, module, trainer, summary = dho_run(tmp_path, val=True)
    assert summary["final"] == trainer.evaluate()
    a, b = method.mix_a.item(), method.mix_b.item()
    assert any(abs(a - v) < 1e-6 for v in A_GRID) and b in B_GRID
    # the stored validation accuracy is the accuracy of the inference model with that (a, b) on the val split
    val_metrics = trainer.evaluate(data=demo_subset("test", 2))
    assert val_metrics["accuracy"] == pytest.approx(method.val_accuracy.item(), abs=1e-6)
    module.student.eval()
    wrapped = module.inference_model()
    x = prepared_batch(train=False).inputs
    with torch.no_grad(), FeatureTaps(module.student, ["pooled"]).capture() as f:
        z_ce = module.student(x)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), combine_heads(z_ce, method.head(f["pooled"]), a, b), atol=1e-5)


def test_dho_without_val_keeps_fixed_combiner(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method, _, _, _ = dho_run(tmp_path, val=False)
    assert any("no 'val' split" in str(w.message) for w in caught)
    assert method.mix_a.item() == 0.5 and method.mix_b.item() == 0.5 and method.val_accuracy.item() == -1.0


# ---------------------------------------------------------------------------------------------------------------
# LELP
# ---------------------------------------------------------------------------------------------------------------
def synthetic_teacher(n=60, d=12, c=2, seed=0):
    """Embeddings with sub-structure, logits from a known affine head, labels."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g) * torch.linspace(2.0, 0.5, d)
    w, b = torch.randn(c, d, generator=g), torch.randn(c, generator=g)
    t = h @ w.T + b
    y = torch.randint(0, c, (n,), generator=g)
    return h, t, y, w


def fitted_lelp(s=3, c=2, d=12, n=60, **kw):
    h, t, y, w = synthetic_teacher(n, d, c)
    method = LELP(subclasses=s, targets="live", **kw)
    method.setup(ModelOutput(torch.zeros(2, c), {"pooled": torch.zeros(2, 5)}),
                 ModelOutput(torch.zeros(2, c), {"pooled": torch.zeros(2, d)}), RunInfo(num_train_examples=n))
    method.fit(h, t, y)
    return method, h, t, y, w


def test_lelp_marginals_are_the_teachers_probabilities():
    method, h, t, _, _ = fitted_lelp()
    p = method.teacher_targets(h, t)
    assert p.shape == (60, 2, 3)
    assert torch.allclose(p.sum(-1), F.softmax(t, -1), atol=1e-6)
    assert torch.allclose(p.sum((1, 2)), torch.ones(60), atol=1e-6)


def test_lelp_null_space_and_orthonormal_directions():
    method, h, t, _, w = fitted_lelp(s=3, c=3)
    w_hat, residual = linear_readout(h.double(), t.double())
    assert residual < 1e-5 and torch.allclose(w_hat.float(), w, atol=1e-4)
    p = method.projector
    assert (w @ p).abs().max() < 1e-4  # W P = 0 for the teacher's true weights
    assert torch.allclose(p @ p, p, atol=1e-5) and torch.allclose(p, p.T, atol=1e-6)
    for k in range(3):
        u = method.directions[k]
        assert torch.allclose(u.T @ u, torch.eye(3), atol=1e-5)
        assert (w @ u).abs().max() < 1e-4  # the subclass directions do not move the logits
    # hand case: W = e_1 in R^3 -> P = diag(0, 1, 1)
    assert torch.allclose(null_space_projector(torch.tensor([[2.0, 0.0, 0.0]])), torch.diag(torch.tensor([0.0, 1, 1])))


def test_lelp_matches_restated_pca_reference():
    method, h, t, y, w = fitted_lelp(s=2, c=2, beta=0.7)
    hn, tn, yn, wn = h.double().numpy(), t.double().numpy(), y.numpy(), w.double().numpy()
    p = np.eye(12) - np.linalg.pinv(wn) @ wn
    probs_t = np.exp(tn - tn.max(1, keepdims=True))
    probs_t /= probs_t.sum(1, keepdims=True)
    expected = np.zeros((60, 2, 2))
    for k in range(2):
        rows = hn[yn == k]
        mu = rows.mean(0)
        x = (rows - mu) @ p
        vt = np.linalg.svd(x, full_matrices=False)[2][:2].T  # top-2 principal directions, (d, 2)
        u = method.directions[k].double().numpy()
        assert np.allclose(u @ u.T, vt @ vt.T, atol=1e-5)  # same subspace (the rotation is random)
        sigma = np.sqrt(((x @ u) ** 2).mean())
        assert method.scales[k].item() == pytest.approx(sigma, rel=1e-5)
        a = ((hn - mu) @ p @ u) / sigma / 0.7
        sub = np.exp(a - a.max(1, keepdims=True))
        expected[:, k] = probs_t[:, k : k + 1] * sub / sub.sum(1, keepdims=True)
    assert np.allclose(method.teacher_targets(h, t).double().numpy(), expected, atol=1e-5)


def test_lelp_one_subclass_is_kd_at_t1_plus_teacher_entropy():
    method, h, t, _, _ = fitted_lelp(s=1)
    feats = torch.randn(60, 5)
    inputs = StepInputs(ModelOutput(torch.zeros(60, 2), {"pooled": feats}), ModelOutput(t, {"pooled": h}), None)
    loss = method(inputs)["subclass"]
    v = method.subclass_logits(feats)
    pt = F.softmax(t, -1)
    entropy = -(pt * pt.log()).sum(1).mean()
    kd = KD(temperature=1.0)(StepInputs(ModelOutput(v), ModelOutput(t), None))["kl"]
    assert loss.item() == pytest.approx((kd + entropy).item(), abs=1e-5)


def test_lelp_unlabelled_rows_use_teacher_predictions():
    h, t, y, _ = synthetic_teacher()
    a = fitted_lelp()[0]
    b = fitted_lelp(assign="teacher")[0]
    a.fit(h, t, torch.full_like(y, -100))
    assert torch.allclose(a.directions, b.directions, atol=1e-6) and torch.allclose(a.means, b.means)


def test_lelp_in_a_module_cached_equals_live_gradients_and_inference(tmp_path):
    torch.manual_seed(0)
    student, teacher = TinyCNN(8), TinyCNN(16)
    cached, live = LELP(subclasses=2), LELP(subclasses=2, targets="live")
    module = DistillModule(student, Composite({"lelp": cached}), FrozenTeacher(teacher), make_task())
    clean = prepared_batch(train=False)
    module.setup(clean, RunInfo(num_train_examples=20))
    live.setup(module.run_student(clean).detach(), module.run_teacher(clean), RunInfo(num_train_examples=20))
    live.head.load_state_dict(cached.head.state_dict())
    teacher_out = FrozenTeacher(teacher)(clean, module.task, ["pooled"])
    cached.teacher_pass(iter([(Batch(clean.inputs[:12], clean.labels[:12], clean.indices[:12]),
                               ModelOutput(teacher_out.logits[:12], {"pooled": teacher_out.features["pooled"][:12]})),
                              (Batch(clean.inputs[12:], clean.labels[12:], clean.indices[12:]),
                               ModelOutput(teacher_out.logits[12:], {"pooled": teacher_out.features["pooled"][12:]}))]))
    live.teacher_pass(iter([(clean, teacher_out)]))
    loss, terms, s_out = module(clean)
    live_loss = live(StepInputs(s_out, teacher_out, clean.labels, indices=clean.indices))["subclass"]
    assert loss.item() == pytest.approx(live_loss.item(), abs=1e-5)
    loss.backward()
    body = [p for n, p in student.named_parameters() if not n.startswith("head.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in body)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cached.head.parameters())
    assert_teacher_untouched(teacher)
    # inference: per-class log-sum-exp of the C * S head
    with torch.no_grad():
        wrapped = module.inference_model()(clean.inputs)
        v = cached.subclass_logits(s_out.features["pooled"])
    assert torch.allclose(wrapped, torch.logsumexp(v.view(20, 10, 2), -1), atol=1e-5)
    assert torch.equal(wrapped.argmax(1), v.view(20, 10, 2).logsumexp(-1).argmax(1))


def test_lelp_real_run_fits_in_the_teacher_pass(tmp_path):
    torch.manual_seed(0)
    method = LELP(subclasses=2, ce_weight=0.1)
    module = DistillModule(TinyCNN(8), Composite({"lelp": method}), FrozenTeacher(TinyCNN(16)), make_task())
    cfg = TrainConfig(epochs=1, batch_size=10, progress=False)
    summary = Trainer(module, demo_subset("train", 2), demo_subset("test", 1), cfg, tmp_path).fit()
    assert bool(method.fitted) and summary["steps"] == 2
    assert torch.allclose(method.cached_targets.sum((1, 2)), torch.ones(20), atol=1e-5)
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0
