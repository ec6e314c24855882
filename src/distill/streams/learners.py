"""What a continual runner trains: a :class:`Learner` (one per method), and the small convolutional networks the
learners are built from.

A learner is an ``nn.Module`` that holds *everything* that changes during a stream in its parameters and buffers
(its model, grown branches, frozen teacher snapshots, replay buffer, prototypes), so ``state_dict()`` is its whole
state and a checkpoint restores it exactly. Its structure may change only in :meth:`Learner.begin_task`, and only as
a function of the task index, so a resumed run rebuilds it by calling ``begin_task(0..t)`` and then loads the state.
All randomness of a step comes from the ``generator`` the runner passes (seeded from seed, task, epoch and step).

Learners are picked by name from :data:`LEARNERS` (``learner.name`` in a stream config); each method file under
:mod:`distill.methods.continual` registers its learner(s) with :func:`register_learner`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from distill.core.registry import Provenance


@dataclass(frozen=True)
class TaskInfo:
    """What a learner is told at the start of task ``index``."""

    index: int
    kind: str
    seen: tuple[int, ...]  # classes of tasks 0..index
    new: tuple[int, ...]  # classes of this task
    num_classes: int  # the size of the whole label space


class Learner(nn.Module):
    """Base of every continual learner (see the module docstring)."""

    provenance: ClassVar[Provenance | None] = None

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.channels = channels
        self.task: TaskInfo | None = None

    @classmethod
    def check_data(cls, options: dict[str, Any], dataset: Any) -> None:
        """Refuse, before anything trains, validated ``options`` that do not fit the stream's ``dataset`` (a
        :class:`~distill.streams.stream.Dataset`): a ``ValueError`` whose message starts with
        ``learner.options.KEY:``. The base checks nothing."""

    def begin_task(self, task: TaskInfo) -> None:
        """Change the structure for task ``task.index`` (grow, snapshot a teacher, freeze); deterministic."""
        self.task = task

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The named loss terms of one training step (labels -100: hidden)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:  # noqa: B027
        """Called after each optimiser step (e.g. to insert the batch into a replay buffer)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) for evaluation."""
        raise NotImplementedError

    def discover(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster ids of novel-class inputs (novel class discovery learners only)."""
        raise NotImplementedError(f"{type(self).__name__} does not discover novel classes")


#: name -> learner class
LEARNERS: dict[str, type[Learner]] = {}


def register_learner(name: str) -> Callable[[type[Learner]], type[Learner]]:
    def add(cls: type[Learner]) -> type[Learner]:
        if name in LEARNERS:
            raise ValueError(f"learner {name!r} registered twice")
        LEARNERS[name] = cls
        return cls
    return add


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (4 groups): normalisation without running statistics, so a frozen teacher snapshot in the same
    module tree behaves the same in train and eval mode and a batch of any size (online: 10) is fine."""
    return nn.GroupNorm(min(4, channels), channels)


def conv_trunk(channels: int, width: int) -> nn.Sequential:
    """Two 3x3 convolutions at full resolution: the shared lower layers ("trunk", the analogue of stem + layer1 +
    layer2 of a CIFAR ResNet)."""
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), _norm(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.ReLU())


def conv_branch(width: int, out: int) -> nn.Sequential:
    """A strided 3x3 convolution, another 3x3 convolution and global average pooling (the analogue of layer3 +
    GAP): maps the trunk's (B, width, H, W) maps to an ``out``-dimensional feature."""
    return nn.Sequential(nn.Conv2d(width, out, 3, stride=2, padding=1), _norm(out), nn.ReLU(),
                         nn.Conv2d(out, out, 3, padding=1), _norm(out), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ConvEncoder(nn.Module):
    """trunk + branch: images to a ``feature_dim`` feature vector."""

    def __init__(self, channels: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.trunk = conv_trunk(channels, width)
        self.branch = conv_branch(width, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(self.trunk(x))


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Each image translated by a random integer offset in [-max_shift, max_shift]^2 (zero fill in the normalised
    scale): the cheap augmentation the small-image learners use for their second view."""
    b, _, h, w = x.shape
    pad = max_shift
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, int(offs[i, 0]):int(offs[i, 0]) + h, int(offs[i, 1]):int(offs[i, 1]) + w]
                        for i in range(b)])
