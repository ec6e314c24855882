"""OFA-KD: the teacher's logits distilled into the student head and into an exit branch at every student stage.

Heterogeneous intermediate features (a CNN's maps, a ViT's tokens) are never matched directly: each student stage
s = 1..S gets its own small exit branch b_s that projects the stage's features to class logits, and the teacher's
final logits z^T teach every exit and the student's own head through the OFA loss, whose target-class weight is
enhanced by an exponent eps:

    p^T = softmax(z^T / tau),  p^S = softmax(z^S / tau),  y = one-hot label (of the argmax for soft labels)
    L_OFA(z^S; eps) = mean_b [ - sum_c ((p^T_c + y_c)^eps - y_c) * log p^S_c ]

The target class weighs (1 + p^T_y)^eps - 1, every other class (p^T_c)^eps; eps = 1 is soft-target
cross-entropy (KL(p^T || p^S) plus the teacher's entropy). No renormalisation, no tau^2 factor. The terms:

    kd  = w_kd  * L_OFA(z^S; eps_last)
    ofa = w_ofa * sum_s L_OFA(b_s(F^S_s); eps_s)

and the recipe adds w_gt * CE with label smoothing 0.1 (method ``ce``), as the official ``loss_gt``.

Exit branches (the method's own parameters, trained with the student and dropped at inference), built at set-up
from the shapes of the tapped stage features:

* CNN stage (a (B, C, H, W) map), stage s of S: S - s SepConv blocks (depthwise 3x3 stride 2, pointwise 1x1, BN,
  ReLU, depthwise 3x3, pointwise 1x1, BN, ReLU), the channels doubling at each block and the last one giving
  max(C^S_last, C^T_last); the last stage a 1x1 conv to that width instead; then global average pooling and a
  Linear to K classes.
* ViT stage (a (B, [1 +] N, d) token sequence): PatchMerging (2x2 neighbours concatenated, LayerNorm, Linear,
  GELU but none after the last) until the grid is at most 7 x 7 (log2(grid / 7) merges, none for an 8 x 8 grid),
  then max(4 - s, 1) pre-norm ViT blocks of width d^S_last with 4 heads (no qkv bias), then the cls token (or the
  mean token when the student has none) and a Linear to K.
* Initialisation: Kaiming-normal (fan_out) convs, unit/zero BatchNorm, truncated-normal (std 0.02) Linear weights.

C^T_last is read from the teacher's ``teacher_feature`` (default ``pooled``: the input of its classifier) at set-up.
The teacher is frozen and its logits are detached.

Provenance: the official code (Hao840/OFAKD, ``distillers/ofa.py``: ``ofa_loss``, the projector construction and
``forward``; ``distillers/utils.py``: ``SepConv``, ``PatchMerging``, ``init_weights``; ``train.py`` defaults
``ofa_eps`` [1], ``ofa_temperature`` 1, loss weights 1) was read through the code index and re-implemented here.
Adaptations (not in the official code): the number of stages S is the number of tapped features (3 for the CIFAR
ResNets, whose SepConv depth is then S - s; the official CNN rule is written for 4 stages as 4 - s); the ViT
branch keeps the official max(4 - s, 1) blocks; log p^S is computed with log_softmax (the official code takes the
log of the softmax, equal up to rounding).

Paper: One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation, NeurIPS 2023,
arXiv:2310.19444; code: https://github.com/Hao840/OFAKD.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import IMAGE_TASKS, TapMethod, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_labels, require_teacher
from distill.models.vit import Block


def ofa_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, eps: float,
             temperature: float = 1.0) -> torch.Tensor:
    """L_OFA = mean_b [-sum_c ((p^T_c + y_c)^eps - y_c) log p^S_c]; ``target`` is the (B, K) one-hot y."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    pt = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    y = target.to(pt.dtype)
    weight = (pt + y).pow(eps) - y
    return -(weight * log_ps).sum(-1).mean()


