"""CRD and ReviewKD: hand-computed cases, restated reference definitions (RepDistiller / official ReviewKD /
mdistiller / torchdistill), memory-bank state, negative sampling, gradient flow and exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TinyCNN, demo_subset

from distill.config import ConfigError, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods import METHODS
from distill.methods.crd import CRD, nce_loss, sample_negatives
from distill.methods.logits import CrossEntropy
from distill.methods.reviewkd import ABF, ReviewKD, hcl
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

YAML_EXAMPLES = {
    "crd": "{name: crd, weight: 0.8, student: pooled, teacher: pooled, feat_dim: 128, num_negatives: 4096, "
           "temperature: 0.07, momentum: 0.5, negatives: other_indices}",
    "reviewkd": "{name: reviewkd, weight: 0.6, student: [f1, f2, f3, pooled], teacher: [f1_pre, f2_pre, f3_pre, "
                "pooled], warmup_epochs: 20, warmup_counting: official}",
}

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def test_yaml_examples_validate_and_build():
    for name, line in YAML_EXAMPLES.items():
        raw = {
            "output_dir": "runs/x",
            "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2, "eval_per_class": 2},
            "student": {"arch": "resnet20"},
            "teacher": {"arch": "resnet56", "weights": "random"},
            "methods": [yaml.safe_load(line)],
            "train": {"epochs": 1, "batch_size": 8},
        }
        comp = build_methods(parse_config(raw).methods)
        assert isinstance(comp.methods[name], METHODS.get(name))
    comp = build_methods(parse_config({**raw, "methods": [yaml.safe_load(YAML_EXAMPLES["crd"])]}).methods)
    assert comp.methods["crd"].num_negatives == 4096 and comp.weights == {"crd": 0.8}
    line = "{name: reviewkd, mid_channels: 32, levels: [2, 1], warmup_epochs: 2.5, warmup_counting: mdistiller}"
    review = build_methods(parse_config({**raw, "methods": [yaml.safe_load(line)]}).methods).methods["reviewkd"]
    assert review.mid_channels == 32 and review.levels == [2, 1] and review.warmup_epochs == 2.5
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.negatives: .*'other_indices'"):
        parse_config({**raw, "methods": [{"name": "crd", "negatives": "same_class"}]})


# -- CRD -----------------------------------------------------------------------------------------------------
def crd_inputs(fs, ft, idx):
    return StepInputs(ModelOutput(torch.zeros(len(idx), 3), {"p": fs}), ModelOutput(torch.zeros(len(idx), 3),
                      {"p": ft}), None, indices=torch.as_tensor(idx))


def built_crd(n, ds=6, dt=10, **kw):
    method = CRD("p", "p", **{"negatives": "other_indices", **kw})  # uniform negatives: the reference's draw
    method.setup(ModelOutput(torch.zeros(2, 3), {"p": torch.zeros(2, ds)}),
                 ModelOutput(torch.zeros(2, 3), {"p": torch.zeros(2, dt)}), RunInfo(num_train_examples=n))
    return method


def repdistiller_crd(fs, ft, head_s, head_t, mem_s, mem_t, z, idx, contrast_idx, n, t=0.07, m=0.5, eps=1e-7):
    """RepDistiller's CRDLoss + ContrastMemory restated: returns loss, updated banks and the Z pair."""
    v1 = F.linear(fs, head_s.weight, head_s.bias)
    v1 = v1 / v1.pow(2).sum(1, keepdim=True).pow(0.5)
    v2 = F.linear(ft, head_t.weight, head_t.bias)
    v2 = v2 / v2.pow(2).sum(1, keepdim=True).pow(0.5)
    out_v2 = torch.exp(torch.einsum("bkd,bd->bk", mem_s[contrast_idx], v2) / t)
    out_v1 = torch.exp(torch.einsum("bkd,bd->bk", mem_t[contrast_idx], v1) / t)
    z1 = z[0] if z[0] > 0 else out_v1.mean().item() * n
    z2 = z[1] if z[1] > 0 else out_v2.mean().item() * n

    def contrast(x):
        k = x.shape[1] - 1
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + k / n + eps))
        log_d0 = torch.log((k / n) / (x[:, 1:] + k / n + eps))
        return -(log_d1.sum() + log_d0.sum()) / x.shape[0]

    loss = contrast(out_v1 / z1) + contrast(out_v2 / z2)
    new_s, new_t = mem_s.clone(), mem_t.clone()
    pos = mem_s[idx] * m + v1.detach() * (1 - m)
    new_s[idx] = pos / pos.pow(2).sum(1, keepdim=True).pow(0.5)
    pos = mem_t[idx] * m + v2.detach() * (1 - m)
    new_t[idx] = pos / pos.pow(2).sum(1, keepdim=True).pow(0.5)
    return loss, new_s, new_t, (z1, z2)


