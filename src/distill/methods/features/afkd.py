"""AFKD: adaptive feature knowledge distillation (ORTrack-D), a per-sample feature MSE weighted by difficulty.

Paper: Wu et al., "Learning Occlusion-Robust Vision Transformers for Real-Time UAV Tracking" (ORTrack), CVPR 2025,
arXiv:2504.09228; code github.com/wuyou3474/ORTrack (loss read from the fork zyzyzkzk090909-pixel/vittracking,
``lib/train/actors/ortrack.py`` and ``lib/train/train_script.py``, first commit; identity with the official code
unverified). Re-implemented from ../shared/methods/dense.md row 1.

F^T, F^S: the named teacher and student features (the same shape: ORTrack's 6-block student and 12-block teacher
share the width, so there is no projector). Per sample i:

    e_i = mean_{t, c} (F^T_i - F^S_i)^2
    w_i = lambda_d (tau0 + rho (d_i - mean_j d_j))          (detached)
    L_afkd = mean_i w_i e_i

d_i is the sample's difficulty for the student: in tracking 1 - GIoU(student box, ground truth) in [0, 2]; for
classification (``difficulty: student_error``, the default here) d_i = 1 - p_S(y_i | x_i), detached; its scale differs
from 1 - GIoU, so the difficulty is configurable; ``difficulty: uniform`` sets every d_i equal, which gives the
uniform-weight MSE lambda_d tau0 mean(e) (the spec's baseline). Defaults: lambda_d = 2e-5, tau0 = 10, rho = 10.

Deviations from the stored code (documented): (i) the stored actor copies the per-sample MSEs into a fresh tensor,
which cuts the graph (the student then gets no gradient from AFKD while the un-detached weights push gradient into
the GIoU); here the gradient flows through e_i and w_i is detached, the evident intent. (ii) w_i can be negative when
d_i - mean < -tau0 / rho; it is kept unclamped by default, ``weight_floor`` clamps it from below. The teacher runs in
eval mode (the code leaves it in train mode, drop-path active).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import IMAGE_TASKS, FeaturePair, register_method
from distill.core.outputs import StepInputs, require_labels
from distill.methods.augmentation.cox_block_mask import ORTRACK


def afkd_weights(difficulty: torch.Tensor, lambda_d: float, tau0: float, rho: float,
                 weight_floor: float | None = None) -> torch.Tensor:
    """w_i = lambda_d (tau0 + rho (d_i - mean d)), detached, optionally clamped below at ``weight_floor``."""
    d = difficulty.detach().float()
    w = lambda_d * (tau0 + rho * (d - d.mean()))
    return w.clamp_min(weight_floor) if weight_floor is not None else w


def afkd_loss(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_i w_i e_i with e_i the per-sample mean squared error."""
    e = (teacher.detach().float() - student.float()).pow(2).flatten(1).mean(1)
    return (weights * e).mean()


def student_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - p_S(y_i | x_i), detached (hard labels, or soft labels through their argmax)."""
    y = labels.argmax(-1) if labels.dim() > 1 else labels
    return 1.0 - F.softmax(logits.detach().float(), -1).gather(1, y.long()[:, None])[:, 0]


@register_method("afkd", family="features", **ORTRACK)
class AFKD(FeaturePair):
    """Per-sample feature MSE to the teacher, weighted by the sample's (detached) difficulty for the student."""

    tasks = IMAGE_TASKS
    needs_labels = True
    method_name = "afkd"

    def __init__(self, student: str = "f3", teacher: str = "f3", lambda_d: float = 2e-5, tau0: float = 10.0,
                 rho: float = 10.0, difficulty: Literal["student_error", "uniform"] = "student_error",
                 weight_floor: float | None = None):
        super().__init__()
        if difficulty not in ("student_error", "uniform"):
            raise ValueError(f"difficulty must be 'student_error' or 'uniform', got {difficulty!r}")
        if lambda_d < 0:
            raise ValueError(f"lambda_d must be >= 0, got {lambda_d}")
        self.tap_pair(student, teacher)
        self.lambda_d, self.tau0, self.rho, self.difficulty, self.weight_floor = (lambda_d, tau0, rho, difficulty,
                                                                                  weight_floor)

    def setup(self, student, teacher, info=None) -> None:  # type: ignore[no-untyped-def]
        s, t = self.setup_features(student, teacher)
        if s.shape[1:] != t.shape[1:]:
            raise ValueError(f"afkd compares features of one shape (no projector, as ORTrack): student "
                             f"{self.student_feature} {tuple(s.shape)} vs teacher {self.teacher_feature} "
                             f"{tuple(t.shape)}")

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        s, t = self.step_features(inputs)
        if self.difficulty == "uniform":
            d = torch.zeros(s.shape[0], device=s.device)
        else:
            d = student_error(inputs.student.logits, require_labels(inputs, self.method_name))
        w = afkd_weights(d, self.lambda_d, self.tau0, self.rho, self.weight_floor)
        return {"loss": afkd_loss(s, t, w)}