def one_hot_target(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """y as a (B, K) one-hot: of the label, or of the argmax of soft labels (mixup, label smoothing)."""
    if labels.is_floating_point() and labels.dim() == 2:
        labels = labels.argmax(-1)
    return F.one_hot(labels.long().clamp_min(0), num_classes)


class SepConv(nn.Sequential):
    """Depthwise 3x3 (stride 2), pointwise 1x1, BN, ReLU, depthwise 3x3, pointwise 1x1 (to ``out_ch``), BN, ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, in_ch, 1, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
            nn.Conv2d(in_ch, in_ch, 3, stride=1, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        )


class PatchMerging(nn.Module):
    """(B, h*w, d) -> (B, h/2 * w/2, d_out): each 2x2 neighbourhood concatenated (4d), LayerNorm, Linear, act."""

    def __init__(self, grid: int, dim: int, out_dim: int, act: bool):
        super().__init__()
        if grid % 2:
            raise ValueError(f"ofa: PatchMerging needs an even token grid, got {grid}")
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act: nn.Module = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        g = x.view(b, self.grid, self.grid, d)
        quads = [g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]]
        merged = torch.cat(quads, dim=-1).reshape(b, -1, 4 * d)
        return self.act(self.reduction(self.norm(merged)))


class CnnExit(nn.Module):
    """The exit branch of a CNN stage: SepConvs (or a 1x1 conv), global average pooling, Linear."""

    def __init__(self, in_ch: int, width: int, num_blocks: int, num_classes: int):
        super().__init__()
        if num_blocks == 0:
            body: list[nn.Module] = [nn.Conv2d(in_ch, width, 1)]
        else:
            body, ch = [], in_ch
            for i in range(num_blocks):
                body.append(SepConv(ch, width if i == num_blocks - 1 else 2 * ch))
                ch *= 2
        self.body = nn.Sequential(*body)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


class VitExit(nn.Module):
    """The exit branch of a ViT stage: PatchMerging to <= 7x7, ViT blocks, cls token (or mean token), Linear."""

    def __init__(self, dim: int, width: int, grid: int, prefix: int, num_blocks: int, num_classes: int,
                 heads: int = 4):
        super().__init__()
        merges = max(int(math.log2(grid / 7)), 0) if grid > 0 else 0
        mergers: list[nn.Module] = []
        for i in range(merges):
            mergers.append(PatchMerging(grid // 2 ** i, dim if i == 0 else width, width, act=i != merges - 1))
        if not merges and dim != width:
            raise ValueError(f"ofa: a ViT stage of width {dim} needs width {width} (the student's last stage) "
                             "when no patch merging applies")
        self.prefix = prefix
        self.merge = nn.Sequential(*mergers)
        self.blocks = nn.Sequential(*[Block(width, heads, qkv_bias=False) for _ in range(num_blocks)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, patches = x[:, :self.prefix], x[:, self.prefix:]
        patches = self.merge(patches)
        h = self.blocks(torch.cat([tokens, patches], dim=1) if self.prefix else patches)
        return self.fc(h[:, 0] if self.prefix else h.mean(1))


def init_exit(module: nn.Module) -> None:
    """The official initialisation of the branches."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def cls_prefix(tokens: int, given: int | None) -> int:
    """Leading cls tokens of a (B, tokens, d) sequence: ``given``, or 1 when tokens - 1 is a square and tokens is
    not (an 8 x 8 grid plus a cls token), else 0."""
    if given is not None:
        return given
    square = math.isqrt(tokens) ** 2 == tokens
    return 1 if not square and math.isqrt(tokens - 1) ** 2 == tokens - 1 else 0


@register_method(
    "ofa",
    family="features",
    paper="One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation",
    year=2023,
    arxiv="2310.19444",
    venue="NeurIPS",
    repo="https://github.com/Hao840/OFAKD",
    aliases=("ofa_kd", "ofakd"),
)
class OFA(TapMethod):
    """OFA-KD: the OFA loss on the student head and on an exit branch per student stage."""

    tasks = IMAGE_TASKS
    needs_labels = True
    method_name = "ofa"

    def __init__(self, student: list[str] | None = None, eps: float | list[float] = 1.0, temperature: float = 1.0,
                 kd_weight: float = 1.0, ofa_weight: float = 1.0, teacher_feature: str = "pooled",
                 cls_tokens: int | None = None, branch: Literal["auto", "cnn", "vit"] = "auto"):
        super().__init__()
        self.stages = list(student or ["f1", "f2", "f3"])
        if not self.stages:
            raise ValueError("ofa: student needs at least one stage feature")
        eps_list = [float(eps)] * (len(self.stages) + 1) if isinstance(eps, (int, float)) else [float(e) for e in eps]
        if len(eps_list) != len(self.stages) + 1:
            raise ValueError(f"ofa: eps needs one value, or one per stage plus one for the logits "
                             f"({len(self.stages) + 1}), got {len(eps_list)}")
        if any(e <= 0 for e in eps_list):
            raise ValueError(f"ofa: eps must be positive, got {eps_list}")
        if temperature <= 0:
            raise ValueError(f"ofa: temperature must be positive, got {temperature}")
        self.eps = eps_list
        self.temperature = float(temperature)
        self.kd_weight, self.ofa_weight = float(kd_weight), float(ofa_weight)
        self.teacher_feature = teacher_feature
        self.cls_tokens = cls_tokens
        self.branch = branch
        self.exits = nn.ModuleList()

    def student_taps(self) -> list[str]:
        return self.stages

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        t = self.setup_teacher(teacher)
        num_classes = int(student.logits.shape[-1])
        feats = [student.feature(n) for n in self.stages]
        t_feat = t.feature(self.teacher_feature)
        t_dim = int(t_feat.shape[1])
        exits: list[nn.Module] = []
        n = len(feats)
        for s, f in enumerate(feats, start=1):
            kind = self.branch if self.branch != "auto" else ("cnn" if f.dim() == 4 else "vit")
            if kind == "cnn":
                if f.dim() != 4:
                    raise ValueError(f"ofa: stage {self.stages[s - 1]!r} is {tuple(f.shape)}, a CNN exit needs "
                                     "(B, C, H, W)")
                s_last = int(feats[-1].shape[1])
                exits.append(CnnExit(int(f.shape[1]), max(s_last, t_dim), n - s, num_classes))
            else:
                if f.dim() != 3:
                    raise ValueError(f"ofa: stage {self.stages[s - 1]!r} is {tuple(f.shape)}, a ViT exit needs "
                                     "(B, tokens, d)")
                prefix = cls_prefix(int(f.shape[1]), self.cls_tokens)
                grid = math.isqrt(int(f.shape[1]) - prefix)
                exits.append(VitExit(int(f.shape[2]), int(feats[-1].shape[2]), grid, prefix, max(4 - s, 1),
                                     num_classes))
        self.exits = nn.ModuleList(exits).to(student.logits.device)
        init_exit(self.exits)

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if len(self.exits) != len(self.stages):
            raise RuntimeError("ofa: setup() has not built the exit branches")
        zt = require_teacher(inputs, self.method_name).logits.detach()
        zs = inputs.student.logits
        y = one_hot_target(require_labels(inputs, self.method_name), zs.shape[-1])
        tau = self.temperature
        ofa = zs.new_zeros((), dtype=torch.float32)
        for name, branch, eps in zip(self.stages, self.exits, self.eps):
            ofa = ofa + ofa_loss(branch(inputs.student.feature(name)), zt, y, eps, tau)
        kd = ofa_loss(zs, zt, y, self.eps[-1], tau)
        return {"kd": self.kd_weight * kd, "ofa": self.ofa_weight * ofa}
