"""Small real pieces shared by the tests: the shipped demo images and a tiny CNN with named taps."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from distill.data.images import ImageArrays, load_images

DEMO = Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz"


@cache
def demo_split(split: str) -> ImageArrays:
    return load_images(DEMO, split=split)


def demo_subset(split: str, per_class: int, seed: int = 0) -> ImageArrays:
    return demo_split(split).balanced_subset(per_class, seed)


class TinyCNN(nn.Module):
    """conv-bn-relu x2 then a linear head; taps: f1, f2 (post-ReLU stages), pooled."""

    feature_taps = {"f1": "stage1", "f2": "stage2", "pooled": "head:input"}

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


def load_benchmark(name: str) -> ModuleType:
    """A script of ``benchmarks/`` imported as a module (its folder on ``sys.path`` for its own imports)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
