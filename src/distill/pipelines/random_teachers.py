"""The random-teachers pipeline: draw a random teacher, copy it into a student, self-distil, probe the encoders.

1. **Teacher**: a :func:`distill.models.dino.dino_resnet` drawn with ``teacher_seed``, frozen, eval mode (its BN
   keeps the initial running statistics). Saved once (``save_teacher``) and reused by every arm and seed.
2. **Student**: ``init: teacher`` (an exact copy; interpolation ``a = 0``), ``interpolated`` with ``a`` (``a = 1``
   is an independent random init drawn with the run's seed) or ``neighborhood`` with ``eps``
   (:func:`distill.methods.logits.random_teachers.interpolated_init`).
3. **Self-distillation**: the student (train mode) matches the teacher's softmax
   (:class:`distill.methods.logits.random_teachers.RandomTeachers`) on un-augmented, unlabelled training images;
   AdamW, constant lr 1e-3, weight decay 0, batch 256 (the official v2 configuration).
4. **Probe** (dinopl's ``probing.py``): frozen encoder embeddings (``pooled``, 64-d; not the head), standardised
   with the probe-train mean and std; a linear probe (AdamW lr 1e-3, weight decay 0.01, 10 epochs, batch 256) and
   a k-NN probe (k = 20; majority vote over cosine neighbours, a reconstruction: the vote rule of the official
   k-NN probe is not stated in the spec). Scored on the test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.config import Strict
from distill.methods.logits.random_teachers import RandomTeachers, interpolated_init, neighborhood_init
from distill.models.dino import dino_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HeadSection(Strict):
    depth: int = Field(20, ge=8)
    hidden: int = Field(512, gt=0)
    bottleneck: int = Field(256, gt=0)
    out_dim: int = Field(4096, gt=1)


class RandomTeachersConfig(Strict):
    """A random-teachers recipe (``configs/random_teachers/*.yaml``; its ``pipeline:`` key names this module)."""

    pipeline: Literal["random_teachers"]
    data: str
    output_dir: str
    model: HeadSection = HeadSection()
    train_per_class: int = Field(2000, gt=0)
    probe_train_per_class: int = Field(1000, gt=0)
    probe_test_per_class: int = Field(1000, gt=0)
    subset_seed: int = 0
    teacher_seed: int = 0
    init: Literal["teacher", "interpolated", "neighborhood"] = "teacher"
    a: float = Field(0.0, ge=0.0, le=1.0)
    normalize: bool = False
    eps: float = Field(0.0, ge=0.0)
    epochs: float = Field(20, gt=0)
    batch_size: int = Field(256, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    student_temp: float = Field(1.0, gt=0)
    teacher_temp: float = Field(1.0, gt=0)
    center_momentum: float | None = None
    probe_epochs: int = Field(10, gt=0)
    knn_k: int = Field(20, gt=0)


def build_teacher(cfg: RandomTeachersConfig) -> nn.Module:
    torch.manual_seed(cfg.teacher_seed)
    m = cfg.model
    return dino_resnet(m.depth, m.hidden, m.bottleneck, m.out_dim).eval().requires_grad_(False)


def build_student(cfg: RandomTeachersConfig, teacher: nn.Module, seed: int) -> nn.Module:
    """The student of ``cfg.init`` (its random draw, where one is needed, is seeded by ``seed``)."""
    m = cfg.model
    student = dino_resnet(m.depth, m.hidden, m.bottleneck, m.out_dim).to(next(teacher.parameters()).dtype)
    student.load_state_dict(teacher.state_dict())
    if cfg.init == "teacher" or (cfg.init == "interpolated" and cfg.a == 0.0):
        return student
    torch.manual_seed(10_000 + seed)
    random = dino_resnet(m.depth, m.hidden, m.bottleneck, m.out_dim)
    if cfg.init == "interpolated":
        interpolated_init(student, teacher, random, cfg.a, cfg.normalize)
    else:
        neighborhood_init(student, teacher, random, cfg.eps)
    return student


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def self_distill(teacher: nn.Module, student: nn.Module, images: torch.Tensor, cfg: RandomTeachersConfig,
                 seed: int, log: list[dict] | None = None) -> nn.Module:
    """Train ``student`` to match the frozen ``teacher`` on ``images`` (uint8, no augmentation)."""
    method = RandomTeachers(cfg.student_temp, cfg.teacher_temp, cfg.center_momentum)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    steps = max(1, round(cfg.epochs * n / cfg.batch_size))
    teacher.eval()
    student.train()
    order, pos = torch.randperm(n, generator=gen), 0
    from distill.core.outputs import ModelOutput, StepInputs

    for step in range(steps):
        if pos + cfg.batch_size > n:  # drop the last partial batch, as a DataLoader with drop_last
            order, pos = torch.randperm(n, generator=gen), 0
        x = normalise(images[order[pos:pos + cfg.batch_size]])
        pos += cfg.batch_size
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        loss = method(StepInputs(ModelOutput(zs, {}), ModelOutput(zt, {}), None, step / steps, 0, step))["dino_ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step % 20 == 0 or step == steps - 1):
            log.append({"step": step, "loss": loss.item()})
    return student


@torch.no_grad()
def embeddings(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The encoder's pooled embeddings (eval mode)."""
    was = model.training
    model.eval()
    out = torch.cat([model.embed(normalise(images[i:i + batch])) for i in range(0, len(images), batch)])
    model.train(was)
    return out


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 epochs: int = 10, batch: int = 256, lr: float = 1e-3, weight_decay: float = 0.01,
                 seed: int = 0) -> float:
    """Test accuracy of a linear classifier on standardised features (AdamW, ``epochs`` passes)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Linear(xtr.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(probe(xtr[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((probe(xte).argmax(1) == test_y).float().mean())


@torch.no_grad()
def knn_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              k: int = 20) -> float:
    """Test accuracy of a k-NN majority vote over cosine neighbours of standardised features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a = F.normalize((train_x - mean) / std, dim=1)
    b = F.normalize((test_x - mean) / std, dim=1)
    classes = int(train_y.max()) + 1
    correct = 0
    for i in range(0, len(b), 1000):
        idx = (b[i:i + 1000] @ a.T).topk(k, dim=1).indices
        votes = F.one_hot(train_y[idx], classes).sum(1)
        correct += int((votes.argmax(1) == test_y[i:i + 1000]).sum())
    return correct / len(b)


def probe(model: nn.Module | None, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
          cfg: RandomTeachersConfig, seed: int) -> dict[str, float]:
    """Linear and k-NN probe accuracies of ``model``'s embeddings (``None``: the raw pixels)."""
    if model is None:
        ftr, fte = normalise(train[0]).flatten(1), normalise(test[0]).flatten(1)
    else:
        ftr, fte = embeddings(model, train[0]), embeddings(model, test[0])
    return {"linear": linear_probe(ftr, train[1], fte, test[1], cfg.probe_epochs, seed=seed),
            "knn": knn_probe(ftr, train[1], fte, test[1], cfg.knn_k)}


def save_teacher(teacher: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))


def load_teacher(cfg: RandomTeachersConfig, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    m = cfg.model
    teacher = dino_resnet(m.depth, m.hidden, m.bottleneck, m.out_dim)
    teacher.load_state_dict(load_file(str(path)))
    return teacher.eval().requires_grad_(False)
