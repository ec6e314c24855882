"""The task interface that the trainer talks to."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from distill.core.batch import Batch


class Metrics(Protocol):
    def update(self, outputs: torch.Tensor, batch: Batch) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task(Protocol):
    """What differs between tasks: fetching and preparing a batch, calling a model, measuring it.

    Optional: ``draw_positions(data, indices, generator) -> Tensor | None``, randomness a training fetch needs
    (e.g. streamed patch corners), drawn by the trainer before the fetch from a generator of the seed, epoch and
    step, and passed as ``fetch(data, indices, positions=...)`` (so a loader worker can cut the patch)."""

    primary_metric: str
    higher_is_better: bool

    def num_examples(self, data: Any) -> int: ...

    def fetch(self, data: Any, indices: torch.Tensor) -> Batch: ...

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch: ...

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def new_metrics(self) -> Metrics: ...
