"""Loading a ranking collection and making the training groups."""

from __future__ import annotations

import random
import warnings
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
    if d.format != "auto":
        return table_collection(cfg)
    keys = ("docs", "queries", "qrels")
    files = [existing_file(getattr(d, k), cfg.base_dir, f"data.{k}") for k in keys]
    try:
        return load_collection(*files)
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        key = next((k for k, f in zip(keys, files) if message.startswith(str(f))), "docs, queries, qrels")
        raise ConfigError(f"data.{key}: {message}" if "," not in key else f"data ({key}): {message}") from None


def table_texts(cfg: Any, key: str) -> tuple[dict[str, str], dict[str, str]]:
    """(texts, titles) by id from the ``datasets`` table of ``data.<key>``, joined as the TSV/JSONL reader does
    (a title goes before its text)."""
    from distill.data.tables import column_values, pick_column, read_table, split_for, texts_of

    d = cfg.data
    path = existing_path(getattr(d, key), cfg.base_dir, f"data.{key}")
    table = read_table(path, d.format, f"data.{key}", split=split_for("train"))
    id_col = pick_column(table, d.id_column, ("_id", "id"), "data.id_column", path)
    text_col = pick_column(table, d.text_column, (), "data.text_column", path)
    title_col = d.title_column if d.title_column is not None else ("title" if "title" in table.column_names else None)
    if title_col is not None:
        pick_column(table, title_col, (), "data.title_column", path)
    ids = [str(v).strip() for v in column_values(table, id_col)]
    texts_in = texts_of(table, text_col, f"data.{key}", path)
    titles_in = column_values(table, title_col) if title_col else [None] * len(ids)
    texts: dict[str, str] = {}
    titles: dict[str, str] = {}
    for row, (i, text, title) in enumerate(zip(ids, texts_in, titles_in)):
        if i in texts:
            raise ConfigError(f"data.{key}: {path}: id {i!r} appears twice (row {row})")
        texts[i] = " ".join(f"{title} {text}".split()) if title else text.strip()
        if title:
            titles[i] = str(title).strip()
    if not texts:
        raise ConfigError(f"data.{key}: {path}: no records")
    return texts, titles


def table_collection(cfg: Any) -> RetrievalCollection:
    """``docs`` and ``queries`` from ``datasets`` tables, ``qrels`` from its TREC file."""
    from distill.text.ir_data import check_qrels, read_qrels

    docs, titles = table_texts(cfg, "docs")
    queries, _ = table_texts(cfg, "queries")
    qrels = existing_file(cfg.data.qrels, cfg.base_dir, "data.qrels")
    try:
        judged = read_qrels(qrels)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.qrels: {str(e).splitlines()[0]}") from None
    try:
        check_qrels(qrels, judged, docs, queries, "data.docs", "data.queries")
    except ValueError as e:
        raise ConfigError(f"data.qrels: {e}") from None
    return RetrievalCollection(docs, queries, judged, titles)


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
        kept = {q for q, _, _ in groups}
        skipped = [q for q in qids if q not in kept]
        if skipped:
            note = (f"teacher.scores: {len(skipped)} of {len(qids)} training queries have no scored judged positive "
                    f"or fewer than data.num_negatives ({d.num_negatives}) scored non-relevant documents, e.g. "
                    f"{skipped[0]!r}")
            if not groups:
                raise ConfigError(f"{note}: no training groups are left")
            warnings.warn(f"{note}; they are left out of training", stacklevel=2)
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
