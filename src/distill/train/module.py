"""The trainable graph of a distillation run: the student plus the methods' own parameters.

The teacher is held outside the module (it is not a registered submodule), so its weights are never in the
optimiser, the checkpoint or a DDP wrapper. One call reads like the design sentence: the batch goes through
the student and the teacher, the taps collect what the methods need, the methods return named loss terms.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, logits_of
from distill.core.taps import FeatureTaps
from distill.core.teachers import TeacherSource
from distill.core.topk import TopKLogits


class DistillModule(nn.Module):
    def __init__(self, student: nn.Module, methods: Composite, teacher: TeacherSource | None, task: Any):
        super().__init__()
        self.student = student
        self.methods = methods
        object.__setattr__(self, "teacher", teacher)  # deliberately not a submodule
        object.__setattr__(self, "task", task)
        if methods.needs_teacher and teacher is None:
            names = [n for n, m in methods.methods.items() if m.needs_teacher]
            raise ValueError(f"methods {names} need a teacher, but none is configured")
        trainable = getattr(teacher, "trainable", None)  # a teacher source with learned parts (a mixture's router)
        if isinstance(trainable, nn.Module):  # trained with the methods: optimiser, checkpoints, methods.safetensors
            methods.add_module("teacher_router", trainable)
        self._student_taps = FeatureTaps(student, methods.student_taps())
        self._teacher_tap_names = methods.teacher_taps()
        self._ready = False
        #: run the teacher under ``torch.inference_mode`` (set by the trainer from ``teacher_inference_mode``)
        self.teacher_inference_mode = False

    def run_student(self, batch: Batch) -> ModelOutput:
        with self._student_taps.capture() as feats:
            logits = logits_of(self.task.forward(self.student, batch))
        out = ModelOutput.of(logits, dict(feats))
        if out.hidden is not None:
            self._check_hidden()
        return out

    def _check_hidden(self) -> None:
        dense_only = [n for n, m in self.methods.methods.items() if not getattr(m, "accepts_hidden_states", False)]
        if dense_only:
            raise ValueError(f"the task gives hidden states and the output head (chunked losses), but methods "
                             f"{dense_only} need full logits: drop data.chunk_tokens or those methods")

    def transform(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """The training batch the methods make of ``batch`` (e.g. mixup, on-policy samples) before both models
        see it; the trainer calls it before counting the step's loss-bearing tokens."""
        return batch if generator is None else self.methods.transform_batch(batch, generator)

    def inference_model(self) -> nn.Module:
        """What evaluation and export use: the student, or a method's wrapper around it."""
        return self.methods.inference_model(self.student)

    def run_teacher(self, batch: Batch, student: ModelOutput | None = None) -> ModelOutput | None:
        """The teacher's output; ``student``: the student's output of the batch, for a teacher source that reads it
        (``reads_student``: a mixture whose router reads the student)."""
        if self.teacher is None or not self.methods.needs_teacher:
            return None
        if getattr(self.teacher, "reads_student", False):
            out = self.teacher(batch, self.task, self._teacher_tap_names, student=student)
        elif not self.teacher_inference_mode or getattr(self.teacher, "trainable", None) is not None:
            out = self.teacher(batch, self.task, self._teacher_tap_names)
        else:
            with torch.inference_mode():
                out = self.teacher(batch, self.task, self._teacher_tap_names)
            # inference tensors cannot be saved for backward; clones made outside inference mode are normal tensors
            hidden = None if out.hidden is None else replace(out.hidden, hidden=out.hidden.hidden.clone())
            out = ModelOutput(None if out.logits is None else out.logits.clone(),
                              {k: v.clone() for k, v in out.features.items()},
                              None if out.topk is None else TopKLogits(out.topk.indices.clone(),
                                                                       out.topk.logprobs.clone(),
                                                                       out.topk.num_classes), hidden)
        if out.is_sparse:
            dense_only = [n for n, m in self.methods.methods.items()
                          if m.needs_teacher and not getattr(m, "accepts_topk_teacher", False)]
            if dense_only:
                raise ValueError(f"the teacher gives only top-{out.topk.k} log-probabilities (a top-k cache), but "
                                 f"methods {dense_only} need dense logits: use a full-logits cache or a method "
                                 "that accepts a top-k teacher")
        return out

    @torch.no_grad()
    def setup(self, batch: Batch, info: RunInfo | None = None) -> None:
        """Let methods build shape-dependent parameters from one example batch (before the optimiser)."""
        was_training = self.student.training
        self.student.eval()
        student = self.run_student(batch)
        teacher = self.run_teacher(batch, student)
        self.student.train(was_training)
        self.methods.setup(student, teacher, info or RunInfo(num_train_examples=len(batch), batch_size=len(batch)))
        self._ready = True

    def forward(
        self, batch: Batch, progress: float = 0.0, epoch: int = 0, step: int = 0, stage: str = "main",
        generator: torch.Generator | None = None, num_tokens: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModelOutput]:
        """``generator``: transform the batch first (:meth:`transform`); ``num_tokens``: see
        :attr:`StepInputs.num_tokens`."""
        if not self._ready:
            raise RuntimeError("DistillModule.setup(batch) must be called once before training")
        batch = self.transform(batch, generator)
        if getattr(self.teacher, "reads_student", False):
            student = self.run_student(batch)
            teacher = self.run_teacher(batch, student)
        else:
            teacher = self.run_teacher(batch)
            student = self.run_student(batch)
        inputs = StepInputs(student, teacher, batch.labels, progress, epoch, step, batch.indices, num_tokens)
        terms = self.methods(inputs, stage=stage)
        take = getattr(self.teacher, "take_terms", None)  # the teacher source's own terms (a router's balance)
        if callable(take) and teacher is not None:
            terms.update({f"teacher.{k}": v for k, v in take().items()})
        loss = torch.stack([v.float() for v in terms.values()]).sum()
        # the student output is returned detached: under DDP every tensor a forward returns is searched for the
        # parameters that will get a gradient, and in a stage whose loss ignores the student (an init stage) its
        # live logits would make DDP wait for gradients that never come
        return loss, terms, student.detach()
