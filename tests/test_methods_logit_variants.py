"""DKD, DIST and LS-KD: hand-computed cases, restated reference definitions (mdistiller, hunto/DIST_KD, torchdistill,
the LS-KD repository) within 1e-5, and gradient flow through DistillModule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import DEMO, TinyCNN, demo_subset
from torch import nn

from distill.config import parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods.logit_variants import (
    DIST,
    DKD,
    LogitStandardizedKD,
    dist_relations,
    dkd_terms,
    standardize_logits,
)
from distill.methods.logits import KD, CrossEntropy
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

YAML_EXAMPLES = {
    "dkd": "{name: dkd, weight: 1.0, alpha: 1.0, beta: 2.0, temperature: 4, warmup: 20}",
    "dist": "{name: dist, weight: 2.0, beta: 1.0, gamma: 1.0, tau: 4}",
    "lskd": "{name: lskd, weight: 1.0, temperature: 2, kl_weight: 9, ce_weight: 0.1}",
}


def step(zs, zt=None, labels=None, epoch=0):
    return StepInputs(ModelOutput(zs), None if zt is None else ModelOutput(zt), labels, epoch=epoch)


def rand_logits(seed, b=8, k=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(b, k, generator=g) * scale, torch.randn(b, k, generator=g) * scale
    y = torch.randint(0, k, (b,), generator=g)
    return zs, zt, y


# -- restated references (a few lines each, from reading the reference code) --------------------------------------
def mdistiller_dkd_loss(zs, zt, y, alpha, beta, T):
    """mdistiller dkd_loss: masked sums for TCKD, -1000 * gt_mask for NCKD, 'sum' KL / B, times T^2."""
    gt = torch.zeros_like(zs).scatter_(1, y.unsqueeze(1), 1).bool()
    ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
    bs = torch.cat([(ps * gt).sum(1, keepdim=True), (ps * ~gt).sum(1, keepdim=True)], 1)
    bt = torch.cat([(pt * gt).sum(1, keepdim=True), (pt * ~gt).sum(1, keepdim=True)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T**2 / y.shape[0]
    nckd = F.kl_div(F.log_softmax(zs / T - 1000.0 * gt, 1), F.softmax(zt / T - 1000.0 * gt, 1),
                    reduction="sum") * T**2 / y.shape[0]
    return alpha * tckd + beta * nckd


def mdistiller_dkd_total(zs, zt, y, epoch_1based, ce_w=1.0, alpha=1.0, beta=8.0, T=4.0, warmup=20, stand=False):
    """mdistiller DKD.forward_train (+ the LS-KD repo's logit_stand switch: normalize both logits first)."""
    norm = (lambda z: (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))) if stand else (lambda z: z)
    return ce_w * F.cross_entropy(zs, y) + min(epoch_1based / warmup, 1.0) * mdistiller_dkd_loss(
        norm(zs), norm(zt), y, alpha, beta, T)


def official_dist(zs, zt, beta, gamma, tau, eps=1e-8):
    """hunto/image_classification_sota DIST (tau version): cosine with eps added to the norm product."""
    def corr(a, b):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    ys, yt = (zs / tau).softmax(1), (zt / tau).softmax(1)
    inter = 1 - corr(ys, yt).mean()
    intra = 1 - corr(ys.t(), yt.t()).mean()
    return beta * tau**2 * inter + gamma * tau**2 * intra


def torchdistill_dist(zs, zt, beta, gamma, tau, eps=1e-8):
    """torchdistill DISTLoss: the same relations through torch.nn.functional.cosine_similarity."""
    def corr(a, b):
        return F.cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps=eps)
    ys, yt = (zs / tau).softmax(1), (zt / tau).softmax(1)
    return beta * tau**2 * (1 - corr(ys, yt).mean()) + gamma * tau**2 * (1 - corr(ys.t(), yt.t()).mean())


