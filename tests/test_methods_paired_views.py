"""Paired views (row 7): the ego transform, the teacher reading the other view, no label in the training batch, a zero
loss and zero gradients for identical models on identical views, a broken pairing raising the loss, and the teacher
unchanged after a step; the family end to end on the bundled demo images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TinyCNN

from distill.config import load_raw, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD
from distill.experiment import build_experiment, build_methods
from distill.methods.features.paired_view_kd import PairedViewKD
from distill.tasks.paired_views.data import ego_view
from distill.tasks.paired_views.task import PairedViews, TeacherView
from distill.train.module import DistillModule

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
CONFIGS = REPO / "configs" / "paired_views"
#: one validated recipe line per method of this file (tests/test_config.py checks every method has one)
YAML_EXAMPLES = {"paired_view_kd": "{name: paired_view_kd, student: [f1, f2, logits], teacher: [f1, f2, logits], "
                                   "weights: [1.0, 1.0, 0.5]}"}


def raw_batch(n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(inputs=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 labels=torch.arange(n) % 10, indices=torch.arange(n), meta={})


def test_ego_view_is_deterministic_crop_flip_rotation_gamma():
    x = torch.rand(2, 3, 32, 32)
    a, b = ego_view(x), ego_view(x)
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    plain = ego_view(x, crop=32, flip=False, rotation=0.0, gamma=1.0)
    assert torch.allclose(plain, x, atol=1e-6)  # identity settings give the image back
    assert torch.allclose(ego_view(x, crop=32, flip=True, rotation=0.0, gamma=1.0), x.flip(-1), atol=1e-6)
    assert torch.allclose(ego_view(x, crop=32, flip=False, rotation=0.0, gamma=0.5), x.sqrt(), atol=1e-6)
    with pytest.raises(ValueError, match="crop"):
        ego_view(x, crop=40)


def test_training_batches_hide_labels_and_carry_both_views():
    task = PairedViews(IMAGENET_MEAN, IMAGENET_STD, None)
    train = task.prepare(raw_batch(), train=True, generator=torch.Generator().manual_seed(0))
    assert train.labels is None  # no label tensor reaches the loss
    assert train.meta["teacher_inputs"].shape == train.inputs.shape
    assert not torch.allclose(train.meta["teacher_inputs"], train.inputs)
    assert task.prepare(raw_batch(), train=False, generator=None).labels is not None
    oracle = PairedViews(IMAGENET_MEAN, IMAGENET_STD, None, labels_in_training=True)
    assert oracle.prepare(raw_batch(), train=True, generator=torch.Generator()).labels is not None
    seen = []
    model = TeacherView(TinyCNN(4))
    model.model.forward = lambda x: seen.append(x) or torch.zeros(x.shape[0], 10)  # type: ignore[method-assign]
    task.forward(model, train)
    assert seen[0] is train.meta["teacher_inputs"]


def module_for(student: torch.nn.Module, teacher: torch.nn.Module, task: PairedViews) -> DistillModule:
    method = PairedViewKD(student=["f1", "f2", "logits"], teacher=["f1", "f2", "logits"])
    return DistillModule(student, Composite({"paired_view_kd": method}), FrozenTeacher(TeacherView(teacher)), task)


def test_identical_models_on_identical_views_give_zero_loss_and_gradients():
    torch.manual_seed(0)
    task = PairedViews(IMAGENET_MEAN, IMAGENET_STD, None, crop=32, flip=False, rotation=0.0, gamma=1.0)
    teacher = TinyCNN(8)
    student = TinyCNN(8)
    student.load_state_dict(teacher.state_dict())
    module = module_for(student, teacher, task)
    batch = task.prepare(raw_batch(), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    student.eval()
    loss, _, _ = module(batch)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in student.parameters())  # float rounding only


def test_broken_pairing_raises_the_loss_and_the_teacher_is_unchanged():
    torch.manual_seed(0)
    task = PairedViews(IMAGENET_MEAN, IMAGENET_STD, None)
    teacher, student = TinyCNN(8), TinyCNN(8)
    student.load_state_dict(teacher.state_dict())
    module = module_for(student, teacher, task)
    batch = task.prepare(raw_batch(16), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    student.eval()
    paired = module(batch)[0].item()
    shuffled = Batch(batch.inputs, batch.labels, batch.indices,
                     {**batch.meta, "teacher_inputs": batch.meta["teacher_inputs"].roll(1, 0)})
    assert module(shuffled)[0].item() > paired
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loss, _, _ = module(batch)
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("arm", ["paired_kd", "oracle"])
def test_recipes_validate(arm):
    cfg = parse_config(load_raw(CONFIGS / f"{arm}.yaml"), base_dir=str(CONFIGS))
    names = list(build_methods(cfg.methods).methods)
    assert names == (["paired_view_kd"] if arm == "paired_kd" else ["ce"])
    assert cfg.data.labels_in_training == (arm == "oracle")


def test_family_trains_end_to_end_on_demo_images(tmp_path):
    raw = load_raw(CONFIGS / "paired_kd.yaml")
    raw["data"].update(train=DEMO, eval=DEMO, train_per_class=2, eval_per_class=2, cache_dir=None)
    raw["student"] = {"arch": "resnet20"}
    raw["teacher"] = {"arch": "resnet20", "weights": "random"}
    raw["train"].update(epochs=1, batch_size=8, eval_every=1)
    raw["output_dir"] = str(tmp_path / "run")
    summary = build_experiment(parse_config(raw, base_dir=str(CONFIGS))).fit(resume=False)
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0
    raw["methods"] = [{"name": "ce"}]
    with pytest.raises(ValueError, match="labels"):
        build_experiment(parse_config({**raw, "output_dir": str(tmp_path / "ce")}, base_dir=str(CONFIGS))).fit(
            resume=False)
