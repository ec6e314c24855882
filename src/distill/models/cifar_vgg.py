"""VGG with batch normalisation for CIFAR, in the form used by the CRD/RepDistiller benchmarks.

Paper: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, arXiv:1409.1556. CIFAR form (no fully-connected stack): five blocks of 3x3 conv-BN-ReLU layers with
64/128/256/512/512 channels; 2x2 max pooling after blocks 0-2 (after block 3 too, for 64x64 inputs only),
global average pooling after block 4 and a single linear classifier on 512 features.
Module names follow RepDistiller (``block0``..``block4``, ``pool0``..``pool4``, ``classifier``); each block
here ends with its ReLU module, which holds no parameters, so RepDistiller checkpoints still load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CifarVGG", "VGG_CONFIGS", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# channels of the conv layers of each of the five blocks
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(channels: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        in_channels = c
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG-BN for 32x32 (or 64x64) inputs.

    Modules: ``block0``..``block4`` (``nn.Sequential`` of conv, BN, ReLU triples), ``pool0``..``pool3``
    (2x2 max pooling; ``pool3`` is used only when the input is 64 pixels high), ``pool4`` (global average),
    ``classifier``.

    Feature taps (``self.feature_taps``): ``f0``..``f4`` = ``block0``..``block4`` (post-ReLU block outputs
    before pooling: 64x32x32, 128x16x16, 256x8x8, 512x4x4, 512x4x4), ``f1_pre``..``f4_pre`` = the last BN of
    blocks 1-4 (the same features before their ReLU), ``pooled`` = ``classifier:input`` (512-d).

    Parameters with 100 classes: vgg8 3.96M, vgg13 9.46M. Paper: arXiv:1409.1556.
    """

    feature_taps: dict[str, str]

    def __init__(self, config: Sequence[Sequence[int]] | str = "vgg13", num_classes: int = 10):
        super().__init__()
        cfg = VGG_CONFIGS[config] if isinstance(config, str) else [list(c) for c in config]
        if len(cfg) != 5:
            raise ValueError(f"CifarVGG needs 5 blocks of channels, got {len(cfg)}")
        in_ch = 3
        for i, channels in enumerate(cfg):
            setattr(self, f"block{i}", _make_block(channels, in_ch))
            in_ch = channels[-1]
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(in_ch, num_classes)
        self.feature_taps = {f"f{i}": f"block{i}" for i in range(5)}
        self.feature_taps["pooled"] = "classifier:input"
        for i in range(1, 5):
            self.feature_taps[f"f{i}_pre"] = f"block{i}.{3 * len(cfg[i]) - 2}"
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
        tall = x.shape[2] == 64
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if tall:
            x = self.pool3(x)
        x = self.pool4(self.block4(x))
        return self.classifier(torch.flatten(x, 1))


def vgg8(num_classes: int = 10) -> CifarVGG:
    """VGG-8 with BN (one conv per block); 3.96M parameters (100 classes)."""
    return CifarVGG("vgg8", num_classes=num_classes)


def vgg11(num_classes: int = 10) -> CifarVGG:
    """VGG-11 with BN."""
    return CifarVGG("vgg11", num_classes=num_classes)


def vgg13(num_classes: int = 10) -> CifarVGG:
    """VGG-13 with BN (two convs per block); 9.46M parameters (100 classes)."""
    return CifarVGG("vgg13", num_classes=num_classes)


def vgg16(num_classes: int = 10) -> CifarVGG:
    """VGG-16 with BN."""
    return CifarVGG("vgg16", num_classes=num_classes)


def vgg19(num_classes: int = 10) -> CifarVGG:
    """VGG-19 with BN."""
    return CifarVGG("vgg19", num_classes=num_classes)
