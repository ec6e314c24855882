"""CIFAR ResNets.

Two families share this file:

* :class:`CifarResNet`: the ResNets of He et al. for CIFAR (resnet20/32/44/56/110): a 3x3 stem of 16
  channels, three stages of ``n`` basic blocks with 16/32/64 channels (strides 1/2/2), global average pooling
  and a linear classifier; depth = 6n + 2. Shortcuts are "option A": parameter-free (strided subsampling plus
  zero channels).
  Module names follow akamaster/pytorch_resnet_cifar10, so its published checkpoints load with ``strict=True``
  once the ``module.`` prefix is stripped (see :func:`distill.models.load_pretrained_cifar_resnet`).
* :class:`CifarResNetB`: the variant used by the knowledge-distillation benchmarks of CRD/RepDistiller
  (resnet8x4, resnet32x4): configurable stem and stage widths (32 and 64/128/256 for the "x4" models),
  "option B" shortcuts (1x1 convolution + BN) where the shape changes. Module names follow RepDistiller, so
  its teacher checkpoints (a state dict saved under ``"model"``) load strictly as well.

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385. The "x4" widths: Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation",
ICLR 2020, arXiv:1910.10699.

All blocks avoid in-place operations on tensors that a forward hook may have captured, and every block returns
a plain tensor, so ``layerK`` outputs are the post-ReLU stage outputs and ``layerK.<last>.relu:input`` is the
pre-activation of the stage output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import Width

__all__ = [
    "CifarResNet",
    "CifarResNetB",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _stage_taps(num_blocks: int, classifier: str) -> dict[str, str]:
    last = num_blocks - 1
    return {
        "f0": "layer1:input",
        "f1": "layer1",
        "f2": "layer2",
        "f3": "layer3",
        "pooled": f"{classifier}:input",
        "f1_pre": f"layer1.{last}.relu:input",
        "f2_pre": f"layer2.{last}.relu:input",
        "f3_pre": f"layer3.{last}.relu:input",
    }


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel and append zero channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut cannot reduce the number of channels")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlockA(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus an option-A shortcut, then ReLU (module ``relu``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet with option-A shortcuts (depth = 6n + 2; 16/32/64 channels).

    Modules: ``conv1``, ``bn1`` (stem, followed by a functional ReLU), ``layer1``..``layer3``
    (``nn.Sequential`` of :class:`BasicBlockA` with ``conv1, bn1, conv2, bn2, shortcut, relu``), ``linear``.

    Feature taps (``self.feature_taps``):

    * ``f0`` = ``layer1:input``: post-ReLU stem output, 16 x 32 x 32;
    * ``f1``/``f2``/``f3`` = ``layer1``/``layer2``/``layer3``: post-ReLU stage outputs, 16x32x32, 32x16x16,
      64x8x8;
    * ``f1_pre``.. ``f3_pre`` = ``layerK.{n-1}.relu:input``: the same before the final ReLU;
    * ``pooled`` = ``linear:input``: globally average-pooled 64-d features.

    Parameters with 10 classes: resnet20 0.27M, resnet32 0.46M, resnet44 0.66M, resnet56 0.85M,
    resnet110 1.73M (add 5,850 for 100 classes).
    Paper: "Deep Residual Learning for Image Recognition", arXiv:1512.03385.
    """

    #: stages whose blocks ``train.gradient_checkpointing`` recomputes (distill.train.recompute)
    checkpoint_stages = ("layer1", "layer2", "layer3")

    feature_taps: dict[str, str]

    def __init__(self, depth: int = 20, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CifarResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        if len(widths) != 3:
            raise ValueError(f"CifarResNet needs 3 stage widths, got {list(widths)}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_ch = widths[0]
        stages = []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlockA(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        self.feature_taps = _stage_taps(n, "linear")
        # akamaster initialisation: Kaiming-normal (fan_in, gain sqrt(2)) for every conv and linear weight.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


class BasicBlockB(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus an identity or 1x1 conv + BN (``downsample``) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class CifarResNetB(nn.Module):
    """CIFAR ResNet with option-B shortcuts and configurable widths, as in the CRD/RepDistiller benchmarks.

    ``widths = (stem, stage1, stage2, stage3)``; the "x4" models use (32, 64, 128, 256), strides 1/2/2,
    depth = 6n + 2 basic blocks. Modules: ``conv1``, ``bn1`` (stem + functional ReLU), ``layer1``..``layer3``
    (blocks with ``conv1, bn1, conv2, bn2, downsample, relu``), ``fc``.

    Feature taps (``self.feature_taps``): ``f0`` = ``layer1:input`` (stem output, 32x32x32 for x4),
    ``f1``..``f3`` = ``layer1``..``layer3`` (post-ReLU, 64x32x32, 128x16x16, 256x8x8 for x4),
    ``f1_pre``..``f3_pre`` (before the last ReLU of each stage), ``pooled`` = ``fc:input`` (256-d for x4).

    Parameters with 100 classes: resnet8x4 1.23M, resnet32x4 7.43M. Papers: "Deep Residual Learning for Image
    Recognition", arXiv:1512.03385; "Contrastive Representation Distillation", arXiv:1910.10699.
    """

    #: stages whose blocks ``train.gradient_checkpointing`` recomputes (distill.train.recompute)
    checkpoint_stages = ("layer1", "layer2", "layer3")

    feature_taps: dict[str, str]

    def __init__(self, depth: int = 8, num_classes: int = 100, widths: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CifarResNetB depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"CifarResNetB needs (stem, stage1, stage2, stage3) widths, got {list(widths)}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_ch = widths[0]
        stages = []
        for i, width in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlockB(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_taps = _stage_taps(n, "fc")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


class CifarResNetDepths(CifarResNet):
    """:class:`CifarResNet` with its own number of blocks per stage ``depths = (d1, d2, d3)`` (the ResNet20-family
    search space "S1" of DisWOT, CVPR 2023: d_i in {1, 3, 5, 7}; (3, 3, 3) is ResNet-20, (7, 7, 7) ResNet-44).
    Same modules, shortcuts and initialisation; taps ``f1_pre``..``f3_pre`` name each stage's own last block."""

    def __init__(self, depths: Sequence[int] = (3, 3, 3), num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64)):
        depths = tuple(int(d) for d in depths)
        if len(depths) != 3 or min(depths) < 1:
            raise ValueError(f"depths: 3 positive block counts (one per stage), got {list(depths)}")
        super().__init__(6 * max(depths) + 2, num_classes=num_classes, widths=widths)
        for name, d in zip(("layer1", "layer2", "layer3"), depths):
            setattr(self, name, nn.Sequential(*list(getattr(self, name))[:d]))
        self.depths = depths
        self.depth = 2 * sum(depths) + 2
        self.feature_taps = {**_stage_taps(1, "linear"),
                             **{f"f{i + 1}_pre": f"layer{i + 1}.{d - 1}.relu:input" for i, d in enumerate(depths)}}


def resnet_depths(num_classes: int = 10, depths: tuple[int, int, int] = (3, 3, 3),
                  widths: tuple[Width, Width, Width] = (16, 32, 64)) -> CifarResNetDepths:
    """A CIFAR ResNet with ``depths`` blocks in its three stages (:class:`CifarResNetDepths`)."""
    return CifarResNetDepths(depths, num_classes=num_classes, widths=widths)


def resnet20(num_classes: int = 10, widths: tuple[Width, Width, Width] = (16, 32, 64)) -> CifarResNet:
    """ResNet-20 (3 blocks per stage), option-A shortcuts; 0.27M parameters."""
    return CifarResNet(20, num_classes=num_classes, widths=widths)


def resnet32(num_classes: int = 10, widths: tuple[Width, Width, Width] = (16, 32, 64)) -> CifarResNet:
    """ResNet-32 (5 blocks per stage), option-A shortcuts; 0.46M parameters."""
    return CifarResNet(32, num_classes=num_classes, widths=widths)


def resnet44(num_classes: int = 10, widths: tuple[Width, Width, Width] = (16, 32, 64)) -> CifarResNet:
    """ResNet-44 (7 blocks per stage), option-A shortcuts; 0.66M parameters."""
    return CifarResNet(44, num_classes=num_classes, widths=widths)


def resnet56(num_classes: int = 10, widths: tuple[Width, Width, Width] = (16, 32, 64)) -> CifarResNet:
    """ResNet-56 (9 blocks per stage), option-A shortcuts; 0.85M parameters."""
    return CifarResNet(56, num_classes=num_classes, widths=widths)


def resnet110(num_classes: int = 10, widths: tuple[Width, Width, Width] = (16, 32, 64)) -> CifarResNet:
    """ResNet-110 (18 blocks per stage), option-A shortcuts; 1.73M parameters."""
    return CifarResNet(110, num_classes=num_classes, widths=widths)


def resnet8x4(num_classes: int = 10) -> CifarResNetB:
    """ResNet-8x4 (1 block per stage, widths 32/64/128/256), option-B shortcuts; 1.23M params (100 cl.)."""
    return CifarResNetB(8, num_classes=num_classes, widths=(32, 64, 128, 256))


def resnet32x4(num_classes: int = 10) -> CifarResNetB:
    """ResNet-32x4 (5 blocks per stage, widths 32/64/128/256), option-B shortcuts; 7.43M params (100 cl.)."""
    return CifarResNetB(32, num_classes=num_classes, widths=(32, 64, 128, 256))
