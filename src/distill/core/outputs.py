"""What a model produced on one batch: its main output plus the features that were asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from distill.core.hidden import HiddenStates
from distill.core.topk import TopKLogits


def logits_of(out: Any) -> Any:
    """A model's main output as a tensor: a Hugging Face model returns an output object whose ``logits`` is the
    tensor (``SequenceClassifierOutput``, ``ImageClassifierOutput``, ``CausalLMOutput``); anything else is
    returned as it is. Applied wherever a student's or teacher's output is read, so such a model needs no
    wrapper."""
    if out is None or isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else out


@dataclass
class ModelOutput:
    """Output of a student or teacher on one batch.

    ``logits`` is the model's main output (class logits, token logits, embeddings or scores, by task).
    ``features`` maps a tap name (a dotted module path, optionally suffixed ``:input``) to the captured tensor.
    ``topk`` is set instead of (or beside) ``logits`` by teacher sources that keep only the k most likely classes
    (a top-k cache); ``logits`` is then None, and only methods with ``accepts_topk_teacher`` may read it.
    ``hidden`` is set instead of ``logits`` by a task that returns a language model's final hidden states and head
    (``data.chunk_tokens`` of ``task: causal_lm``); only methods with ``accepts_hidden_states`` may read it.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    topk: TopKLogits | None = None
    hidden: HiddenStates | None = None

    @property
    def is_sparse(self) -> bool:
        """True when only top-k log-probabilities are known (no dense logits)."""
        return self.logits is None and self.topk is not None

    def feature(self, name: str) -> torch.Tensor:
        """The feature captured under ``name``, with an error that lists what was captured."""
        try:
            return self.features[name]
        except KeyError:
            raise KeyError(
                f"feature {name!r} was not captured; captured: {sorted(self.features) or 'none'}"
            ) from None

    def detach(self) -> ModelOutput:
        logits = None if self.logits is None else self.logits.detach()
        topk = None if self.topk is None else self.topk.detach()
        hidden = None if self.hidden is None else self.hidden.detach()
        return ModelOutput(logits, {k: v.detach() for k, v in self.features.items()}, topk,  # type: ignore[arg-type]
                           hidden)

    @classmethod
    def of(cls, out: torch.Tensor | HiddenStates, features: dict[str, torch.Tensor] | None = None) -> ModelOutput:
        """What a task's ``forward`` returned (logits, or :class:`HiddenStates`) as an output."""
        if isinstance(out, HiddenStates):
            return cls(None, dict(features or {}), hidden=out)  # type: ignore[arg-type]
        return cls(out, dict(features or {}))


@dataclass
class StepInputs:
    """Everything a distillation method may read on one training step.

    ``progress`` is the fraction of training done (0 at the first step, approaching 1 at the last), for
    methods whose weights or targets change during training.
    """

    student: ModelOutput
    teacher: ModelOutput | None
    labels: torch.Tensor | None
    progress: float = 0.0
    epoch: int = 0
    step: int = 0
    indices: torch.Tensor | None = None
    #: the mean number of loss-bearing tokens per micro-batch of this optimiser step, over all its micro-batches
    #: and processes (set by the trainer when the task counts them: ``task.loss_tokens(batch)``). Token-mean
    #: losses divide their sum by it, so accumulated or sharded micro-batches give one big batch's gradient;
    #: None: each batch's own count
    num_tokens: float | None = None


@dataclass
class RunInfo:
    """Facts about the run that some methods need to build themselves (e.g. a memory bank of one entry per
    training example). Passed to :meth:`Method.setup`."""

    num_train_examples: int = 0
    epochs: int = 1
    steps_per_epoch: int = 1
    batch_size: int = 1
    #: the student module and the task adapter, for methods that must run the student themselves (e.g. a
    #: look-ahead step through ``torch.func.functional_call`` in bilevel methods); never store them in state
    student: Any = None
    task: Any = None
    #: ``val_batch(step, size)``: a prepared batch of the held-out validation split, chosen by the step alone
    #: (so a resumed run sees the same batches); None when the run has no validation split
    val_batch: Callable[[int, int], Any] | None = None


def require_teacher(inputs: StepInputs, method: str) -> ModelOutput:
    """The teacher's output, or a clear error naming the method that needs one."""
    if inputs.teacher is None:
        raise ValueError(f"method {method!r} needs a teacher, but none is configured")
    return inputs.teacher


def require_labels(inputs: StepInputs, method: str) -> torch.Tensor:
    """The batch's labels, or a clear error naming the method that needs them."""
    if inputs.labels is None:
        raise ValueError(f"method {method!r} needs labels, but the batch has none")
    return inputs.labels
