"""A CIFAR ResNet with a DINO projection head, as the "Random teachers are good teachers" code builds its networks
(safelix/dinopl ``DINOHead`` with the ``-/lb/fn/wn/l/-`` L2 bottleneck).

Head: MLP ``in_dim -> hidden -> hidden`` (each Linear followed by GELU, no BN), then Linear(hidden -> bottleneck,
with bias), l2-normalisation of the bottleneck feature, and Linear(bottleneck -> out_dim, no bias) whose weight
rows are l2-normalised at every forward (a plain re-normalisation, no learnable gain). The output is a projection
p in [-1, 1]^out_dim (a cosine between unit vectors). Initialisation: head linears truncated-normal with std 0.02
and bias 0; the encoder keeps its own (torch/akamaster) initialisation.

The model's output (its "logits" in the library's sense) is p; ``pooled`` (the head's input, the encoder's
global-average-pooled embedding) is what a probe reads.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field, validate_call
from torch import nn

from .cifar_resnet import CifarResNet


class DINOHead(nn.Module):
    """MLP (GELU) + L2 bottleneck + row-normalised last layer (see the module docstring)."""

    def __init__(self, in_dim: int, hidden: int = 2048, bottleneck: int = 256, out_dim: int = 65536):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.bottleneck = nn.Linear(hidden, bottleneck)
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def last_weight(self) -> torch.Tensor:
        """The last layer's weight with unit-norm rows (what the forward uses)."""
        return F.normalize(self.last.weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.bottleneck(self.mlp(x)), dim=-1)
        return F.linear(z, self.last_weight())


class DinoResNet(nn.Module):
    """CIFAR ResNet encoder (no classifier) + :class:`DINOHead`; taps ``pooled`` (embedding), ``f1``..``f3``."""

    def __init__(self, depth: int = 20, hidden: int = 512, bottleneck: int = 256, out_dim: int = 4096):
        super().__init__()
        self.encoder = CifarResNet(depth=depth, num_classes=1)
        self.encoder.linear = nn.Identity()  # the embedding is the head's input
        self.head = DINOHead(64, hidden, bottleneck, out_dim)
        self.feature_taps = {"pooled": "head:input", "f1": "encoder.layer1", "f2": "encoder.layer2",
                             "f3": "encoder.layer3"}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@validate_call
def dino_resnet(depth: Annotated[int, Field(ge=8)] = 20,
                hidden: Annotated[int, Field(gt=0)] = 512, bottleneck: Annotated[int, Field(gt=0)] = 256,
                out_dim: Annotated[int, Field(gt=1)] = 4096) -> nn.Module:
    """A CIFAR ResNet-``depth`` with a DINO head of output width ``out_dim`` (a projection, not class logits;
    so it is not in the classifier table ``distill.models.MODELS``). Defaults: the random-teachers
    demonstration's CPU scale (MLP 64 -> 512 -> 512, bottleneck 256, K = 4096); the paper's is 2048 / 256 / 65,536."""
    return DinoResNet(depth, hidden, bottleneck, out_dim)