def torchdistill_logit_std_kd(zs, zt, y, T, alpha, beta=None, eps=1e-7):
    """torchdistill LogitStdKDLoss: KLDivLoss(batchmean) on standardised logits; bare KL when alpha is 0/None."""
    std = lambda z: (z - z.mean(dim=-1, keepdims=True)) / (eps + z.std(dim=-1, keepdims=True))  # noqa: E731
    soft = nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(std(zs) / T, 1), torch.softmax(std(zt) / T, 1))
    if alpha is None or alpha == 0 or y is None:
        return soft
    beta = 1 - alpha if beta is None else beta
    return alpha * nn.CrossEntropyLoss()(zs, y) + beta * T**2 * soft


def official_ls_kd(zs, zt, y, T, ce_w, kd_w):
    """LS-KD repo KD.forward_train with logit_stand: ce_w * CE(raw) + kd_w * T^2 * KL(none).sum(1).mean()."""
    std = lambda z: (z - z.mean(dim=-1, keepdims=True)) / (1e-7 + z.std(dim=-1, keepdims=True))  # noqa: E731
    kl = F.kl_div(F.log_softmax(std(zs) / T, 1), F.softmax(std(zt) / T, 1), reduction="none").sum(1).mean()
    return ce_w * F.cross_entropy(zs, y) + kd_w * kl * T**2


# -- DKD ---------------------------------------------------------------------------------------------------------
def test_dkd_hand_values_three_classes():
    # label 0, T = 1. Teacher p = (1, 3, 1)/5: b_t = (1/5, 4/5), non-target p^_t = (3/4, 1/4).
    # Student uniform: b_s = (1/3, 2/3), p^_s = (1/2, 1/2).
    zs, zt, y = torch.zeros(1, 3), torch.tensor([[0.0, math.log(3.0), 0.0]]), torch.tensor([0])
    tckd = 0.2 * math.log(0.2 / (1 / 3)) + 0.8 * math.log(0.8 / (2 / 3))
    nckd = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    out = DKD(alpha=1.0, beta=1.0, temperature=1.0, warmup=0)(step(zs, zt, y))
    assert out["tckd"].item() == pytest.approx(tckd, abs=1e-6)
    assert out["nckd"].item() == pytest.approx(nckd, abs=1e-6)
    out = DKD(alpha=2.0, beta=3.0, temperature=2.0, warmup=0)(step(zs, 2 * zt, y))  # same p at T = 2, times T^2
    assert out["tckd"].item() == pytest.approx(2 * 4 * tckd, abs=1e-5)
    assert out["nckd"].item() == pytest.approx(3 * 4 * nckd, abs=1e-5)


