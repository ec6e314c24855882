"""OFA-KD: the loss against hand-computed values, the exit branches' shapes, and gradients that reach the student
and the branches but never the teacher."""

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
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import build_methods
from distill.methods.features.ofa import OFA, CnnExit, VitExit, cls_prefix, ofa_loss, one_hot_target
from distill.models import build_model
from distill.models.vit import VisionTransformer
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"ofa": "{name: ofa, student: [f1, f2, f3], eps: 1.5, temperature: 1.0, kd_weight: 1.0, "
                        "ofa_weight: 1.0}"}


def test_eps_one_is_soft_target_cross_entropy_on_a_two_class_hand_case():
    # p_S = (1/4, 3/4), p_T = (4/5, 1/5)
    zs, zt = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[math.log(4.0), 0.0]])
    y = torch.tensor([[1, 0]])
    expected = -(0.8 * math.log(0.25) + 0.2 * math.log(0.75))
    assert ofa_loss(zs, zt, y, eps=1.0).item() == pytest.approx(expected, abs=1e-6)
    # eps = 1 is KL(p_T || p_S) plus the teacher's entropy, whatever the label
    kl = F.kl_div(F.log_softmax(zs, -1), F.softmax(zt, -1), reduction="batchmean")
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert ofa_loss(zs, zt, torch.tensor([[0, 1]]), 1.0).item() == pytest.approx(kl.item() + entropy, abs=1e-6)


def test_eps_two_enhances_the_target_and_damps_the_rest():
    # p_T = (0.5, 0.3, 0.2), target class 0: weights (1.5^2 - 1, 0.3^2, 0.2^2) = (1.25, 0.09, 0.04)
    zt = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    zs = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    y = one_hot_target(torch.tensor([0]), 3)
    expected = -(1.25 * math.log(0.1) + 0.09 * math.log(0.6) + 0.04 * math.log(0.3))
    assert ofa_loss(zs, zt, y, eps=2.0).item() == pytest.approx(expected, abs=1e-5)
    # the mean over the batch, and the temperature divides both logits
    two = ofa_loss(torch.cat([zs, zs]), torch.cat([zt, zt]), torch.cat([y, y]), eps=2.0)
    assert two.item() == pytest.approx(expected, abs=1e-5)
    hot = ofa_loss(2 * zs, 2 * zt, y, eps=2.0, temperature=2.0)
    assert hot.item() == pytest.approx(expected, abs=1e-5)


def test_soft_labels_use_their_argmax():
    soft = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
    assert torch.equal(one_hot_target(soft, 3), torch.tensor([[0, 1, 0], [1, 0, 0]]))


def test_cls_prefix_inference():
    assert cls_prefix(65, None) == 1 and cls_prefix(64, None) == 0 and cls_prefix(17, None) == 1
    assert cls_prefix(65, 0) == 0


