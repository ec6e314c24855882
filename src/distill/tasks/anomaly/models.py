"""The anomaly family's students: a frozen copy of the teacher encoder, a one-class bottleneck and a reverse
decoder, whose forward gives the anomaly map (:func:`distill.methods.dense.reverse_distillation.anomaly_map`).

Encoder levels of a CIFAR ResNet at 64 px (:func:`encoder_levels`): ``f0`` stem 16 @ 64, ``f1`` stage 1 16 @ 64,
``f2`` stage 2 32 @ 32, ``f3`` stage 3 64 @ 16 (the teacher's taps of the same names). The student's rebuilt maps
are the outputs of its modules ``out0``..``out3`` (identities, so that they can be tapped by name).

* :func:`rd4ad_student` (RD4AD's shape, levels f1-f3): the OCBE brings f1 and f2 to the size of f3 with stride-2
  3x3 conv-BN-ReLU, concatenates the three and runs a residual stage with stride 2 (the "layer 4"); the decoder
  mirrors the encoder with stride-2 transposed-conv residual blocks; no skips.
* :func:`dbfad_student` (DBFAD's ``ReverseStudent``, levels f0-f3): each level goes through stride-2 1x1
  conv-ReLU-BN stacks to 64 @ 16; their sum passes two 1x1 conv-ReLU-BN, one with stride 2 to 128 @ 8, SSPCAB
  (four offset 1x1 convs around a masked centre + squeeze-excitation) and an attention block (3x3 conv-ReLU,
  3x3 conv, softmax over the last axis, times the first); the decoder has four residual stages (64 @ 16, 32 @ 32,
  16 @ 64, 16 @ 64) and, unless ``skips`` is off (DBFAD's "DG" variant), attention-filtered skips from encoder
  levels 2, 1 and 0 (3x3 conv-ReLU-BN, average pooling to the target size, 1x1 attention with a softmax over the
  last axis) added to its first three outputs. Channel counts are DBFAD's divided by 4 (the ResNet-56's widths).

The encoder is frozen: its parameters never require gradients and it stays in eval mode whatever mode the student
is put in; :meth:`ReverseStudent.load_encoder` copies the teacher's weights into it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torch import nn

from distill.methods.dense.reverse_distillation import Mode, anomaly_map
from distill.models import MODELS

EncoderArch = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


def encoder_levels(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """[stem, stage 1, stage 2, stage 3] of a CIFAR ResNet (modules ``conv1``, ``bn1``, ``layer1..3``)."""
    s = F.relu(encoder.bn1(encoder.conv1(x)))
    l1 = encoder.layer1(s)
    l2 = encoder.layer2(l1)
    return [s, l1, l2, encoder.layer3(l2)]


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


def _conv_relu_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    """DBFAD's ``conv1BnRelu`` / ``conv3BnRelu``: the ReLU comes before the BN."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.ReLU(),
                         nn.BatchNorm2d(cout))


class DecoderBlock(nn.Module):
    """A residual block that keeps the size (3x3 conv) or doubles it (2x2 transposed conv with stride 2)."""

    def __init__(self, cin: int, cout: int, up: bool):
        super().__init__()
        self.conv1 = (nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False) if up
                      else nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if up or cin != cout:
            self.shortcut = nn.Sequential(
                nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False) if up else nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class EncoderBlock(nn.Module):
    """A residual block with a strided 3x3 conv and a 1x1 strided shortcut (the OCBE's "layer 4")."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, up: bool) -> nn.Sequential:
    return nn.Sequential(DecoderBlock(cin, cout, up), *[DecoderBlock(cout, cout, False) for _ in range(blocks - 1)])


class SSPCAB(nn.Module):
    """Self-supervised predictive convolutional attention block (Ristea et al., CVPR 2022), as DBFAD uses it: four
    1x1 convs read the corners of a 3x3 window whose centre is masked (offset ``1 + dilation`` = 2), their ReLU'd
    sum goes through squeeze-excitation (reduction 8)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 1) for _ in range(4)])
        self.fc1 = nn.Linear(channels, max(channels // reduction, 1))
        self.fc2 = nn.Linear(max(channels // reduction, 1), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, b = 2, 4  # padding kernel + dilation; border kernel + 2 dilation + 1 (kernel 1, dilation 1)
        z = F.pad(x, (p, p, p, p))
        parts = [z[:, :, :-b, :-b], z[:, :, b:, :-b], z[:, :, :-b, b:], z[:, :, b:, b:]]
        y = F.relu(sum(conv(part) for conv, part in zip(self.convs, parts, strict=True)))
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean(dim=(2, 3))))))
        return y * w[:, :, None, None]