def test_dkd_two_classes_is_plain_kd():
    # with two classes the non-target distribution is a point mass: NCKD = 0 and TCKD = KD
    zs, zt, y = torch.randn(5, 2), torch.randn(5, 2), torch.randint(0, 2, (5,))
    out = DKD(alpha=1.0, beta=1.0, temperature=4.0, warmup=0)(step(zs, zt, y))
    assert out["nckd"].abs().item() < 1e-6
    assert out["tckd"].item() == pytest.approx(KD(temperature=4.0)(step(zs, zt))["kl"].item(), abs=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposes_kd_for_one_sample(T):
    """T^2 KL(p_t || p_s) = TCKD + (1 - p_t,g) NCKD (T^2 on all terms), one sample, alpha = beta = 1."""
    zs, zt, y = rand_logits(3, b=1, k=7)
    out = DKD(alpha=1.0, beta=1.0, temperature=T, warmup=0)(step(zs, zt, y))
    pt_g = F.softmax(zt / T, 1)[0, y[0]].item()
    kd = KD(temperature=T)(step(zs, zt))["kl"].item()
    assert out["tckd"].item() + (1 - pt_g) * out["nckd"].item() == pytest.approx(kd, abs=1e-5)


def test_dkd_mask_equals_explicit_non_target_softmax():
    zs, zt, y = rand_logits(4, b=6, k=9)
    T = 4.0
    _, nckd = dkd_terms(zs, zt, y, T)
    keep = ~F.one_hot(y, 9).bool()
    zs_nt, zt_nt = zs[keep].view(6, 8), zt[keep].view(6, 8)
    explicit = F.kl_div(F.log_softmax(zs_nt / T, 1), F.softmax(zt_nt / T, 1), reduction="batchmean") * T * T
    assert nckd.item() == pytest.approx(explicit.item(), rel=1e-6)  # float32: a few ulps of a value near 6


def test_dkd_warmup_uses_one_based_epoch():
    zs, zt, y = rand_logits(5)
    full = sum(DKD(warmup=0)(step(zs, zt, y)).values())
    method = DKD(warmup=20)
    factors = {e: (sum(method(step(zs, zt, y, epoch=e)).values()) / full).item() for e in (0, 9, 18, 19, 50)}
    assert factors[0] == pytest.approx(1 / 20, abs=1e-6)  # our epoch 0 = mdistiller's epoch 1
    assert factors[9] == pytest.approx(10 / 20, abs=1e-6)
    assert factors[18] == pytest.approx(19 / 20, abs=1e-6)
    assert factors[19] == pytest.approx(1.0, abs=1e-6) and factors[50] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("epoch,alpha,beta,T,ce_w", [(1, 1.0, 8.0, 4.0, 1.0), (7, 1.0, 2.0, 4.0, 1.0),
                                                     (30, 0.5, 6.0, 2.0, 0.0)])
def test_dkd_matches_mdistiller(epoch, alpha, beta, T, ce_w):
    zs, zt, y = rand_logits(epoch)
    method = DKD(alpha=alpha, beta=beta, temperature=T, warmup=20, ce_weight=ce_w)
    ours = sum(method(step(zs, zt, y, epoch=epoch - 1)).values())
    ref = mdistiller_dkd_total(zs, zt, y, epoch, ce_w, alpha, beta, T)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_dkd_standardized_matches_ls_repo():
    # LS-KD repo with --logit-stand --kd-weight 9 --base-temp 2: alpha 1*9, beta 8*9, T 2
    zs, zt, y = rand_logits(11)
    method = DKD(alpha=9.0, beta=72.0, temperature=2.0, ce_weight=1.0, standardize=True)
    ours = sum(method(step(zs, zt, y, epoch=24)).values())
    ref = mdistiller_dkd_total(zs, zt, y, 25, 1.0, 9.0, 72.0, 2.0, stand=True)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_dkd_skips_unlabelled_rows_and_takes_soft_targets():
    zs, zt, y = rand_logits(6)
    masked = y.clone()
    masked[[1, 4]] = -100
    keep = masked != -100
    ours = DKD(warmup=0)(step(zs, zt, masked))
    ref = DKD(warmup=0)(step(zs[keep], zt[keep], y[keep]))
    assert all(ours[k].item() == pytest.approx(ref[k].item(), abs=1e-6) for k in ("tckd", "nckd"))
    zs_g = zs.clone().requires_grad_()
    none = DKD(warmup=0, ce_weight=1.0)(step(zs_g, zt, torch.full((8,), -100)))
    total = sum(none.values())
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(zs_g.grad).all()
    soft = 0.7 * F.one_hot(y, 10).float() + 0.3 / 10
    a, b = DKD(warmup=0)(step(zs, zt, soft)), DKD(warmup=0)(step(zs, zt, y))
    assert a["tckd"].item() == pytest.approx(b["tckd"].item(), abs=1e-6)


def test_dkd_needs_labels():
    assert DKD.needs_labels and DKD().needs_teacher
    with pytest.raises(ValueError, match="needs labels"):
        DKD()(step(torch.randn(2, 3), torch.randn(2, 3)))


# -- DIST --------------------------------------------------------------------------------------------------------
def test_dist_identical_is_zero_and_hand_cases():
    z = torch.randn(6, 5)
    for tau, tol in ((1.0, 1e-5), (4.0, 1e-4)):  # float32 1 - rho near rho = 1, times tau^2
        out = DIST(tau=tau)(step(z, z.clone()))
        assert out["inter"].abs().item() < tol and out["intra"].abs().item() < tol
    # two classes: centred rows are (d, -d), so every correlation is +-1
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = DIST()(step(zs, torch.tensor([[2.0, 0.0], [0.0, 2.0]])))  # same ranking, different probabilities
    assert same["inter"].abs().item() < 1e-6 and same["intra"].abs().item() < 1e-6
    flipped = DIST(beta=1.0, gamma=0.5, tau=2.0)(step(zs, torch.tensor([[0.0, 1.0], [1.0, 0.0]])))
    assert flipped["inter"].item() == pytest.approx(2 * 4 * 1.0, abs=1e-5)  # inter = 1 - (-1) = 2, times tau^2
    assert flipped["intra"].item() == pytest.approx(2 * 4 * 0.5, abs=1e-5)


def test_dist_bounds():
    for seed in range(4):
        zs, zt, _ = rand_logits(seed)
        for z_t in (zt, -zs):
            total = sum(DIST(beta=2.0, gamma=0.5, tau=4.0)(step(zs, z_t)).values()).item()
            assert -1e-6 <= total <= 2 * 16 * 2.5 + 1e-5


def test_dist_transposition_symmetry():
    ys, yt = torch.rand(7, 4).softmax(1), torch.rand(7, 4).softmax(1)
    _, intra = dist_relations(ys, yt)
    inter_t, _ = dist_relations(ys.t(), yt.t())
    assert intra.item() == pytest.approx(inter_t.item(), abs=1e-7)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (1.0, 1.0, 4.0), (2.0, 0.5, 2.0)])
