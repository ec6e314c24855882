"""ConvLoRA: a low-rank update of a frozen convolution that merges into it, so the deployed cost does not change.

For a base weight W (C_out x C_in x k x k) the factors are A ((r k) x (C_in k)) and B ((C_out k) x (r k)) and

    dW = reshape_{C_out, C_in, k, k}(B @ A) * (alpha / r),        y = conv(x, W + dW) + bias,

the row-major reinterpretation of the product used by loralib's ``ConvLoRA`` (microsoft/LoRA, ``loralib/layers.py``)
and by DSCLoRA (Yaozzz666/DSCF-SR, ``models/team23_DSCF.py``). A starts Kaiming-uniform (a = sqrt 5), B at zero, so
a wrapped layer starts equal to its base. ``eval()`` merges dW into the base weight (one plain convolution at
inference); ``train()`` takes it out again. :func:`merge_conv_lora` replaces every wrapper by a plain ``nn.Conv2d``
holding W + dW, so the merged model has exactly the base model's parameters and, up to float rounding, its
unmerged output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class ConvLoRA(nn.Module):
    """A frozen ``nn.Conv2d`` (``conv``) plus the trainable factors ``lora_A`` and ``lora_B``.

    ``train_bias``: leave the base bias trainable (the stored DSCF model does; the paper trains LoRA only)."""

    def __init__(self, conv: nn.Conv2d, rank: int, alpha: float | None = None, train_bias: bool = False):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"ConvLoRA wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError("ConvLoRA needs a convolution with groups=1")
        kh, kw = conv.kernel_size
        if kh != kw:
            raise ValueError(f"ConvLoRA needs a square kernel, got {conv.kernel_size}")
        if int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.conv = conv
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.scaling = self.alpha / self.rank
        k = kh
        self.lora_A = nn.Parameter(conv.weight.new_zeros((self.rank * k, conv.in_channels * k)))
        self.lora_B = nn.Parameter(conv.weight.new_zeros((conv.out_channels * k, self.rank * k)))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        conv.weight.requires_grad_(False)
        if conv.bias is not None:
            conv.bias.requires_grad_(bool(train_bias))
        self.merged = False
        # the state dict always holds the unmerged base weight, whatever the mode when it is saved or loaded
        self._register_state_dict_hook(_unmerged_state)
        self.register_load_state_dict_post_hook(_remerge_after_load)

    def delta(self) -> torch.Tensor:
        """dW = reshape(B @ A) * alpha / r, shaped like the base weight."""
        return (self.lora_B @ self.lora_A).view(self.conv.weight.shape) * self.scaling

    def train(self, mode: bool = True) -> ConvLoRA:
        super().train(mode)
        if mode and self.merged:
            with torch.no_grad():
                self.conv.weight.sub_(self.delta())
            self.merged = False
        elif not mode and not self.merged:
            with torch.no_grad():
                self.conv.weight.add_(self.delta())
            self.merged = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.conv(x)
        c = self.conv
        return F.conv2d(x, c.weight + self.delta(), c.bias, c.stride, c.padding, c.dilation, c.groups)

    def merged_conv(self) -> nn.Conv2d:
        """A plain convolution with weight W + dW (the base and the factors are left untouched)."""
        c = self.conv
        out = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                        bias=c.bias is not None, padding_mode=c.padding_mode).to(c.weight.device, c.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(c.weight if self.merged else c.weight + self.delta())
            if c.bias is not None:
                out.bias.copy_(c.bias)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _unmerged_state(module: ConvLoRA, state: dict, prefix: str, _meta: object) -> None:
    key = prefix + "conv.weight"
    if module.merged and key in state:
        state[key] = state[key] - module.delta().detach()


def _remerge_after_load(module: ConvLoRA, _incompatible: object) -> None:
    if module.merged:
        with torch.no_grad():
            module.conv.weight.add_(module.delta())


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parts = name.split(".")
    parent = model
    for p in parts[:-1]:
        parent = getattr(parent, p) if not p.isdigit() else parent[int(p)]  # type: ignore[index]
    return parent, parts[-1]


def _set_child(parent: nn.Module, leaf: str, module: nn.Module) -> None:
    if leaf.isdigit() and isinstance(parent, nn.Sequential | nn.ModuleList):
        parent[int(leaf)] = module
    else:
        setattr(parent, leaf, module)


def apply_conv_lora(model: nn.Module, targets: Mapping[str, tuple[int, float]], *, train_bias: bool = False,
                    freeze_rest: bool = True) -> nn.Module:
    """Wrap the convolutions named in ``targets`` (``{dotted module name: (rank, alpha)}``) in :class:`ConvLoRA`,
    in place. ``freeze_rest``: every other parameter of the model stops requiring gradients (only the LoRA
    factors, and the wrapped biases with ``train_bias``, are trained). Raises ``KeyError`` naming a module that is
    not there or is no ``nn.Conv2d``."""
    modules = dict(model.named_modules())
    for name in targets:
        if name not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise KeyError(f"{name!r}: no such module; convolutions: {', '.join(convs[:40])}")
        if not isinstance(modules[name], nn.Conv2d):
            raise KeyError(f"{name!r} is a {type(modules[name]).__name__}, not an nn.Conv2d")
    if freeze_rest:
        for p in model.parameters():
            p.requires_grad_(False)
    for name, (rank, alpha) in targets.items():
        parent, leaf = _parent(model, name)
        _set_child(parent, leaf, ConvLoRA(modules[name], int(rank), float(alpha), train_bias=train_bias))
    model.train(model.training)  # a model in eval mode gets its new layers merged
    return model


def conv_lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors of every :class:`ConvLoRA` layer of ``model`` (a parameter group of their own)."""
    return [p for m in model.modules() if isinstance(m, ConvLoRA) for p in (m.lora_A, m.lora_B)]


def merge_conv_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`ConvLoRA` layer by its merged plain convolution, in place: the result has the base
    model's architecture and parameter count, and computes what the unmerged model computes."""
    names = [n for n, m in model.named_modules() if isinstance(m, ConvLoRA)]
    for name in names:
        parent, leaf = _parent(model, name)
        layer = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]  # type: ignore[index]
        _set_child(parent, leaf, layer.merged_conv())
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``model`` would have after :func:`merge_conv_lora`, without changing it (base module names,
    e.g. ``conv_2.weight`` for the wrapped ``conv_2``)."""
    out: dict[str, torch.Tensor] = {}
    lora = {n: m for n, m in model.named_modules() if isinstance(m, ConvLoRA)}
    for key, value in model.state_dict().items():
        owner = next((n for n in lora if key.startswith(n + ".")), None)
        if owner is None:
            out[key] = value
            continue
        rest = key[len(owner) + 1:]
        if rest.startswith("lora_"):
            continue
        layer = lora[owner]
        if rest == "conv.weight":  # the state dict holds the unmerged weight
            out[f"{owner}.weight"] = value + layer.delta().detach()
        else:
            out[f"{owner}.{rest.removeprefix('conv.')}"] = value
    return out
