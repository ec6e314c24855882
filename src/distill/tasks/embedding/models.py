"""Sentence-transformers students and teachers of the embedding and ranking families.

Students (``student.arch``): ``static`` (the teacher folder's input word embeddings, mean-pooled) or ``truncated``
(its first ``options.num_layers`` layers); ``options`` also take ``projection_dim`` (a linear map into the teacher's
space, LEAF's W_out), ``normalize`` and ``freeze_embeddings`` (truncated); ``path`` is the folder they are cut
from (default: the shipped all-MiniLM-L6-v2). Teachers (``teacher.path``): a sentence-transformers folder
(default: the shipped all-MiniLM-L6-v2); a teacher reads the texts with its own tokenizer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.core.safe_pickle import config_key
from distill.tasks.common import existing_path, load_model_weights, validate_model_options
from distill.text.st_models import folder_student, load_sentence_model, static_student, truncated_student

STUDENTS = {"static": static_student, "truncated": truncated_student}


def student_arch(model_cfg: Any) -> str | None:
    """The student's arch: ``static`` by default; None for ``path`` alone (the folder's model as it is)."""
    if model_cfg is None:
        return "static"
    if model_cfg.arch is None:
        return None if model_cfg.path is not None else "static"
    return model_cfg.arch


def build_sentence_student(model_cfg: Any, base_dir: str | None, key: str,
                           defaults: dict[str, Any] | None = None) -> nn.Module:
    arch = student_arch(model_cfg)
    if arch is not None and arch not in STUDENTS:
        raise ConfigError(f"{key}.arch: unknown model {arch!r} for a sentence-embedding task; allowed: "
                          f"{', '.join(STUDENTS)} (or give 'path' alone: a sentence-transformers folder)")
    builder = STUDENTS[arch] if arch is not None else folder_student
    options = {**(defaults or {}), **(model_cfg.options if model_cfg is not None else {})} if arch else {}
    options = validate_model_options(builder, options, f"{key}.options", arch or "path", ("source",))
    source = model_cfg.path if model_cfg is not None else None
    if source is not None:
        source = existing_path(source, base_dir, f"{key}.path")
        if not source.is_dir():
            raise ConfigError(f"{key}.path: {source} is not a folder")
    try:
        with config_key(f"{key}.path"):
            model = builder(source=source, **options)
    except (FileNotFoundError, OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    return load_model_weights(model, model_cfg, base_dir, key) if model_cfg is not None else model


def load_sentence_teacher(model_cfg: Any, base_dir: str | None, key: str) -> nn.Module:
    if model_cfg.arch is not None:
        raise ConfigError(f"{key}.arch: a sentence-embedding teacher is a folder: give 'path' (default: the shipped "
                          "all-MiniLM-L6-v2)")
    path = existing_path(model_cfg.path, base_dir, f"{key}.path") if model_cfg.path else None
    if path is not None and not path.is_dir():
        raise ConfigError(f"{key}.path: {path} is not a folder")
    try:
        with config_key(f"{key}.path"):
            model = load_sentence_model(path)
    except (FileNotFoundError, OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}.path: {str(e).splitlines()[0]}") from None
    return load_model_weights(model, model_cfg, base_dir, key)


class SentenceTeacher:
    """A frozen sentence-transformers teacher that reads the batch's texts (``task.teacher_forward``): it tokenises
    with its own tokenizer, so a student cut from another model, or a static one, can learn from it."""

    def __init__(self, model: nn.Module):
        from distill.core.teachers import freeze

        self.model = freeze(model)

    def to(self, *args: object, **kwargs: object) -> SentenceTeacher:
        self.model.to(*args, **kwargs)
        return self

    def set_precision(self, precision: str) -> None:
        """``teacher.precision``: the weights cast once (its inputs are token ids; embeddings come back float32)."""
        from distill.core.teachers import PRECISIONS

        self.model.to(PRECISIONS[precision])

    def __call__(self, batch: Any, task: Any, taps: Any = ()) -> Any:
        import torch

        from distill.core.outputs import ModelOutput

        if taps:
            raise ValueError(f"a sentence-transformers teacher gives embeddings only; asked for features {list(taps)}")
        self.model.eval()
        with torch.no_grad():
            out = task.teacher_forward(self.model, batch)
        return ModelOutput(out.to(next(self.model.parameters()).device).float())
