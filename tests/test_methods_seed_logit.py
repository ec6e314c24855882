"""PLD, ND loss (KD++) and MEAL V2: hand cases, restated reference definitions, gradient flow, hooks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TinyCNN, demo_subset
from torch import nn

from distill.config import ConfigError, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.teachers import EnsembleTeacher, FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.meal_v2 import (
    LogitDiscriminator,
    MealV2,
    discriminator_batch,
    soft_cross_entropy,
)
from distill.methods.nd_loss import NormDirection, emb_projector, nd_loss
from distill.methods.pld import PLD, pld_loss, teacher_optimal_permutation
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

YAML_EXAMPLES = {
    "pld": "{name: pld, weight: 1.0, tau: 1.0, weighting: teacher}",
    "nd": "{name: nd, weight: 1.0, nd_weight: 2.0, ce_weight: 1.0, kd_weight: 1.0, temperature: 4, "
          "warmup_epochs: 20, student: pooled, teacher: pooled}",
    "mealv2": "{name: mealv2, weight: 1.0, discriminator: true, mode: joint, discriminator_input: mean_logits}",
}

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def step(zs, zt, labels=None, fs=None, ft=None, epoch=0):
    return StepInputs(ModelOutput(zs, fs or {}), ModelOutput(zt, ft or {}), labels, epoch=epoch)


def test_every_method_has_a_validated_yaml_example():
    for name, line in YAML_EXAMPLES.items():
        raw = {
            "output_dir": "runs/x",
            "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
            "student": {"arch": "resnet20"},
            "teacher": {"ensemble": [{"arch": "resnet20", "weights": "random"},
                                     {"arch": "resnet32", "weights": "random"}], "reduce": "probs"},
            "methods": [yaml.safe_load(line)],
            "train": {"epochs": 1, "batch_size": 8},
        }
        comp = build_methods(parse_config(raw).methods)
        assert isinstance(comp.methods[name], METHODS.get(name))
    assert METHODS.get("plackett_luce") is PLD and METHODS.get("nd_loss") is NormDirection
    assert METHODS.get("meal_v2") is MealV2


def test_mealv2_refuses_an_ensemble_left_to_average_logits():
    raw = {
        "output_dir": "runs/x",
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
        "student": {"arch": "resnet20"},
        "teacher": {"ensemble": [{"arch": "resnet20", "weights": "random"}, {"arch": "resnet32", "weights": "random"}]},
        "methods": [{"name": "mealv2"}],
    }
    with pytest.raises(ConfigError, match=r"^teacher\.reduce: method 'mealv2' .* set reduce: probs"):
        parse_config(raw)
    assert parse_config({**raw, "teacher": {**raw["teacher"], "reduce": "logits"}}).teacher.reduce == "logits"
    assert parse_config({**raw, "methods": [{"name": "kd"}]}).teacher.reduce == "logits"  # kd: either is fine


# -- PLD ---------------------------------------------------------------------------------------------------------
def paper_appendix_pld(s, t, y, tau):
    """The paper's Appendix C form restated: ascending teacher order with the label moved last, a forward
    logcumsumexp, weights softmax(t_perm / tau)."""
    order = torch.sort(t, dim=-1).indices
    rows = []
    for r in range(s.shape[0]):
        rest = [int(i) for i in order[r] if int(i) != int(y[r])]
        rows.append(rest + [int(y[r])])
    ranking = torch.tensor(rows)
    s_perm, t_perm = s.gather(1, ranking), t.gather(1, ranking)
    per_pos = torch.logcumsumexp(s_perm, dim=-1) - s_perm
    return (per_pos * F.softmax(t_perm / tau, dim=-1)).sum(-1).mean()


def naive_pld(s, t, y, tau, weighting="teacher"):
    """A plain loop over rows and positions of sum_k alpha_k [log sum_{l>=k} exp s_pi_l - s_pi_k]."""
    total = 0.0
    b, c = s.shape
    for r in range(b):
        others = sorted((i for i in range(c) if i != int(y[r])), key=lambda i: -float(t[r, i]))
        pi = [int(y[r])] + others
        q = [math.exp(float(t[r, i]) / tau) for i in range(c)]
        z = sum(q)
        q = [v / z for v in q]
        alpha = {"teacher": [q[i] for i in pi], "uniform": [1.0 / c] * c,
                 "onehot": [1.0] + [0.0] * (c - 1), "normalized_teacher": sorted(q, reverse=True)}[weighting]
        for k in range(c):
            lse = math.log(sum(math.exp(float(s[r, pi[m]])) for m in range(k, c)))
            total += alpha[k] * (lse - float(s[r, pi[k]]))
    return total / b


def test_pld_hand_case():
    s = torch.tensor([[1.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 2.0, 1.0]])
    y = torch.tensor([0])
    assert teacher_optimal_permutation(t, y).tolist() == [[0, 1, 2]]
    q = F.softmax(t, 1)[0]
    assert q.tolist() == pytest.approx([0.0900, 0.6652, 0.2447], abs=1e-4)
    loss = PLD()(step(s, t, y))["loss"]
    expected = 0.0900306 * (math.log(math.e + 2) - 1) + 0.6652410 * math.log(2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.5108, abs=1e-4)


def test_pld_label_first_even_when_teacher_ranks_it_low():
    t = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert teacher_optimal_permutation(t, torch.tensor([3])).tolist() == [[3, 0, 2, 1]]


def test_pld_onehot_is_cross_entropy():
    s, t = randn(16, 10, seed=1) * 3, randn(16, 10, seed=2) * 3
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    ours = PLD(weighting="onehot")(step(s, t, y))["loss"]
    assert ours.item() == pytest.approx(F.cross_entropy(s, y).item(), abs=1e-6)


@pytest.mark.parametrize("weighting", ["teacher", "uniform", "onehot", "normalized_teacher"])
def test_pld_shift_invariant_and_matches_naive_loop(weighting):
    s, t = randn(6, 7, seed=4) * 2, randn(6, 7, seed=5) * 2
    y = torch.tensor([0, 3, 6, 2, 2, 5])
    m = PLD(tau=1.5, weighting=weighting)
    base = m(step(s, t, y))["loss"]
    shifted = m(step(s + randn(6, 1, seed=6) * 10, t, y))["loss"]
    assert shifted.item() == pytest.approx(base.item(), abs=1e-5)
    assert base.item() == pytest.approx(naive_pld(s, t, y, 1.5, weighting), abs=1e-5)
    assert m(step(2 * s, t, y))["loss"].item() != pytest.approx(base.item(), abs=1e-3)  # not scale invariant


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pld_matches_paper_appendix_and_teacher_gets_no_grad(tau):
    s = (randn(8, 10, seed=7) * 3).requires_grad_()
    t = (randn(8, 10, seed=8) * 3).requires_grad_()
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(9))
    ours = PLD(tau=tau)(step(s, t, y))["loss"]
    ref = paper_appendix_pld(s.detach(), t.detach(), y, tau)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    ours.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_pld_gradient_matches_closed_form():
    s = randn(1, 5, seed=10).requires_grad_()
    t, y = randn(1, 5, seed=11), torch.tensor([2])
    pld_loss(s, t, y).backward()
    pi = teacher_optimal_permutation(t, y)[0].tolist()
    alpha = F.softmax(t, 1)[0][pi]
    grad = torch.zeros(5)
    for k in range(5):
        rest = pi[k:]
        sm = F.softmax(s.detach()[0, rest], 0)
        grad[rest] += alpha[k] * sm
        grad[pi[k]] -= alpha[k]
    assert torch.allclose(s.grad[0], grad, atol=1e-6)


def test_pld_skips_unlabelled_rows_and_sum_reduction():
    s, t = randn(4, 5, seed=12), randn(4, 5, seed=13)
    y = torch.tensor([1, -100, 4, -100])
    keep = y != -100
    ours = PLD()(step(s, t, y))["loss"]
    assert ours.item() == pytest.approx(pld_loss(s[keep], t[keep], y[keep]).item(), abs=1e-7)
    summed = PLD(reduction="sum")(step(s, t, y))["loss"]
    assert summed.item() == pytest.approx(2 * ours.item(), abs=1e-6)
    assert PLD()(step(s, t, torch.full((4,), -100)))["loss"].item() == 0.0


# -- ND loss / KD++ -----------------------------------------------------------------------------------------------
def official_nd(s_emb, t_emb, centers, labels, factor):
    """The official DirectNormLoss restated: a per-sample loop, summed, times the factor, over the batch size."""
    loss = 0.0
    for s, t, i in zip(s_emb, t_emb, labels):
        c = centers[int(i)]
        e_c = c / c.norm(p=2)
        loss = loss + 1 - torch.dot(s, e_c) / max(s.norm(p=2), t.norm(p=2))
    return loss * factor / len(labels)


def nd_method(means: torch.Tensor, **kw) -> NormDirection:
    m = NormDirection(student="e", teacher="e", **kw)
    k, d = means.shape
    m.setup(ModelOutput(torch.zeros(2, k), {"e": torch.zeros(2, d)}), ModelOutput(torch.zeros(2, k),
                                                                                    {"e": torch.zeros(2, d)}))
    m.class_means.copy_(means)
    m.means_ready.fill_(True)
    return m


def test_nd_hand_values():
    c = torch.tensor([[0.0, 4.0], [1.0, 0.0]])  # class 0 mean points along +y
    m = nd_method(c)
    e_t = torch.tensor([[2.0, 0.0]])  # ||e_t|| = 2
    y = torch.tensor([0])
    z = torch.zeros(1, 2)
    for e_s, expected in [([0.0, 3.0], 0.0), ([0.0, 1.0], 0.5), ([5.0, 0.0], 1.0), ([1.0, 0.0], 1.0)]:
        out = m(step(z, z, y, fs={"e": torch.tensor([e_s])}, ft={"e": e_t}))
        assert out["nd"].item() == pytest.approx(expected, abs=1e-6)


def test_nd_invariant_to_rescaling_a_class_mean_and_matches_official_loop():
    k, d, b = 4, 6, 10
    means = randn(k, d, seed=20)
    e_s, e_t = randn(b, d, seed=21) * 2, randn(b, d, seed=22) * 2
    y = torch.randint(0, k, (b,), generator=torch.Generator().manual_seed(23))
    z = torch.zeros(b, k)
    inputs = step(z, z, y, fs={"e": e_s}, ft={"e": e_t})
    a = nd_method(means, nd_weight=2.0)(inputs)["nd"]
    scaled = means.clone()
    scaled[1] *= 7.5
    b_ = nd_method(scaled, nd_weight=2.0)(inputs)["nd"]
    assert a.item() == pytest.approx(b_.item(), abs=1e-6)
    assert a.item() == pytest.approx(official_nd(e_s, e_t, means, y, 2.0).item(), abs=1e-5)
    assert nd_loss(e_s, e_t, means[y]).item() * 2 == pytest.approx(a.item(), abs=1e-6)


def test_nd_kd_warmup_and_ce():
    means = randn(3, 4, seed=30)
    m = nd_method(means, ce_weight=1.0, kd_weight=2.0, temperature=4.0, warmup_epochs=20)
    zs, zt = randn(5, 3, seed=31), randn(5, 3, seed=32)
    y = torch.tensor([0, 1, 2, 0, 1])
    f = {"e": randn(5, 4, seed=33)}
    kl = F.kl_div(F.log_softmax(zs / 4, 1), F.softmax(zt / 4, 1), reduction="batchmean")
    assert m(step(zs, zt, y, f, f, epoch=0))["kd"].item() == 0.0
    assert m(step(zs, zt, y, f, f, epoch=5))["kd"].item() == pytest.approx(2.0 * 5 / 20 * 16 * kl.item(), abs=1e-5)
    for e in (20, 40):
        assert m(step(zs, zt, y, f, f, epoch=e))["kd"].item() == pytest.approx(2.0 * 16 * kl.item(), abs=1e-5)
    assert m(step(zs, zt, y, f, f))["ce"].item() == pytest.approx(F.cross_entropy(zs, y).item(), abs=1e-6)
    assert set(nd_method(means)(step(zs, zt, y, f, f))) == {"nd"}
    assert nd_method(means, warmup_epochs=0, kd_weight=1.0).kd_factor(0) == 1.0


def test_nd_teacher_pass_computes_class_means_and_skips_unlabelled():
    m = NormDirection(student="e", teacher="e")
    m.setup(ModelOutput(torch.zeros(2, 3), {"e": torch.zeros(2, 2)}), ModelOutput(torch.zeros(2, 3),
                                                                                    {"e": torch.zeros(2, 2)}))
    with pytest.raises(RuntimeError, match="class means"):
        m(step(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([0]), {"e": torch.ones(1, 2)},
               {"e": torch.ones(1, 2)}))
    feats = [torch.tensor([[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]), torch.tensor([[0.0, 5.0], [5.0, 0.0]])]
    labels = [torch.tensor([0, 0, -100]), torch.tensor([1, 0])]
    m.teacher_pass((Batch(None, y), ModelOutput(torch.zeros(len(y), 3), {"e": f})) for f, y in zip(feats, labels))
    assert torch.allclose(m.class_means, torch.tensor([[3.0, 2.0 / 3], [0.0, 5.0], [0.0, 0.0]]))
    assert bool(m.means_ready) and {"class_means", "means_ready"} <= set(m.state_dict())


def test_nd_projector_when_widths_differ():
    m = NormDirection(student="e", teacher="e")
    m.setup(ModelOutput(torch.zeros(4, 3), {"e": torch.zeros(4, 5)}), ModelOutput(torch.zeros(4, 3),
                                                                                   {"e": torch.zeros(4, 8)}))
    assert isinstance(m.projector, nn.Sequential) and m.projector[2].out_features == 8
    assert m.class_means.shape == (3, 8)
    p = emb_projector(5, 8)
    assert torch.equal(p[0].weight, torch.ones(5)) and torch.equal(p[2].bias, torch.zeros(8))
    with pytest.raises(ValueError, match="width"):
        NormDirection(student="e", teacher="e", projector="never").setup(
            ModelOutput(torch.zeros(4, 3), {"e": torch.zeros(4, 5)}),
            ModelOutput(torch.zeros(4, 3), {"e": torch.zeros(4, 8)}))


def make_task() -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))


def test_nd_gradient_flow_and_real_teacher_pass(tmp_path):
    """A tiny real run: the trainer's teacher pass fills the means; then student and projector get gradients,
    the teacher none, and the means stay constant."""
    torch.manual_seed(0)
    method = NormDirection(nd_weight=2.0, kd_weight=1.0, ce_weight=1.0, warmup_epochs=1)
    module = DistillModule(TinyCNN(8), Composite({"nd": method}), FrozenTeacher(TinyCNN(16)), make_task())
    data = demo_subset("train", 2)
    cfg = TrainConfig(epochs=1, batch_size=10, lr=0.01, progress=False, eval_every=1)
    Trainer(module, data, None, cfg, tmp_path).fit()
    assert bool(method.means_ready) and method.projector is not None  # widths 16 -> 32
    teacher = module.teacher.model
    expected = torch.zeros(10, 32)
    with torch.no_grad():
        feats = {}
        h = teacher.head.register_forward_pre_hook(lambda _m, inp: feats.setdefault("e", inp[0]))
        teacher(make_task().prepare(make_task().fetch(data, torch.arange(len(data.labels))), train=False,
                                    generator=None).inputs)
        h.remove()
        for k in range(10):
            expected[k] = feats["e"][data.labels == k].mean(0)
    assert torch.allclose(method.class_means.cpu(), expected, atol=1e-5)

    means = method.class_means.clone()
    task = module.task
    batch = task.prepare(task.fetch(data, torch.arange(20)), train=True, generator=torch.Generator().manual_seed(0))
    module.student.zero_grad()
    loss, terms, _ = module(batch, epoch=1)
    assert set(terms) == {"nd.nd", "nd.kd", "nd.ce"} and all(v.item() > 0 for v in terms.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not method.class_means.requires_grad and torch.equal(method.class_means, means)


# -- MEAL V2 ------------------------------------------------------------------------------------------------------
class Logits:
    def forward(self, model, batch):
        return model(batch.inputs)


def test_mealv2_identical_teachers_give_the_one_teacher_target():
    torch.manual_seed(0)
    net = TinyCNN(4)
    copies = [TinyCNN(4) for _ in range(3)]
    for c in copies:
        c.load_state_dict(net.state_dict())
    x = randn(6, 3, 8, 8, seed=40)
    single = FrozenTeacher(net)(Batch(x), Logits(), ["."])
    ens = EnsembleTeacher(copies, reduce="probs")(Batch(x), Logits(), ["."])
    assert torch.allclose(F.softmax(ens.logits, 1), F.softmax(single.logits, 1), atol=1e-6)
    assert torch.allclose(ens.feature("."), single.logits, atol=1e-6)
    zs = randn(6, 10, seed=41)
    a = MealV2(discriminator=False)(step(zs, single.logits))["soft_ce"]
    b = MealV2(discriminator=False)(step(zs, ens.logits))["soft_ce"]
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_mealv2_probs_ensemble_target_is_the_mean_probability_and_tap_the_mean_logits():
    torch.manual_seed(1)
    nets = [TinyCNN(4) for _ in range(3)]
    x = randn(5, 3, 8, 8, seed=42)
    out = EnsembleTeacher(nets, reduce="probs")(Batch(x), Logits(), MealV2().teacher_taps())
    with torch.no_grad():
        zs = torch.stack([n.eval()(x) for n in nets])
    assert torch.allclose(F.softmax(out.logits, 1), F.softmax(zs, -1).mean(0), atol=1e-6)
    assert torch.allclose(out.feature("."), zs.mean(0), atol=1e-6)
    assert MealV2(discriminator_input="teacher_logits").teacher_taps() == []
    assert MealV2(discriminator=False).teacher_taps() == []


def test_mealv2_soft_ce_is_kl_plus_entropy_and_matches_official():
    zs, zt = randn(7, 10, seed=43) * 2, randn(7, 10, seed=44) * 2
    p = F.softmax(zt, 1)
    kl = F.kl_div(F.log_softmax(zs, 1), p, reduction="batchmean")
    entropy = -(p * p.log()).sum(1).mean()
    ours = soft_cross_entropy(zs, zt)
    assert ours.item() == pytest.approx((kl + entropy).item(), abs=1e-5)
    # the official KLLoss: -bmm(soft_labels[:, None, :], log_softmax(out)[:, :, None]).mean()
    official = -torch.bmm(p.unsqueeze(1), F.log_softmax(zs, 1).unsqueeze(2)).mean()
    assert ours.item() == pytest.approx(official.item(), abs=1e-6)
    hand = soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]))
    assert hand.item() == pytest.approx(math.log(2), abs=1e-6)


def official_discriminator_loss(d, outputs, targets):
    """MEAL V2's discriminatorLoss restated: concat along the batch, targets [1,0]*B/2 + [0,1]*B/2, BCE."""
    inputs = torch.cat([torch.cat((i, j), 0) for i, j in zip(outputs, targets)], 1)
    n = inputs.size(0)
    target = torch.tensor([[1.0, 0.0]] * (n // 2) + [[0.0, 1.0]] * (n // 2))
    return nn.BCEWithLogitsLoss()(d(inputs), target)


def test_mealv2_discriminator_layout_architecture_and_official_loss():
    zs, zbar = randn(3, 10, seed=45), randn(3, 10, seed=46)
    x, target = discriminator_batch(zs, zbar)
    assert torch.equal(x[:3], zs) and torch.equal(x[3:], zbar)
    assert target.tolist() == [[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3
    assert LogitDiscriminator(1000).widths == (1000, 125, 15, 2)
    assert LogitDiscriminator(10, min_width=1).widths == (10, 1, 1, 2)
    assert LogitDiscriminator(10, min_width=8).widths == (10, 8, 8, 2)
    m = MealV2(mode="joint")
    m.setup(ModelOutput(zs), ModelOutput(zbar, {".": zbar}))
    assert isinstance(m.discriminator.conv1, nn.Conv2d) and m.discriminator.conv1.kernel_size == (1, 1)
    assert (m.discriminator(x) >= 0).all()  # ReLU after the last layer too
    for layer in (m.discriminator.conv1, m.discriminator.conv2, m.discriminator.conv3):
        nn.init.normal_(layer.weight, std=0.5)
        nn.init.normal_(layer.bias, std=0.5)
    out = m(step(zs, torch.zeros(3, 10), ft={".": zbar}))
    assert out["disc"].item() == pytest.approx(official_discriminator_loss(m.discriminator, [zs], [zbar]).item(),
                                               abs=1e-6)
    hand = F.binary_cross_entropy_with_logits(torch.zeros(6, 2), target)
    assert hand.item() == pytest.approx(math.log(2), abs=1e-7)
    logits_in = MealV2(discriminator_input="teacher_logits")
    logits_in.setup(ModelOutput(zs), None)
    logits_in.load_state_dict(m.state_dict())
    same = logits_in(step(zs, zbar))["disc"]
    assert same.item() == pytest.approx(out["disc"].item(), abs=1e-7)


def test_mealv2_joint_vs_adversarial_student_gradient():
    zs0, zbar = randn(4, 10, seed=47), randn(4, 10, seed=48)
    grads, dgrads = {}, {}
    for mode in ("joint", "adversarial"):
        torch.manual_seed(0)
        m = MealV2(mode=mode, d_min_width=4)
        m.setup(ModelOutput(zs0), None)
        for layer in (m.discriminator.conv1, m.discriminator.conv2, m.discriminator.conv3):
            nn.init.normal_(layer.weight, std=0.5)
            nn.init.constant_(layer.bias, 0.3)
        zs = zs0.clone().requires_grad_()
        m.discriminator_loss(zs, zbar).backward()
        grads[mode] = zs.grad.clone()
        dgrads[mode] = [p.grad.clone() for p in m.discriminator.parameters()]
    assert grads["joint"].abs().sum() > 0
    assert torch.allclose(grads["adversarial"], -grads["joint"], atol=1e-7)
    assert all(torch.allclose(a, b) for a, b in zip(dgrads["joint"], dgrads["adversarial"]))
    assert any(g.abs().sum() > 0 for g in dgrads["joint"])


def test_mealv2_d_lr_factor_gives_the_discriminator_its_own_learning_rate():
    from distill.train.trainer import TrainConfig, build_optimizer

    torch.manual_seed(0)
    student = TinyCNN(8)
    m = MealV2(d_lr_factor=0.01)
    m.setup(ModelOutput(randn(4, 10, seed=49)), None)
    params = list(student.parameters()) + list(m.parameters())
    opt = build_optimizer(params, TrainConfig(lr=0.1), m.optimizer_overrides())
    d_ids = {id(p) for p in m.discriminator.parameters()}
    for group in opt.param_groups:
        is_d = {id(p) in d_ids for p in group["params"]}
        assert len(is_d) == 1
        assert group["lr"] == pytest.approx(0.001 if is_d.pop() else 0.1)
    assert MealV2().optimizer_overrides() == []


def test_mealv2_gradient_flow_with_a_probs_ensemble():
    torch.manual_seed(0)
    teacher = EnsembleTeacher([TinyCNN(8), TinyCNN(12)], reduce="probs")
    method = MealV2(mode="joint")
    module = DistillModule(TinyCNN(8), Composite({"meal": method}), teacher, make_task())
    assert not method.needs_labels
    data = demo_subset("train", 2)
    task = module.task
    batch = task.prepare(task.fetch(data, torch.arange(20)), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    for layer in (method.discriminator.conv1, method.discriminator.conv2, method.discriminator.conv3):
        nn.init.constant_(layer.bias, 0.1)  # keep every ReLU unit alive so every D tensor gets a gradient
    batch.labels = None  # MEAL V2 uses no labels
    loss, terms, _ = module(batch)
    assert set(terms) == {"meal.soft_ce", "meal.disc"}
    assert torch.isclose(loss, sum(terms.values()))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.discriminator.parameters())
    for member in teacher.members:
        assert all(not p.requires_grad and p.grad is None for p in member.model.parameters())
        assert not member.model.training
