"""MobileNetV2 for CIFAR, in the form used by the CRD/RepDistiller benchmarks ("mobile_half").

Paper: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, arXiv:1801.04381.

CIFAR form: a stride-2 3x3 stem, seven groups of inverted-residual blocks (expansion t, channels c, repeats n,
first stride s): (1,16,1,1), (t,24,2,1), (t,32,3,2), (t,64,4,2), (t,96,3,1), (t,160,3,2), (t,320,1,1) with all
channels scaled by the width multiplier (0.5 in the benchmarks, t = 6), a 1x1 conv to 1280 channels, global
average pooling and a linear classifier. Every block, the t = 1 ones included, has its 1x1 expansion conv.
Module names follow RepDistiller (``conv1``, ``blocks.i.j.conv.k``, ``conv2``, ``classifier.0``).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from .bounds import Multiplier

__all__ = ["CifarMobileNetV2", "InvertedResidual", "mobilenetv2"]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()
    )


class InvertedResidual(nn.Module):
    """1x1 expand (BN, ReLU) -> 3x3 depthwise (stride; BN, ReLU) -> 1x1 linear projection (BN), + identity."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs (stem stride 2; spatial 16 -> 16 -> 16 -> 8 -> 4 -> 4 -> 2 -> 2).

    Modules: ``conv1`` (stem conv-BN-ReLU), ``blocks`` (``nn.ModuleList`` of 7 ``nn.Sequential`` groups of
    :class:`InvertedResidual`), ``conv2`` (1x1 conv-BN-ReLU to 1280 channels), ``classifier``
    (``Sequential`` of one ``Linear``).

    Feature taps (``self.feature_taps``; block outputs are linear bottlenecks, so no separate pre-ReLU taps):

    * ``f0`` = ``conv1``: stem output (16 x 16 x 16 at width 0.5);
    * ``f1`` = ``blocks.1`` (12 x 16 x 16), ``f2`` = ``blocks.2`` (16 x 8 x 8),
      ``f3`` = ``blocks.4`` (48 x 4 x 4), ``f4`` = ``blocks.6`` (160 x 2 x 2), at width 0.5;
    * ``pooled`` = ``classifier:input``: 1280-d pooled features.

    Parameters with 100 classes at width 0.5, t = 6: 0.81M. Paper: arXiv:1801.04381.
    """

    feature_taps: dict[str, str] = {
        "f0": "conv1",
        "f1": "blocks.1",
        "f2": "blocks.2",
        "f3": "blocks.4",
        "f4": "blocks.6",
        "pooled": "classifier:input",
    }

    # (expansion, channels, repeats, first stride); expansion None means "the model's expand_ratio"
    SETTING: tuple[tuple[int | None, int, int, int], ...] = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10, width_mult: float = 0.5, expand_ratio: int = 6):
        super().__init__()
        self.width_mult, self.expand_ratio = width_mult, expand_ratio
        self.feature_taps = dict(type(self).feature_taps)  # per-instance copy
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            out_ch = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(
                    InvertedResidual(in_ch, out_ch, s if i == 0 else 1, expand_ratio if t is None else t)
                )
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        out = self.conv2(out)
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)


def mobilenetv2(num_classes: int = 10, width_mult: Multiplier = 0.5,
                expand_ratio: Annotated[int, Field(gt=0, le=16)] = 6) -> CifarMobileNetV2:
    """MobileNetV2, CIFAR form; defaults = RepDistiller's ``mobile_half`` (width 0.5, t = 6), 0.81M params."""
    return CifarMobileNetV2(num_classes=num_classes, width_mult=width_mult, expand_ratio=expand_ratio)
