"""Wide residual networks for CIFAR (WRN-d-k), in the form used by the CRD/RepDistiller benchmarks.

Paper: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146.

Pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3), depth = 6n + 4, a 3x3 stem of 16 channels and
three groups of ``n`` blocks with 16k/32k/64k channels (strides 1/2/2); a block whose width or stride changes
applies BN-ReLU before both its convolution and its 1x1 shortcut convolution. The network ends with BN-ReLU,
global average pooling and a linear classifier. Module names follow RepDistiller (``block1.layer.0.conv1``,
``convShortcut``, ``bn1``, ``fc``), so its checkpoints load strictly.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .bounds import Rate

__all__ = ["WideResNet", "wrn", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-(dropout)-conv3x3, plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_channels == out_channels and stride == 1
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # identity shortcut takes the raw input; a projecting shortcut takes the activated input
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """A group of ``n`` wide blocks; the first one changes width and stride. Holds them in ``layer``."""

    def __init__(self, n: int, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, drop_rate
                )
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs (depth = 6n + 4).

    Modules: ``conv1`` (stem), ``block1``..``block3`` (:class:`NetworkBlock`), ``bn1`` (final BN, followed by
    a functional ReLU), ``fc``.

    Feature taps (``self.feature_taps``; pre-activation network, so stage outputs are pre-BN sums):

    * ``f0`` = ``block1:input``: stem output, 16 x 32 x 32;
    * ``f1``/``f2``/``f3`` = ``block1``/``block2``/``block3``: 16k x 32 x 32, 32k x 16 x 16, 64k x 8 x 8;
    * ``f1_pre``/``f2_pre``/``f3_pre`` = ``block2.layer.0.bn1``/``block3.layer.0.bn1``/``bn1``: the same
      features after the BN that precedes their next ReLU (the "pre-ReLU" features of OFD);
    * ``pooled`` = ``fc:input``: 64k-d pooled features.

    Parameters with 100 classes: WRN-16-2 0.70M, WRN-40-2 2.26M, WRN-16-1 0.18M, WRN-40-1 0.57M.
    Paper: "Wide Residual Networks", arXiv:1605.07146.
    """

    feature_taps: dict[str, str] = {
        "f0": "block1:input",
        "f1": "block1",
        "f2": "block2",
        "f3": "block3",
        "pooled": "fc:input",
        "f1_pre": "block2.layer.0.bn1",
        "f2_pre": "block3.layer.0.bn1",
        "f3_pre": "bn1",
    }

    def __init__(self, depth: int = 16, widen_factor: int = 2, num_classes: int = 10, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.feature_taps = dict(type(self).feature_taps)  # per-instance copy
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def wrn(depth: Annotated[int, Field(ge=10, le=100)] = 16, widen_factor: Annotated[int, Field(gt=0, le=16)] = 2,
        num_classes: int = 10, drop_rate: Rate = 0.0) -> WideResNet:
    """Generic WRN-depth-widen_factor (defaults: WRN-16-2)."""
    return WideResNet(depth=depth, widen_factor=widen_factor, num_classes=num_classes, drop_rate=drop_rate)


def wrn_16_1(num_classes: int = 10, drop_rate: Rate = 0.0) -> WideResNet:
    """WRN-16-1: 2 blocks per group, widths 16/32/64."""
    return WideResNet(16, 1, num_classes=num_classes, drop_rate=drop_rate)


def wrn_16_2(num_classes: int = 10, drop_rate: Rate = 0.0) -> WideResNet:
    """WRN-16-2: 2 blocks per group, widths 32/64/128; 0.70M parameters (100 classes)."""
    return WideResNet(16, 2, num_classes=num_classes, drop_rate=drop_rate)


def wrn_40_1(num_classes: int = 10, drop_rate: Rate = 0.0) -> WideResNet:
    """WRN-40-1: 6 blocks per group, widths 16/32/64."""
    return WideResNet(40, 1, num_classes=num_classes, drop_rate=drop_rate)


def wrn_40_2(num_classes: int = 10, drop_rate: Rate = 0.0) -> WideResNet:
    """WRN-40-2: 6 blocks per group, widths 32/64/128; 2.26M parameters (100 classes)."""
    return WideResNet(40, 2, num_classes=num_classes, drop_rate=drop_rate)
