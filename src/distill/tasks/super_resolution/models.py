"""The super-resolution family's models: SPAN (Wan et al., "Swift Parameter-free Attention Network for Efficient
Super-Resolution", CVPR Workshops 2024, github.com/hongyuanyu/SPAN) with plain 3x3 convolutions (the form its
re-parameterised ``Conv3XC`` layers take at inference, which DSCF-SR wraps in ConvLoRA).

SPAB (one block): c1, c2, c3 are 3x3 convolutions with SiLU between them; out = (c3 + x) * (sigmoid(c3) - 0.5).
The network: conv_1 (3 -> C); blocks 1..6; conv_2 on block 6's output; a 1x1 ``conv_cat`` over the concatenation
of conv_1's output, conv_2's output, block 1's output and block 6's second convolution's output (the wiring the
spec of DSCLoRA describes for DSCF); then the pixel-shuffle head ``upsampler`` (a 3x3 conv to 3 s^2 channels,
``upsampler.0``, and PixelShuffle). Inputs and outputs are RGB in [0, 1]. Taps ``b1`` .. ``b6``: the blocks' outputs.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torch import nn

from distill.config import ConfigError
from distill.tasks.common import call_builder, load_model_weights, validate_model_options

#: what the family passes to the builder itself
SUPPLIED = ("scale",)


class SPAB(nn.Module):
    """Swift parameter-free attention block; returns (out, output of the second convolution)."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c2_r = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c3_r = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o1 = self.c1_r(x)
        o2 = self.c2_r(F.silu(o1))
        o3 = self.c3_r(F.silu(o2))
        return (o3 + x) * (torch.sigmoid(o3) - 0.5), o2


class SPAN(nn.Module):
    def __init__(self, scale: int, channels: int = 26, num_blocks: int = 6, in_channels: int = 3):
        super().__init__()
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        self.scale = scale
        self.conv_1 = nn.Conv2d(in_channels, channels, 3, 1, 1)
        self.blocks = nn.ModuleList(SPAB(channels) for _ in range(num_blocks))
        self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_cat = nn.Conv2d(channels * 4, channels, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(channels, in_channels * scale * scale, 3, 1, 1),
                                       nn.PixelShuffle(scale))
        self.feature_taps = {f"b{i + 1}": f"blocks.{i}" for i in range(num_blocks)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_1(x)
        out, first = feat, None
        for block in self.blocks:
            out, second = block(out)
            if first is None:
                first = out
        out = self.conv_2(out)
        return self.upsampler(self.conv_cat(torch.cat([feat, out, first, second], 1)))


@validate_call
def span(scale: Annotated[int, Field(ge=2, le=8)], channels: Annotated[int, Field(gt=0, le=1024)] = 26,
         num_blocks: Annotated[int, Field(gt=0, le=64)] = 6) -> nn.Module:
    """SPAN with ``channels`` feature channels and ``num_blocks`` SPABs (SPAN-26: the defaults; SPAN-48:
    ``channels: 48``)."""
    return SPAN(scale, channels, num_blocks)


SR_MODELS = {"span": span}


def build_sr_model(model_cfg: Any, scale: int, base_dir: str | None, key: str) -> nn.Module:
    if model_cfg.arch not in SR_MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task super_resolution; allowed: "
                          f"{', '.join(SR_MODELS)}")
    builder = SR_MODELS[model_cfg.arch]
    options = validate_model_options(builder, model_cfg.options, f"{key}.options", model_cfg.arch, SUPPLIED)
    model = call_builder(builder, key, scale, **options)
    model = load_model_weights(model, model_cfg, base_dir, key)
    targets = getattr(model_cfg, "conv_lora", None)
    if targets:
        from distill.models.conv_lora import apply_conv_lora

        try:
            apply_conv_lora(model, {k: (v.rank, v.alpha) for k, v in targets.items()},
                            train_bias=bool(getattr(model_cfg, "conv_lora_train_bias", False)))
        except KeyError as e:
            raise ConfigError(f"{key}.conv_lora: {e.args[0]}") from None
    return model
