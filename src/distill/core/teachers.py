"""Teacher sources: where the teacher's outputs for a batch come from.

A teacher source is called as ``source(batch, task, taps) -> ModelOutput``. It never produces gradients:
live models run in eval mode under ``torch.no_grad`` with ``requires_grad`` switched off, so a teacher's
BatchNorm uses its running statistics and no step can change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput, logits_of
from distill.core.taps import FeatureTaps


class RunsModels(Protocol):
    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


class TeacherSource(Protocol):
    def __call__(self, batch: Batch, task: RunsModels, taps: Sequence[str]) -> ModelOutput: ...

    def to(self, *args: object, **kwargs: object) -> TeacherSource: ...


def run_with_taps(model: nn.Module, task: RunsModels, batch: Batch, taps: Sequence[str]) -> ModelOutput:
    """Run ``model`` on ``batch`` through the task, capturing the named features."""
    if not taps:
        return ModelOutput.of(logits_of(task.forward(model, batch)))
    tapper = FeatureTaps(model, taps)
    with tapper.capture() as feats:
        logits = logits_of(task.forward(model, batch))
    return ModelOutput.of(logits, dict(feats))


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


#: ``teacher.precision`` values and the dtype the frozen teacher's weights are cast to
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cast_floats(x: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors in ``x`` (a tensor, or dicts/lists/tuples of them) cast to ``dtype``; ids, masks and
    everything else unchanged."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _cast_floats(v, dtype) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cast_floats(v, dtype) for v in x)
    return x


def float32_output(out: ModelOutput) -> ModelOutput:
    """``out`` with its logits and features in float32 (what the losses expect from a lower-precision teacher)."""
    logits = out.logits.float() if out.logits is not None and out.logits.is_floating_point() else out.logits
    feats = {k: v.float() if v.is_floating_point() else v for k, v in out.features.items()}
    return ModelOutput(logits, feats, out.topk, out.hidden)


class FrozenTeacher:
    """A live pretrained model, frozen: eval mode, no gradients, never updated. ``precision`` (``fp32``, ``bf16``,
    ``fp16``): the dtype its weights are cast to once; floating-point inputs are cast to it on the way in and the
    outputs back to float32 on the way out."""

    def __init__(self, model: nn.Module, precision: str = "fp32"):
        self.model = freeze(model)
        self.precision = "fp32"
        self.set_precision(precision)

    def set_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model.to(PRECISIONS[precision])
        self.precision = precision

    def to(self, *args: object, **kwargs: object) -> FrozenTeacher:
        """Move or convert the model (``nn.Module.to`` arguments: device, dtype, ``memory_format``)."""
        self.model.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def __call__(self, batch: Batch, task: RunsModels, taps: Sequence[str] = ()) -> ModelOutput:
        self.model.eval()
        if self.precision == "fp32":
            return run_with_taps(self.model, task, batch, taps)
        batch = replace(batch, inputs=_cast_floats(batch.inputs, PRECISIONS[self.precision]))
        return float32_output(run_with_taps(self.model, task, batch, taps))


class EnsembleTeacher:
    """Several frozen models whose outputs are averaged.

    ``reduce="logits"`` averages the logits; ``reduce="probs"`` returns the log of the averaged softmax
    probabilities, so ``softmax`` of the ensemble output is the mean of the members' distributions (the
    target used by MEAL V2). Requested features are averaged across members, which requires equal shapes.
    """

    def __init__(self, models: Sequence[nn.Module], reduce: str = "logits", precision: str = "fp32"):
        if not models:
            raise ValueError("an ensemble teacher needs at least one model")
        if reduce not in ("logits", "probs"):
            raise ValueError(f"reduce must be 'logits' or 'probs', got {reduce!r}")
        self.members = [FrozenTeacher(m, precision) for m in models]
        self.reduce = reduce

    def set_precision(self, precision: str) -> None:
        for m in self.members:
            m.set_precision(precision)

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


def set_teacher_precision(source: Any, precision: str) -> None:
    """Cast a live teacher source to ``precision`` (once, in place): a :class:`FrozenTeacher`, an
    :class:`EnsembleTeacher`, or any source with a ``set_precision`` method. A source without one (stored
    outputs: a cache, a score file) is refused with a ``ValueError``."""
    if precision == "fp32" and not hasattr(source, "set_precision"):
        return
    setter = getattr(source, "set_precision", None)
    if setter is None:
        raise ValueError(f"the teacher here is a {type(source).__name__}, not a live model whose weights can be "
                         "cast; drop teacher.precision or set it to fp32")
    setter(precision)