@pytest.mark.parametrize("n,k", [(40, 12), (400, 12)])  # scored by one (B x N) product / by gathered rows
def test_crd_matches_repdistiller_over_two_steps(n, k):
    torch.manual_seed(0)
    method = built_crd(n, num_negatives=k)
    mem_s, mem_t, z = method.memory_s.clone(), method.memory_t.clone(), (-1.0, -1.0)
    for step, seed in enumerate((3, 4)):
        g = torch.Generator().manual_seed(step)
        fs, ft = torch.randn(5, 6, generator=g), torch.randn(5, 10, generator=g)
        idx = torch.randperm(n, generator=g)[:5]
        torch.manual_seed(seed)
        ours = method(crd_inputs(fs, ft, idx))["loss"]
        ours.backward()  # the in-place bank update does not break the graph
        assert method.embed_s.linear.weight.grad.abs().sum() > 0
        torch.manual_seed(seed)  # the same draw of negatives
        contrast_idx = torch.cat([idx[:, None], sample_negatives(idx, n, k)], 1)
        ref, mem_s, mem_t, z = repdistiller_crd(fs, ft, method.embed_s.linear, method.embed_t.linear, mem_s, mem_t,
                                                z, idx, contrast_idx, n)
        assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
        assert torch.allclose(method.memory_s, mem_s, atol=1e-6) and torch.allclose(method.memory_t, mem_t, atol=1e-6)
        assert method.z.tolist() == pytest.approx(list(z), rel=1e-6)


def test_crd_z_is_frozen_after_first_call_and_kept_in_state_dict():
    torch.manual_seed(1)
    n = 30
    method = built_crd(n, num_negatives=8)
    assert method.z.tolist() == [-1.0, -1.0]
    fs, ft, idx = torch.randn(4, 6), torch.randn(4, 10), torch.tensor([0, 5, 9, 20])
    torch.manual_seed(2)
    neg = sample_negatives(idx, n, 8)
    contrast = torch.cat([idx[:, None], neg], 1)
    vs = method.embed_s(fs)
    us = torch.exp(torch.einsum("bkd,bd->bk", method.memory_t[contrast], vs) / 0.07)
    torch.manual_seed(2)
    method(crd_inputs(fs, ft, idx))
    z_first = method.z.clone()
    assert z_first[0].item() == pytest.approx(n * us.mean().item(), rel=1e-5)
    method(crd_inputs(torch.randn(4, 6) * 3, torch.randn(4, 10), torch.tensor([1, 2, 3, 4])))
    assert torch.equal(method.z, z_first)
    state = method.state_dict()
    assert {"memory_s", "memory_t", "z"} <= set(state) and state["memory_s"].shape == (n, 128)
    fresh = built_crd(n, num_negatives=8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.z, z_first) and torch.equal(fresh.memory_t, method.memory_t)


def test_crd_bank_init_and_update_rows():
    torch.manual_seed(0)
    method = built_crd(50, num_negatives=10, feat_dim=16)
    bound = 1 / math.sqrt(16 / 3)
    assert method.memory_s.abs().max() <= bound and method.memory_s.abs().max() > 0.9 * bound
    before_s, before_t = method.memory_s.clone(), method.memory_t.clone()
    idx = torch.tensor([3, 7, 11])
    method(crd_inputs(torch.randn(3, 6), torch.randn(3, 10), idx))
    others = torch.ones(50, dtype=torch.bool)
    others[idx] = False
    for after, before in ((method.memory_s, before_s), (method.memory_t, before_t)):
        assert torch.allclose(after[idx].norm(dim=1), torch.ones(3), atol=1e-6)
        assert torch.equal(after[others], before[others])
        assert not torch.allclose(after[idx], before[idx])


