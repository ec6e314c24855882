"""ACAM-KD: adaptive and cooperative attention masking for feature distillation.

Paper: "ACAM-KD: Adaptive and Cooperative Attention Masking for Knowledge Distillation", ICCV 2025,
arXiv:2503.06307. No official code exists (none stored, none found by name or module names): everything below is a
**reconstruction (R)** from the abstract and third-party summaries, as laid out in ../shared/methods/dense.md row 5.

For one feature level, F^T (B, C, H, W) is the detached teacher map and phi(F^S) the student map brought to C
channels by an adapter phi **(R)**: FitNet's regressor (a 1x1 conv for equal sizes, then BatchNorm and ReLU, as the
FitNet baseline uses; ``adapter_relu: false`` drops the ReLU), resized bilinearly to H x W if the sizes still differ.

*STCA-FF* (student-teacher cross-attention feature fusion), teacher as query, student as key and value:
Q = W_q F^T, K = W_k phi(F^S) in R^{C_q x HW} (C_q = C / qk_ratio, 2 by default), V = W_v phi(F^S) in R^{C x HW}
(1x1 convs); Att = softmax_rows(Q^T K / sqrt(C_q)) in R^{HW x HW}; F^fus = V Att^T, reshaped to C x H x W
(+ F^T when ``residual`` is set; off by default, **(R)**).

*ASCM* (adaptive spatial-channel masking), M selection units, v = GAP(F^fus) in R^C, z = flatten(F^fus):
channel masks M^c_m = sigmoid(u_m * v) in R^C (u in R^{M x C} elementwise, the default **(R)**, or u in R^{M x 1}
with ``channel_units: scalar``, the summary's shape); spatial masks M^s_m = sigmoid(s_m^T z) in R^{HW}, s in R^{M x C}.

*Distillation*, D = (F^T - phi(F^S))^2 (C x HW per sample):
    L_ch = (1/M) sum_m [sum_k M^c_{m,k} sum_hw D_{k,hw}] / (HW sum_k M^c_{m,k})
    L_sp = (1/M) sum_m [sum_hw M^s_{m,hw} sum_k D_{k,hw}] / (C sum_hw M^s_{m,hw})       (**R**)
(the mask sums are floored at 1e-6 so that saturated masks give no 0/0).
*Diversity* (Dice, as in MasKD): L_div = mean_{m<m'} 2<M_m, M_m'> / (|M_m|^2 + |M_m'|^2), once over the spatial
masks and once over the channel masks, the two summed. All three are averaged over the batch.

    L = L_task + alpha (L_sp + L_ch) + beta L_div          (L_task is the run's ``ce`` method)

Q, K, V, phi and the selection units are trained by this same loss **(R)**; the teacher is detached. With
``detach_student_kv`` the keys and values read a detached phi(F^S) (off by default, **(R)**). Defaults (all **R**
except C_q = C/2): M = 6 (MasKD's token count), beta = 1, alpha = 1.

Diagnostics kept in buffers (so checkpoints carry them): ``mask_entropy`` (mean binary entropy of the masks on the
last step, the spec's drift check) and, after each epoch, ``mask_dice_first`` -- the mean Dice between the masks of
the first ``probe_images`` evaluation images at the end of the first epoch and now (the spec's "masks change" test
reads it at the last epoch).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.method import IMAGE_TASKS, EpochContext, FeaturePair, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs
from distill.methods.features.adapters import conv_regressor


def cross_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Row-softmax attention (B, HW, HW) of queries ``q`` over keys ``k``, both (B, C_q, HW), scaled by sqrt(C_q)."""
    return torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1)


