"""The method base class and the method registry.

A method is an ``nn.Module`` that declares what it needs (which student and teacher features, whether it
needs the teacher and labels) and turns a :class:`~distill.core.outputs.StepInputs` into a dict of named
loss terms. Parameters it owns (projectors, regressors, heads) are trained with the student; state it keeps
between steps lives in buffers, so checkpoints carry it. A method may build its parameters lazily in
:meth:`Method.setup`, which the trainer calls once with example outputs before the optimiser exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.core.registry import Registry

#: the task families whose models give one row of class logits per example (``kd`` and its kin apply to all four)
CLASSIFICATION_TASKS: frozenset[str] = frozenset(
    {"image_classification", "text_classification", "vector_classification", "graph_node_classification"})
#: convolutional feature maps (B, C, H, W): the families whose students are CNNs
IMAGE_TASKS: frozenset[str] = frozenset({"image_classification"})
#: dense prediction: one output per pixel (class logits (B, K, H, W), or an image), CNN feature maps (B, C, H, W)
DENSE_TASKS: frozenset[str] = frozenset({"semantic_segmentation", "super_resolution"})
#: inputs that are one float tensor per example, which mixup can blend (not token ids, not graph nodes)
MIXABLE_TASKS: frozenset[str] = frozenset({"image_classification", "vector_classification"})


class Method(nn.Module):
    """Base class of every distillation method.

    Subclasses set ``needs_teacher`` / ``needs_labels`` and implement :meth:`forward` returning
    ``{term_name: scalar tensor}``. Weights that scale the whole method belong to the composition
    (:class:`~distill.core.compose.Composite`), not to the method.
    """

    needs_teacher: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    #: True when the method also works with a sparse teacher (``ModelOutput.topk`` set, ``logits`` None), as
    #: served by a top-k teacher cache; other methods are refused such a teacher with a clear error
    accepts_topk_teacher: ClassVar[bool] = False
    #: True when the method reads a language model's final hidden states and head instead of its logits
    #: (``ModelOutput.hidden``, produced by ``data.chunk_tokens`` of ``task: causal_lm``), or no model output at all
    accepts_hidden_states: ClassVar[bool] = False
    #: how a teacher ensemble must combine its members for this method (``"probs"``: the mean of their
    #: probabilities), or None when either is fine; configs that leave ``teacher.reduce`` unset are refused
    ensemble_reduce: ClassVar[str | None] = None
    #: epochs of an initialisation stage run before the main training (0: none). During it the optimiser
    #: minimises only :meth:`init_loss` of the methods that have one, at the base learning rate. This is how
    #: RepDistiller's pre-training of AB connectors, FT's paraphraser or FSP works, with no trainer special case.
    init_epochs: int = 0
    #: the pipeline that trains this method (a module of :mod:`distill.pipelines`) when it cannot run from a
    #: methods list (its teacher or data are built by the pipeline); None for ordinary methods
    pipeline: ClassVar[str | None] = None
    #: the ``task:`` values this method applies to (a config pairing it with another task is refused when read);
    #: None: any task. Every built-in method sets it (``distill methods --task NAME`` lists them by task)
    tasks: ClassVar[frozenset[str] | None] = None

    @classmethod
    def check_experiment(cls, cfg: Any, index: int) -> None:
        """Rules this method sets on the rest of an experiment file (``cfg`` is the validated
        :class:`distill.config.ExperimentConfig`, ``index`` this method's position in ``methods``): raise
        ``ValueError`` with a message that starts with the key at fault. Most methods have none."""

    def student_taps(self) -> list[str]:
        """Names of student features this method reads (aliases such as ``f2`` or dotted module paths)."""
        return []

    def teacher_taps(self) -> list[str]:
        """Names of teacher features this method reads."""
        return []

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:  # noqa: B027
        """Build parameters whose shapes depend on the models or the run (called once, before the optimiser).

        ``student`` and ``teacher`` are the outputs (with the requested features) on one example batch.
        """

    #: set True to receive :meth:`teacher_pass` once before training
    wants_teacher_pass: ClassVar[bool] = False

    def teacher_pass(self, outputs: Iterator[tuple[Batch, ModelOutput]]) -> None:
        """Consume (batch, teacher output) pairs over the whole unaugmented training set, once, before training
        (only called when ``wants_teacher_pass``). Store what you compute in buffers so checkpoints carry it."""

    def optimizer_overrides(self) -> list[tuple[list[nn.Parameter], dict[str, float]]]:
        """Parameter groups with their own optimiser settings: ``[(params, {"lr_factor": f, "weight_decay": w})]``.

        ``lr_factor`` multiplies the run's learning rate (and follows its schedule); ``weight_decay`` replaces the
        run's. Parameters not listed use the run's settings."""
        return []

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Change a training batch before teacher and student see it (e.g. mixup); both see the result.

        Draw randomness only from ``generator`` (seeded from the run's seed, epoch and step), so a resumed
        run replays the same batches. Soft targets go in ``batch.labels`` as a (B, K) float tensor."""
        return batch

    def inference_model(self, student: nn.Module) -> nn.Module | None:
        """A module to evaluate and export instead of the bare student (e.g. combining two heads), or None."""
        return None

    def after_epoch(self, context: EpochContext) -> None:  # noqa: B027
        """Called after every main-stage epoch, before evaluation (e.g. to fit an inference combiner on the
        validation split). Store results in buffers so checkpoints carry them."""

    def init_loss(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        """Loss terms of the initialisation stage (only called when ``init_epochs > 0``)."""
        raise NotImplementedError(f"{type(self).__name__} sets init_epochs but defines no init_loss")

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class TapMethod(Method):
    """Base of the methods that read named student and teacher features (taps), and may build parameters at set-up
    from the first batch's feature shapes: :class:`FeaturePair` reads one pair, :class:`FeaturePairs` a list.

    A subclass sets ``method_name`` (its registered name, used in messages); in :meth:`Method.setup`,
    :meth:`setup_teacher` refuses a run without a teacher.
    """

    #: the registered name, used in error messages
    method_name: ClassVar[str] = ""

    def setup_teacher(self, teacher: ModelOutput | None) -> ModelOutput:
        """The teacher's outputs at set-up; a run without a teacher is refused."""
        if teacher is None:
            raise ValueError(f"method {self.method_name!r} needs a teacher, but none is configured")
        return teacher


class FeaturePair(TapMethod):
    """A :class:`TapMethod` that reads one student feature and one teacher feature; ``__init__`` calls
    :meth:`tap_pair`."""

    student_feature: str
    teacher_feature: str

    def tap_pair(self, student: str, teacher: str) -> None:
        """Read the student feature ``student`` and the teacher feature ``teacher``."""
        self.student_feature = student
        self.teacher_feature = teacher

    def student_taps(self) -> list[str]:
        return [self.student_feature]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_feature]

    def setup_features(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two features on the set-up batch (a run without a teacher is refused)."""
        t = self.setup_teacher(teacher)
        return student.feature(self.student_feature), t.feature(self.teacher_feature)

    def step_features(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The two features of a training step."""
        s = inputs.student.feature(self.student_feature)
        return s, require_teacher(inputs, self.method_name).feature(self.teacher_feature)


class FeaturePairs(TapMethod):
    """A :class:`TapMethod` that reads pairs of features with one weight each; ``__init__`` calls
    :meth:`tap_pairs`."""

    student_features: list[str]
    teacher_features: list[str]
    pair_weights: list[float]

    def tap_pairs(self, student: list[str] | None, teacher: list[str] | None, weights: list[float] | None,
                  default: list[str]) -> None:
        """Read the student features ``student`` (default ``default``) and the teacher features ``teacher``
        (default: the student's names), weighted by ``weights`` (default 1 per pair); one entry per pair each."""
        s = list(student or default)
        t = list(teacher or s)
        if len(s) != len(t):
            raise ValueError(f"{self.method_name}: student and teacher feature lists must have the same length")
        w = [float(x) for x in (weights or [1.0] * len(s))]
        if len(w) != len(s):
            raise ValueError(f"{self.method_name}: one weight per feature pair is needed")
        self.student_features, self.teacher_features, self.pair_weights = s, t, w

    def student_taps(self) -> list[str]:
        return self.student_features

    def teacher_taps(self) -> list[str]:
        return self.teacher_features


@dataclass
class EpochContext:
    """What :meth:`Method.after_epoch` can read: the epoch and the outputs of student and teacher, in eval
    mode and with the method's taps, on a split (``"val"``, held out from training, when configured;
    ``"eval"``, the evaluation set)."""

    epoch: int
    splits: tuple[str, ...]
    student_outputs: Callable[[str, list[str]], Iterator[tuple[Batch, ModelOutput]]]
    teacher_outputs: Callable[[str, list[str]], Iterator[tuple[Batch, ModelOutput]]]


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register
