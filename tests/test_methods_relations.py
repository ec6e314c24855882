"""Maths and gradient-flow tests of SP, CC, RKD and PKT against hand-computed values and restated references."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TinyCNN, demo_subset

from distill.config import parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods.relations import (
    CorrelationCongruence,
    ProbabilisticKT,
    RelationalKD,
    SimilarityPreserving,
    cc_congruence,
    cc_consecutive,
    correlation_matrix,
    pkt_loss,
    rkd_angles,
    rkd_distances,
    sp_loss,
)
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

YAML_EXAMPLES = {
    "sp": "{name: sp, weight: 3000, student: [f3], teacher: [f3], reduction: batchmean}",
    "cc": "{name: cc, weight: 0.003, student: pooled, teacher: pooled, out_dim: 128, kernel: gaussian, gamma: 0.4, "
          "max_p: 2, reduction: batchmean, squared: false, normalize: false, variant: torchdistill}",
    "rkd": "{name: rkd, weight: 1, student: pooled, teacher: pooled, distance_weight: 25, angle_weight: 50}",
    "pkt": "{name: pkt, weight: 30000, student: pooled, teacher: pooled, eps: 1.0e-7}",
}

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def step(fs: dict, ft: dict, b: int = 4) -> StepInputs:
    z = torch.zeros(b, 3)
    return StepInputs(ModelOutput(z, fs), ModelOutput(z, ft), None)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the reference definitions, restated ----------------------------------------------------------------------
def ref_sp(fs, ft, reduction="batchmean"):
    """torchdistill SPKDLoss / RepDistiller Similarity: row-normalised Grams, squared Frobenius distance."""
    b = fs.shape[0]
    gs = F.normalize(torch.mm(fs.reshape(b, -1), fs.reshape(b, -1).t()), dim=1)
    gt = F.normalize(torch.mm(ft.reshape(b, -1), ft.reshape(b, -1).t()), dim=1)
    sq = torch.norm(gt - gs) ** 2
    return sq / b**2 if reduction == "batchmean" else sq


def ref_cc_matrix(f, kernel, gamma, max_p):
    """torchdistill CCKDLoss: bilinear pool, or the Gaussian RBF's Taylor series built row by row."""
    if kernel == "bilinear":
        return torch.mm(f, f.t())
    rows = []
    for i in range(f.shape[0]):
        dots = torch.mv(f, f[i])
        acc = torch.ones_like(dots)
        for p in range(1, max_p + 1):
            acc = acc + (2 * gamma) ** p / math.factorial(p) * dots**p
        rows.append(acc * math.exp(-2 * gamma))
    return torch.stack(rows)


def ref_cc(fs, ft, kernel, gamma, max_p, reduction):
    d = torch.dist(ref_cc_matrix(fs, kernel, gamma, max_p), ref_cc_matrix(ft, kernel, gamma, max_p), 2)
    return d / fs.shape[0] ** 2 if reduction == "batchmean" else d


def ref_cc_repdistiller(es, et):
    """RepDistiller Correlation: consecutive-sample products of |e_s - e_t|."""
    delta = torch.abs(es - et)
    return torch.mean(torch.sum(delta[:-1] * delta[1:], dim=1))


