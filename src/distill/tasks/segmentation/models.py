"""The segmentation family's models: a ResNet-style trunk with taps at strides 2/4/8/16 and a light decoder.

``seg_resnet`` is a small CNN (no pretrained weights exist here): a 3x3 stem at full resolution, four stages of
basic residual blocks that each halve the resolution (strides 2, 4, 8, 16: taps ``f1``..``f4``), and a decoder that
adds 1x1 projections of stages 2, 3 and 4 at stride 4, mixes them with a 3x3 conv (tap ``dec``), predicts the
classes with a 1x1 conv and upsamples the logits bilinearly to the input size. ``seg_resnet_teacher`` /
``seg_resnet_student`` are the two sizes the recipes use.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torch import nn

from distill.config import ConfigError
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
