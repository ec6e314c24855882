"""ShuffleNetV2 for CIFAR, in the form used by the CRD/RepDistiller benchmarks ("ShuffleV2", net size 1).

Paper: N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018, arXiv:1807.11164.

CIFAR form: a 1x1 stem to 24 channels (no max pooling), three stages each made of one stride-2 down-sampling
unit followed by ``n`` basic units (n = 3, 7, 3; channels 116/232/464 at size 1), a 1x1 conv to 1024 channels,
global average pooling and a linear classifier. A basic unit splits the channels in half, transforms one half
(1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU), concatenates and shuffles channels (2 groups).
Module names follow RepDistiller (``conv1``, ``bn1``, ``layerK.j.convI``/``bnI``, ``conv2``, ``bn2``,
``linear``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarShuffleNetV2", "SHUFFLENETV2_CONFIGS", "channel_shuffle", "shufflenetv2"]

# net size -> (stage channels + final conv channels, basic units per stage)
SHUFFLENETV2_CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: view (N, g, c, H, W), swap g and c, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Stride-1 unit: split in halves, transform the second half, concatenate, shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = int(channels * split_ratio)  # channels passed through unchanged
        c = channels - self.split  # channels of the transformed branch
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        passthrough, branch = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([passthrough, out], 1), 2)


class ShuffleDownUnit(nn.Module):
    """Stride-2 unit: two branches (depthwise-s2 + 1x1; 1x1 + depthwise-s2 + 1x1), concatenate, shuffle."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        # left branch
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32x32 inputs (spatial 32 -> 16 -> 8 -> 4).

    Modules: ``conv1``, ``bn1`` (1x1 stem + functional ReLU), ``layer1``..``layer3`` (``nn.Sequential``: one
    :class:`ShuffleDownUnit` then :class:`ShuffleUnit` s), ``conv2``, ``bn2`` (1x1 conv + BN + functional
    ReLU), ``linear``.

    Feature taps (``self.feature_taps``): ``f0`` = ``layer1:input`` (stem output, 24 x 32 x 32),
    ``f1``..``f3`` = ``layer1``..``layer3`` (116x16x16, 232x8x8, 464x4x4 at size 1),
    ``pooled`` = ``linear:input`` (1024-d).

    Parameters with 100 classes at size 1: 1.36M. Paper: arXiv:1807.11164.
    """

    #: stages whose blocks ``train.gradient_checkpointing`` recomputes (distill.train.recompute)
    checkpoint_stages = ("layer1", "layer2", "layer3")

    feature_taps: dict[str, str] = {
        "f0": "layer1:input",
        "f1": "layer1",
        "f2": "layer2",
        "f3": "layer3",
        "pooled": "linear:input",
    }

    def __init__(self, num_classes: int = 10, net_size: float = 1.0):
        super().__init__()
        if float(net_size) not in SHUFFLENETV2_CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(SHUFFLENETV2_CONFIGS)}, got {net_size}")
        channels, repeats = SHUFFLENETV2_CONFIGS[float(net_size)]
        self.net_size = float(net_size)
        self.feature_taps = dict(type(self).feature_taps)  # per-instance copy
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages = []
        for out_ch, n in zip(channels[:3], repeats, strict=True):
            stages.append(
                nn.Sequential(ShuffleDownUnit(in_ch, out_ch), *[ShuffleUnit(out_ch) for _ in range(n)])
            )
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_ch, channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[3])
        self.linear = nn.Linear(channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def shufflenetv2(num_classes: int = 10, net_size: Literal[0.5, 1.0, 1.5, 2.0] = 1.0) -> CifarShuffleNetV2:
    """ShuffleNetV2, CIFAR form; default net size 1 (RepDistiller ``ShuffleV2``); 1.36M params (100 cl.)."""
    return CifarShuffleNetV2(num_classes=num_classes, net_size=net_size)
