"""The ``data:`` and ``teacher:`` sections of ``task: ranking``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import Strict, TeacherConfig


class RankingData(Strict):
    """(query, positive, negatives) groups from a collection: ``cranfield`` (the folder as shipped) or ``docs`` /
    ``queries`` (TSV or JSONL) with TREC ``qrels``. ``train_queries``: a file of query ids, one per line (default:
    every judged query). Negatives (``negatives: auto``): with ``teacher.scores``, drawn from each query's scored
    non-relevant documents; otherwise from its BM25 top ``bm25_depth``; ``negatives: bm25`` draws from the BM25 top
    with a score file too (every pair must then be scored). ``max_positives``: the most relevant judged positives
    per query (default all). ``title_groups``: also N pseudo-queries made of document titles (Cranfield), the
    document as positive and its BM25 top non-self documents as negatives; the titled documents are drawn with
    ``title_seed``. ``format``: how ``docs`` and ``queries`` are read: ``auto`` (TSV, or JSONL by the name) or a
    table read with Hugging Face ``datasets`` (``csv``, ``jsonl``, ``parquet``, ``arrow``; docs/data.md) with the
    ids in ``id_column`` (default ``_id`` or ``id``), the texts in ``text_column`` and optional titles in
    ``title_column`` (default ``title`` when there is one)."""

    cranfield: str | None = None
    docs: str | None = None
    queries: str | None = None
    format: Literal["auto", "csv", "jsonl", "parquet", "arrow"] = "auto"
    id_column: str | None = None
    text_column: str = "text"
    title_column: str | None = None
    qrels: str | None = None
    train_queries: str | None = None
    num_negatives: int = Field(3, gt=0)
    bm25_depth: int = Field(30, gt=0)
    query_length: int = Field(64, gt=0)
    doc_length: int = Field(256, gt=0)
    negatives: Literal["auto", "bm25", "scored"] = "auto"
    max_positives: int | None = Field(None, gt=0)
    title_groups: int = Field(0, ge=0)
    title_seed: int = 0


class RankingTeacher(TeacherConfig):
    """A live bi-encoder (``path``: a sentence-transformers folder; scores are dot products of its embeddings) or
    a teacher that was run elsewhere: ``scores``, a file of lines ``qid docid score`` (e.g. a cross-encoder's)."""

    scores: str | None = None