def test_crd_hand_case_k1_n2():
    method = built_crd(2, ds=2, dt=2, feat_dim=2, num_negatives=1, temperature=1.0)
    with torch.no_grad():
        for head in (method.embed_s, method.embed_t):
            head.linear.weight.copy_(torch.eye(2))
            head.linear.bias.zero_()
        method.memory_s.copy_(torch.eye(2))
        method.memory_t.copy_(torch.eye(2))
    # v_s = (1, 0), v_t = (0, 1); the only negative of index 0 is index 1
    loss = method(crd_inputs(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), [0]))["loss"]
    e, c, eps = math.e, 0.5, 1e-7
    # u_s = (e, 1), u_t = (1, e), both Z = 2 * mean = e + 1
    p_s, p_t = (e / (e + 1), 1 / (e + 1)), (1 / (e + 1), e / (e + 1))

    def ell(p):
        return -(math.log(p[0] / (p[0] + c + eps)) + math.log(c / (p[1] + c + eps)))

    assert loss.item() == pytest.approx(ell(p_s) + ell(p_t), abs=1e-6)
    assert method.z.tolist() == pytest.approx([e + 1, e + 1], rel=1e-6)
    r = 1 / math.sqrt(2)
    assert torch.allclose(method.memory_s, torch.eye(2), atol=1e-6)  # normalize((M_s[0] + v_s) / 2) = (1, 0)
    assert torch.allclose(method.memory_t, torch.tensor([[r, r], [0.0, 1.0]]), atol=1e-6)


def test_nce_loss_hand_value():
    p = torch.tensor([[0.5, 0.1, 0.2]])
    c = 2 / 10
    expected = -(math.log(0.5 / (0.5 + c + 1e-7)) + math.log(c / (0.1 + c + 1e-7)) + math.log(c / (0.2 + c + 1e-7)))
    assert nce_loss(p, 10).item() == pytest.approx(expected, abs=1e-6)


def test_negative_sampling_rules_and_reproducibility():
    anchors = torch.tensor([0, 4, 9, 2])
    torch.manual_seed(5)
    a = sample_negatives(anchors, 20, 10)
    torch.manual_seed(5)
    assert torch.equal(a, sample_negatives(anchors, 20, 10))  # global RNG: a restored RNG replays the draw
    assert a.shape == (4, 10) and not (a == anchors[:, None]).any()
    assert all(len(set(row.tolist())) == 10 for row in a)  # without replacement when there are enough
    many = sample_negatives(anchors % 6, 6, 30)  # fewer than K candidates: with replacement
    assert many.shape == (4, 30) and not (many == (anchors % 6)[:, None]).any() and many.max() < 6
    labels = torch.arange(20) % 4
    classes = sample_negatives(anchors, 20, 15, labels)  # each anchor has 15 other-class candidates
    assert not (labels[classes] == labels[anchors][:, None]).any()
    assert all(sorted(row.tolist()) == [i for i in range(20) if labels[i] != labels[anc]]
               for row, anc in zip(classes, anchors))
    unlabeled = labels.clone()
    unlabeled[4] = -100
    row = sample_negatives(torch.tensor([4]), 20, 19, unlabeled)[0]
    assert sorted(row.tolist()) == [i for i in range(20) if i != 4]
    with pytest.raises(ValueError, match="no candidate"):
        sample_negatives(torch.tensor([0]), 3, 2, torch.zeros(3, dtype=torch.long))


def test_crd_other_classes_needs_the_label_pass():
    torch.manual_seed(0)
    method = built_crd(12, num_negatives=4, negatives="other_classes")
    assert method.wants_teacher_pass and not built_crd(12).wants_teacher_pass
    inputs = crd_inputs(torch.randn(2, 6), torch.randn(2, 10), [0, 1])
    with pytest.raises(RuntimeError, match="teacher pass"):
        method(inputs)
    labels = torch.arange(12) % 3
    method.teacher_pass(iter([(Batch(torch.zeros(6, 1), labels[:6], torch.arange(6)), None),
                              (Batch(torch.zeros(6, 1), labels[6:], torch.arange(6, 12)), None)]))
    assert torch.equal(method.labels, labels)
    assert torch.isfinite(method(inputs)["loss"])


def test_crd_needs_indices():
    method = built_crd(10, num_negatives=4)
    inputs = crd_inputs(torch.randn(2, 6), torch.randn(2, 10), [0, 1])
    inputs.indices = None
    with pytest.raises(ValueError, match="indices"):
        method(inputs)


# -- ReviewKD ------------------------------------------------------------------------------------------------
def official_hcl(fstudent, fteacher):
    """The official / mdistiller hcl (= torchdistill HierarchicalContextLoss per pair) restated."""
    total = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss, cnt, tot = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                                     F.adaptive_avg_pool2d(ft, (size, size))) * cnt
            tot += cnt
        total = total + loss / tot
    return total