class SoftmaxAttention(nn.Module):
    """DBFAD's ``Attention`` (``kernel`` 1: 1x1-ReLU, 1x1-ReLU, 1x1-softmax) and ``Attention2`` (``kernel`` 3:
    3x3-ReLU, 3x3-softmax); the softmax runs over the last (width) axis, as in the official code, and multiplies
    the first conv's output."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv1 = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(cout, cout, kernel, padding=kernel // 2)
        self.conv3 = nn.Conv2d(cout, cout, 1) if kernel == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.conv1(x))
        a = self.conv2(x1)
        if self.conv3 is not None:
            a = self.conv3(F.relu(a))
        return a.softmax(dim=-1) * x1


class ReverseStudent(nn.Module):
    """Frozen encoder + bottleneck + decoder; ``forward`` gives the anomaly map (B, S, S). Subclasses build
    ``bottleneck``/``decoder`` and implement :meth:`decode` (encoder levels -> rebuilt levels)."""

    levels: tuple[int, ...] = (0, 1, 2, 3)

    def __init__(self, encoder: EncoderArch, score: Mode, sigma: float):
        super().__init__()
        self.encoder = MODELS[encoder](num_classes=10)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.score, self.sigma = score, sigma
        for i in range(4):
            self.add_module(f"out{i}", nn.Identity())

    def train(self, mode: bool = True) -> ReverseStudent:
        super().train(mode)
        self.encoder.eval()  # frozen: its BN statistics never move
        return self

    @torch.no_grad()
    def load_encoder(self, teacher: nn.Module) -> None:
        """Copy the teacher's weights into the frozen encoder (the teacher is left as it is)."""
        self.encoder.load_state_dict(teacher.state_dict())
        self.encoder.requires_grad_(False)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.encoder.eval()
        return encoder_levels(self.encoder, x)

    def decode(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def rebuild(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's maps of the levels in ``levels``, each through its ``out<k>`` module."""
        out = self.decode(feats)
        return [getattr(self, f"out{k}")(d) for k, d in zip(self.levels, out, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        rebuilt = self.rebuild(feats)
        teacher = [feats[k] for k in self.levels]
        return anomaly_map(rebuilt, teacher, tuple(x.shape[-2:]), self.score, 0.0 if self.training else self.sigma)


class RD4ADStudent(ReverseStudent):
    levels = (1, 2, 3)

    def __init__(self, encoder: EncoderArch = "resnet56", embed: int = 128, blocks: int = 1, score: Mode = "rd4ad",
                 sigma: float = 4.0):
        super().__init__(encoder, score, sigma)
        c1, c2, c3 = 16, 32, 64
        self.ocbe1 = nn.Sequential(_conv_bn_relu(c1, c2, 3, 2), _conv_bn_relu(c2, c3, 3, 2))
        self.ocbe2 = _conv_bn_relu(c2, c3, 3, 2)
        self.bottleneck = nn.Sequential(EncoderBlock(3 * c3, embed, 2),
                                        *[EncoderBlock(embed, embed, 1) for _ in range(blocks - 1)])
        self.dec3 = _stage(embed, c3, 2, up=True)
        self.dec2 = _stage(c3, c2, 2, up=True)
        self.dec1 = _stage(c2, c1, 2, up=True)

    def decode(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        _, f1, f2, f3 = feats
        z = self.bottleneck(torch.cat([self.ocbe1(f1), self.ocbe2(f2), f3], dim=1))
        d3 = self.dec3(z)
        d2 = self.dec2(d3)
        return [self.dec1(d2), d2, d3]


class DBFADStudent(ReverseStudent):
    levels = (0, 1, 2, 3)

    def __init__(self, encoder: EncoderArch = "resnet56", embed: int = 128, blocks: int = 2, skips: bool = True,
                 score: Mode = "dbfad", sigma: float = 4.0):
        super().__init__(encoder, score, sigma)
        c0, c1, c2, c3 = 16, 16, 32, 64
        self.skips = skips
        self.fuse0 = nn.Sequential(_conv_relu_bn(c0, c2, 1, 2), _conv_relu_bn(c2, c3, 1, 2))
        self.fuse1 = nn.Sequential(_conv_relu_bn(c1, c2, 1, 2), _conv_relu_bn(c2, c3, 1, 2))
        self.fuse2 = _conv_relu_bn(c2, c3, 1, 2)
        self.fuse3 = _conv_relu_bn(c3, c3, 1, 1)
        self.bottleneck = nn.Sequential(_conv_relu_bn(c3, c3, 1, 1), _conv_relu_bn(c3, c3, 1, 1),
                                        _conv_relu_bn(c3, embed, 1, 2), SSPCAB(embed),
                                        SoftmaxAttention(embed, embed, 3))
        if skips:
            self.skip0 = nn.Sequential(_conv_relu_bn(c0, c1, 3, 1), SoftmaxAttention(c1, c1, 1))
            self.skip1 = nn.Sequential(_conv_relu_bn(c1, c2, 3, 1), nn.AvgPool2d(2), SoftmaxAttention(c2, c2, 1))
            self.skip2 = nn.Sequential(_conv_relu_bn(c2, c3, 3, 1), nn.AvgPool2d(2), SoftmaxAttention(c3, c3, 1))
        self.dec3 = _stage(embed, c3, blocks, up=True)
        self.dec2 = _stage(c3, c2, blocks, up=True)
        self.dec1 = _stage(c2, c1, blocks, up=True)
        self.dec0 = _stage(c1, c0, blocks, up=False)

    def decode(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        f0, f1, f2, f3 = feats
        z = self.bottleneck(self.fuse0(f0) + self.fuse1(f1) + self.fuse2(f2) + self.fuse3(f3))
        d3 = self.dec3(z)
        if self.skips:
            d3 = d3 + self.skip2(f2)
        d2 = self.dec2(d3)
        if self.skips:
            d2 = d2 + self.skip1(f1)
        d1 = self.dec1(d2)
        if self.skips:
            d1 = d1 + self.skip0(f0)
        return [self.dec0(d1), d1, d2, d3]


@validate_call
def rd4ad_student(encoder: EncoderArch = "resnet56", embed: Annotated[int, Field(gt=0)] = 128,
                  blocks: Annotated[int, Field(ge=1, le=4)] = 1, score: Mode = "rd4ad",
                  sigma: Annotated[float, Field(ge=0)] = 4.0) -> nn.Module:
    """RD4AD-style reverse student (3 levels, OCBE, no skips); see the module docstring."""
    return RD4ADStudent(encoder, embed, blocks, score, sigma)


@validate_call
def dbfad_student(encoder: EncoderArch = "resnet56", embed: Annotated[int, Field(gt=0)] = 128,
                  blocks: Annotated[int, Field(ge=1, le=4)] = 2, skips: bool = True, score: Mode = "dbfad",
                  sigma: Annotated[float, Field(ge=0)] = 4.0) -> nn.Module:
    """DBFAD-style reverse student (4 levels, attention bottleneck, attention skips); see the module docstring."""
    return DBFADStudent(encoder, embed, blocks, skips, score, sigma)


class FeatureMeanBaseline(nn.Module):
    """The no-student baseline: the cosine distance of the frozen encoder's features to their per-channel mean over
    the training crops, summed over ``levels`` with the same weights, up-sampling and filter as the students' maps.
    Call :meth:`fit` with the training inputs first."""

    def __init__(self, encoder: nn.Module, levels: tuple[int, ...] = (0, 1, 2, 3), score: Mode = "dbfad",
                 sigma: float = 4.0):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.levels, self.score, self.sigma = levels, score, sigma
        self.means: list[torch.Tensor] = []

    @torch.no_grad()
    def fit(self, batches: list[torch.Tensor]) -> None:
        """The per-channel mean of every level over all pixels of the training inputs ``batches``."""
        sums = [torch.zeros(()) for _ in self.levels]
        count = [0 for _ in self.levels]
        for x in batches:
            feats = encoder_levels(self.encoder, x)
            for i, k in enumerate(self.levels):
                sums[i] = sums[i] + feats[k].sum(dim=(0, 2, 3))
                count[i] += feats[k].shape[0] * feats[k].shape[2] * feats[k].shape[3]
        self.means = [s / c for s, c in zip(sums, count, strict=True)]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = encoder_levels(self.encoder, x)
        teacher = [feats[k] for k in self.levels]
        means = [m.view(1, -1, 1, 1).expand_as(t) for m, t in zip(self.means, teacher, strict=True)]
        return anomaly_map(means, teacher, tuple(x.shape[-2:]), self.score, self.sigma)


ANOMALY_MODELS = {"rd4ad_student": rd4ad_student, "dbfad_student": dbfad_student}
#: the teacher archs (a CIFAR ResNet of :data:`distill.models.MODELS`)
TEACHER_ARCHS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