def ref_pdist(e, eps=1e-12):
    sq = (e * e).sum(1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def ref_rkd(fs, ft, wd, wa, reduction="mean"):
    """torchdistill RKDLoss / RepDistiller RKDLoss (unsquared distances)."""
    s, t = fs.flatten(1), ft.flatten(1)
    ds, dt = ref_pdist(s), ref_pdist(t)
    ds, dt = ds / ds[ds > 0].mean(), dt / dt[dt > 0].mean()
    loss_d = F.smooth_l1_loss(ds, dt, reduction=reduction)

    def angles(x):
        n = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(n, n.transpose(1, 2)).view(-1)

    loss_a = F.smooth_l1_loss(angles(s), angles(t), reduction=reduction)
    return wd * loss_d + wa * loss_a


def ref_pkt(xs, xt, eps=1e-7):
    """torchdistill PKTLoss / RepDistiller PKT / the official pkt.py."""
    def probs(x):
        x = x / (torch.sqrt((x**2).sum(1, keepdim=True)) + eps)
        x[x != x] = 0
        k = (torch.mm(x, x.t()) + 1.0) / 2.0
        return k / k.sum(1, keepdim=True)

    ps, pt = probs(xs.clone()), probs(xt.clone())
    return torch.mean(pt * torch.log((pt + eps) / (ps + eps)))


# -- SP -------------------------------------------------------------------------------------------------------
def test_sp_hand_case_two_examples():
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G = I
    zt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G = ones -> rows (1/sqrt2, 1/sqrt2)
    raw = 2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5
    assert sp_loss(zs, zt, "sum").item() == pytest.approx(raw, abs=1e-6)
    out = SimilarityPreserving(["a"])(step({"a": zs}, {"a": zt}, 2))["loss"]
    assert out.item() == pytest.approx(raw / 4, abs=1e-6)


def test_sp_invariant_to_scale_and_batch_permutation():
    fs, ft = rand(6, 4, 3, 3, seed=1), rand(6, 8, 2, 2, seed=2)
    base = sp_loss(fs.flatten(1), ft.flatten(1))
    assert sp_loss(3.7 * fs.flatten(1), 0.2 * ft.flatten(1)).item() == pytest.approx(base.item(), abs=1e-6)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    assert sp_loss(fs[perm].flatten(1), ft[perm].flatten(1)).item() == pytest.approx(base.item(), abs=1e-6)


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_sp_matches_torchdistill_with_pairs_and_weights(reduction):
    fs = [rand(5, 4, 6, 6, seed=4), rand(5, 16)]
    ft = [rand(5, 12, 3, 3, seed=5), rand(5, 7, seed=6)]  # D differs between student and teacher
    m = SimilarityPreserving(["a", "b"], ["c", "d"], weights=[1.0, 0.5], reduction=reduction)
    ours = m(step({"a": fs[0], "b": fs[1]}, {"c": ft[0], "d": ft[1]}, 5))["loss"]
    ref = ref_sp(fs[0], ft[0], reduction) + 0.5 * ref_sp(fs[1], ft[1], reduction)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


# -- CC -------------------------------------------------------------------------------------------------------
def test_cc_gaussian_series_approaches_rbf_for_unit_norm():
    f = F.normalize(rand(6, 5, seed=7), dim=1).double()
    gamma = 0.4
    rbf = torch.exp(-gamma * torch.cdist(f, f).pow(2))
    assert torch.allclose(correlation_matrix(f, "gaussian", gamma, 20), rbf, atol=1e-6)
    assert not torch.allclose(correlation_matrix(f, "gaussian", gamma, 1), rbf, atol=1e-3)


def test_cc_bilinear_hand_case_two_examples():
    cs = correlation_matrix(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "bilinear")  # [[1, 0], [0, 4]]
    ct = correlation_matrix(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "bilinear")  # ones
    assert cc_congruence(cs, ct, "sum").item() == pytest.approx(math.sqrt(11), abs=1e-6)
    assert cc_congruence(cs, ct, "batchmean").item() == pytest.approx(math.sqrt(11) / 4, abs=1e-6)
    assert cc_congruence(cs, ct, "batchmean", squared=True).item() == pytest.approx(11 / 4, abs=1e-6)


@pytest.mark.parametrize("kernel,reduction", [("gaussian", "batchmean"), ("bilinear", "batchmean"),
                                              ("gaussian", "sum")])
def test_cc_matches_torchdistill_given_identical_linear_outputs(kernel, reduction):
    fs, ft = rand(8, 6, seed=8) * 0.5, rand(8, 6, seed=9) * 0.5
    ours = cc_congruence(correlation_matrix(fs, kernel, 0.4, 2), correlation_matrix(ft, kernel, 0.4, 2), reduction)
    assert ours.item() == pytest.approx(ref_cc(fs, ft, kernel, 0.4, 2, reduction).item(), rel=1e-5, abs=1e-5)
    assert cc_consecutive(fs, ft).item() == pytest.approx(ref_cc_repdistiller(fs, ft).item(), abs=1e-5)


def make_cc(s_feat, t_feat, **kw):
    m = CorrelationCongruence("a", "b", **kw)
    m.setup(ModelOutput(torch.zeros(len(s_feat), 3), {"a": s_feat}), ModelOutput(torch.zeros(len(t_feat), 3),
                                                                                  {"b": t_feat}))
    return m


@pytest.mark.parametrize("variant", ["torchdistill", "repdistiller"])
def test_cc_method_heads_and_reference(variant):
    fs, ft = rand(6, 4, 2, 2, seed=10), rand(6, 10, seed=11)
    m = make_cc(fs, ft, out_dim=5, variant=variant)
    assert m.student_head.weight.shape == (5, 16) and m.teacher_head.weight.shape == (5, 10)
    ours = m(step({"a": fs}, {"b": ft}, 6))["loss"]
    es, et = m.student_head(fs.flatten(1)), m.teacher_head(ft)
    ref = ref_cc(es, et, "gaussian", 0.4, 2, "batchmean") if variant == "torchdistill" else ref_cc_repdistiller(es, et)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    normed = make_cc(fs, ft, out_dim=5, variant=variant, normalize=True)
    normed.load_state_dict(m.state_dict())
    es, et = F.normalize(es, dim=1), F.normalize(et, dim=1)
    ref = ref_cc(es, et, "gaussian", 0.4, 2, "batchmean") if variant == "torchdistill" else ref_cc_repdistiller(es, et)
    out = normed(step({"a": fs}, {"b": ft}, 6))["loss"]
    assert out.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("variant", ["torchdistill", "repdistiller"])
def test_cc_identical_embeddings_give_zero_and_finite_gradients(variant):
    f = rand(5, 6, seed=12)
    m = make_cc(f, f, out_dim=4, variant=variant)
    m.teacher_head.load_state_dict(m.student_head.state_dict())
    loss = m(step({"a": f}, {"b": f}, 5))["loss"]
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


# -- RKD ------------------------------------------------------------------------------------------------------
def test_rkd_three_point_hand_case():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = 1 / math.sqrt(2)
    d = rkd_distances(x)
    expected_d = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 2**0.5], [1.0, 2**0.5, 0.0]])
    assert torch.allclose(d, expected_d, atol=1e-6)
    a = rkd_angles(x)
    assert a[0, 1, 2].item() == pytest.approx(0.0, abs=1e-6)  # right angle at x0
    assert a[1, 0, 2].item() == pytest.approx(r, abs=1e-6) and a[2, 0, 1].item() == pytest.approx(r, abs=1e-6)
    for i in range(3):
        assert torch.all(a[i, i] == 0) and torch.all(a[i, :, i] == 0)  # e_ii is the zero vector
        for j in range(3):
            if j != i:
                assert a[i, j, j].item() == pytest.approx(1.0, abs=1e-6)
    # identical student geometry at another scale: both terms vanish
    out = RelationalKD("a", "b")(step({"a": 2 * x}, {"b": x}, 3))
    assert out["distance"].item() == pytest.approx(0.0, abs=1e-6) and out["angle"].item() == pytest.approx(0, abs=1e-6)


