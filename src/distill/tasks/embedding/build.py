"""``task: embedding``: regress a sentence-transformers teacher's embeddings of unlabelled text (LEAF, MSE).

After training the student is also saved as a sentence-transformers folder ``<run_dir>/sentence_transformer`` that
``SentenceTransformer(path)`` loads unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ModelConfig
from distill.core.family import Family, Loaded, register_family
from distill.tasks.embedding.data import load_texts
from distill.tasks.embedding.models import SentenceTeacher, build_sentence_student, load_sentence_teacher
from distill.tasks.embedding.section import EmbeddingData
from distill.tasks.embedding.task import EvalTargets, TextEmbedding, TextSet


class SentenceFamily(Family):
    """What the embedding and ranking families share: sentence-transformers students and teachers."""

    student_required = False
    student_defaults: dict[str, Any] = {}

    def model_archs(self) -> list[str]:
        from distill.tasks.embedding.models import STUDENTS

        return list(STUDENTS)

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.embedding.models import STUDENTS, student_arch

        if key != "student":
            return None
        arch = student_arch(model_cfg)
        return (STUDENTS[arch], ("source",)) if arch in STUDENTS else None

    def has_teacher(self, cfg: Any) -> bool:
        return True  # the default teacher is the shipped all-MiniLM-L6-v2

    def check(self, cfg: Any) -> None:
        if cfg.teacher is not None and cfg.teacher.ensemble:
            raise ValueError(f"teacher.ensemble: not supported for {self.name} yet; give one teacher folder")

    def build_student(self, cfg: Any, loaded: Loaded) -> nn.Module:
        """Batches are tokenised by the student; the teacher reads their texts (:class:`SentenceTeacher`)."""
        student = build_sentence_student(cfg.student, cfg.base_dir, "student", self.student_defaults)
        loaded.task.tokenizer_model = student
        return student

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return load_sentence_teacher(model_cfg, cfg.base_dir, key)

    def teacher_config(self, cfg: Any) -> Any:
        return cfg.teacher if cfg.teacher is not None else ModelConfig()

    def export_formats(self, cfg: Any) -> list[str]:
        return ["sentence-transformers", "safetensors"]

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {}

    def export_student(self, cfg: Any, loaded: Loaded) -> nn.Module:
        return build_sentence_student(cfg.student, cfg.base_dir, "student", self.student_defaults)

    def after_fit(self, experiment: Any) -> None:
        experiment.student.save(str(experiment.trainer.run_dir / "sentence_transformer"))


@register_family
class EmbeddingFamily(SentenceFamily):
    name = "embedding"
    summary = "unlabelled texts -> sentence embeddings regressed onto a sentence-transformers teacher's"
    data_section = EmbeddingData
    student_defaults = {"projection_dim": 384}

    def prepare_student(self, student: Any, teacher: Any, cfg: Any, loaded: Loaded) -> None:
        """Embeddings are regressed: the student's width must be the teacher's unless a method projects them."""
        from distill.text.st_models import embedding_dim

        model = getattr(teacher, "model", None)
        if model is None:
            return
        d_s, d_t = embedding_dim(student), embedding_dim(model)
        projects = any(m.options().get("projection") for m in cfg.methods)
        if d_s and d_t and d_s != d_t and not projects:
            fix = ("set student.options.projection_dim: " + str(d_t) if cfg.student is None or cfg.student.arch
                   or cfg.student.path is None else "give a teacher of the same width, or a leaf method with "
                   "projection: true")
            from distill.config import ConfigError

            raise ConfigError(f"student: its embeddings have {d_s} dimensions, the teacher's {d_t}; {fix}")

    def load(self, cfg: Any) -> Loaded:
        train = TextSet(load_texts(cfg, "train"))
        evald = TextSet(load_texts(cfg, "eval")) if cfg.data.eval else None
        return Loaded(TextEmbedding(None, cfg.data.max_length), train, evald)  # type: ignore[arg-type]

    def build_teacher(self, cfg: Any, loaded: Loaded) -> Any:
        model = self.build_model(self.teacher_config(cfg), loaded, cfg, "teacher")
        teacher = SentenceTeacher(model)
        if loaded.eval is not None:  # the metric's targets: the teacher's embeddings of the held-out texts, once
            loaded.task.eval_teacher = EvalTargets(teacher, loaded.task, loaded.eval)
        return teacher
