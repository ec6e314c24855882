"""The super-resolution family's models: SPAN (Wan et al., "Swift Parameter-free Attention Network for Efficient
Super-Resolution", CVPR Workshops 2024, github.com/hongyuanyu/SPAN) with plain 3x3 convolutions (the form its
re-parameterised ``Conv3XC`` layers take at inference, which DSCF-SR wraps in ConvLoRA).

SPAB (one block): c1, c2, c3 are 3x3 convolutions with SiLU between them; out = (c3 + x) * (sigmoid(c3) - 0.5).
The network: conv_1 (3 -> C); blocks 1..6; conv_2 on block 6's output; a 1x1 ``conv_cat`` over the concatenation
of conv_1's output, conv_2's output, block 1's output and the output of one convolution of block 6 (``cat_conv``:
2, its second, by default, as the spec of DSCLoRA reads DSCF's wiring; 1, its first, is what the official SPAN and
DSCF code concatenate: their SPAB returns ``(out, out1, ...)`` and the network takes the second item); then the
pixel-shuffle head ``upsampler`` (a 3x3 conv to 3 s^2 channels, ``upsampler.0``, and PixelShuffle). Inputs and
outputs are RGB in [0, 1]; ``input_norm: span`` first maps the input to (x - rgb_mean) * 255 with the official
rgb_mean (0.4488, 0.4371, 0.4040), as the official network does (its output is not mapped back). Taps ``b1`` ..
``b6``: the blocks' outputs.

Official checkpoints (:meth:`SPAN.adapt_state_dict`, called by :func:`distill.models.weights.load_weights_into`):
a state dict in hongyuanyu/SPAN's layout (``conv_1``, ``block_<k>.c<j>_r``, ``conv_2`` as ``Conv3XC`` modules,
optionally under BasicSR's ``params`` / ``params_ema``) is mapped to this model's names, each ``Conv3XC`` folded
into one 3x3 convolution (:func:`fold_conv3xc`); one holding only the folded ``eval_conv`` weights (DSCF-SR's
``team23_DSCF.pth``, NTIRE submissions) is mapped as it is. Such weights compute the official function only with
``cat_conv: 1`` and ``input_norm: span`` (``input_norm: none`` for a state dict with neosr's ``no_norm`` marker),
so another setting is refused, as are missing, unexpected or partial ``Conv3XC`` keys (named).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torch import nn

from distill.config import ConfigError
from distill.tasks.common import call_builder, load_model_weights, validate_model_options

#: what the family passes to the builder itself
SUPPLIED = ("scale",)

#: the input mean of the official SPAN (BasicSR's DIV2K mean), subtracted before scaling by 255 (``input_norm: span``)
SPAN_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class SPAB(nn.Module):
    """Swift parameter-free attention block; returns (out, output of the first convolution, of the second)."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c2_r = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c3_r = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        o1 = self.c1_r(x)
        o2 = self.c2_r(F.silu(o1))
        o3 = self.c3_r(F.silu(o2))
        return (o3 + x) * (torch.sigmoid(o3) - 0.5), o1, o2


