"""``task: ranking``: (query, positive, negatives) groups scored by a bi-encoder student; the teacher is a live
bi-encoder or a file of scores from a teacher run elsewhere (Margin-MSE's cross-encoder). Groups come from judged
queries (Cranfield, or docs/queries/qrels) or from MS MARCO-style training files (triples, hard negatives, a
per-triple score file; :func:`distill.tasks.ranking.data.load_msmarco`)."""

from __future__ import annotations

from typing import Any

from distill.config import ConfigError, given_keys
from distill.core.family import Loaded, register_family
from distill.tasks.common import existing_file
from distill.tasks.embedding.build import SentenceFamily
from distill.tasks.embedding.models import SentenceTeacher
from distill.tasks.ranking.data import (
    judged_eval,
    judged_split,
    load_msmarco,
    load_ranking_collection,
    msmarco_eval,
    training_groups,
)
from distill.tasks.ranking.section import RankingData, RankingTeacher
from distill.tasks.ranking.task import TextRanking
from distill.text.teacher_sources import ScoreFileTeacher, read_score_file

#: keys that shape groups drawn from judged queries (``qrels``/``cranfield``), and those of MS MARCO-style files
JUDGED_KEYS = ("train_queries", "negatives", "bm25_depth", "title_groups", "title_seed", "format", "id_column",
               "text_column", "title_column")
MSMARCO_KEYS = ("triples", "triples_format", "hard_negatives", "hard_negative_systems", "max_triples")
#: evaluation keys of MS MARCO-style runs only (a judged collection is evaluated on its own qrels, over all of it)
MSMARCO_EVAL_KEYS = ("eval_qrels", "eval_candidates", "eval_max_docs")


