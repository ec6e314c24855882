"""``task: ranking``: (query, positive, negatives) groups scored by a bi-encoder student; the teacher is a live
bi-encoder or a file of scores from a teacher run elsewhere (Margin-MSE's cross-encoder)."""

from __future__ import annotations

from typing import Any

from distill.config import ConfigError
from distill.core.family import Loaded, register_family
from distill.tasks.common import existing_file
from distill.tasks.embedding.build import SentenceFamily
from distill.tasks.embedding.models import SentenceTeacher
from distill.tasks.ranking.data import load_ranking_collection, training_groups
from distill.tasks.ranking.section import RankingData, RankingTeacher
from distill.tasks.ranking.task import TextRanking
from distill.text.teacher_sources import ScoreFileTeacher


@register_family
class RankingFamily(SentenceFamily):
    name = "ranking"
    summary = "(query, positive, negatives) groups -> bi-encoder scores (Cranfield, TSV/JSONL + TREC qrels)"
    data_section = RankingData
    teacher_section = RankingTeacher

    def has_teacher(self, cfg: Any) -> bool:
        return cfg.teacher is not None

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        d = cfg.data
        if d.cranfield is None and None in (d.docs, d.queries, d.qrels):
            raise ValueError("data: give 'cranfield' (a folder) or all of 'docs', 'queries' and 'qrels'")
        t = cfg.teacher
        if t is not None and t.scores is not None and (t.path or t.arch or t.cache):
            raise ValueError("teacher.scores: a score file is the teacher's outputs already; drop teacher.path and "
                             "teacher.cache")

    def load(self, cfg: Any) -> Loaded:
        coll = load_ranking_collection(cfg)
        scores = None
        if cfg.teacher is not None and cfg.teacher.scores:
            path = existing_file(cfg.teacher.scores, cfg.base_dir, "teacher.scores")
            try:
                scores = ScoreFileTeacher(path)
            except (ValueError, OSError, IndexError, KeyError) as e:  # UnicodeDecodeError is a ValueError
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(f"teacher.scores: {first if first.startswith(str(path)) else f'{path}: {first}'}") \
                    from None
        groups = training_groups(cfg, coll, scores.scores if scores is not None else None)
        task = TextRanking(None, cfg.data.query_length, cfg.data.doc_length)  # type: ignore[arg-type]
        return Loaded(task, groups, None, info={"collection": coll, "score_teacher": scores})

    def build_teacher(self, cfg: Any, loaded: Loaded) -> Any:
        if cfg.teacher is None:
            return None
        if loaded.info["score_teacher"] is not None:
            return loaded.info["score_teacher"]
        return SentenceTeacher(self.build_model(cfg.teacher, loaded, cfg, "teacher"))