def masked_channel_loss(d: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L_ch for squared errors ``d`` (B, C, HW) and channel masks (B, M, C): mean over m and b of
    sum_k M_k sum_hw D_k,hw / (HW sum_k M_k)."""
    per_channel = d.sum(2)  # B, C
    num = (masks * per_channel[:, None, :]).sum(2)  # B, M
    return (num / (d.shape[2] * masks.sum(2).clamp_min(1e-6))).mean()


def masked_spatial_loss(d: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L_sp for squared errors ``d`` (B, C, HW) and spatial masks (B, M, HW): mean over m and b of
    sum_hw M_hw sum_k D_k,hw / (C sum_hw M_hw)."""
    per_position = d.sum(1)  # B, HW
    num = (masks * per_position[:, None, :]).sum(2)
    return (num / (d.shape[1] * masks.sum(2).clamp_min(1e-6))).mean()


def dice_diversity(masks: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the pairs m < m' (and the batch) of 2 <M_m, M_m'> / (|M_m|^2 + |M_m'|^2); masks (B, M, N).
    1 for identical masks, 0 for disjoint ones; 0 when there is a single mask."""
    m = masks.shape[1]
    if m < 2:
        return masks.sum() * 0.0
    gram = masks @ masks.transpose(1, 2)  # B, M, M
    sq = torch.diagonal(gram, dim1=1, dim2=2)  # B, M
    dice = 2 * gram / (sq[:, :, None] + sq[:, None, :] + eps)
    i, j = torch.triu_indices(m, m, offset=1)
    return dice[:, i, j].mean()


def mask_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean Dice 2<a, b> / (|a|^2 + |b|^2) between two sets of masks of the same shape (..., N)."""
    return (2 * (a * b).sum(-1) / ((a * a).sum(-1) + (b * b).sum(-1) + eps)).mean()


class ACAMHead(nn.Module):
    """STCA-FF and ASCM for one feature level with C teacher channels: adapter phi, Q/K/V and the M selection
    units. :meth:`forward` gives the aligned student map and the masks."""

    def __init__(self, student_channels: int, channels: int, num_masks: int = 6, qk_ratio: int = 2,
                 channel_units: Literal["vector", "scalar"] = "vector", residual: bool = False,
                 detach_student_kv: bool = False, student_size: int | None = None, size: int | None = None,
                 adapter_relu: bool = True):
        super().__init__()
        cq = max(1, channels // qk_ratio)
        hs = student_size or size or 1
        ht = size or hs
        self.adapter = conv_regressor(torch.Size([1, student_channels, hs, hs]), torch.Size([1, channels, ht, ht]),
                                      relu=adapter_relu)
        self.q = nn.Conv2d(channels, cq, 1)
        self.k = nn.Conv2d(channels, cq, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.channel_units = nn.Parameter(torch.randn(num_masks, channels if channel_units == "vector" else 1)
                                          * (1.0 / math.sqrt(channels)))
        self.spatial_units = nn.Parameter(torch.randn(num_masks, channels) * (1.0 / math.sqrt(channels)))
        self.residual = residual
        self.detach_student_kv = detach_student_kv

    def align(self, student: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """phi(F^S) at the teacher's spatial size."""
        s = self.adapter(student)
        if tuple(s.shape[-2:]) != tuple(size):
            s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
        return s

    def fuse(self, teacher: torch.Tensor, aligned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F^fus (B, C, H, W) and the attention (B, HW, HW)."""
        kv = aligned.detach() if self.detach_student_kv else aligned
        q, k, v = self.q(teacher).flatten(2), self.k(kv).flatten(2), self.v(kv).flatten(2)
        att = cross_attention(q, k)
        fused = (v @ att.transpose(1, 2)).reshape(teacher.shape)
        return (fused + teacher if self.residual else fused), att

    def masks(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel masks (B, M, C) and spatial masks (B, M, HW) from the fused map."""
        v = fused.mean(dim=(2, 3))  # B, C
        z = fused.flatten(2)  # B, C, HW
        channel = torch.sigmoid(self.channel_units[None] * v[:, None, :])
        spatial = torch.sigmoid(torch.einsum("mc,bcn->bmn", self.spatial_units, z))
        return channel, spatial

    def forward(self, student: torch.Tensor, teacher: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        aligned = self.align(student, teacher.shape[-2:])
        fused, _ = self.fuse(teacher, aligned)
        channel, spatial = self.masks(fused)
        return aligned, channel, spatial


def acam_terms(aligned: torch.Tensor, teacher: torch.Tensor, channel: torch.Tensor, spatial: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """The three ACAM-KD terms for one level: ``ch`` (L_ch), ``sp`` (L_sp) and ``div`` (L_div)."""
    d = (teacher.float() - aligned.float()).pow(2).flatten(2)
    return {"ch": masked_channel_loss(d, channel.float()), "sp": masked_spatial_loss(d, spatial.float()),
            "div": dice_diversity(spatial.float()) + dice_diversity(channel.float())}


@register_method(
    "acam_kd",
    family="dense",
    paper="ACAM-KD: Adaptive and Cooperative Attention Masking for Knowledge Distillation",
    year=2025,
    arxiv="2503.06307",
    venue="ICCV",
    aliases=("acam",),
)
class ACAMKD(FeaturePair):
    """Feature MSE weighted by M channel and M spatial masks generated from a teacher-query / student-key
    cross-attention fusion, plus a Dice diversity term on the masks (reconstructed, see the module docstring)."""

    tasks = IMAGE_TASKS | frozenset({"semantic_segmentation"})
    method_name = "acam_kd"

    def __init__(self, student: str = "f3", teacher: str = "f3", num_masks: int = 6, qk_ratio: int = 2,
                 alpha: float = 1.0, beta: float = 1.0, detach_student_kv: bool = False,
                 channel_units: Literal["vector", "scalar"] = "vector", residual: bool = False,
                 probe_images: int = 64, adapter_relu: bool = True):
        super().__init__()
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        if qk_ratio < 1:
            raise ValueError(f"qk_ratio must be >= 1, got {qk_ratio}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if channel_units not in ("vector", "scalar"):
            raise ValueError(f"channel_units must be 'vector' or 'scalar', got {channel_units!r}")
        if probe_images < 0:
            raise ValueError(f"probe_images must be >= 0, got {probe_images}")
        self.tap_pair(student, teacher)
        self.num_masks, self.qk_ratio, self.alpha, self.beta = num_masks, qk_ratio, alpha, beta
        self.detach_student_kv, self.channel_units, self.residual = detach_student_kv, channel_units, residual
        self.probe_images, self.adapter_relu = probe_images, adapter_relu
        self.head: ACAMHead | None = None
        self.register_buffer("mask_entropy", torch.zeros(()))
        self.register_buffer("mask_dice_first", torch.full((), float("nan")))

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo | None = None) -> None:
        s, t = self.setup_features(student, teacher)
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"acam_kd needs (B, C, H, W) feature maps, got {tuple(s.shape)} (student) and "
                             f"{tuple(t.shape)} (teacher)")
        c, hw = t.shape[1], t.shape[2] * t.shape[3]
        self.head = ACAMHead(s.shape[1], c, self.num_masks, self.qk_ratio, self.channel_units, self.residual,
                             self.detach_student_kv, s.shape[2], t.shape[2], self.adapter_relu).to(s.device)
        # the probe masks of the first epoch: spatial then channel, per image
        self.register_buffer("probe_first", torch.zeros(self.probe_images, self.num_masks, hw + c, device=s.device))
        self.register_buffer("probe_set", torch.zeros((), dtype=torch.bool, device=s.device))

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.head is None:
            raise RuntimeError("ACAMKD.setup() must run before the first step (the trainer does this)")
        s, t = self.step_features(inputs)
        t = t.detach().float()
        aligned, channel, spatial = self.head(s.float(), t)
        terms = acam_terms(aligned, t, channel, spatial)
        with torch.no_grad():
            both = torch.cat([spatial.flatten(), channel.flatten()]).clamp(1e-6, 1 - 1e-6)
            self.mask_entropy.copy_(-(both * both.log() + (1 - both) * (1 - both).log()).mean())
        return {"mask": self.alpha * (terms["sp"] + terms["ch"]), "div": self.beta * terms["div"]}

    @torch.no_grad()
    def probe_masks(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Masks (N, M, HW + C) of (student, teacher) feature pairs, the first ``probe_images`` images."""
        assert self.head is not None
        out = []
        for s, t in pairs:
            _, channel, spatial = self.head(s.float(), t.float())
            out.append(torch.cat([spatial, channel], dim=2))
        return torch.cat(out)[: self.probe_images]

    def after_epoch(self, context: EpochContext) -> None:
        if self.head is None or self.probe_images == 0:
            return
        split = "eval" if "eval" in context.splits else context.splits[0]
        was = self.head.training
        self.head.eval()  # the adapter's BatchNorm: running statistics, and the probe must not update them
        try:
            pairs, n = [], 0
            for (_, so), (_, to) in zip(context.student_outputs(split, [self.student_feature]),
                                        context.teacher_outputs(split, [self.teacher_feature])):
                pairs.append((so.feature(self.student_feature), to.feature(self.teacher_feature)))
                n += pairs[-1][0].shape[0]
                if n >= self.probe_images:
                    break
            if n < self.probe_images:
                return
            masks = self.probe_masks(pairs).to(self.probe_first.device)
        finally:
            self.head.train(was)
        if not bool(self.probe_set):
            self.probe_first.copy_(masks)
            self.probe_set.fill_(True)
        self.mask_dice_first.fill_(float(mask_dice(masks, self.probe_first)))