class SPAN(nn.Module):
    def __init__(self, scale: int, channels: int = 26, num_blocks: int = 6, in_channels: int = 3,
                 cat_conv: int = 2, input_norm: str = "none"):
        super().__init__()
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if cat_conv not in (1, 2) or input_norm not in ("none", "span"):
            raise ValueError(f"cat_conv must be 1 or 2 and input_norm none or span, got {cat_conv}, {input_norm!r}")
        self.scale = scale
        self.cat_conv = cat_conv
        self.input_norm = input_norm
        self.conv_1 = nn.Conv2d(in_channels, channels, 3, 1, 1)
        self.blocks = nn.ModuleList(SPAB(channels) for _ in range(num_blocks))
        self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_cat = nn.Conv2d(channels * 4, channels, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(channels, in_channels * scale * scale, 3, 1, 1),
                                       nn.PixelShuffle(scale))
        self.feature_taps = {f"b{i + 1}": f"blocks.{i}" for i in range(num_blocks)}
        if input_norm == "span":  # not saved: the state dict keeps the keys of input_norm: none
            if in_channels != 3:
                raise ValueError(f"input_norm: span subtracts an RGB mean; the model has {in_channels} channels")
            self.register_buffer("rgb_mean", torch.tensor(SPAN_RGB_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "span":
            x = (x - self.rgb_mean.to(x.dtype)) * 255.0
        feat = self.conv_1(x)
        out, first, last = feat, None, None
        for block in self.blocks:
            out, o1, o2 = block(out)
            last = o1 if self.cat_conv == 1 else o2
            if first is None:
                first = out
        out = self.conv_2(out)
        return self.upsampler(self.conv_cat(torch.cat([feat, out, first, last], 1)))

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``sd`` in this model's names: an official SPAN state dict is mapped and folded
        (:func:`official_span_state_dict`), any other is returned as it is."""
        if not any(_OFFICIAL_KEY.match(k) for k in sd) and "no_norm" not in sd:
            return sd
        return official_span_state_dict(sd, self)


# -- official checkpoints ------------------------------------------------------------------------------------------
#: a parameter of one of the official network's Conv3XC modules: (module, part, weight | bias)
_OFFICIAL_KEY = re.compile(r"^(conv_1|conv_2|block_\d+\.c[123]_r)\.(sk|conv\.[012]|eval_conv)\.(weight|bias)$")
_BRANCHES = ("sk", "conv.0", "conv.1", "conv.2")


def fold_conv3xc(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3x3 convolution (weight, bias) that equals SPAN's training-time ``Conv3XC`` (stride 1).

    ``parts``: ``{sk, conv.0, conv.1, conv.2}.{weight, bias}`` of the block. Its training forward is
    y = C3(C2(C1(pad1(x)))) + SK(x), with C1 a 1x1 conv (Ci -> M1), C2 a 3x3 conv without padding (M1 -> M2), C3 a
    1x1 conv (M2 -> Co) and SK a 1x1 conv (Ci -> Co). All four are linear, and C1 runs on the zero-padded input,
    so its bias b1 is present at the padded positions too: y is one 3x3 convolution of the zero-padded x with

        W[o, i, u, v] = sum_{p, m} w3[o, p] w2[p, m, u, v] w1[m, i] + [u = v = 1] sk[o, i]
        b[o] = sum_p w3[o, p] (sum_{m, u, v} w2[p, m, u, v] b1[m] + b2[p]) + b3[o] + sk_b[o]

    (the re-parameterisation the official ``Conv3XC.update_params`` computes into ``eval_conv``; re-derived and
    written here as one product). Computed in float64, returned in the dtype of ``conv.1.weight``. Raises
    ``ValueError`` naming the part whose shape does not fit."""
    w1, w2, w3, sk = (parts[f"{n}.weight"].double() for n in ("conv.0", "conv.1", "conv.2", "sk"))
    b1, b2, b3, sk_b = (parts[f"{n}.bias"].double() for n in ("conv.0", "conv.1", "conv.2", "sk"))
    m1, ci = w1.shape[:2]
    co, m2 = w3.shape[:2]
    shapes = {"conv.0.weight": (w1.shape, (m1, ci, 1, 1)), "conv.1.weight": (w2.shape, (m2, m1, 3, 3)),
              "conv.2.weight": (w3.shape, (co, m2, 1, 1)), "sk.weight": (sk.shape, (co, ci, 1, 1)),
              "conv.0.bias": (b1.shape, (m1,)), "conv.1.bias": (b2.shape, (m2,)), "conv.2.bias": (b3.shape, (co,)),
              "sk.bias": (sk_b.shape, (co,))}
    for name, (got, want) in shapes.items():
        if tuple(got) != want:
            raise ValueError(f"{name} is {tuple(got)}, expected {want} beside the other Conv3XC parts")
    weight = torch.einsum("op,pmuv,mi->oiuv", w3[:, :, 0, 0], w2, w1[:, :, 0, 0])
    weight[:, :, 1, 1] += sk[:, :, 0, 0]
    bias = w3[:, :, 0, 0] @ (w2.sum((2, 3)) @ b1 + b2) + b3 + sk_b
    dtype = parts["conv.1.weight"].dtype
    return weight.to(dtype), bias.to(dtype)


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def official_span_state_dict(sd: dict[str, torch.Tensor], model: SPAN) -> dict[str, torch.Tensor]:
    """Map a state dict in hongyuanyu/SPAN's layout to ``model``'s names: ``conv_1``, ``conv_2`` and
    ``block_<k>.c<j>_r`` (k = 1..num_blocks) become ``conv_1``, ``conv_2``, ``blocks.<k-1>.c<j>_r``, each from its
    four training-time branches folded by :func:`fold_conv3xc` (a stored ``eval_conv`` beside them is ignored: the
    official code recomputes it from the branches at every evaluation, so a saved one may be stale) or, without
    branches, from its ``eval_conv``; ``conv_cat`` and ``upsampler.0`` keep their names. Raises ``ValueError``
    naming the missing or unexpected official keys, or the model options the weights need."""
    want_norm = "none" if "no_norm" in sd else "span"
    if model.cat_conv != 1 or model.input_norm != want_norm:
        norm = "no input scaling: the state dict has no_norm" if want_norm == "none" else "inputs (x - rgb_mean) * 255"
        raise ValueError(f"weights in the official SPAN layout (hongyuanyu/SPAN: conv_1.*, block_<k>.c<j>_r.*) compute "
                         f"the official network only with the model options cat_conv: 1 (block {len(model.blocks)}'s "
                         f"first convolution joins conv_cat, as the official code wires it) and input_norm: "
                         f"{want_norm} ({norm}); this model has cat_conv: {model.cat_conv}, input_norm: "
                         f"{model.input_norm}")
    targets = {"conv_1": "conv_1", "conv_2": "conv_2"}
    for k in range(len(model.blocks)):
        for j in (1, 2, 3):
            targets[f"block_{k + 1}.c{j}_r"] = f"blocks.{k}.c{j}_r"
    out: dict[str, torch.Tensor] = {}
    used, missing = {"no_norm"}, []
    for prefix, target in targets.items():
        branch_keys = [f"{prefix}.{b}.{w}" for b in _BRANCHES for w in ("weight", "bias")]
        eval_keys = [f"{prefix}.eval_conv.{w}" for w in ("weight", "bias")]
        if any(k in sd for k in branch_keys):
            absent = [k for k in branch_keys if k not in sd]
            if absent:
                missing += absent
                continue
            try:
                weight, bias = fold_conv3xc({k[len(prefix) + 1:]: sd[k] for k in branch_keys})
            except ValueError as e:
                raise ValueError(f"{prefix}: {e}") from None
            used.update(branch_keys + eval_keys)
        elif all(k in sd for k in eval_keys):
            weight, bias = sd[eval_keys[0]], sd[eval_keys[1]]
            used.update(eval_keys)
        else:
            missing += [k for k in eval_keys if k not in sd] + [f"(or {prefix}.sk/conv.0-2 branches)"]
            continue
        out[f"{target}.weight"], out[f"{target}.bias"] = weight, bias
    unexpected = sorted(k for k in sd if k not in used and _OFFICIAL_KEY.match(k))
    if missing or unexpected:
        raise ValueError(f"official SPAN state dict does not fit SPAN with {len(model.blocks)} blocks: missing keys "
                         f"[{_short(missing)}], unexpected keys [{_short(unexpected)}]")
    for k, v in sd.items():  # conv_cat, upsampler.0 and anything else: checked by name and shape by the loader
        if k not in used:
            out[k] = v
    return out


@validate_call
def span(scale: Annotated[int, Field(ge=2, le=8)], channels: Annotated[int, Field(gt=0, le=1024)] = 26,
         num_blocks: Annotated[int, Field(gt=0, le=64)] = 6, cat_conv: Literal[1, 2] = 2,
         input_norm: Literal["none", "span"] = "none") -> nn.Module:
    """SPAN with ``channels`` feature channels and ``num_blocks`` SPABs (SPAN-26: the defaults; SPAN-48:
    ``channels: 48``). ``cat_conv``: which convolution of the last block joins ``conv_cat`` (1: the official SPAN
    and DSCF; 2: this library's earlier reading, the default, which its recipes were trained with);
    ``input_norm: span``: inputs to (x - rgb_mean) * 255 as the official network (both needed for official
    checkpoints, which load folded: see the module docstring)."""
    return SPAN(scale, channels, num_blocks, cat_conv=cat_conv, input_norm=input_norm)


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
