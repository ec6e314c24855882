"""Knowledge review (ReviewKD): attention-based fusion of student stages and a hierarchical context loss.

Knowledge review: L = w(e) * sum_i HCL(o_i, t_i), with o_i the ABF outputs fused from student levels i..L.

Levels are listed shallow to deep (``student`` / ``teacher`` taps; a (B, C) pooled vector is a 1x1 map).
Processing deepest first: (o_L, r_L) = ABF_L(s_L) with no fusion, then (o_i, r_i) = ABF_i(s_i, r_{i+1})
(see :class:`ABF`); ABF_i maps C_s,i -> ``mid`` -> C_t,i and resizes to the teacher map's size; ``mid`` =
``mid_channels`` or, by default, min(``max_mid_channels``, C_s of the deepest level) (official:
min(512, in_channels[-1])). HCL is :func:`hcl` with pyramid ``levels`` (4, 2, 1). The ABF stack is built at
set-up from the channel counts and sizes and trained with the student; teacher maps are constants.

Warm-up: w(e) = min(1, e / ``warmup_epochs``) with e the 0-based main-stage epoch, as the official
``train.py`` counts (``warmup_counting="official"``: no review loss in the first epoch); ``"mdistiller"``
counts epochs from 1, i.e. w = min(1, (e + 1) / warmup_epochs). ``warmup_epochs=0`` disables it. The 20
official epochs are 1/12 of 240; on a 30-epoch schedule a proportional warm-up is 2.5.

Official CIFAR settings (ResNet20 student): student taps post-ReLU ``f1, f2, f3, pooled`` (official and
mdistiller ``STU_PREACT=False``; torchdistill's sample taps pre-ReLU), teacher taps ``f1_pre, f2_pre,
f3_pre, pooled`` (``preact=True`` features minus the stem), mid 64, warm-up 20 epochs. The method weight is
the official ``--kd-loss-weight`` / mdistiller ``REVIEWKD.REVIEWKD_WEIGHT``: 0.6 for ResNet56 -> ResNet20,
1.0 for ResNet110 -> ResNet32, 5.0 for resnet32x4 -> resnet8x4 and the WRN pairs, with CE 1.

Paper: Distilling Knowledge via Knowledge Review, CVPR 2021, arXiv:2104.09044; code:
https://github.com/dvlab-research/ReviewKD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import IMAGE_TASKS, FeaturePairs, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs


def as_map(x: torch.Tensor) -> torch.Tensor:
    """A feature as a (B, C, H, W) map: a pooled vector (B, C) becomes (B, C, 1, 1)."""
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() != 4:
        raise ValueError(f"reviewkd: expected a (B, C, H, W) map or a (B, C) vector, got shape {tuple(x.shape)}")
    return x


def hcl(student: torch.Tensor, teacher: torch.Tensor, levels: Sequence[int] = (4, 2, 1)) -> torch.Tensor:
    """Hierarchical context loss of one pair of (B, C, H, W) maps:

    L = [MSE(o, t) + sum_j 2^-j MSE(pool_{l_j} o, pool_{l_j} t)] / (1 + sum_j 2^-j),

    over the levels l_j (in the given order) smaller than the map height H, j = 1, 2, ... counting only those;
    MSE is a mean and pool_l an adaptive average pooling to l x l. For H >= 8: weights 1, 1/2, 1/4, 1/8 over
    1.875; for H = 1 it is the plain MSE.
    """
    h = student.shape[-2]
    total = F.mse_loss(student, teacher)
    weight, norm = 1.0, 1.0
    for size in levels:
        if size >= h:
            continue
        weight /= 2.0
        total = total + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        norm += weight
    return total / norm


class ABF(nn.Module):
    """Attention-based fusion of one student level with the (already fused) deeper level.

    x' = BN(conv1x1(x)) (to ``mid`` channels); when fusing, the deeper residual y is nearest-upsampled to x's
    size, [a1, a2] = sigmoid(conv1x1([x', y])) and x' = a1 x' + a2 y; x' is nearest-resized to the teacher's
    size if it differs; the output is BN(conv3x3(x')) (to ``out`` channels) and x' is passed upward.
    The two convs start from kaiming-uniform(a=1), as in the official code.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("reviewkd: a fusing ABF needs the residual of the deeper level")
            y = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, y], dim=1))
            x = x * att[:, 0:1] + y * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


@register_method(
    "reviewkd",
    family="features",
    paper="Distilling Knowledge via Knowledge Review",
    year=2021,
    arxiv="2104.09044",
    venue="CVPR",
    repo="https://github.com/dvlab-research/ReviewKD",
    aliases=("review_kd", "knowledge_review"),
)
class ReviewKD(FeaturePairs):
    """Knowledge review: L = w(e) * sum_i HCL(o_i, t_i), with o_i the ABF outputs fused from student levels i..L."""

    tasks = IMAGE_TASKS

    method_name = "reviewkd"

    def __init__(
        self,
        student: list[str] | None = None,
        teacher: list[str] | None = None,
        mid_channels: int | None = None,
        max_mid_channels: int = 512,
        levels: list[int] | None = None,
        warmup_epochs: float = 20.0,
        warmup_counting: Literal["official", "mdistiller"] = "official",
    ):
        super().__init__()
        self.tap_pairs(student, teacher or ["f1_pre", "f2_pre", "f3_pre", "pooled"], None, ["f1", "f2", "f3", "pooled"])
        if mid_channels is not None and mid_channels <= 0:
            raise ValueError(f"reviewkd: mid_channels must be positive, got {mid_channels}")
        if max_mid_channels <= 0:
            raise ValueError(f"reviewkd: max_mid_channels must be positive, got {max_mid_channels}")
        if warmup_epochs < 0:
            raise ValueError(f"reviewkd: warmup_epochs must be >= 0, got {warmup_epochs}")
        self.mid_channels = mid_channels
        self.max_mid_channels = int(max_mid_channels)
        self.levels = [int(v) for v in (levels if levels is not None else [4, 2, 1])]
        if any(v <= 0 for v in self.levels):
            raise ValueError(f"reviewkd: pyramid levels must be positive, got {self.levels}")
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_counting = warmup_counting
        self.abfs: nn.ModuleList | None = None
        self.out_sizes: list[tuple[int, int]] = []

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        teacher = self.setup_teacher(teacher)
        s_maps = [as_map(student.feature(n)) for n in self.student_features]
        t_maps = [as_map(teacher.feature(n)) for n in self.teacher_features]
        mid = self.mid_channels or min(self.max_mid_channels, s_maps[-1].shape[1])
        last = len(s_maps) - 1
        self.abfs = nn.ModuleList(
            ABF(s.shape[1], mid, t.shape[1], fuse=i < last) for i, (s, t) in enumerate(zip(s_maps, t_maps))
        ).to(s_maps[0].device)
        self.out_sizes = [tuple(t.shape[-2:]) for t in t_maps]

    def warmup_factor(self, epoch: int) -> float:
        if self.warmup_epochs == 0:
            return 1.0
        e = epoch + (1 if self.warmup_counting == "mdistiller" else 0)
        return min(1.0, e / self.warmup_epochs)

    def fused(self, student: ModelOutput) -> list[torch.Tensor]:
        """The ABF outputs o_1..o_L (shallow to deep) for the student's features."""
        if self.abfs is None:
            raise RuntimeError("ReviewKD.setup() must run before the first step (the trainer does this)")
        feats = [as_map(student.feature(n)) for n in self.student_features]
        outs: list[torch.Tensor] = [feats[0]] * len(feats)
        residual = None
        for i in reversed(range(len(feats))):
            outs[i], residual = self.abfs[i](feats[i], residual, self.out_sizes[i])
        return outs

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if inputs.teacher is None:
            raise ValueError("method 'reviewkd' needs a teacher, but none is configured")
        outs = self.fused(inputs.student)
        targets = [as_map(inputs.teacher.feature(n)).detach() for n in self.teacher_features]
        loss = sum(hcl(o.float(), t.float(), self.levels) for o, t in zip(outs, targets))
        return {"loss": self.warmup_factor(inputs.epoch) * loss}