def test_dist_matches_official_and_torchdistill(beta, gamma, tau):
    zs, zt, _ = rand_logits(int(tau * 10), b=16, k=10)
    official = sum(DIST(beta, gamma, tau)(step(zs, zt)).values())
    assert official.item() == pytest.approx(official_dist(zs, zt, beta, gamma, tau).item(), abs=1e-5)
    td = sum(DIST(beta, gamma, tau, eps_mode="torchdistill")(step(zs, zt)).values())
    assert td.item() == pytest.approx(torchdistill_dist(zs, zt, beta, gamma, tau).item(), abs=1e-5)


# -- LS-KD -------------------------------------------------------------------------------------------------------
def test_standardize_hand_values():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    s3 = math.sqrt(3.0)
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-1 / s3, -1 / s3, 2 / s3]])  # unbiased std: 1 and sqrt(3)
    assert torch.allclose(standardize_logits(z), expected, atol=1e-6)


def test_lskd_hand_value():
    # Z(zs) = (-1, 0, 1), Z(zt) = (-1, -1, 2)/sqrt(3); T = 1
    zs, zt = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    qs = torch.tensor([-1.0, 0.0, 1.0])
    qt = torch.tensor([-1.0, -1.0, 2.0]) / math.sqrt(3.0)
    ps, pt = [math.exp(v) for v in qs.tolist()], [math.exp(v) for v in qt.tolist()]
    ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt))
    assert LogitStandardizedKD(temperature=1.0)(step(zs, zt))["kl"].item() == pytest.approx(kl, abs=1e-6)
    # a teacher with the same relations at ten times the range costs nothing
    assert LogitStandardizedKD()(step(zs, 10 * zs))["kl"].abs().item() < 1e-6


def test_lskd_invariant_to_affine_maps_per_row():
    zs, zt, y = rand_logits(7)
    g = torch.Generator().manual_seed(8)
    a_s, a_t = torch.rand(8, 1, generator=g) * 4 + 0.25, torch.rand(8, 1, generator=g) * 4 + 0.25
    c_s, c_t = torch.randn(8, 1, generator=g) * 5, torch.randn(8, 1, generator=g) * 5
    method = LogitStandardizedKD(temperature=2.0)
    base = method(step(zs, zt))["kl"]
    moved = method(step(a_s * zs + c_s, a_t * zt + c_t))["kl"]
    assert moved.item() == pytest.approx(base.item(), abs=1e-5)