def test_hcl_hand_cases():
    o, t = torch.randn(3, 5, 1, 1), torch.randn(3, 5, 1, 1)
    assert hcl(o, t).item() == pytest.approx(F.mse_loss(o, t).item(), abs=1e-7)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0  # +-1, every 2x2 mean is 0
    o = checker.expand(2, 3, 8, 8)
    assert hcl(o, torch.zeros_like(o)).item() == pytest.approx(1 / 1.875, abs=1e-7)
    o, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    pooled = [F.mse_loss(F.adaptive_avg_pool2d(o, s), F.adaptive_avg_pool2d(t, s)) for s in (4, 2, 1)]
    parts = [F.mse_loss(o, t), *pooled]
    expected = (parts[0] + parts[1] / 2 + parts[2] / 4 + parts[3] / 8) / 1.875
    assert hcl(o, t).item() == pytest.approx(expected.item(), abs=1e-6)
    o4, t4 = o[..., :4, :4], t[..., :4, :4]  # 4x4: levels 2 and 1 only, weights 1/2, 1/4 over 1.75
    expected = (F.mse_loss(o4, t4) + F.mse_loss(F.adaptive_avg_pool2d(o4, 2), F.adaptive_avg_pool2d(t4, 2)) / 2
                + F.mse_loss(o4.mean((2, 3)), t4.mean((2, 3))) / 4) / 1.75
    assert hcl(o4, t4).item() == pytest.approx(expected.item(), abs=1e-6)


def test_hcl_matches_official_on_a_pyramid():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8), (4, 64, 1, 1)]
    fs = [torch.randn(s, generator=g) for s in shapes]
    ft = [torch.randn(s, generator=g) for s in shapes]
    ours = sum(hcl(a, b) for a, b in zip(fs, ft))
    assert ours.item() == pytest.approx(official_hcl(fs, ft).item(), abs=1e-5)


def resnet_like(b=3, seed=0, widths=(16, 32, 64), pre=False):
    g = torch.Generator().manual_seed(seed)
    feats = {f"f{i + 1}{'_pre' if pre else ''}": torch.randn(b, c, 32 >> i, 32 >> i, generator=g)
             for i, c in enumerate(widths)}
    feats["pooled"] = torch.randn(b, widths[-1], generator=g)
    return ModelOutput(torch.zeros(b, 10), feats)


def test_reviewkd_official_cifar_layout_and_shapes():
    torch.manual_seed(0)
    student, teacher = resnet_like(), resnet_like(seed=1, pre=True)
    method = ReviewKD()
    method.setup(student, teacher, RunInfo())
    abfs = method.abfs
    assert [a.conv1[0].in_channels for a in abfs] == [16, 32, 64, 64]
    assert [a.conv1[0].out_channels for a in abfs] == [64] * 4  # mid = min(512, 64)
    assert [a.conv2[0].out_channels for a in abfs] == [16, 32, 64, 64]
    assert [a.att_conv is not None for a in abfs] == [True, True, True, False]
    outs = method.fused(student)
    assert [tuple(o.shape) for o in outs] == [(3, 16, 32, 32), (3, 32, 16, 16), (3, 64, 8, 8), (3, 64, 1, 1)]
    wide = ReviewKD(mid_channels=24)
    wide.setup(student, resnet_like(seed=2, widths=(32, 64, 128), pre=True), RunInfo())
    assert [a.conv2[0].out_channels for a in wide.abfs] == [32, 64, 128, 128]
    assert wide.abfs[0].conv1[0].out_channels == 24
    assert [tuple(o.shape[1:]) for o in wide.fused(student)] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (128, 1, 1)]


def test_abf_resizes_to_teacher_size():
    abf = ABF(8, 6, 5, fuse=True)
    out, res = abf(torch.randn(2, 8, 4, 4), torch.randn(2, 6, 2, 2), (8, 8))
    assert out.shape == (2, 5, 8, 8) and res.shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="residual"):
        abf(torch.randn(2, 8, 4, 4), None, (4, 4))


