"""Loading a ranking collection and making the training groups."""

from __future__ import annotations

import random
import sys
import warnings
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config import ConfigError
from distill.tasks.common import existing_file, existing_path
from distill.tasks.embedding.data import read_text_lines
from distill.tasks.ranking.task import IndexedGroups, RetrievalEval
from distill.text.groups import query_groups, title_groups, to_ranking_groups
from distill.text.ir_data import RetrievalCollection, load_collection, load_cranfield
from distill.text.msmarco import (
    GroupTable,
    fill_texts,
    iter_triple_scores,
    read_candidates,
    read_hard_negatives,
    read_id_texts,
    read_pair_scores,
    read_passages,
    read_qrels_file,
    read_scored_triples,
    read_triples,
    score_layout,
    triples_layout,
)
from distill.text.retrieval import BM25Index
from distill.text.teacher_sources import GroupScoreTeacher


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


def _query_ids(cfg: Any, key: str, coll: RetrievalCollection) -> list[str]:
    qids = read_text_lines(existing_file(getattr(cfg.data, key), cfg.base_dir, f"data.{key}"), f"data.{key}")
    unknown = [q for q in qids if q not in coll.queries]
    if unknown:
        raise ConfigError(f"data.{key}: query ids not in the collection: {unknown[:5]}")
    return list(dict.fromkeys(qids))


def judged_split(cfg: Any, coll: RetrievalCollection) -> tuple[list[str], list[str]]:
    """(training query ids, evaluation query ids) of a judged collection: ``data.train_queries`` and
    ``data.eval_queries`` as given; a missing one is the judged queries not in the other (no evaluation when
    neither is given). An evaluation query that is also a training query is refused."""
    d = cfg.data
    judged = coll.judged_queries()
    train = _query_ids(cfg, "train_queries", coll) if d.train_queries else None
    held = _query_ids(cfg, "eval_queries", coll) if d.eval_queries else None
    if held is not None:
        judged_set = set(judged)
        unjudged = [q for q in held if q not in judged_set]
        if unjudged:
            raise ConfigError(f"data.eval_queries: {len(unjudged)} of its queries have no relevant judged document "
                              f"(nothing to measure), e.g. {unjudged[0]!r}")
    if train is None:
        held_set = set(held or ())
        train = [q for q in judged if q not in held_set]
        held = held or []
    elif held is None:
        train_set = set(train)
        held = [q for q in judged if q not in train_set]
        if not held and d.eval_max_queries != 0:
            print("note: every judged query is a training query (data.train_queries): no held-out queries to "
                  "evaluate on", file=sys.stderr)
    else:
        train_set = set(train)
        leak = [q for q in held if q in train_set]
        if leak:
            raise ConfigError(f"data.eval_queries: {len(leak)} of its queries are training queries too "
                              f"(data.train_queries), e.g. {leak[0]!r}; evaluation queries must be held out")
    if d.eval_max_queries is not None:
        held = held[: d.eval_max_queries]
    return train, held


def judged_eval(coll: RetrievalCollection, held: list[str]) -> RetrievalEval | None:
    """The evaluation set of a judged collection: the held-out queries ranked over every document."""
    if not held:
        return None
    docids = list(coll.docs)
    return RetrievalEval(list(held), [coll.queries[q] for q in held], docids, [coll.docs[d] for d in docids],
                         {q: dict(coll.qrels[q]) for q in held})


def training_groups(cfg: Any, coll: RetrievalCollection, scores: dict[tuple[str, str], float] | None,
                    qids: list[str] | None = None) -> Any:
    """The training groups of the queries ``qids`` (default: the training queries of :func:`judged_split`)."""
    d = cfg.data
    if qids is None:
        qids, _ = judged_split(cfg, coll)
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