def test_lskd_equals_kd_on_standardized_logits():
    zs, zt, y = rand_logits(9)
    ours = LogitStandardizedKD(temperature=2.0, kl_weight=9.0)(step(zs, zt))["kl"]
    kd = KD(temperature=2.0, kl_weight=9.0)(step(standardize_logits(zs), standardize_logits(zt)))["kl"]
    assert ours.item() == pytest.approx(kd.item(), abs=1e-5)
    # CE stays on the raw logits
    ce = LogitStandardizedKD(ce_weight=0.1)(step(zs, zt, y))["ce"]
    assert ce.item() == pytest.approx(0.1 * F.cross_entropy(zs, y).item(), abs=1e-6)


@pytest.mark.parametrize("T,alpha,beta", [(2.0, 0.1, 9.0), (2.0, 0.5, 9.0), (2.0, 0.0, None), (4.0, 0.1, None)])
def test_lskd_matches_torchdistill(T, alpha, beta):
    zs, zt, y = rand_logits(12)
    kl_w = (1 - alpha) if beta is None else beta
    method = LogitStandardizedKD(temperature=T, ce_weight=alpha, kl_weight=kl_w, torchdistill_compat=True)
    ours = sum(method(step(zs, zt, y)).values())
    assert ours.item() == pytest.approx(torchdistill_logit_std_kd(zs, zt, y, T, alpha, beta).item(), abs=1e-5)


def test_lskd_matches_official_code():
    zs, zt, y = rand_logits(13)
    method = LogitStandardizedKD(temperature=2.0, ce_weight=0.1, kl_weight=9.0)
    ours = sum(method(step(zs, zt, y)).values())
    assert ours.item() == pytest.approx(official_ls_kd(zs, zt, y, 2.0, 0.1, 9.0).item(), abs=1e-5)
    assert not LogitStandardizedKD().needs_labels and LogitStandardizedKD(ce_weight=0.1).needs_labels


# -- config and gradient flow -------------------------------------------------------------------------------------
def base_config() -> dict:
    return {
        "output_dir": "runs/x",
        "data": {"train": str(DEMO), "eval": str(DEMO), "train_per_class": 2, "eval_per_class": 2},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet20", "weights": "random"},
        "methods": [],
        "train": {"epochs": 1, "batch_size": 8},
    }


def test_yaml_examples_validate_and_build():
    from distill.methods import METHODS

    for name, line in YAML_EXAMPLES.items():
        raw = base_config()
        raw["methods"] = [yaml.safe_load(line)]
        comp = build_methods(parse_config(raw).methods)
        assert isinstance(comp.methods[name], METHODS.get(name))
    assert METHODS.canonical("dist_kd") == "dist" and METHODS.canonical("logit_std_kd") == "lskd"
    for name in YAML_EXAMPLES:
        prov = METHODS.entry(name).provenance
        assert prov is not None and prov.arxiv and prov.year and prov.repo and prov.venue


def make_module() -> DistillModule:
    torch.manual_seed(0)
    methods = Composite(
        {"ce": CrossEntropy(), "dkd": DKD(beta=2.0), "dist": DIST(tau=4.0),
         "lskd": LogitStandardizedKD(kl_weight=9.0, ce_weight=0.1)},
        {"ce": 1.0, "dkd": 1.0, "dist": 2.0, "lskd": 1.0},
    )
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    return DistillModule(TinyCNN(8), methods, FrozenTeacher(TinyCNN(16)), task)


def test_gradients_reach_student_never_teacher_and_epoch_reaches_dkd():
    module = make_module()
    task = module.task
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch, epoch=0)
    assert set(terms) == {"ce", "dkd.tckd", "dkd.nckd", "dist.inter", "dist.intra", "lskd.kl", "lskd.ce"}
    assert torch.isclose(loss, sum(terms.values()))
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    teacher = module.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert not list(module.methods.parameters())  # these methods own no parameters
    # the trainer's 0-based epoch reaches DKD's warm-up: epoch 0 -> 1/20, epoch 19 -> 1
    module.eval()
    with torch.no_grad():
        _, early, _ = module(batch, epoch=0)
        _, late, _ = module(batch, epoch=19)
    assert (early["dkd.nckd"] / late["dkd.nckd"]).item() == pytest.approx(1 / 20, rel=1e-5)
    assert early["dist.inter"].item() == pytest.approx(late["dist.inter"].item(), rel=1e-6)