@register_family
class RankingFamily(SentenceFamily):
    name = "ranking"
    summary = ("(query, positive, negatives) groups -> bi-encoder scores (Cranfield, TSV/JSONL + TREC qrels, MS MARCO "
               "triples and teacher score files)")
    data_section = RankingData
    teacher_section = RankingTeacher

    def has_teacher(self, cfg: Any) -> bool:
        return cfg.teacher is not None

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        d, t = cfg.data, cfg.teacher
        given = given_keys(d)  # a saved run config (distill_config.json) writes every default out: those are not given
        scores = t is not None and t.scores is not None
        if t is not None and t.scores is not None and (t.path or t.arch or t.cache):
            raise ValueError("teacher.scores: a score file is the teacher's outputs already; drop teacher.path and "
                             "teacher.cache")
        if t is not None and not scores and "scores_format" in given_keys(t):
            raise ValueError("teacher.scores_format: says how teacher.scores is read, which is not set")
        if not d.msmarco():
            if d.cranfield is None and None in (d.docs, d.queries, d.qrels):
                raise ValueError("data: give 'cranfield' (a folder) or all of 'docs', 'queries' and 'qrels'")
            extra = next((k for k in MSMARCO_KEYS if k in given), None)
            if extra is not None:
                raise ValueError(f"data.{extra}: MS MARCO-style training groups do not combine with data."
                                 f"{'cranfield' if d.cranfield else 'qrels'} (judged queries); give one of them")
            extra = next((k for k in MSMARCO_EVAL_KEYS if getattr(d, k) is not None), None)
            if extra is not None:
                raise ValueError(f"data.{extra}: applies to MS MARCO-style runs; a judged collection (data."
                                 f"{'cranfield' if d.cranfield else 'qrels'}) is evaluated on its own judgments "
                                 "over all its documents: give data.eval_queries (query ids)")
            if d.eval_max_queries is not None and d.eval_queries is None and d.train_queries is None:
                raise ValueError("data.eval_max_queries: there are no evaluation queries; give data.eval_queries, "
                                 "or data.train_queries (the judged queries not in it are evaluated)")
            return
        if d.triples is None and d.hard_negatives is None and (not scores or None in (d.docs, d.queries)):
            raise ValueError("data: give 'cranfield' (a folder), all of 'docs', 'queries' and 'qrels', or MS "
                             "MARCO-style files: 'triples', 'hard_negatives', or 'docs' and 'queries' with a "
                             "per-triple teacher.scores file")
        if d.triples is not None and d.hard_negatives is not None:
            raise ValueError("data.hard_negatives: give data.triples or data.hard_negatives, not both")
        judged = next((k for k in JUDGED_KEYS if k in given), None)
        if judged is not None:
            raise ValueError(f"data.{judged}: applies to groups drawn from judged queries (data.qrels or "
                             "data.cranfield), not to MS MARCO-style training files")
        if d.hard_negatives is None:
            for key in ("num_negatives", "max_positives", "hard_negative_systems"):
                if key in given:
                    raise ValueError(f"data.{key}: applies to data.hard_negatives; a training triple has one "
                                     "positive and one negative")
        if d.triples is None and "triples_format" in given:
            raise ValueError("data.triples_format: says how data.triples is read, which is not set")
        self.check_msmarco_eval(d)

    @staticmethod
    def check_msmarco_eval(d: Any) -> None:
        """The evaluation keys of an MS MARCO-style run (``data.eval_qrels`` turns evaluation on)."""
        if d.eval_qrels is None:
            extra = next((k for k in ("eval_queries", "eval_candidates", "eval_max_docs", "eval_max_queries")
                          if getattr(d, k) is not None), None)
            if extra is not None:
                raise ValueError(f"data.{extra}: the evaluation needs relevance judgments: give data.eval_qrels "
                                 "(e.g. MS MARCO's qrels.dev.tsv)")
            return
        if d.eval_candidates is not None:
            if d.eval_max_docs is not None:
                raise ValueError("data.eval_max_docs: applies to retrieval over data.docs; with "
                                 "data.eval_candidates each query ranks its own candidates")
            return
        if d.docs is None:
            raise ValueError("data.eval_qrels: the evaluation needs passages to rank: give data.eval_candidates (a "
                             "re-ranking file such as top1000.dev) or data.docs (collection.tsv, with "
                             "data.eval_max_docs)")
        if d.eval_queries is None:
            raise ValueError("data.eval_queries: retrieval over data.docs needs the query texts: give "
                             "data.eval_queries (qid<TAB>query, e.g. queries.dev.tsv) or data.eval_candidates")

    def load(self, cfg: Any) -> Loaded:
        task = TextRanking(None, cfg.data.query_length, cfg.data.doc_length)  # type: ignore[arg-type]
        if cfg.data.msmarco():
            groups, stored = load_msmarco(cfg)
            held = msmarco_eval(cfg, groups)
            if held is not None:
                task.set_retrieval(held, "mrr@10")
            return Loaded(task, groups, held, info={"collection": None, "score_teacher": stored})
        coll = load_ranking_collection(cfg)
        scores = None
        if cfg.teacher is not None and cfg.teacher.scores:
            path = existing_file(cfg.teacher.scores, cfg.base_dir, "teacher.scores")
            try:
                scores = ScoreFileTeacher(read_score_file(path, cfg.teacher.scores_format))
                scores.source = str(path)
            except (ValueError, OSError, IndexError, KeyError) as e:  # UnicodeDecodeError is a ValueError
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(f"teacher.scores: {first if first.startswith(str(path)) else f'{path}: {first}'}") \
                    from None
        train_q, held_q = judged_split(cfg, coll)
        groups = training_groups(cfg, coll, scores.scores if scores is not None else None, train_q)
        held = judged_eval(coll, held_q)
        if held is not None:
            task.set_retrieval(held, "ndcg@10")
        return Loaded(task, groups, held, info={"collection": coll, "score_teacher": scores})

    def build_teacher(self, cfg: Any, loaded: Loaded) -> Any:
        if cfg.teacher is None:
            return None
        if loaded.info["score_teacher"] is not None:
            return loaded.info["score_teacher"]
        return SentenceTeacher(self.build_model(cfg.teacher, loaded, cfg, "teacher"))
