"""Loading a ranking collection and making the training groups."""

from __future__ import annotations

import random
from typing import Any

from distill.config import ConfigError
from distill.tasks.common import existing_file, existing_path
from distill.tasks.embedding.data import read_text_lines
from distill.text.groups import query_groups, title_groups, to_ranking_groups
from distill.text.ir_data import RetrievalCollection, load_collection, load_cranfield
from distill.text.retrieval import BM25Index


def load_ranking_collection(cfg: Any) -> RetrievalCollection:
    d = cfg.data
    if d.cranfield:
        folder = existing_path(d.cranfield, cfg.base_dir, "data.cranfield")
        if not folder.is_dir():
            raise ConfigError(f"data.cranfield: {folder} is not a folder")
        try:
            return load_cranfield(folder)
        except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
            raise ConfigError(f"data.cranfield: {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                from None
    files = [existing_file(getattr(d, k), cfg.base_dir, f"data.{k}") for k in ("docs", "queries", "qrels")]
    try:
        return load_collection(*files)
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise ConfigError(f"data (docs, queries, qrels): {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


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


def training_groups(cfg: Any, coll: RetrievalCollection, scores: dict[tuple[str, str], float] | None) -> Any:
    d = cfg.data
    if d.train_queries:
        qids = read_text_lines(existing_file(d.train_queries, cfg.base_dir, "data.train_queries"),
                               "data.train_queries")
    else:
        qids = coll.judged_queries()
    unknown = [q for q in qids if q not in coll.queries]
    if unknown:
        raise ConfigError(f"data.train_queries: query ids not in the collection: {unknown[:5]}")
    scored = scores is not None and d.negatives != "bm25"
    if d.negatives == "scored" and scores is None:
        raise ConfigError("data.negatives: 'scored' draws negatives from teacher.scores, which is not set")
    bm25 = BM25Index(coll.docs) if not scored or d.title_groups else None
    if scored:
        groups = score_file_groups(coll, qids, scores, d.num_negatives, cfg.seed)
        if d.max_positives is not None:
            raise ConfigError("data.max_positives: applies to BM25 negatives (data.negatives: bm25)")
    else:
        groups = query_groups(coll, qids, bm25, d.num_negatives, d.bm25_depth, cfg.seed, d.max_positives)
    if d.title_groups:
        titled = [doc for doc in coll.docs if coll.titles.get(doc)]
        random.Random(d.title_seed).shuffle(titled)
        groups += title_groups(coll, titled[: d.title_groups], bm25, d.num_negatives)
    if scores is not None and not scored:
        missing = [(q, doc) for q, _, docs in groups for doc in docs if (q, doc) not in scores]
        if missing:
            raise ConfigError(f"teacher.scores: no score for {len(missing)} (query, document) pairs of the training "
                              f"groups, e.g. {missing[0]}; data.negatives: bm25 needs every pair scored")
    if not groups:
        raise ConfigError("data: no training groups (no judged positive with enough scored negatives)")
    return to_ranking_groups(groups, coll.docs)
