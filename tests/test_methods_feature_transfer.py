"""VID, AB, FT, FSP and NST: hand cases, restated reference definitions, gradient flow and the init stage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TinyCNN, demo_subset
from torch import nn

from distill.config import parse_config
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.feature_transfer import (
    FSP,
    NST,
    VID,
    ActivationBoundaries,
    FactorTransfer,
    ab_connector,
    ab_hinge,
    fsp_matrix,
    ft_factor_loss,
    nst_mmd,
    vid_nll,
)
from distill.methods.logits import CrossEntropy
from distill.tasks.classification import ImageClassification
from distill.train.logs import read_metrics
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

YAML_EXAMPLES = {
    "vid": "{name: vid, weight: 1, student: [f1, f2, f3], teacher: [f1, f2, f3], init_pred_var: 5.0, eps: 1.0e-5}",
    "ab": "{name: ab, weight: 1, student: [f1_pre, f2_pre, f3_pre], margin: 1.0, init_epochs: 30}",
    "ft": "{name: ft, weight: 500, student: f3, teacher: f3, p: 1, rate: 0.5, init_epochs: 30}",
    "fsp": "{name: fsp, weight: 1, first: [f0, f1, f2], second: [f1, f2, f3], mode: repdistiller, init_epochs: 30}",
    "nst": "{name: nst, weight: 50, student: [f1, f2, f3]}",
}

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def step(fs: dict, ft: dict, b: int = 2) -> StepInputs:
    z = torch.zeros(b, 3)
    return StepInputs(ModelOutput(z, fs), ModelOutput(z, ft), None)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_yaml_examples_validate_and_build():
    for name, line in YAML_EXAMPLES.items():
        raw = {
            "output_dir": "runs/x",
            "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
            "student": {"arch": "resnet20"},
            "teacher": {"arch": "resnet20", "weights": "random"},
            "methods": [{"name": "ce"}, yaml.safe_load(line)],
            "train": {"epochs": 1, "batch_size": 8},
        }
        comp = build_methods(parse_config(raw).methods)
        assert isinstance(comp.methods[name], METHODS.get(name))
    comp = build_methods(parse_config({**raw, "methods": [yaml.safe_load(YAML_EXAMPLES["ab"])]}).methods)
    assert comp.init_epochs == 30


# -- VID ---------------------------------------------------------------------------------------------------------
def repdistiller_vid(regressor, log_scale, eps, fs, ft):
    """RepDistiller VIDLoss.forward restated (pool the larger map, softplus variance, mean NLL)."""
    if fs.shape[2] > ft.shape[2]:
        fs = F.adaptive_avg_pool2d(fs, ft.shape[2:])
    elif fs.shape[2] < ft.shape[2]:
        ft = F.adaptive_avg_pool2d(ft, fs.shape[2:])
    mean = regressor(fs)
    var = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1)
    return torch.mean(0.5 * ((mean - ft) ** 2 / var + torch.log(var)))


def test_vid_starts_at_half_log_init_var_and_matches_references():
    fs = {"a": randn(4, 6, 8, 8), "b": randn(4, 8, 8, 8, seed=1)}
    ft = {"a": torch.zeros(4, 5, 8, 8), "b": randn(4, 12, 4, 4, seed=2)}
    m = VID(["a", "b"], weights=[1.0, 0.5])
    m.setup(ModelOutput(torch.zeros(4, 3), fs), ModelOutput(torch.zeros(4, 3), ft))
    assert torch.allclose(m.variance(0).flatten(), torch.full((5,), 5.0), atol=1e-6)
    # mu = t: a zero regressor and a zero teacher map give exactly 1/2 log 5
    single = VID(["a"])
    single.setup(ModelOutput(torch.zeros(4, 3), fs), ModelOutput(torch.zeros(4, 3), ft))
    for p in single.regressors.parameters():
        nn.init.zeros_(p)
    assert single(step(fs, ft, 4))["loss"].item() == pytest.approx(0.5 * math.log(5.0), abs=1e-6)
    # RepDistiller's per-pair loss (with pooling of the larger map), weighted as torchdistill's pairs
    ref = sum(w * repdistiller_vid(m.regressors[j], m.alphas[j], 1e-5, fs[n], ft[n])
              for j, (n, w) in enumerate([("a", 1.0), ("b", 0.5)]))
    assert m(step(fs, ft, 4))["loss"].item() == pytest.approx(ref.item(), abs=1e-5)


def test_vid_core_matches_torchdistill_given_mean_and_var():
    mu, t = randn(3, 4, 5, 5), randn(3, 4, 5, 5, seed=1)
    var = F.softplus(randn(4, seed=2)).view(1, -1, 1, 1) + 1e-5
    torchdistill = (0.5 * ((mu - t) ** 2 / var + torch.log(var))).mean()
    assert vid_nll(mu, var, t).item() == pytest.approx(torchdistill.item(), abs=1e-6)


def test_vid_variance_is_trained():
    fs, ft = {"a": randn(2, 3, 4, 4)}, {"a": randn(2, 5, 4, 4, seed=1)}
    m = VID(["a"])
    m.setup(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), ft))
    assert any(p is m.alphas[0] for p in m.parameters())
    m(step(fs, ft))["loss"].backward()
    assert m.alphas[0].grad is not None and m.alphas[0].grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.regressors.parameters())


# -- AB ----------------------------------------------------------------------------------------------------------
def test_ab_hand_cases_and_sign_agreement():
    t = torch.tensor([1.0, -1.0])
    assert ab_hinge(torch.tensor([2.0, -2.0]), t).item() == 0.0
    assert ab_hinge(torch.tensor([0.0, 0.0]), t).item() == pytest.approx(2.0)
    s = randn(3, 4, 5, 5)
    s = s.sign() * (s.abs() + 1.0)  # |s| >= m everywhere
    assert ab_hinge(s, s.sign() * randn(3, 4, 5, 5, seed=1).abs()).item() == 0.0
    assert ab_hinge(s, -s).item() > 0


def torchdistill_ab(fs_list, ft_list, weights, margin, reduction):
    total = 0
    for s, t, w in zip(fs_list, ft_list, weights):
        loss = (s + margin) ** 2 * ((s > -margin) & (t <= 0)).float() + \
            (s - margin) ** 2 * ((s <= margin) & (t > 0)).float()
        total = total + w * torch.abs(loss).sum()
    return total / fs_list[0].shape[0] if reduction == "mean" else total


def repdistiller_ab(fs_list, ft_list, margin=1.0):
    n, bsz = len(fs_list), fs_list[0].shape[0]
    w = [2 ** (i - n + 1) for i in range(n)]
    losses = [torchdistill_ab([s], [t], [1.0], margin, "sum") for s, t in zip(fs_list, ft_list)]
    return sum(wi * li / bsz / 1000 * 3 for wi, li in zip(w, losses))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ab_matches_references(reduction):
    names = ["a", "b", "c"]
    fs = {n: randn(4, 3 * (i + 1), 8 >> i, 8 >> i, seed=i) * 2 for i, n in enumerate(names)}
    ft = {n: randn(4, 3 * (i + 1), 8 >> i, 8 >> i, seed=10 + i) for i, n in enumerate(names)}
    m = ActivationBoundaries(names, init_epochs=0, reduction=reduction)
    m.setup(ModelOutput(torch.zeros(4, 3), fs), ModelOutput(torch.zeros(4, 3), ft))
    assert all(isinstance(c, nn.Identity) for c in m.connectors)
    ours = m(step(fs, ft, 4))["loss"]
    ref = torchdistill_ab([fs[n] for n in names], [ft[n] for n in names], [0.003 * w for w in (0.25, 0.5, 1)],
                          1.0, reduction)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    if reduction == "mean":
        assert ours.item() == pytest.approx(repdistiller_ab([fs[n] for n in names], [ft[n] for n in names]).item(),
                                            abs=1e-5)
    assert m.init_loss(step(fs, ft, 4))["loss"].item() == pytest.approx(ours.item(), abs=1e-6)


def test_ab_connectors_and_stages():
    c = ab_connector(torch.Size([2, 4, 8, 8]), torch.Size([2, 6, 8, 8]), "official")
    conv = c[0]
    assert conv.bias is None and conv.kernel_size == (1, 1) and isinstance(c[1], nn.BatchNorm2d)
    assert isinstance(ab_connector(torch.Size([2, 6, 8, 8]), torch.Size([2, 6, 8, 8]), "official"), nn.Identity)
    rep = ab_connector(torch.Size([2, 4, 16, 16]), torch.Size([2, 6, 8, 8]))
    assert rep(torch.randn(2, 4, 16, 16)).shape == (2, 6, 8, 8)
    assert not any(isinstance(x, nn.ReLU) for x in rep.modules())
    big = ab_connector(torch.Size([2, 64, 8, 8]), torch.Size([2, 256, 8, 8]), "official")[0]
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.1)
    with pytest.raises(ValueError, match="would do nothing"):
        ActivationBoundaries(init_epochs=0, main_stage=False)
    default = ActivationBoundaries()
    assert default.init_epochs == 30 and not default.main_stage
    assert default.pair_weights == [0.25, 0.5, 1.0] and ActivationBoundaries(init_epochs=0).main_stage
    fs, ft = {"f1_pre": randn(2, 3, 4, 4)}, {"f1_pre": randn(2, 3, 4, 4, seed=1)}
    m = ActivationBoundaries(["f1_pre"])
    m.setup(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), ft))
    assert m(step(fs, ft)) == {}  # after the initialisation stage AB adds nothing
    assert m.init_loss(step(fs, ft))["loss"].item() > 0


# -- FT ----------------------------------------------------------------------------------------------------------
def torchdistill_ft(fs, ft, p, reduction):
    """torchdistill FTLoss restated (paraphraser / translator outputs given)."""
    a, b = ft.flatten(1), fs.flatten(1)
    a = a / a.norm(dim=1).unsqueeze(1)
    b = b / b.norm(dim=1).unsqueeze(1)
    if p == 1:
        return F.l1_loss(b, a, reduction=reduction)
    loss = torch.norm(b - a, p, dim=1)
    return loss.mean() if reduction == "mean" else loss.sum()


@pytest.mark.parametrize("p,reduction", [(1, "mean"), (1, "sum"), (2, "mean"), (2, "sum")])
def test_ft_factor_loss_matches_torchdistill(p, reduction):
    fs, ft = randn(4, 6, 5, 5), randn(4, 6, 5, 5, seed=1)
    assert ft_factor_loss(fs, ft, p, reduction).item() == pytest.approx(torchdistill_ft(fs, ft, p, reduction).item(),
                                                                        rel=1e-5, abs=1e-6)


def test_ft_factor_invariances_and_l1_mean():
    fs, ft = randn(3, 4, 3, 3), randn(3, 4, 3, 3, seed=1)
    assert ft_factor_loss(fs, fs.clone()).item() == 0.0
    assert ft_factor_loss(2.5 * fs, 0.1 * ft).item() == pytest.approx(ft_factor_loss(fs, ft).item(), abs=1e-6)
    ns, nt = fs.flatten(1), ft.flatten(1)
    ns, nt = ns / ns.norm(dim=1, keepdim=True), nt / nt.norm(dim=1, keepdim=True)
    assert ft_factor_loss(fs, ft).item() == pytest.approx((ns - nt).abs().sum().item() / ns.numel(), abs=1e-6)


def test_ft_modules_init_loss_and_main_loss():
    fs, ft = {"s": randn(2, 6, 4, 4)}, {"t": randn(2, 8, 4, 4, seed=1).relu()}
    m = FactorTransfer("s", "t")
    m.setup(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), ft))
    convs = [x for x in m.paraphraser.encoder if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 8), (8, 4), (4, 4)]
    tconvs = [x for x in m.paraphraser.decoder if isinstance(x, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in tconvs] == [(4, 4), (4, 8), (8, 8)]
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.translator) == 3
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.paraphraser.modules())
    rec = m.init_loss(step(fs, ft))["reconstruction"]
    assert rec.item() == pytest.approx(F.mse_loss(m.paraphraser(ft["t"]), ft["t"]).item(), abs=1e-6)
    rec.backward()
    assert all(p.grad is not None for p in m.paraphraser.parameters())
    m.zero_grad(set_to_none=True)
    loss = m(step(fs, ft))["loss"]
    ref = torchdistill_ft(m.translator(fs["s"]), m.paraphraser.encoder(ft["t"]), 1, "mean")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    loss.backward()
    assert all(p.grad is None for p in m.paraphraser.parameters())  # frozen in the main stage
    assert all(p.grad is not None for p in m.translator.parameters())


def test_ft_repdistiller_variant():
    fs, ft = {"s": randn(2, 6, 4, 4)}, {"t": randn(2, 8, 4, 4, seed=1)}
    m = FactorTransfer("s", "t", variant="repdistiller", init_epochs=0)
    m.setup(ModelOutput(torch.zeros(2, 3), fs), ModelOutput(torch.zeros(2, 3), ft))

    def factor(f):  # RepDistiller FactorTransfer.factor, p1 = 2
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    with torch.no_grad():
        ref = (factor(m.translator(fs["s"])) - factor(m.paraphraser.encoder(ft["t"]))).abs().mean()
        assert m(step(fs, ft))["loss"].item() == pytest.approx(ref.item(), abs=1e-6)


# -- FSP ---------------------------------------------------------------------------------------------------------
def test_fsp_hand_case_identity_and_channel_check():
    a = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    b = torch.tensor([3.0, -1.0, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(fsp_matrix(a, b)[0], torch.outer(a.flatten(), b.flatten()))
    s = {"x": a, "y": b}
    t = {"x": torch.tensor([0.0, 2.0]).view(1, 2, 1, 1), "y": b}
    # G_s - G_t = outer([1, 0], b): squared entries 9, 1, 0.25
    for mode, expected in [("repdistiller", 10.25 / 6), ("paper", 10.25), ("torchdistill", 3 + 1 + 0.5)]:
        m = FSP(["x"], ["y"], mode=mode, init_epochs=0)
        assert m(step(s, t, 1))["loss"].item() == pytest.approx(expected, abs=1e-6), mode
        assert m(step(s, s, 1))["loss"].item() == 0.0
    with pytest.raises(ValueError, match="channel counts differ"):
        FSP(["x"], ["y"]).setup(ModelOutput(torch.zeros(1, 3), s),
                                ModelOutput(torch.zeros(1, 3), {"x": torch.zeros(1, 4, 1, 1), "y": b}))
    assert FSP()(step(s, t, 1)) == {}  # default: initialisation stage only


def repdistiller_fsp(g_list):
    out = []
    for bot, top in zip(g_list[:-1], g_list[1:]):
        if bot.shape[2] > top.shape[2]:
            bot = F.adaptive_avg_pool2d(bot, top.shape[2:])
        elif bot.shape[2] < top.shape[2]:
            top = F.adaptive_avg_pool2d(top, bot.shape[2:])
        bot = bot.unsqueeze(1).flatten(3)
        top = top.unsqueeze(2).flatten(3)
        out.append((bot * top).mean(-1))
    return out


def torchdistill_fsp_matrix(a, b):
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    if a.shape[2] > h or a.shape[3] > w:
        a = F.adaptive_max_pool2d(a, (h, w))
    if b.shape[2] > h or b.shape[3] > w:
        b = F.adaptive_max_pool2d(b, (h, w))
    a, b = a.flatten(2), b.flatten(2)
    return torch.matmul(a, b.transpose(1, 2)) / a.shape[2]


def fsp_features(seed):
    return [randn(3, 4, 8, 8, seed=seed), randn(3, 4, 8, 8, seed=seed + 1), randn(3, 6, 4, 4, seed=seed + 2),
            randn(3, 8, 2, 2, seed=seed + 3)]


def test_fsp_matches_repdistiller_and_torchdistill():
    names = ["f0", "f1", "f2", "f3"]
    gs, gt = fsp_features(0), fsp_features(10)
    inputs = step(dict(zip(names, gs)), dict(zip(names, gt)), 3)
    ref = sum((s - t).pow(2).mean() for s, t in zip(repdistiller_fsp(gs), repdistiller_fsp(gt)))
    assert FSP(init_epochs=0)(inputs)["loss"].item() == pytest.approx(ref.item(), abs=1e-5)
    weights = [1.0, 0.5, 2.0]
    ref = 0
    for (a, b), (c, d), w in zip(zip(gs[:-1], gs[1:]), zip(gt[:-1], gt[1:]), weights):
        ref = ref + w * (torchdistill_fsp_matrix(a, b) - torchdistill_fsp_matrix(c, d)).norm(dim=1).sum()
    ours = FSP(weights=weights, mode="torchdistill", pool="max", init_epochs=0)(inputs)["loss"]
    assert ours.item() == pytest.approx((ref / 3).item(), rel=1e-5)


# -- NST ---------------------------------------------------------------------------------------------------------
def mdistiller_nst(f_s, f_t):
    """mdistiller nst_loss restated (full loss, poly kernel)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)

    def poly(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    return poly(f_t, f_t).mean() + poly(f_s, f_s).mean() - 2 * poly(f_s, f_t).mean()


def test_nst_properties_and_mdistiller():
    fs, ft = randn(3, 5, 8, 8).relu(), randn(3, 7, 4, 4, seed=1).relu()
    assert nst_mmd(fs, fs.clone()).abs().item() < 1e-6
    assert nst_mmd(fs, ft).item() >= 0
    assert nst_mmd(fs, ft).item() == pytest.approx(mdistiller_nst(fs, ft).item(), abs=1e-5)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    scale = torch.rand(1, 5, 1, 1) + 0.1
    assert nst_mmd((fs * scale)[:, perm], ft).item() == pytest.approx(nst_mmd(fs, ft).item(), abs=1e-5)
    names = ["a", "b"]
    s = {"a": fs, "b": randn(3, 4, 4, 4, seed=2)}
    t = {"a": ft, "b": randn(3, 6, 4, 4, seed=3)}
    ours = NST(names, weights=[1.0, 0.5])(step(s, t, 3))["loss"]
    ref = mdistiller_nst(s["a"], t["a"]) + 0.5 * mdistiller_nst(s["b"], t["b"])
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


# -- gradient flow and the initialisation stage ----------------------------------------------------------------
def make_task() -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))


