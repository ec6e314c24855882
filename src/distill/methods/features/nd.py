"""ND loss / KD++: regularising the student embedding's norm and direction toward the teacher's class means.

ND loss (the "++" of KD++, DKD++, ...): pull the student embedding toward the teacher's class mean.

With e_s the student's pooled embedding (projected to the teacher's width when they differ), e_t the
teacher's, and c_y the mean teacher embedding of class y over the training set,

    L_ND = nd_weight * (1/B) sum_i [1 - <e_s,i, c_{y_i} / ||c_{y_i}||> / max(||e_s,i||, ||e_t,i||)].

The class means are computed in the ``teacher_pass`` hook (one pass of the teacher over the unaugmented
training set before training) and kept in the buffer ``class_means``, so checkpoints carry them; no
gradient reaches them or the teacher. Optional in-method CE and KD terms reproduce the official KD++
objective with its warm-up exactly:

    L = ce_weight * CE(z_s, y) + kd_weight * min(1, epoch / warmup_epochs) * T^2 * KL(p_t^T || p_s^T) + L_ND,

the KL averaged over the batch, ``epoch`` counted from 0 (so KD has weight 0 in the first epoch; ND has no
warm-up). Defaults give the ND term alone, to compose with any logit loss (DKD++, DIST++ ...); the official
CIFAR KD++ for ResNet56 -> ResNet20 is ``nd_weight=2, ce_weight=1, kd_weight=1, temperature=4,
warmup_epochs=20`` (ResNet32x4 -> ResNet8x4: kd_weight 3.5, nd_weight 2; WRN-40-2 -> WRN-40-1: 1, 1.5).

Features: ``student``/``teacher`` name the penultimate embedding (``pooled``, the input of the classifier,
as the official code); other taps are flattened. ``projector="auto"`` builds the official ``EmbTrans``
head (BatchNorm1d -> Dropout(``dropout``) -> Linear to the teacher's width) only when the widths differ,
``"always"`` always, ``"never"`` never; it is used for ND only and trained with the student.

Differences from the official code (WangYZ1608/Knowledge-Distillation-via-ND): its class means come from a
pass with the training transform (crop and flip) and are stored rounded to 4 decimals; here the pass sees
the unaugmented training images in full precision. Unlabelled examples (-100) are left out of both the
means and the loss; soft (B, K) labels use their argmax for the class mean (CE takes them as they are).

Paper: Improving Knowledge Distillation via Regularizing Feature Norm and Direction, 2023, arXiv:2305.17007; code:
https://github.com/WangYZ1608/Knowledge-Distillation-via-ND.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX, Batch
from distill.core.method import CLASSIFICATION_TASKS, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.logits.losses import cross_entropy, kl_batchmean


def emb_projector(d_student: int, d_teacher: int, dropout: float = 0.5) -> nn.Sequential:
    """The official ``EmbTrans`` head: BatchNorm1d(d_s) -> Dropout -> Linear(d_s, d_t); BN weight 1, biases 0."""
    proj = nn.Sequential(nn.BatchNorm1d(d_student), nn.Dropout(dropout), nn.Linear(d_student, d_teacher))
    nn.init.ones_(proj[0].weight)
    nn.init.zeros_(proj[0].bias)
    nn.init.zeros_(proj[2].bias)
    return proj


def nd_loss(e_s: torch.Tensor, e_t: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """mean_i [1 - <e_s,i, c_i / ||c_i||> / max(||e_s,i||, ||e_t,i||)] for (N, d) embeddings and their class means.

    The max is not detached: when the student's norm is the larger one the term is 1 - cos(e_s, c) and its
    gradient flows through ||e_s|| too; otherwise it also rewards growing ||e_s|| up to ||e_t||.
    """
    e_s = e_s.float()
    unit = F.normalize(centers.float(), dim=1)
    max_norm = torch.maximum(e_s.norm(dim=1), e_t.detach().float().norm(dim=1))
    return (1.0 - (e_s * unit).sum(1) / max_norm).mean()


@register_method(
    "nd",
    family="features",
    paper="Improving Knowledge Distillation via Regularizing Feature Norm and Direction",
    year=2023,
    arxiv="2305.17007",
    repo="https://github.com/WangYZ1608/Knowledge-Distillation-via-ND",
    aliases=("nd_loss",),
)
class NormDirection(FeaturePair):
    """ND loss (the "++" of KD++, DKD++, ...): pull the student embedding toward the teacher's class mean."""

    tasks = CLASSIFICATION_TASKS

    method_name = "nd"

    needs_labels = True
    wants_teacher_pass = True

    def __init__(
        self,
        nd_weight: float = 1.0,
        ce_weight: float = 0.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
        student: str = "pooled",
        teacher: str = "pooled",
        projector: Literal["auto", "always", "never"] = "auto",
        dropout: float = 0.5,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.nd_weight = float(nd_weight)
        self.ce_weight = float(ce_weight)
        self.kd_weight = float(kd_weight)
        self.temperature = float(temperature)
        self.warmup_epochs = float(warmup_epochs)
        self.tap_pair(student, teacher)
        self.projector_mode = projector
        self.dropout = float(dropout)
        self.projector: nn.Module | None = None
        self.register_buffer("class_means", torch.zeros(0, 0))
        self.register_buffer("means_ready", torch.zeros((), dtype=torch.bool))

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        teacher = self.setup_teacher(teacher)
        s = student.feature(self.student_feature).flatten(1)
        t = teacher.feature(self.teacher_feature).flatten(1)
        d_s, d_t = s.shape[1], t.shape[1]
        if self.projector_mode == "always" or (self.projector_mode == "auto" and d_s != d_t):
            self.projector = emb_projector(d_s, d_t, self.dropout).to(s.device)
        elif d_s != d_t:
            raise ValueError(f"nd: student embedding width {d_s} != teacher's {d_t}; use projector='auto'")
        else:
            self.projector = None
        num_classes = teacher.logits.shape[-1]
        self.class_means = torch.zeros(num_classes, d_t, device=t.device)
        self.means_ready = torch.zeros((), dtype=torch.bool, device=t.device)

    @torch.no_grad()
    def teacher_pass(self, outputs: Iterator[tuple[Batch, ModelOutput]]) -> None:
        """c_k = mean of the teacher embeddings of the training examples labelled k (float64 sums)."""
        sums = counts = None
        for batch, out in outputs:
            if batch.labels is None:
                raise ValueError("nd: the class means need labelled training data")
            emb = out.feature(self.teacher_feature).flatten(1).double()
            y = batch.labels.to(emb.device)
            y = y.argmax(-1) if y.is_floating_point() else y.reshape(-1)
            keep = y != IGNORE_INDEX
            emb, y = emb[keep], y[keep]
            if sums is None:
                num_classes = self.class_means.shape[0] or int(out.logits.shape[-1])
                sums = torch.zeros(num_classes, emb.shape[1], dtype=torch.float64, device=emb.device)
                counts = torch.zeros(num_classes, dtype=torch.float64, device=emb.device)
            sums.index_add_(0, y, emb)
            counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        if sums is None or counts is None:
            raise ValueError("nd: the teacher pass saw no training examples")
        means = sums / counts.clamp_min(1.0).unsqueeze(1)
        device = self.class_means.device if self.class_means.numel() else means.device
        self.class_means = means.float().to(device)
        self.means_ready = torch.ones((), dtype=torch.bool, device=device)

    def kd_factor(self, epoch: int) -> float:
        """kd_weight * min(1, epoch / warmup_epochs) (the official per-epoch warm-up; epoch counts from 0)."""
        if self.warmup_epochs == 0:
            return self.kd_weight
        return self.kd_weight * min(1.0, epoch / self.warmup_epochs)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'nd' needs a teacher, but none is configured")
        if inputs.labels is None:
            raise ValueError("method 'nd' needs labels, but the batch has none")
        if not bool(self.means_ready):
            raise RuntimeError("nd: class means are missing; the trainer's teacher pass (or teacher_pass()) "
                               "must run before training")
        e_s = inputs.student.feature(self.student_feature).flatten(1)
        if self.projector is not None:
            e_s = self.projector(e_s)
        e_t = inputs.teacher.feature(self.teacher_feature).flatten(1)
        labels = inputs.labels
        y = labels.argmax(-1) if labels.is_floating_point() else labels.reshape(-1)
        keep = y != IGNORE_INDEX
        if bool(keep.any()):
            centers = self.class_means[y[keep]]
            nd = nd_loss(e_s[keep], e_t[keep], centers)
        else:
            nd = e_s.float().sum() * 0.0
        terms = {"nd": self.nd_weight * nd}
        if self.kd_weight != 0.0:
            t = self.temperature
            kl = kl_batchmean(inputs.student.logits, inputs.teacher.logits, t)
            terms["kd"] = self.kd_factor(inputs.epoch) * t * t * kl
        if self.ce_weight != 0.0:
            terms["ce"] = self.ce_weight * cross_entropy(inputs.student.logits, labels)
        return terms