def official_review(student, teacher, method):
    """The official ReviewKD forward + hcl restated with functional ops and the method's weights (train-mode BN)."""
    def bn(x, m):
        return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)

    xs = [student.features[n] for n in ("f1", "f2", "f3")] + [student.features["pooled"][:, :, None, None]]
    ts = [teacher.features[n] for n in ("f1_pre", "f2_pre", "f3_pre")] + [teacher.features["pooled"][:, :, None, None]]
    results, res = [], None
    for x, t, abf in zip(xs[::-1], ts[::-1], list(method.abfs)[::-1]):
        n, _, h, w = x.shape
        x = bn(F.conv2d(x, abf.conv1[0].weight), abf.conv1[1])
        if res is not None:
            y = F.interpolate(res, (h, w), mode="nearest")
            z = torch.sigmoid(F.conv2d(torch.cat([x, y], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != t.shape[-1]:
            x = F.interpolate(x, (t.shape[-2], t.shape[-1]), mode="nearest")
        results.insert(0, bn(F.conv2d(x, abf.conv2[0].weight, padding=1), abf.conv2[1]))
        res = x
    return official_hcl(results, ts)


def test_reviewkd_matches_official_with_warmup():
    torch.manual_seed(0)
    student, teacher = resnet_like(2), resnet_like(2, seed=1, pre=True)
    method = ReviewKD()
    method.setup(student, teacher, RunInfo())
    with torch.no_grad():
        for abf in method.abfs:  # non-trivial BN affine parameters
            for m in abf.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    ref = official_review(student, teacher, method).item()
    for epoch, counting, factor in [(0, "official", 0.0), (5, "official", 0.25), (30, "official", 1.0),
                                    (0, "mdistiller", 0.05), (19, "mdistiller", 1.0)]:
        method.warmup_counting = counting
        assert method.warmup_factor(epoch) == pytest.approx(factor)
        if epoch in (5, 30):
            loss = method(StepInputs(student, teacher, None, epoch=epoch))["loss"]
            assert loss.item() == pytest.approx(factor * ref, abs=1e-5)
    assert ReviewKD(warmup_epochs=0).warmup_factor(0) == 1.0


# -- both, through the real module and trainer ---------------------------------------------------------------
def make_module(seed=0):
    torch.manual_seed(seed)
    methods = Composite(
        {"ce": CrossEntropy(), "crd": CRD("pooled", "pooled", feat_dim=16, num_negatives=32),
         "reviewkd": ReviewKD(["f1", "f2", "pooled"], ["f1", "f2", "pooled"], warmup_epochs=2)},
        {"ce": 1.0, "crd": 0.8, "reviewkd": 1.0},
    )
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    return DistillModule(TinyCNN(8), methods, FrozenTeacher(TinyCNN(16)), task)


def test_gradients_reach_student_and_method_never_teacher():
    module = make_module()
    data = demo_subset("train", 4)
    task = module.task
    batch = task.prepare(task.fetch(data, torch.arange(20)), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch, RunInfo(num_train_examples=len(data.labels), batch_size=20))
    labels = torch.as_tensor(data.labels).long()  # what the trainer's teacher pass records for other_classes
    module.methods.methods["crd"].set_labels(torch.arange(len(labels)), labels)
    loss, terms, _ = module(batch, epoch=1)
    assert set(terms) == {"ce", "crd", "reviewkd"} and all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    crd, review = module.methods.methods["crd"], module.methods.methods["reviewkd"]
    for part in (crd.embed_s, crd.embed_t, review.abfs):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert crd.memory_s.shape == (40, 16) and not crd.memory_s.requires_grad
    teacher = module.teacher.model
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training
    state = module.state_dict()
    assert not any(k.startswith("teacher") for k in state)
    assert {"methods.methods.crd.memory_s", "methods.methods.crd.memory_t", "methods.methods.crd.z"} <= set(state)


def fit_run(tmp_path, name, max_steps=None):
    torch.manual_seed(0)
    methods = Composite({"ce": CrossEntropy(), "crd": CRD(feat_dim=16, num_negatives=16, negatives="other_classes")})
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(TinyCNN(4), methods, FrozenTeacher(TinyCNN(4)), task)
    cfg = TrainConfig(epochs=2, batch_size=10, lr=0.05, schedule="cosine", progress=False, deterministic=True,
                      checkpoint_every=3, max_steps=max_steps, optimizer="sgd", log_every=1)
    Trainer(module, demo_subset("train", 4), None, cfg, tmp_path / name).fit(resume=True)
    return module


def test_resume_is_exact_with_memory_banks_and_label_pass(tmp_path):
    full = fit_run(tmp_path, "full")
    crd = full.methods.methods["crd"]
    assert bool(crd.labels_known) and (crd.labels >= 0).all() and (crd.z > 0).all()
    fit_run(tmp_path, "split", max_steps=5)  # stops after step 5; last checkpoint at step 3
    resumed = fit_run(tmp_path, "split")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