PRE = ["stage1.1", "stage2.1"]  # TinyCNN BN outputs, i.e. pre-ReLU stage maps

GRAD_CASES = {
    "vid": (lambda: VID(["f1", "f2"]), 16, ["regressors", "alphas"], []),
    "ab": (lambda: ActivationBoundaries(PRE, init_epochs=0), 16, ["connectors"], []),
    "ft": (lambda: FactorTransfer("f2", "f2", init_epochs=0), 16, ["translator"], ["paraphraser"]),
    "fsp": (lambda: FSP(["stage1.0:input", "f1"], ["f1", "f2"], init_epochs=0), 8, [], []),
    "nst": (lambda: NST(["f1", "f2"]), 16, [], []),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradients_reach_student_and_method_never_teacher(name):
    build, teacher_width, trained, frozen = GRAD_CASES[name]
    torch.manual_seed(0)
    method = build()
    module = DistillModule(TinyCNN(8), Composite({"ce": CrossEntropy(), name: method}, {name: 2.0}),
                           FrozenTeacher(TinyCNN(teacher_width)), make_task())
    task = module.task
    batch = task.prepare(task.fetch(demo_subset("train", 1), torch.arange(10)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert set(terms) == {"ce", name} and terms[name].item() != 0.0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    for attr in trained:
        params = list(getattr(method, attr).parameters())
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), attr
    for attr in frozen:
        assert all(p.grad is None for p in getattr(method, attr).parameters()), attr
    teacher = module.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())


INIT_CASES = {
    # method, teacher width, parameters the init stage trains (name prefixes), parameters frozen in the main stage
    "ab": (lambda: ActivationBoundaries(PRE, init_epochs=1), 16,
           ["student.stage1", "student.stage2", "methods.methods.ab.connectors"], ["methods.methods.ab.connectors"]),
    "ft": (lambda: FactorTransfer("f2", "f2", init_epochs=1), 16,
           ["methods.methods.ft.paraphraser"], ["methods.methods.ft.paraphraser"]),
    "fsp": (lambda: FSP(["f1"], ["f2"], init_epochs=1), 8, ["student.stage1", "student.stage2"], []),
}


@pytest.mark.parametrize("name", sorted(INIT_CASES))
def test_initialisation_stage_trains_only_init_loss(tmp_path, name):
    build, teacher_width, init_params, main_frozen = INIT_CASES[name]
    torch.manual_seed(0)
    method = build()
    module = DistillModule(TinyCNN(8), Composite({"ce": CrossEntropy(), name: method}),
                           FrozenTeacher(TinyCNN(teacher_width)), make_task())
    snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def recorder(stage, fn):
        def wrapped(inputs):  # first call of each stage: parameters before any step of that stage
            if stage not in snapshots:
                snapshots[stage] = {k: p.detach().clone() for k, p in module.named_parameters()}
            return fn(inputs)
        return wrapped

    method.init_loss = recorder("init", method.init_loss)
    method.forward = recorder("main", method.forward)
    cfg = TrainConfig(epochs=1, batch_size=10, lr=0.05, progress=False, log_every=1)
    summary = Trainer(module, demo_subset("train", 2), None, cfg, tmp_path).fit()
    before, after_init = snapshots["init"], snapshots["main"]
    after = {k: p.detach() for k, p in module.named_parameters()}
    assert [h["stage"] for h in summary["history"]] == ["init", "main"]
    rows = read_metrics(tmp_path)
    init_metrics = {r["metric"] for r in rows if r["split"] == "init"}
    assert "ce" not in init_metrics and any(m.startswith(name) for m in init_metrics)
    assert "ce" in {r["metric"] for r in rows if r["split"] == "train"}
    for k in before:
        moved = not torch.equal(before[k], after_init[k])
        if any(k.startswith(p) for p in init_params):
            assert moved, f"{k} should train during the init stage"
        else:
            assert not moved, f"{k} changed during the init stage"
    for k in after:
        moved = not torch.equal(after_init[k], after[k])
        if any(k.startswith(p) for p in main_frozen):
            assert not moved, f"{k} changed during the main stage"
        elif k.startswith(("student.", "methods.methods.ft.translator")):
            assert moved, f"{k} should train during the main stage"
