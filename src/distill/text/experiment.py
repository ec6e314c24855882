"""Build a run of ``task: embedding`` or ``task: ranking`` from a validated config (the text counterpart of
:func:`distill.experiment.build_experiment`, which dispatches here).

After training, the student is also saved as a sentence-transformers folder ``<run_dir>/sentence_transformer``
that ``SentenceTransformer(path)`` loads unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from distill.config import ConfigError, ExperimentConfig, TextStudentConfig
from distill.core.safe_pickle import config_key
from distill.core.teachers import TeacherSource
from distill.tasks.text_retrieval import RankingGroups, TextEmbedding, TextRanking, TextSet
from distill.text.groups import query_groups, to_ranking_groups
from distill.text.ir_data import RetrievalCollection, load_collection, load_cranfield
from distill.text.retrieval import BM25Index
from distill.text.st_models import encode, load_sentence_model, static_student, truncated_student
from distill.text.teacher_sources import ScoreFileTeacher, TextEmbeddingCache, text_key
from distill.train.module import DistillModule
from distill.train.trainer import Trainer, seed_everything


def build_text_student(cfg: TextStudentConfig, base_dir: str | None) -> nn.Module:
    from distill.experiment import resolve_path

    source = resolve_path(cfg.source, base_dir) if cfg.source else None
    if cfg.kind == "static":
        return static_student(projection_dim=cfg.projection_dim, normalize=cfg.normalize, source=source)
    return truncated_student(cfg.num_layers, projection_dim=cfg.projection_dim, normalize=cfg.normalize,
                             source=source)


def read_text_lines(path: Path) -> list[str]:
    if not path.exists():
        raise ConfigError(f"{path}: no such text file")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"{path}: no texts (one text per line expected)")
    return texts


def load_ranking_collection(cfg: ExperimentConfig) -> RetrievalCollection:
    from distill.experiment import resolve_path

    r = cfg.ranking
    assert r is not None
    if r.cranfield:
        return load_cranfield(resolve_path(r.cranfield, cfg.base_dir))
    return load_collection(*(resolve_path(p, cfg.base_dir) for p in (r.docs, r.queries, r.qrels)))  # type: ignore


def score_file_groups(coll: RetrievalCollection, qids: list[str], scores: dict[tuple[str, str], float],
                      num_negatives: int, seed: int) -> list[tuple[str, str, list[str]]]:
    """Groups whose documents all have teacher scores: judged positives, negatives drawn from the query's
    scored non-relevant documents (queries with too few scored negatives are skipped)."""
    rng = random.Random(seed)
    scored: dict[str, list[str]] = {}
    for q, d in scores:
        scored.setdefault(q, []).append(d)
    out = []
    for q in qids:
        rel = {d for d, g in coll.qrels.get(q, {}).items() if g > 0}
        pool = sorted(d for d in scored.get(q, []) if d not in rel)
        if len(pool) < num_negatives:
            continue
        for pos in sorted(d for d in rel if (q, d) in scores):
            out.append((q, coll.queries[q], [pos, *rng.sample(pool, num_negatives)]))
    return out


@dataclass
class TextExperiment:
    config: ExperimentConfig
    task: Any
    train_data: Any
    eval_data: Any | None
    val_data: Any | None
    student: nn.Module
    teacher: TeacherSource | None
    methods: Any
    module: DistillModule
    trainer: Trainer

    def fit(self, resume: bool = True) -> dict[str, Any]:
        summary = self.trainer.fit(resume=resume)
        self.student.save(str(self.trainer.run_dir / "sentence_transformer"))  # type: ignore[operator]
        return summary


def build_text_experiment(cfg: ExperimentConfig, output_dir: str | Path | None = None) -> TextExperiment:
    from distill.experiment import build_methods, resolve_path, train_config

    seed_everything(cfg.seed, cfg.deterministic)
    methods = build_methods(cfg.methods)
    teacher: Any = None
    eval_data = None
    if cfg.task == "embedding":
        e = cfg.embedding
        assert e is not None
        with config_key("embedding.student.source"):
            student = build_text_student(e.student, cfg.base_dir)
        train_data = TextSet(read_text_lines(resolve_path(e.train_texts, cfg.base_dir)))
        if e.eval_texts:
            eval_data = TextSet(read_text_lines(resolve_path(e.eval_texts, cfg.base_dir)))
        cache_path = resolve_path(e.teacher_cache, cfg.base_dir) if e.teacher_cache else None
        if cache_path is not None and not cache_path.is_absolute() and cfg.base_dir and not cache_path.exists():
            cache_path = Path(cfg.base_dir) / cache_path  # a new cache is written next to the config
        with config_key("embedding.teacher_cache"):
            teacher = TextEmbeddingCache.load(cache_path) if cache_path and cache_path.exists() \
                else TextEmbeddingCache()
        all_texts = train_data.texts + (eval_data.texts if eval_data else [])
        if any(text_key(t) not in teacher.table for t in all_texts):  # computed once, with the live teacher
            with config_key("embedding.teacher"):
                model = load_sentence_model(resolve_path(e.teacher, cfg.base_dir) if e.teacher else None)
            teacher.encoder = lambda texts: encode(model, texts, batch_size=64)
            if teacher.fill(all_texts) and cache_path is not None:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                teacher.save(cache_path)
            teacher.encoder = None
        task: Any = TextEmbedding(student, e.max_length, eval_teacher=teacher)
    else:
        r = cfg.ranking
        assert r is not None
        with config_key("ranking.student.source"):
            student = build_text_student(r.student, cfg.base_dir)
        coll = load_ranking_collection(cfg)
        qids = (read_text_lines(resolve_path(r.train_queries, cfg.base_dir)) if r.train_queries
                else coll.judged_queries())
        unknown = [q for q in qids if q not in coll.queries]
        if unknown:
            raise ConfigError(f"ranking.train_queries: query ids not in the collection: {unknown[:5]}")
        if r.teacher_scores:
            teacher = ScoreFileTeacher(resolve_path(r.teacher_scores, cfg.base_dir))
            groups = score_file_groups(coll, qids, teacher.scores, r.num_negatives, cfg.seed)
        else:
            groups = query_groups(coll, qids, BM25Index(coll.docs), r.num_negatives, r.bm25_depth, cfg.seed)
        if not groups:
            raise ConfigError("ranking: no training groups (no judged positive with enough scored negatives)")
        train_data: Any = to_ranking_groups(groups, coll.docs)
        assert isinstance(train_data, RankingGroups)
        task = TextRanking(student, r.query_length, r.doc_length)
    module = DistillModule(student, methods, teacher, task)
    trainer = Trainer(module, train_data, eval_data, train_config(cfg), Path(output_dir or cfg.output_dir))
    return TextExperiment(cfg, task, train_data, eval_data, None, student, teacher, methods, module, trainer)
