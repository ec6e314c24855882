"""Speed options of the trainer: the teacher under torch.inference_mode, their config keys, batch sharding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TinyCNN, demo_subset

from distill.config import ConfigError, parse_config
from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.teachers import FrozenTeacher
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.experiment import train_config
from distill.methods import METHODS
from distill.tasks.classification import ImageClassification
from distill.train.module import DistillModule

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")

#: methods that read teacher logits or features in the ways the catalogue does (products, norms, Gram matrices,
#: softmax targets, memory banks, learned regressors): each must accept teacher outputs from inference mode
METHOD_OPTIONS = {
    "kd": {"temperature": 4.0},
    "fitnet": {"student": "f2", "teacher": "f2"},
    "at": {"student": ["f1", "f2"]},
    "sp": {"student": ["f2"]},
    "rkd": {},
    "pkt": {},
    "cc": {},
    "dkd": {},
    "dist": {},
    "nst": {"student": ["f1", "f2"]},
    "vid": {"student": ["f1", "f2"], "teacher": ["f1", "f2"]},
    "crd": {"feat_dim": 8, "num_negatives": 4, "negatives": "other_indices"},  # no teacher pass here
}


def loss_and_grads(name: str, inference_mode: bool) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    methods = Composite({"ce": METHODS.get("ce")(), name: METHODS.get(name)(**METHOD_OPTIONS[name])})
    module = DistillModule(TinyCNN(8), methods, FrozenTeacher(TinyCNN(16)), task)
    module.teacher_inference_mode = inference_mode
    data = demo_subset("train", 1)
    batch = task.prepare(task.fetch(data, torch.arange(10)), train=True, generator=torch.Generator().manual_seed(0))
    module.setup(batch)
    torch.manual_seed(1)  # (CRD draws its negatives from the global generator)
    loss, _, _ = module(batch)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", sorted(METHOD_OPTIONS))
def test_teacher_under_inference_mode_gives_the_same_loss_and_gradients(name):
    loss_ref, grads_ref = loss_and_grads(name, inference_mode=False)
    loss, grads = loss_and_grads(name, inference_mode=True)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    assert len(grads) == len(grads_ref) > 0
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r, atol=1e-6)


def test_teacher_outputs_under_inference_mode_are_ordinary_tensors():
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, None)
    methods = Composite({"fitnet": METHODS.get("fitnet")(student="f2", teacher="f2")})
    module = DistillModule(TinyCNN(8), methods, FrozenTeacher(TinyCNN(16)), task)
    module.teacher_inference_mode = True
    batch = task.prepare(task.fetch(demo_subset("train", 1), torch.arange(4)), train=False, generator=None)
    out = module.run_teacher(batch)
    assert not out.logits.is_inference() and not out.feature("f2").is_inference()
    assert not out.logits.requires_grad


def base_config(**train) -> dict:
    return {"data": {"train": DEMO, "train_per_class": 2}, "student": {"arch": "resnet20"},
            "teacher": {"arch": "resnet20", "weights": "random"}, "methods": [{"name": "kd"}], "train": train}


def test_config_keys_reach_the_trainer():
    cfg = train_config(parse_config(base_config(teacher_inference_mode=True, compile_student=True,
                                                find_unused_parameters=False, sync_batchnorm=True)))
    assert (cfg.teacher_inference_mode, cfg.compile_student, cfg.find_unused_parameters, cfg.sync_batchnorm) == (
        True, True, False, True)
    default = train_config(parse_config(base_config()))
    assert (default.teacher_inference_mode, default.compile_student, default.find_unused_parameters) == (
        False, False, True)
    with pytest.raises(ConfigError, match="train.teacher_inference_mode"):
        parse_config(base_config(teacher_inference_mode="sometimes"))


def test_batch_select_keeps_rows_of_every_per_example_tensor():
    images = torch.arange(6 * 3).reshape(6, 3)
    batch = Batch(images, torch.arange(6) * 10, torch.arange(6) + 100,
                  {"augment": torch.arange(12).reshape(6, 2), "shared": torch.tensor([7, 8]), "name": "x"})
    half = batch.select(slice(1, None, 2))
    assert torch.equal(half.inputs, images[1::2])
    assert half.labels.tolist() == [10, 30, 50] and half.indices.tolist() == [101, 103, 105]
    assert half.meta["augment"].tolist() == [[2, 3], [6, 7], [10, 11]]
    assert half.meta["shared"].tolist() == [7, 8] and half.meta["name"] == "x"  # not per-example: kept whole
    dict_batch = Batch({"ids": images, "mask": images > 2}, None).select(torch.tensor([0, 5]))
    assert dict_batch.inputs["ids"].tolist() == [[0, 1, 2], [15, 16, 17]] and dict_batch.labels is None