def test_rkd_invariant_to_similarity_transforms():
    xs, xt = rand(7, 5, seed=13), rand(7, 9, seed=14)
    q, _ = torch.linalg.qr(rand(5, 5, seed=15))
    m = RelationalKD("a", "b")
    base = m(step({"a": xs}, {"b": xt}, 7))
    moved = m(step({"a": 2.5 * xs @ q + rand(1, 5, seed=16)}, {"b": xt}, 7))
    for k in ("distance", "angle"):
        assert moved[k].item() == pytest.approx(base[k].item(), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("wd,wa,reduction", [(25.0, 50.0, "mean"), (1.0, 2.0, "mean"), (1.0, 2.0, "sum")])
def test_rkd_matches_torchdistill(wd, wa, reduction):
    fs, ft = rand(6, 4, 3, 3, seed=17), rand(6, 8, 2, 2, seed=18)
    out = RelationalKD("a", "b", wd, wa, reduction=reduction)(step({"a": fs}, {"b": ft}, 6))
    ref = ref_rkd(fs, ft, wd, wa, reduction)
    assert sum(out.values()).item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    only_angle = RelationalKD("a", "b", 0.0, wa, reduction=reduction)(step({"a": fs}, {"b": ft}, 6))
    assert set(only_angle) == {"angle"}
    assert only_angle["angle"].item() == pytest.approx(ref_rkd(fs, ft, 0.0, wa, reduction).item(), rel=1e-5)


def test_rkd_no_gradient_into_teacher_inputs():
    xs, xt = rand(5, 4, seed=19).requires_grad_(), rand(5, 4, seed=20).requires_grad_()
    out = RelationalKD("a", "b")(step({"a": xs}, {"b": xt}, 5))
    assert out["distance"].grad_fn is not None
    sum(out.values()).backward()
    assert xt.grad is None and xs.grad is not None and xs.grad.abs().sum() > 0


# -- PKT ------------------------------------------------------------------------------------------------------
def test_pkt_identical_inputs_give_exactly_zero():
    x = rand(6, 5, seed=21)
    assert pkt_loss(x, x.clone()).item() == 0.0


def test_pkt_hand_case_and_row_rescaling():
    xs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # P_s rows (2/3, 1/3)
    xt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # P_t rows (1/2, 1/2)
    assert pkt_loss(xs, xt).item() == pytest.approx(math.log(1.125) / 4, abs=1e-6)
    a, b = rand(5, 6, seed=22), rand(5, 3, seed=23)
    scale = torch.rand(5, 1, generator=torch.Generator().manual_seed(24)) * 10 + 0.1
    assert pkt_loss(a * scale, b).item() == pytest.approx(pkt_loss(a, b).item(), abs=1e-6)


def test_pkt_matches_torchdistill_with_different_dims():
    xs, xt = rand(8, 16, seed=25), torch.relu(rand(8, 64, seed=26))
    out = ProbabilisticKT("a", "b")(step({"a": xs}, {"b": xt}, 8))["loss"]
    assert out.item() == pytest.approx(ref_pkt(xs, xt).item(), rel=1e-5, abs=1e-7)
    assert out.item() > 0


# -- through the trainable module: gradients reach the student and the method, never the teacher ---------------
@pytest.mark.parametrize("name", ["sp", "cc", "cc_rep", "rkd", "pkt"])
def test_gradients_reach_student_and_method_never_teacher(name):
    torch.manual_seed(0)
    method = {
        "sp": lambda: SimilarityPreserving(["f2"]),
        "cc": lambda: CorrelationCongruence(out_dim=8),
        "cc_rep": lambda: CorrelationCongruence(out_dim=8, variant="repdistiller"),
        "rkd": lambda: RelationalKD(),
        "pkt": lambda: ProbabilisticKT(),
    }[name]()
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(TinyCNN(8), Composite({name: method}), FrozenTeacher(TinyCNN(16)), task)
    data = demo_subset("train", 2)
    batch = task.prepare(task.fetch(data, torch.arange(20)), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    backbone = [p for n, p in module.student.named_parameters() if not n.startswith("head")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)
    own = list(method.parameters())
    assert len(own) == (4 if name.startswith("cc") else 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert all(p.requires_grad for p in own)
    teacher = module.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("teacher.") for k in module.state_dict())
    if name.startswith("cc"):  # the heads are part of the trainable module (checkpoint and optimiser)
        assert any(k.endswith("teacher_head.weight") for k in module.state_dict())


# -- config --------------------------------------------------------------------------------------------------
def base_config() -> dict:
    return {
        "output_dir": "runs/x",
        "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet20", "weights": "random"},
        "methods": [{"name": "ce"}],
        "train": {"epochs": 1, "batch_size": 8},
    }


def test_every_yaml_example_validates_and_builds():
    from distill.methods import METHODS

    for name, line in YAML_EXAMPLES.items():
        raw = base_config()
        raw["methods"] = [yaml.safe_load(line)]
        comp = build_methods(parse_config(raw).methods)
        assert isinstance(comp.methods[name], METHODS.get(name))
    raw = base_config()
    raw["methods"] = [{"name": "cc", "variant": "paper"}]
    with pytest.raises(ValueError, match="variant"):
        parse_config(raw)
    raw["methods"] = [{"name": "rkd", "distance_weight": 1, "angle_weight": 2, "reduction": "sum", "squared": True}]
    rkd = build_methods(parse_config(raw).methods).methods["rkd"]
    assert (rkd.distance_weight, rkd.angle_weight, rkd.reduction, rkd.squared) == (1.0, 2.0, "sum", True)