def test_cnn_exits_on_resnet20_stages():
    torch.manual_seed(0)
    f = [torch.randn(2, 16, 32, 32), torch.randn(2, 32, 16, 16), torch.randn(2, 64, 8, 8)]
    depths = [2, 1, 0]
    for feat, d in zip(f, depths):
        branch = CnnExit(feat.shape[1], 64, d, 10)
        assert branch(feat).shape == (2, 10)
        convs = [m for m in branch.body.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == (4 * d if d else 1)
    # channels double, the last block gives max(C_s_last, C_t_last)
    branch = CnnExit(16, 100, 2, 10)
    assert [m.out_channels for m in branch.body.modules() if isinstance(m, torch.nn.Conv2d)][-1] == 100
    assert branch.body[0][-3].out_channels == 32


def test_vit_exits_blocks_merging_and_cls_token():
    torch.manual_seed(0)
    tokens = torch.randn(2, 65, 32)
    branch = VitExit(32, 32, grid=8, prefix=1, num_blocks=3, num_classes=10)
    assert len(branch.merge) == 0 and len(branch.blocks) == 3 and branch(tokens).shape == (2, 10)
    big = VitExit(16, 24, grid=16, prefix=0, num_blocks=1, num_classes=5)
    assert len(big.merge) == 1 and big(torch.randn(2, 256, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="width"):
        VitExit(16, 24, grid=8, prefix=1, num_blocks=1, num_classes=5)


def test_setup_builds_one_exit_per_stage_with_the_official_depths():
    torch.manual_seed(0)
    student = VisionTransformer(num_classes=10, dim=32, depth=4, heads=2, stages=4)
    x = torch.randn(2, 3, 32, 32)
    names = ["f1", "f2", "f3", "f4"]
    from distill.core.taps import FeatureTaps

    with FeatureTaps(student, [student.feature_taps[n] for n in names]).capture() as feats:
        z = student(x)
    out = ModelOutput(z, {n: feats[student.feature_taps[n]] for n in names})
    teacher = ModelOutput(torch.randn(2, 10), {"pooled": torch.randn(2, 64)})
    method = OFA(student=names)
    method.setup(out, teacher, RunInfo())
    assert [len(e.blocks) for e in method.exits] == [3, 2, 1, 1]  # max(4 - s, 1)
    assert all(isinstance(e, VitExit) and e.prefix == 1 for e in method.exits)
    terms = method(StepInputs(out, teacher, torch.tensor([1, 2])))
    assert set(terms) == {"kd", "ofa"} and all(torch.isfinite(v) for v in terms.values())


def test_bad_options_are_refused_with_their_name():
    with pytest.raises(ValueError, match="eps"):
        OFA(student=["f1", "f2"], eps=[1.0, 1.0])
    with pytest.raises(ValueError, match="eps"):
        OFA(eps=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        OFA(temperature=0.0)
    raw = {"output_dir": "runs/x", "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2},
           "student": {"arch": "resnet20"}, "teacher": {"arch": "resnet20", "weights": "random"},
           "methods": [{"name": "ofa", "epsilon": 1.5}], "train": {"epochs": 1, "batch_size": 4}}
    with pytest.raises(ValueError, match="epsilon"):
        parse_config(raw)


@pytest.mark.parametrize("student", ["cnn", "vit"])
def test_gradients_reach_student_and_exits_never_teacher(student):
    torch.manual_seed(0)
    if student == "cnn":
        model, method = TinyCNN(8), OFA(student=["f1", "f2"], eps=1.5)
    else:
        model = VisionTransformer(num_classes=10, dim=32, depth=2, heads=2, stages=2)
        method = OFA(student=["f1", "f2"], eps=[1.0, 1.5, 1.2])
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    module = DistillModule(model, Composite({"ofa": method}), FrozenTeacher(TinyCNN(16)), task)
    batch = task.prepare(task.fetch(demo_subset("train", 2), torch.arange(20)), train=True,
                         generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    loss, terms, _ = module(batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    own = list(method.exits.parameters())
    assert own and all(p.requires_grad and p.grad is not None for p in own)
    assert sum(p.grad.abs().sum() for p in own) > 0
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.model.parameters())
    assert any(".exits." in k for k in module.state_dict())  # checkpointed with the student
    assert not any(k.startswith("teacher.") for k in module.state_dict())


@pytest.mark.parametrize("recipe", ["ofa", "ofa_e15", "kd", "scratch"])
def test_recipes_validate(recipe):
    from distill.config import load_raw

    raw = load_raw(REPO / "configs" / "cifar10_vit" / f"{recipe}.yaml")
    assert raw["student"]["arch"] == "vit_micro"
    cfg = parse_config(raw, base_dir=str(REPO / "configs" / "cifar10_vit"))
    comp = build_methods(cfg.methods)
    if recipe.startswith("ofa"):
        ofa = comp.methods["ofa"]
        assert ofa.stages == ["f1", "f2", "f3", "f4"]
        assert ofa.eps == [1.5 if recipe == "ofa_e15" else 1.0] * 5
    assert set(build_model("vit_micro").feature_taps) >= {"f1", "f2", "f3", "f4", "pooled"}
    assert yaml.safe_load((REPO / "configs" / "cifar10_vit" / f"{recipe}.yaml").read_text())["base"] == "_base.yaml"


def test_homogeneous_recipe_builds_three_cnn_exits_on_resnet20():
    from distill.config import load_raw
    from distill.core.taps import FeatureTaps

    raw = load_raw(REPO / "configs" / "cifar10_rows" / "ofa.yaml")
    ofa = build_methods(parse_config(raw, base_dir=str(REPO / "configs" / "cifar10_rows")).methods).methods["ofa"]
    student, teacher = build_model("resnet20"), build_model("resnet56")
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(student, [student.feature_taps[n] for n in ofa.stages]).capture() as fs:
        zs = student(x)
    with FeatureTaps(teacher, [teacher.feature_taps["pooled"]]).capture() as ft:
        zt = teacher(x)
    out_s = ModelOutput(zs, {n: fs[student.feature_taps[n]] for n in ofa.stages})
    out_t = ModelOutput(zt, {"pooled": ft[teacher.feature_taps["pooled"]]})
    ofa.setup(out_s, out_t, RunInfo())
    assert all(isinstance(e, CnnExit) for e in ofa.exits)
    sepconvs = [sum(1 for m in e.body if not isinstance(m, torch.nn.Conv2d)) for e in ofa.exits]
    assert sepconvs == [2, 1, 0]  # S - s SepConv blocks, the last stage a 1x1 conv
    assert all(e.fc.in_features == 64 for e in ofa.exits)  # max(C_s_last, C_t_last) = 64
    terms = ofa(StepInputs(out_s, out_t, torch.tensor([3, 4])))
    assert all(torch.isfinite(v) for v in terms.values())
