"""Random teachers: self-distillation from a frozen, randomly initialised teacher.

A network with a DINO head (:class:`distill.models.dino.DINOHead`) is drawn at random and frozen as the teacher;
the student starts as a copy of it. The student learns to match the teacher's softmax on un-augmented, unlabelled
images: no dark knowledge, no label, no augmentation. Even so the student's *encoder* embeddings probe better than
the teacher's, and the closer the student starts to the teacher, the larger the gain.

Loss (DINO's cross-entropy, ``loss: CE`` of the official code), with p the head's projection in [-1, 1]^K, c an
optional EMA centre of the teacher's outputs and temperatures tau_T, tau_S:

    L = mean_b  - sum_k softmax((p_T - c) / tau_T)_k * log softmax((p_S - c) / tau_S)_k

The teacher's side carries no gradient. 'KL' = CE - H(teacher) has the same gradient; it is returned by
:func:`dino_cross_entropy` (0 when student and teacher agree; not a loss term). The official v2 configuration
(``cifar10_distillation_v2``) turns the centre off (``center_momentum: null``) and uses tau_T = tau_S = 1 (the
defaults here); the v1 configuration uses DINO's tau_T = 0.04, tau_S = 0.1 and centre momentum 0.9. The centre,
when on, is updated after the loss: c <- m c + (1 - m) mean_b p_T (DINO).

The teacher runs in eval mode (its BN uses the initial running statistics 0 / 1, never updated) and the student
in train mode (batch statistics), which is why an exact copy still gets a non-zero gradient at step 0.

Student initialisation (:func:`interpolated_init`, :func:`neighborhood_init`): 'teacher' (an exact copy, the
default), 'interpolated' theta_S = (1 - a) theta_T + a theta_rand, optionally divided by sqrt(2a^2 - 2a + 1)
(which keeps the variance of two independent draws), or 'neighborhood' theta_T + eps theta_rand. They apply to
the parameters; buffers (BN running statistics) are the teacher's.

This method is trained by :mod:`distill.pipelines.random_teachers` (the random teacher, the copy and the probe
are built there); it is not for a ``methods`` list.

Paper: F. Sarnthein, G. Bachmann, S. Anagnostidis, T. Hofmann, "Random Teachers are Good Teachers", ICML 2023,
arXiv:2302.12091; code https://github.com/safelix/dinopl (``dinopl/core.py``, ``configuration.py``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from distill.core.method import Method, register_method
from distill.core.outputs import StepInputs, require_teacher


def dino_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, student_temp: float = 1.0,
                       teacher_temp: float = 1.0, center: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE, KL) averaged over the batch; the teacher's side is detached."""
    t = teacher.detach()
    t = t if t.dtype == torch.float64 else t.float()
    if center is not None:
        t = t - center
        student = student - center
    log_pt = F.log_softmax(t / teacher_temp, dim=-1)
    pt = log_pt.exp()
    log_ps = F.log_softmax((student if student.dtype == torch.float64 else student.float()) / student_temp, dim=-1)
    ce = -(pt * log_ps).sum(-1).mean()
    entropy = -(pt * log_pt).sum(-1).mean()
    return ce, ce - entropy


@torch.no_grad()
def interpolated_init(student: torch.nn.Module, teacher: torch.nn.Module, random: torch.nn.Module, a: float,
                      normalize: bool = False) -> None:
    """Set ``student``'s parameters to (1 - a) theta_T + a theta_rand (divided by sqrt(2a^2 - 2a + 1) with
    ``normalize``); its buffers to the teacher's."""
    scale = math.sqrt(2 * a * a - 2 * a + 1) if normalize else 1.0
    t_params, r_params = dict(teacher.named_parameters()), dict(random.named_parameters())
    for name, p in student.named_parameters():
        p.copy_(((1 - a) * t_params[name] + a * r_params[name]) / scale)
    t_buffers = dict(teacher.named_buffers())
    for name, b in student.named_buffers():
        b.copy_(t_buffers[name])


@torch.no_grad()
def neighborhood_init(student: torch.nn.Module, teacher: torch.nn.Module, random: torch.nn.Module,
                      eps: float) -> None:
    """Set ``student``'s parameters to theta_T + eps theta_rand; its buffers to the teacher's."""
    t_params, r_params = dict(teacher.named_parameters()), dict(random.named_parameters())
    for name, p in student.named_parameters():
        p.copy_(t_params[name] + eps * r_params[name])
    t_buffers = dict(teacher.named_buffers())
    for name, b in student.named_buffers():
        b.copy_(t_buffers[name])


@register_method(
    "random_teachers",
    family="logits",
    paper="Random Teachers are Good Teachers",
    year=2023,
    arxiv="2302.12091",
    venue="ICML",
    repo="https://github.com/safelix/dinopl",
)
class RandomTeachers(Method):
    """DINO cross-entropy between a frozen random teacher's head and its student copy (see the module docstring)."""

    needs_teacher = True
    needs_labels = False
    pipeline: ClassVar[str | None] = "distill.pipelines.random_teachers"
    tasks = frozenset({"image_classification"})

    def __init__(self, student_temp: float = 1.0, teacher_temp: float = 1.0, center_momentum: float | None = None):
        super().__init__()
        if student_temp <= 0 or teacher_temp <= 0:
            raise ValueError("student_temp and teacher_temp must be positive")
        if center_momentum is not None and not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1) or null, got {center_momentum}")
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.register_buffer("center", torch.zeros(0))

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        zt = require_teacher(inputs, "random_teachers").logits
        zs = inputs.student.logits
        center = None
        if self.center_momentum is not None:
            if self.center.numel() == 0:
                self.center = torch.zeros(zt.shape[-1], device=zt.device)
            center = self.center
        ce, _ = dino_cross_entropy(zs, zt, self.student_temp, self.teacher_temp, center)
        if self.center_momentum is not None and self.training:
            m = self.center_momentum
            self.center = m * self.center + (1 - m) * zt.detach().float().mean(0)
        return {"dino_ce": ce}
