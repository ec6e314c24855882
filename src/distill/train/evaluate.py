"""Evaluate any model on a dataset through a task adapter."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.outputs import logits_of


def eval_batches(task: Any, data: Any, batch_size: int, device: torch.device | str = "cpu") -> Iterator[Batch]:
    """The dataset in order, prepared for evaluation (no augmentation), on ``device``."""
    n = task.num_examples(data)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        yield task.prepare(task.fetch(data, idx).to(device), train=False, generator=None)


@torch.no_grad()
def evaluate_model(model: nn.Module, task: Any, data: Any, batch_size: int = 256,
                   device: torch.device | str | None = None,
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, float]:
    """The task's metrics of ``model`` on ``data`` (model in eval mode; its train/eval state is restored)."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    metrics = task.new_metrics()
    with (autocast or contextlib.nullcontext)():
        for batch in eval_batches(task, data, batch_size, device):
            metrics.update(logits_of(task.forward(model, batch)), batch)
    model.train(was_training)
    return metrics.compute()
