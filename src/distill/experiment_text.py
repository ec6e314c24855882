"""Build a ``task: text_classification`` run from a validated config (called by ``build_experiment``).

Example (``distill train this.yaml``)::

    task: text_classification
    text: {train: ../shared/data/sst/stsa.binary.train, eval: ../shared/data/sst/stsa.binary.dev, max_length: 64}
    student: {arch: bilstm}
    teacher: {arch: minilm, weights: benchmarks/work/sst2/teacher/minilm_sst2.safetensors,
              options: {pretrained: false}}
    methods: [{name: lsf_idm, alpha: 0.5, temperature: 2.0}]
    train: {epochs: 2, batch_size: 64, optimizer: adamw, lr: 0.002, weight_decay: 0.01}

``text.augment`` trains on a transfer set: the labelled sentences plus augmented copies that only the teacher
labels (:mod:`distill.data.text_augment`). ``teacher.cache`` serves the teacher's logits from the general teacher
cache (sharded, fingerprinted, verified; docs/cache.md) instead of the in-memory ``PrecomputedTeacher``.
``text.aspects`` is the teacher of ``makd``: offline yes/no aspect answers for each training sentence; the
student then gets C + Q outputs and is evaluated on the first C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config import ConfigError, ExperimentConfig, ModelConfig
from distill.core.precomputed import PrecomputedTeacher
from distill.core.safe_pickle import config_key
from distill.core.teachers import FrozenTeacher, TeacherSource
from distill.data.text import TextDataError, TokenizedText, load_text_classification, load_tokenizer, tokenize
from distill.data.text_augment import AugmentConfig, augment_examples
from distill.experiment import (
    Experiment,
    build_methods,
    build_model_from_config,
    open_teacher_cache,
    resolve_path,
    train_config,
)
from distill.methods.makd import AspectTargets, texts_fingerprint
from distill.models.text_students import VOCAB_MODELS
from distill.tasks.text import TextClassification
from distill.train.module import DistillModule
from distill.train.trainer import Trainer, seed_everything


def load_text_split(path: str, cfg: ExperimentConfig, tokenizer: Any, classes: list[str] | None,
                    key: str) -> TokenizedText:
    t = cfg.text
    assert t is not None
    try:
        examples = load_text_classification(resolve_path(path, cfg.base_dir), t.format, classes)
    except TextDataError as e:
        raise ConfigError(f"text.{key}: {e}") from None
    if key == "train" and t.augment is not None:
        a = t.augment
        settings = AugmentConfig(copies=a.copies, p_mask=a.p_mask, p_replace=a.p_replace, p_ngram=a.p_ngram,
                                 ngram_range=(a.ngram_min, a.ngram_max), seed=a.seed,
                                 mask_token=getattr(tokenizer, "mask_token", None) or "[MASK]")
        examples, _ = augment_examples(examples, settings)
    return tokenize(examples, tokenizer, t.max_length)


def text_model_config(model: ModelConfig, vocab_size: int) -> ModelConfig:
    """Embedding-from-scratch students get the tokenizer's vocabulary size unless the config sets one."""
    if model.arch in VOCAB_MODELS and "vocab_size" not in model.options:
        return model.model_copy(update={"options": {**model.options, "vocab_size": vocab_size}})
    return model


def build_text_teacher(cfg: ExperimentConfig, num_classes: int, vocab_size: int, task: TextClassification,
                       train: TokenizedText) -> TeacherSource | None:
    if cfg.teacher is None:
        return None
    members = cfg.teacher.members()
    if len(members) != 1:
        raise ConfigError("teacher.ensemble: not supported for text_classification yet; give one teacher")
    model = build_model_from_config(text_model_config(members[0], vocab_size), num_classes, cfg.base_dir,
                                    "teacher")
    t = cfg.text
    assert t is not None
    if cfg.teacher.cache is not None:
        return open_teacher_cache(cfg, FrozenTeacher(model), task, train)  # type: ignore[arg-type]
    if not t.precompute_teacher:
        return FrozenTeacher(model)
    cache = resolve_path(t.teacher_cache, cfg.base_dir) if t.teacher_cache else None
    if cache is not None and cache.exists():
        with config_key("text.teacher_cache"):
            teacher = PrecomputedTeacher.load(cache)
        if len(teacher) != len(train):
            raise ConfigError(f"text.teacher_cache: {cache} holds {len(teacher)} examples, the training set "
                              f"{len(train)}; delete it or point elsewhere")
        return teacher
    teacher = PrecomputedTeacher.from_model(model, task, train, batch_size=cfg.train.eval_batch_size)
    if cache is not None:
        teacher.save(cache)
    return teacher


def load_text_aspects(cfg: ExperimentConfig, train: TokenizedText) -> AspectTargets:
    """The aspect answers of ``text.aspects``, checked against the training texts they were scored on."""
    t = cfg.text
    assert t is not None and t.aspects is not None
    path = resolve_path(t.aspects, cfg.base_dir)
    if not path.exists():
        raise ConfigError(f"text.aspects: {path} does not exist (score it with distill.methods.makd.score_aspects "
                          "and AspectTargets.save; see docs/text.md)")
    try:
        aspects = AspectTargets.load(path, expect_fingerprint=texts_fingerprint(train.texts))
    except ValueError as e:
        raise ConfigError(f"text.aspects: {e}") from None
    if len(aspects.probs) != len(train):
        raise ConfigError(f"text.aspects: {path} holds {len(aspects.probs)} rows, the training set {len(train)}")
    return aspects


def build_text_experiment(cfg: ExperimentConfig, output_dir: str | Path | None = None) -> Experiment:
    t = cfg.text
    if t is None:
        raise ConfigError("text: required key is missing")
    seed_everything(cfg.seed, cfg.deterministic)
    try:
        tokenizer = load_tokenizer(t.tokenizer)
    except (FileNotFoundError, ImportError) as e:
        raise ConfigError(f"text.tokenizer: {e}") from None
    train = load_text_split(t.train, cfg, tokenizer, None, "train")
    evald = load_text_split(t.eval, cfg, tokenizer, train.classes, "eval") if t.eval else None
    task = TextClassification()
    vocab = len(tokenizer)
    aspects = load_text_aspects(cfg, train) if t.aspects is not None else None
    outputs = train.num_classes + (aspects.probs.shape[1] if aspects is not None else 0)  # makd: C + Q
    student = build_model_from_config(text_model_config(cfg.student, vocab), outputs, cfg.base_dir, "student")
    methods = build_methods(cfg.methods)
    teacher: Any = aspects
    if aspects is None and methods.needs_teacher:
        teacher = build_text_teacher(cfg, train.num_classes, vocab, task, train)
    module = DistillModule(student, methods, teacher, task)
    trainer = Trainer(module, train, evald, train_config(cfg), Path(output_dir or cfg.output_dir))
    return Experiment(cfg, task, train, evald, None, student, teacher, methods, module, trainer)  # type: ignore[arg-type]
