"""The segmentation family's models: a ResNet-style trunk with taps at strides 2/4/8/16 and a light decoder.

``seg_resnet`` is a small CNN (no pretrained weights exist here): a 3x3 stem at full resolution, four stages of
basic residual blocks that each halve the resolution (strides 2, 4, 8, 16: taps ``f1``..``f4``), and a decoder that
adds 1x1 projections of stages 2, 3 and 4 at stride 4, mixes them with a 3x3 conv (tap ``dec``), predicts the
classes with a 1x1 conv and upsamples the logits bilinearly to the input size. ``seg_resnet_teacher`` /
``seg_resnet_student`` are the two sizes the recipes use.

The CNN-ViT collaborative-learning pair (spec row 38, ``../shared/methods/dense.md``): ``seg_resnet20``, the CIFAR
ResNet-20 trunk (3x3 stem, three stages of three option-A blocks at strides 1/2/2: 16 ch @ 64, 32 @ 32, 64 @ 16 on a
64-px mosaic; taps ``f1``..``f3``) with a 1x1 head on stage 3, and ``seg_vit_micro``, a ViT 96 x 4 (patch 4, no cls
token: 16 x 16 tokens on 64 px) with its linear head applied to every token (taps as :mod:`distill.models.vit`).
Both upsample their logits bilinearly to the input size.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torch import nn

from distill.config import ConfigError
from distill.models.cifar_resnet import CifarResNet
from distill.models.patch_embed import OverlapPatchEmbed
from distill.models.vit import VisionTransformer
from distill.tasks.common import call_builder, check_num_classes, load_model_weights, validate_model_options

#: what the family passes to the builder itself
SUPPLIED = ("num_classes",)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class SegResNet(nn.Module):
    feature_taps = {"f1": "layer1", "f2": "layer2", "f3": "layer3", "f4": "layer4", "dec": "fuse"}

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (16, 32, 64, 128),
                 depths: tuple[int, int, int, int] = (1, 1, 1, 1), decoder: int = 64, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for w, d in zip(widths, depths, strict=True):
            blocks = [BasicBlock(cin, w, 2)] + [BasicBlock(w, w, 1) for _ in range(d - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.lat2 = nn.Conv2d(widths[1], decoder, 1)
        self.lat3 = nn.Conv2d(widths[2], decoder, 1)
        self.lat4 = nn.Conv2d(widths[3], decoder, 1)
        self.fuse = nn.Sequential(nn.Conv2d(decoder, decoder, 3, 1, 1, bias=False), nn.BatchNorm2d(decoder),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(decoder, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        s = f2.shape[-2:]
        y = self.lat2(f2) + F.interpolate(self.lat3(f3), size=s, mode="bilinear", align_corners=False) \
            + F.interpolate(self.lat4(f4), size=s, mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(y))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


Width4 = Annotated[list[Annotated[int, Field(gt=0, le=4096)]], Field(min_length=4, max_length=4)]
Depth4 = Annotated[list[Annotated[int, Field(gt=0, le=64)]], Field(min_length=4, max_length=4)]


@validate_call
def seg_resnet(num_classes: Annotated[int, Field(gt=0)], widths: Width4 = (16, 32, 64, 128),  # type: ignore[assignment]
               depths: Depth4 = (1, 1, 1, 1), decoder: Annotated[int, Field(gt=0, le=4096)] = 64) -> nn.Module:  # type: ignore[assignment]
    """A ResNet-style trunk (stage ``widths`` and ``depths``, strides 2/4/8/16) with a ``decoder``-wide head."""
    return SegResNet(num_classes, tuple(widths), tuple(depths), decoder)  # type: ignore[arg-type]


@validate_call
def seg_resnet_teacher(num_classes: Annotated[int, Field(gt=0)]) -> nn.Module:
    """The teacher size: widths 32/64/128/256, one block per stage (two in stage 3), decoder 96."""
    return SegResNet(num_classes, (32, 64, 128, 256), (1, 1, 2, 1), 96)


@validate_call
def seg_resnet_student(num_classes: Annotated[int, Field(gt=0)]) -> nn.Module:
    """The student size: widths 16/32/64/128, one block per stage, decoder 64."""
    return SegResNet(num_classes, (16, 32, 64, 128), (1, 1, 1, 1), 64)


SEGMENTATION_MODELS = {"seg_resnet": seg_resnet, "seg_resnet_teacher": seg_resnet_teacher,
                       "seg_resnet_student": seg_resnet_student}


def build_segmentation_model(model_cfg: Any, num_classes: int, base_dir: str | None, key: str) -> nn.Module:
    if model_cfg.arch not in SEGMENTATION_MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task semantic_segmentation; allowed: "
                          f"{', '.join(SEGMENTATION_MODELS)}")
    builder = SEGMENTATION_MODELS[model_cfg.arch]
    options = validate_model_options(builder, model_cfg.options, f"{key}.options", model_cfg.arch, SUPPLIED)
    num_classes = check_num_classes(model_cfg, num_classes, key)
    model = call_builder(builder, key, num_classes, **options)
    return load_model_weights(model, model_cfg, base_dir, key)


# -- mini-MiT (SegFormer's Mix Transformer, small), the TransKD students and teachers ---------------------------
class SRAttention(nn.Module):
    """Multi-head attention whose keys and values come from the token grid reduced by ``sr`` (a strided conv and
    LayerNorm), SegFormer's efficient self-attention."""

    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr, sr) if sr > 1 else None
        self.norm = nn.LayerNorm(dim) if sr > 1 else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        src = x
        if self.sr is not None:
            src = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(src).view(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """fc -> depth-wise 3x3 conv on the token grid -> GELU -> fc (SegFormer's Mix-FFN, ratio 4)."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        y = self.fc1(x)
        b, n, c = y.shape
        y = self.dw(y.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(y))


class MiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SRAttention(dim, heads, sr)
        self.norm2, self.ffn = nn.LayerNorm(dim), MixFFN(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.ffn(self.norm2(x), h, w)


class MiTStage(nn.Module):
    """Patch embedding (tap ``patch_embed``: tokens after its LayerNorm), blocks, LayerNorm, back to a map."""

    def __init__(self, cin: int, dim: int, depth: int, heads: int, sr: int, kernel: int, stride: int):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(cin, dim, kernel, stride)
        self.blocks = nn.ModuleList(MiTBlock(dim, heads, sr) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = -(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride)
        t = self.patch_embed(x)
        for blk in self.blocks:
            t = blk(t, h, w)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(t.shape[0], -1, h, w)


class MiniMiT(nn.Module):
    """A small Mix Transformer with SegFormer's all-MLP decoder. Stage i: patch embed (kernel 7 stride ``strides[0]``
    for stage 1, kernel 3 stride 2 after), ``depths[i]`` blocks with spatial-reduction ratio ``sr[i]``, LayerNorm.
    Taps: ``s1``..``s4`` the stage outputs (B, C_i, H_i, W_i), ``e1``..``e4`` the patch embeddings (B, N_i, C_i)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 160, 256),
                 depths: tuple[int, ...] = (2, 2, 2, 2), heads: tuple[int, ...] = (1, 2, 5, 8),
                 sr: tuple[int, ...] = (8, 4, 2, 1), strides: tuple[int, ...] = (4, 2, 2, 2), decoder: int = 128,
                 in_channels: int = 3):
        super().__init__()
        stages, cin = [], in_channels
        for i, (w, d, h, r, s) in enumerate(zip(widths, depths, heads, sr, strides, strict=True)):
            stages.append(MiTStage(cin, w, d, h, r, 7 if i == 0 else 3, s))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.linear = nn.ModuleList(nn.Conv2d(w, decoder, 1) for w in widths)
        self.fuse = nn.Sequential(nn.Conv2d(decoder * len(widths), decoder, 1, bias=False), nn.BatchNorm2d(decoder),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(decoder, num_classes, 1)
        self.feature_taps = {f"s{i + 1}": f"stages.{i}" for i in range(len(widths))} | {
            f"e{i + 1}": f"stages.{i}.patch_embed" for i in range(len(widths))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        s = feats[0].shape[-2:]
        ups = [F.interpolate(lin(f), size=s, mode="bilinear", align_corners=False)
               for lin, f in zip(self.linear, feats, strict=True)]
        logits = self.classifier(self.fuse(torch.cat(ups[::-1], 1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@validate_call
def mit_b0_mini(num_classes: Annotated[int, Field(gt=0)]) -> nn.Module:
    """The TransKD student: MiT-B0 widths 32/64/160/256, depths 2/2/2/2, strides 4/2/2/2 (16/8/4/2 grids on 64 px)."""
    return MiniMiT(num_classes, (32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8))


@validate_call
def mit_b1_mini(num_classes: Annotated[int, Field(gt=0)]) -> nn.Module:
    """The TransKD teacher: MiT-B1 widths 64/128/320/512, depths 2/2/2/2, same strides and grids."""
    return MiniMiT(num_classes, (64, 128, 320, 512), (2, 2, 2, 2), (1, 2, 5, 8), decoder=256)


SEGMENTATION_MODELS.update({"mit_b0_mini": mit_b0_mini, "mit_b1_mini": mit_b1_mini})


# -- the CNN-ViT collaborative-learning pair (row 38): ResNet-20 trunk + 1x1 head, ViT 96 x 4 + per-token head ----
class SegResNet20(CifarResNet):
    """A CIFAR ResNet trunk (``conv1``, ``bn1``, ``layer1``..``layer3``, as :class:`CifarResNet`) whose stage-3 map
    (64 ch at 1/4 of the input side) goes through a 1x1 conv ``head``; the logits are upsampled to the input size.
    Taps: the trunk's (``f0``..``f3``, ``fK_pre``) and ``conv1:input`` (the normalised image)."""

    def __init__(self, num_classes: int, depth: int = 20):
        super().__init__(depth, num_classes)
        del self.linear
        self.head = nn.Conv2d(64, num_classes, 1)
        self.feature_taps = {k: v for k, v in self.feature_taps.items() if k != "pooled"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.interpolate(self.head(out), size=x.shape[-2:], mode="bilinear", align_corners=False)


class SegViT(VisionTransformer):
    """A :class:`VisionTransformer` with ``dense=True`` (the linear head on every patch token, no cls token) whose
    (B, K, h, w) token logits are upsampled bilinearly to the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@validate_call
def seg_resnet20(num_classes: Annotated[int, Field(gt=0)]) -> nn.Module:
    """ResNet-20 trunk (16/32/64 ch, strides 1/2/2: stage 3 is 64 ch @ 16 x 16 on 64 px) + a 1x1 head (row 38)."""
    return SegResNet20(num_classes, 20)


@validate_call
def seg_vit_micro(num_classes: Annotated[int, Field(gt=0)], image_size: Annotated[int, Field(gt=0)] = 64,
                  patch_size: Annotated[int, Field(gt=0)] = 4) -> nn.Module:
    """ViT 96 x 4 (1 head, MLP ratio 4, 4 stages = blocks 1-4) on ``patch_size`` patches of ``image_size`` inputs
    (16 x 16 tokens on 64 px), no cls token, a linear head per token (row 38's ViT student)."""
    return SegViT(num_classes, image_size, patch_size, dim=96, depth=4, cls_token=False, stages=4, dense=True)


SEGMENTATION_MODELS.update({"seg_resnet20": seg_resnet20, "seg_vit_micro": seg_vit_micro})
