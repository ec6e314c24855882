"""Teacher sources: where the teacher's outputs for a batch come from.

A teacher source is called as ``source(batch, task, taps) -> ModelOutput``. It never produces gradients:
live models run in eval mode under ``torch.no_grad`` with ``requires_grad`` switched off, so a teacher's
BatchNorm uses its running statistics and no step can change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput
from distill.core.taps import FeatureTaps


class RunsModels(Protocol):
    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


class TeacherSource(Protocol):
    def __call__(self, batch: Batch, task: RunsModels, taps: Sequence[str]) -> ModelOutput: ...

    def to(self, *args: object, **kwargs: object) -> TeacherSource: ...


def run_with_taps(model: nn.Module, task: RunsModels, batch: Batch, taps: Sequence[str]) -> ModelOutput:
    """Run ``model`` on ``batch`` through the task, capturing the named features."""
    if not taps:
        return ModelOutput.of(task.forward(model, batch))
    tapper = FeatureTaps(model, taps)
    with tapper.capture() as feats:
        logits = task.forward(model, batch)
    return ModelOutput.of(logits, dict(feats))


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FrozenTeacher:
    """A live pretrained model, frozen: eval mode, no gradients, never updated."""

    def __init__(self, model: nn.Module):
        self.model = freeze(model)

    def to(self, *args: object, **kwargs: object) -> FrozenTeacher:
        """Move or convert the model (``nn.Module.to`` arguments: device, dtype, ``memory_format``)."""
        self.model.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def __call__(self, batch: Batch, task: RunsModels, taps: Sequence[str] = ()) -> ModelOutput:
        self.model.eval()
        return run_with_taps(self.model, task, batch, taps)


class EnsembleTeacher:
    """Several frozen models whose outputs are averaged.

    ``reduce="logits"`` averages the logits; ``reduce="probs"`` returns the log of the averaged softmax
    probabilities, so ``softmax`` of the ensemble output is the mean of the members' distributions (the
    target used by MEAL V2). Requested features are averaged across members, which requires equal shapes.
    """

    def __init__(self, models: Sequence[nn.Module], reduce: str = "logits"):
        if not models:
            raise ValueError("an ensemble teacher needs at least one model")
        if reduce not in ("logits", "probs"):
            raise ValueError(f"reduce must be 'logits' or 'probs', got {reduce!r}")
        self.members = [FrozenTeacher(m) for m in models]
        self.reduce = reduce

    def to(self, *args: object, **kwargs: object) -> EnsembleTeacher:
        for m in self.members:
            m.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def __call__(self, batch: Batch, task: RunsModels, taps: Sequence[str] = ()) -> ModelOutput:
        outs = [m(batch, task, taps) for m in self.members]
        stacked = torch.stack([o.logits.float() for o in outs])
        if self.reduce == "logits":
            logits = stacked.mean(0)
        else:
            logits = torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=0) - torch.log(
                torch.tensor(float(len(outs)), device=stacked.device)
            )
        feats: dict[str, torch.Tensor] = {}
        for name in taps:
            shapes = {tuple(o.features[name].shape) for o in outs}
            if len(shapes) != 1:
                raise ValueError(f"ensemble members give feature {name!r} different shapes {sorted(shapes)}")
            feats[name] = torch.stack([o.features[name] for o in outs]).mean(0)
        return ModelOutput(logits, feats)
