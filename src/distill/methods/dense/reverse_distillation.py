"""Reverse distillation for anomaly detection (RD4AD) and its fabric variant (DBFAD).

A frozen pretrained encoder E (the teacher) gives multi-scale features E_k of a normal image; a trainable one-class
bottleneck squeezes them into a small embedding and a *reverse* student D (a decoder) rebuilds every E_k from it.
Trained on normal images only, D reproduces E where the image looks normal and fails where it does not, so the
per-pixel disagreement is the anomaly map. The student (bottleneck + decoder) lives in
:mod:`distill.tasks.anomaly.models`; this file holds the loss and the scorer.

Loss (``mode``), with cos_k(b, u) the cosine over channels between E_k(x_b) and D_k(x_b) at pixel u:

* ``dbfad`` (per-pixel, DBFAD's ``cal_loss``): L = (1/K) sum_k 1/(H_k W_k) sum_{b,u} [1 - cos_k(b, u)] -- summed
  over the batch, averaged over pixels (DBFAD writes it as 0.5 ||a^ - b^||^2 of unit vectors, which is the same);
* ``rd4ad`` (flattened, RD4AD's ``loss_fucntion``): L = sum_k mean_b [1 - cos(vec E_k(x_b), vec D_k(x_b))], the
  cosine taken over each sample's whole flattened map.

Anomaly map (:func:`anomaly_map`): A(u) = sum_k w_k Up(1 - cos_k(u)) with bilinear up-sampling to the input size,
w_k = 1/(H_k W_k) in ``dbfad`` mode (DBFAD's ``cal_anomaly_maps``: the coarse levels weigh more) and w_k = 1 in
``rd4ad`` mode; then a Gaussian filter with sigma 4 (``sigma``). The image score is max_u A(u). DBFAD min-max
normalises the maps over the test set; a monotone map of all scores, it changes no AUROC and is left out.

Deviations: the Gaussian filter pads by reflection (scipy's ``gaussian_filter`` mirrors half a pixel further;
the difference is at the border only). The teacher is any frozen feature source: the family feeds the CIFAR
ResNet-56 (an adaptation of DBFAD's ImageNet ResNet-34 and RD4AD's WideResNet-50, neither available here).

Papers: Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022,
arXiv:2201.10703, code https://github.com/hq-deng/RD4AD; Thomine & Snoussi, "Distillation-based fabric anomaly
detection", Textile Research Journal 94(5-6), 2024, arXiv:2401.02287, code https://github.com/SimonThomine/DBFAD.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from distill.core.method import FeaturePairs, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher

Mode = Literal["dbfad", "rd4ad"]
#: the family this method applies to
ANOMALY_TASKS = frozenset({"anomaly_detection"})


def cosine_distance_map(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """1 - cos over channels at every pixel: (B, C, H, W) x 2 -> (B, H, W)."""
    s = F.normalize(student.float(), dim=1, eps=eps)
    t = F.normalize(teacher.float(), dim=1, eps=eps)
    return 1.0 - (s * t).sum(dim=1)


def cosine_map_distance(student: list[torch.Tensor], teacher: list[torch.Tensor], mode: Mode = "dbfad"
                        ) -> torch.Tensor:
    """The reverse-distillation loss over the levels (see the module docstring for both modes)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"one student map per teacher map is needed, got {len(student)} and {len(teacher)}")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"student map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ in shape")
        if mode == "dbfad":
            h, w = s.shape[-2:]
            total = total + cosine_distance_map(s, t).sum() / (h * w)
        elif mode == "rd4ad":
            cos = F.cosine_similarity(s.float().flatten(1), t.float().flatten(1), dim=1)
            total = total + (1.0 - cos).mean()
        else:
            raise ValueError(f"mode must be 'dbfad' or 'rd4ad', got {mode!r}")
    return total / len(student) if mode == "dbfad" else total


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-d Gaussian taps of radius round(truncate * sigma) (scipy's choice)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps, reflection padding (radius clipped to the map size)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps)
    r = min((k.numel() - 1) // 2, maps.shape[-1] - 1, maps.shape[-2] - 1)
    mid = (k.numel() - 1) // 2
    k = k[mid - r: mid + r + 1]
    k = k / k.sum()
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def anomaly_map(student: list[torch.Tensor], teacher: list[torch.Tensor], size: tuple[int, int],
                mode: Mode = "dbfad", sigma: float = 4.0) -> torch.Tensor:
    """The anomaly map (B, H, W) at ``size`` (see the module docstring); ``sigma`` 0: no filter."""
    total = None
    for s, t in zip(student, teacher, strict=True):
        d = cosine_distance_map(s, t)
        if mode == "dbfad":
            d = d / (d.shape[-2] * d.shape[-1])
        elif mode != "rd4ad":
            raise ValueError(f"mode must be 'dbfad' or 'rd4ad', got {mode!r}")
        up = F.interpolate(d[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        total = up if total is None else total + up
    assert total is not None
    return gaussian_filter(total, sigma)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """The image score: the largest value of each map."""
    return maps.flatten(1).amax(dim=1)


@register_method(
    "reverse_distillation",
    family="dense",
    paper="Distillation-based fabric anomaly detection (DBFAD); Anomaly Detection via Reverse Distillation from "
          "One-Class Embedding (RD4AD)",
    year=2024,
    arxiv="2401.02287",
    venue="Textile Research Journal",
    repo="https://github.com/SimonThomine/DBFAD",
)
class ReverseDistillation(FeaturePairs):
    """The decoder's rebuilt maps (student taps, default ``out0``..``out3``) against the frozen encoder's maps
    (teacher taps, default ``f0``..``f3``), by :func:`cosine_map_distance` in ``mode`` ``dbfad`` or ``rd4ad``."""

    method_name = "reverse_distillation"
    tasks = ANOMALY_TASKS

    def __init__(self, student: list[str] | None = None, teacher: list[str] | None = None, mode: Mode = "dbfad"):
        super().__init__()
        if mode not in ("dbfad", "rd4ad"):
            raise ValueError(f"mode must be 'dbfad' or 'rd4ad', got {mode!r}")
        s = list(student or ["out0", "out1", "out2", "out3"])
        self.tap_pairs(s, list(teacher or [f"f{n[-1]}" for n in s]), None, s)
        self.mode = mode

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        t = self.setup_teacher(teacher)
        for sn, tn in zip(self.student_features, self.teacher_features, strict=True):
            a, b = student.feature(sn), t.feature(tn)
            if a.shape[1:] != b.shape[1:]:
                raise ValueError(f"reverse_distillation: student feature {sn!r} {tuple(a.shape[1:])} and teacher "
                                 f"feature {tn!r} {tuple(b.shape[1:])} differ in shape")

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        t = require_teacher(inputs, self.method_name)
        s_maps = [inputs.student.feature(n) for n in self.student_features]
        t_maps = [t.feature(n).detach() for n in self.teacher_features]
        return {"rd": cosine_map_distance(s_maps, t_maps, self.mode)}


__all__ = ["ReverseDistillation", "anomaly_map", "cosine_distance_map", "cosine_map_distance", "gaussian_filter",
           "image_scores"]