# -- MS MARCO-style training files ---------------------------------------------------------------------------------
@contextmanager
def _as_config_error(key: str) -> Iterator[None]:
    """A reader's error (it names the file and line) becomes one line naming the config key."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, OSError) as e:  # FormatError, UnsafeFileError (pickles), UnicodeDecodeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: {first}") from None


def _fill(cfg: Any, key: str, table: GroupTable, queries: bool, named_by: str) -> list[str]:
    """The texts of the table's queries (or passages) from ``data.<key>``, streamed; an id the file lacks is named
    with the line of the training file that asked for it."""
    what = "qid" if queries else "pid"
    path = existing_file(getattr(cfg.data, key), cfg.base_dir, f"data.{key}")
    wanted, first_line = (table.qmap, table.qline) if queries else (table.dmap, table.dline)
    try:
        with _as_config_error(f"data.{key}"):
            return fill_texts(path, wanted, what)
    except KeyError as e:
        missing, count = e.args
        more = f"; {count} of its {len(wanted)} {what}s are missing" if count > 1 else ""
        raise ConfigError(f"data.{key}: {path} has no {what} {missing!r} (named by {named_by}: {table.source}, line "
                          f"{first_line[wanted[missing]]}){more}") from None


def _aligned_scores(score_path: Path, layout: str, table: GroupTable, qids: list[str], docids: list[str],
                    named_by: str) -> np.ndarray:
    """The (N, G) teacher scores of the table's groups from a score file, streamed and matched by ids: per
    triple (qid, pid_pos, pid_neg) when both sides are triples, otherwise per (qid, pid) pair; only the scores the
    groups need are kept. A group without a score is named with its line and the missing ids."""
    n, g = len(table), table.size
    qrows = table.qrows.tolist()
    drows = [table.drows[r * g:(r + 1) * g].tolist() for r in range(n)]
    out = np.full((n, g), np.nan, dtype=np.float32)
    if layout == "triples" and g == 2:
        wanted: dict[tuple[str, ...], tuple[float, float] | None] = {}
        for r in range(n):
            wanted[(qids[qrows[r]], docids[drows[r][0]], docids[drows[r][1]])] = None
        with _as_config_error("teacher.scores"):
            for _, q, p, neg, sp, sn in iter_triple_scores(score_path):
                if (q, p, neg) in wanted:
                    wanted[(q, p, neg)] = (sp, sn)
        for r in range(n):
            key = (qids[qrows[r]], docids[drows[r][0]], docids[drows[r][1]])
            got = wanted[key]
            if got is None:
                raise ConfigError(f"teacher.scores: {score_path} has no line for the triple (qid {key[0]!r}, pid_pos "
                                  f"{key[1]!r}, pid_neg {key[2]!r}) of {named_by}: {table.source}, line "
                                  f"{table.lines[r]}")
            out[r] = got
        return out
    pairs = {(qids[qrows[r]], docids[d]) for r in range(n) for d in drows[r]}
    with _as_config_error("teacher.scores"):
        scores = read_pair_scores(score_path, layout, keep=pairs)
    for r in range(n):
        q = qids[qrows[r]]
        for j, d in enumerate(drows[r]):
            s = scores.get((q, docids[d]))
            if s is None:
                raise ConfigError(f"teacher.scores: {score_path} has no score for qid {q!r}, pid {docids[d]!r} (a "
                                  f"group of {named_by}: {table.source}, line {table.lines[r]})")
            out[r, j] = s
    return out


def load_msmarco(cfg: Any) -> tuple[IndexedGroups, GroupScoreTeacher | None]:
    """Training groups from MS MARCO-style files (``data.triples``, ``data.hard_negatives`` or a per-triple
    ``teacher.scores`` alone) with their texts from ``data.docs``/``data.queries``, and the stored teacher of
    ``teacher.scores`` aligned with them."""
    d, t = cfg.data, cfg.teacher
    score_path = existing_file(t.scores, cfg.base_dir, "teacher.scores") if t is not None and t.scores else None
    layout = None
    if score_path is not None:
        with _as_config_error("teacher.scores"):
            layout = score_layout(score_path, t.scores_format)
    stored: array | None = None
    texts_inline = False
    if d.triples:
        named_by = "data.triples"
        path = existing_file(d.triples, cfg.base_dir, named_by)
        with _as_config_error(named_by):
            texts_inline = triples_layout(path, d.triples_format) == "texts"
            table = read_triples(path, d.max_triples)
        if texts_inline and score_path is not None:
            raise ConfigError(f"teacher.scores: scores are matched by ids, and the text triples of data.triples "
                              f"({path.name}) carry none; give the triples by id (qid, pid_pos, pid_neg) with "
                              "data.docs and data.queries, or the per-triple score file alone")
        if texts_inline and (d.docs or d.queries):
            raise ConfigError(f"data.{'docs' if d.docs else 'queries'}: the text triples of data.triples "
                              f"({path.name}) carry their texts; drop data.docs and data.queries (or give "
                              "data.triples_format: ids)")
    elif d.hard_negatives:
        named_by = "data.hard_negatives"
        path = existing_file(d.hard_negatives, cfg.base_dir, named_by)
        with _as_config_error(named_by):
            table, short = read_hard_negatives(path, d.num_negatives, d.hard_negative_systems, cfg.seed,
                                               d.max_triples, d.max_positives)
        if short:
            note = (f"data.hard_negatives: {len(short)} queries have no positive or fewer than data.num_negatives "
                    f"({d.num_negatives}) negatives, e.g. {short[0]!r}")
            if not len(table):
                raise ConfigError(f"{note}: no training groups are left")
            warnings.warn(f"{note}; they are left out of training", stacklevel=2)
    else:
        named_by = "teacher.scores"
        if score_path is None or layout != "triples":
            raise ConfigError(f"teacher.scores: {score_path} holds per-pair scores ({layout}); the training groups "
                              "then come from data.qrels, data.triples or data.hard_negatives; without them, give a "
                              "per-triple score file ('score_pos score_neg qid pid_pos pid_neg' lines)")
        with _as_config_error(named_by):
            table, stored = read_scored_triples(score_path, d.max_triples)
    if texts_inline:
        query_texts, doc_texts = list(table.qmap), list(table.dmap)
        query_ids = [f"q{i}" for i in range(len(query_texts))]
        doc_ids = [f"p{i}" for i in range(len(doc_texts))]
    else:
        if d.docs is None or d.queries is None:
            raise ConfigError(f"data.{'docs' if d.docs is None else 'queries'}: the ids of {named_by} need the "
                              "texts: give data.docs (collection.tsv: pid<TAB>passage) and data.queries "
                              "(queries.train.tsv: qid<TAB>query)")
        query_texts = _fill(cfg, "queries", table, True, named_by)
        doc_texts = _fill(cfg, "docs", table, False, named_by)
        query_ids, doc_ids = list(table.qmap), list(table.dmap)
    n = len(table)
    groups = IndexedGroups(query_ids, query_texts, doc_ids, doc_texts, np.frombuffer(table.qrows, dtype=np.intc),
                           np.frombuffer(table.drows, dtype=np.intc).reshape(n, table.size), texts_inline)
    if score_path is None:
        return groups, None
    if stored is not None:
        matrix = np.frombuffer(stored, dtype=np.float32).reshape(n, table.size)
    else:
        matrix = _aligned_scores(score_path, layout, table, query_ids, doc_ids, named_by)  # type: ignore[arg-type]
    return groups, GroupScoreTeacher(torch.from_numpy(np.array(matrix)), groups.qids, str(score_path))


# -- MS MARCO-style evaluation --------------------------------------------------------------------------------------
def msmarco_eval(cfg: Any, groups: IndexedGroups) -> RetrievalEval | None:
    """The evaluation set of an MS MARCO-style run (``data.eval_qrels`` with ``data.eval_candidates``, or with
    ``data.docs`` and ``data.eval_queries``; the section's docstring), or None without ``data.eval_qrels``. The
    evaluation queries must not be training queries (by id; by text for triples of texts)."""
    d = cfg.data
    if d.eval_qrels is None or d.eval_max_queries == 0:
        return None
    qrels_path = existing_file(d.eval_qrels, cfg.base_dir, "data.eval_qrels")
    with _as_config_error("data.eval_qrels"):
        qrels = read_qrels_file(qrels_path)
    relevant = {q for q, judged in qrels.items() if any(g > 0 for g in judged.values())}
    texts: dict[str, str] | None = None
    order: list[str] = []
    source = "data.eval_queries" if d.eval_queries else "data.eval_candidates"
    if d.eval_queries:
        path = existing_file(d.eval_queries, cfg.base_dir, "data.eval_queries")
        with _as_config_error("data.eval_queries"):
            texts = read_id_texts(path, relevant)
        order = list(texts)[: d.eval_max_queries]
        if not order:
            raise ConfigError(f"data.eval_queries: none of the queries of {path} has a relevant passage in "
                              f"data.eval_qrels ({qrels_path})")
    candidates = None
    if d.eval_candidates:
        path = existing_file(d.eval_candidates, cfg.base_dir, "data.eval_candidates")
        keep = set(order) if texts is not None else relevant
        with _as_config_error("data.eval_candidates"):
            q_texts, passages, cands = read_candidates(path, keep, None if texts is not None else d.eval_max_queries)
        if texts is None:
            texts, order = q_texts, list(cands)
            if not order:
                raise ConfigError(f"data.eval_candidates: none of the queries of {path} has a relevant passage in "
                                  f"data.eval_qrels ({qrels_path})")
        lacking = [q for q in order if q not in cands]
        if lacking:
            print(f"note: data.eval_candidates: {len(lacking)} of the {len(order)} evaluation queries have no "
                  f"candidates in {path} (e.g. {lacking[0]!r}); they count as zero", file=sys.stderr)
        docids = list(passages)
        at = {p: i for i, p in enumerate(docids)}
        candidates = [np.array(list(dict.fromkeys(at[p] for p in cands.get(q, ()))), dtype=np.int64) for q in order]
    else:
        path = existing_file(d.docs, cfg.base_dir, "data.docs")
        must = {p for q in order for p in qrels[q]}
        extra = None if d.eval_max_docs is None else max(d.eval_max_docs - len(must), 0)
        try:
            with _as_config_error("data.docs"):
                passages = read_passages(path, must, extra)
        except KeyError as e:
            missing, count = e.args
            more = f"; {count} judged passages are missing" if count > 1 else ""
            raise ConfigError(f"data.docs: {path} has no pid {missing!r} (judged in data.eval_qrels: {qrels_path})"
                              f"{more}") from None
        docids = list(passages)
    assert texts is not None
    if groups.made_up_ids:
        train_texts = set(groups.query_texts)
        leak = [q for q in order if texts[q] in train_texts]
        how = "texts"
    else:
        train_ids = set(groups.query_ids)
        leak = [q for q in order if q in train_ids]
        how = "ids"
    if leak:
        raise ConfigError(f"{source}: {len(leak)} evaluation queries are training queries too (by {how}), e.g. "
                          f"{leak[0]!r}; evaluation queries must be held out")
    return RetrievalEval(order, [texts[q] for q in order], docids, [passages[p] for p in docids],
                         {q: qrels[q] for q in order}, candidates)
