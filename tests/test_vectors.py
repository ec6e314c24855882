"""Vector (tabular) classification task: input checks, standardisation, and a distillation run through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distill import Composite, FrozenTeacher
from distill.methods.lelp import LELP
from distill.methods.logits import KD, CrossEntropy
from distill.tasks import VectorClassification, vector_dataset
from distill.train import DistillModule, TrainConfig, Trainer


def test_vector_dataset_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"features must be \(N, d\)"):
        vector_dataset(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="1-d integer"):
        vector_dataset(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="4 feature rows but 3 labels"):
        vector_dataset(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        vector_dataset(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        VectorClassification(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_standardisation_uses_the_training_statistics() -> None:
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    data = vector_dataset(x, torch.tensor([0, 1, 0]))
    task = VectorClassification(*VectorClassification.fit_standardizer(data))
    batch = task.prepare(task.fetch(data, torch.tensor([0, 2])), train=True, generator=None)
    sd = (8 / 3) ** 0.5
    assert torch.allclose(batch.inputs[:, 0], torch.tensor([-2 / sd, 2 / sd]))
    assert torch.equal(batch.inputs[:, 1], torch.zeros(2))  # a constant column stays finite
    assert torch.equal(batch.labels, torch.tensor([0, 0])) and torch.equal(batch.indices, torch.tensor([0, 2]))


def test_a_column_constant_in_training_gets_scale_one() -> None:
    """A column constant in the training rows but not in eval must not be multiplied by 1/eps (1e6)."""
    train = vector_dataset(torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]]), torch.tensor([0, 1, 0]))
    mean, std = VectorClassification.fit_standardizer(train)
    assert torch.equal(std[1], torch.tensor(1.0)) and torch.equal(mean[1], torch.tensor(10.0))
    task = VectorClassification(mean, std)
    held_out = vector_dataset(torch.tensor([[3.0, 13.0], [3.0, 9.0]]), torch.tensor([0, 1]))
    batch = task.prepare(task.fetch(held_out, torch.tensor([0, 1])), train=False, generator=None)
    assert torch.allclose(batch.inputs[:, 1], torch.tensor([3.0, -1.0]))  # shifted, not scaled by 1e6


def blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two classes, each made of two sub-clusters in 6 dimensions."""
    centres = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0], [0, 0, 0, 3.0, 0, 0]])
    sub = torch.randint(0, 4, (n,), generator=gen)
    return centres[sub] + torch.randn(n, 6, generator=gen), sub // 2, sub


def test_kd_and_lelp_train_through_the_vector_task(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y, _ = blobs(256, gen)
    xt, yt, _ = blobs(128, gen)
    train, test = vector_dataset(x, y), vector_dataset(xt, yt)
    task = VectorClassification(*VectorClassification.fit_standardizer(train))
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    cfg = TrainConfig(epochs=8, batch_size=32, lr=0.1, progress=False, checkpoint_every_epochs=0, drop_last=False)
    Trainer(DistillModule(teacher, Composite({"ce": CrossEntropy()}), None, task), train, test, cfg,
            tmp_path / "t").fit(resume=False)
    frozen = FrozenTeacher(teacher)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    for name, method in {"kd": KD(temperature=2.0), "lelp": LELP(subclasses=2, student="2:input",
                                                                    teacher="2:input")}.items():
        student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        module = DistillModule(student, Composite({name: method}), frozen, task)
        final = Trainer(module, train, test, cfg, tmp_path / name).fit(resume=False)["final"]
        assert final["accuracy"] > 0.9, (name, final)
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())

