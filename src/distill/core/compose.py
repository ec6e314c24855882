"""Weighted composition of methods: total loss = sum_i w_i * sum_terms L_i."""

from __future__ import annotations

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.method import EpochContext, Method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs


class Composite(nn.Module):
    """Several methods, each with a weight, summed into one objective.

    Terms come back named ``"<label>"`` when a method returns a single term and ``"<label>.<term>"``
    otherwise, already multiplied by the method's weight, so ``sum(terms.values())`` is the loss.
    """

    def __init__(self, methods: dict[str, Method], weights: dict[str, float] | None = None):
        super().__init__()
        if not methods:
            raise ValueError("a composition needs at least one method")
        self.methods = nn.ModuleDict(methods)
        weights = dict(weights or {})
        unknown = set(weights) - set(methods)
        if unknown:
            raise ValueError(f"weights given for unknown methods {sorted(unknown)}")
        self.weights = {label: float(weights.get(label, 1.0)) for label in methods}

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for m in self.methods.values())

    @property
    def needs_labels(self) -> bool:
        return any(m.needs_labels for m in self.methods.values())

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(t for m in self.methods.values() for t in m.student_taps()))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t for m in self.methods.values() for t in m.teacher_taps()))

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        for method in self.methods.values():
            method.setup(student, teacher, info)

    def optimizer_overrides(self) -> list[tuple[list[nn.Parameter], dict[str, float]]]:
        return [group for method in self.methods.values() for group in method.optimizer_overrides()]

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        for method in self.methods.values():
            batch = method.transform_batch(batch, generator)
        return batch

    def inference_model(self, student: nn.Module) -> nn.Module:
        """The module to evaluate and export: the student, or the one wrapper a method provides."""
        wrappers = [(label, w) for label, m in self.methods.items() if (w := m.inference_model(student)) is not None]
        if len(wrappers) > 1:
            raise ValueError(f"methods {[label for label, _ in wrappers]} each replace the inference model")
        return wrappers[0][1] if wrappers else student

    def after_epoch(self, context: EpochContext) -> None:
        for method in self.methods.values():
            method.after_epoch(context)

    @property
    def init_epochs(self) -> int:
        """Epochs of the initialisation stage: the longest that any method asks for (0 for most)."""
        return max((int(m.init_epochs) for m in self.methods.values()), default=0)

    def forward(self, inputs: StepInputs, stage: str = "main") -> dict[str, torch.Tensor]:
        """Weighted terms of every method, or in the ``"init"`` stage the unweighted ``init_loss`` terms of
        the methods that have an initialisation stage (still running while the stage lasts for them)."""
        terms: dict[str, torch.Tensor] = {}
        for label, method in self.methods.items():
            if stage == "init":
                if inputs.epoch >= method.init_epochs:
                    continue
                out = method.init_loss(inputs)
                weight = 1.0
            else:
                out = method(inputs)
                weight = self.weights[label]
            for name, value in out.items():
                key = label if len(out) == 1 else f"{label}.{name}"
                terms[key] = weight * value
        return terms
