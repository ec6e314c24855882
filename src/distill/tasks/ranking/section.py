"""The ``data:`` and ``teacher:`` sections of ``task: ranking``."""

from __future__ import annotations

from pydantic import Field

from distill.config import Strict, TeacherConfig


class RankingData(Strict):
    """(query, positive, negatives) groups from a collection: ``cranfield`` (the folder as shipped) or ``docs`` /
    ``queries`` (TSV or JSONL) with TREC ``qrels``. ``train_queries``: a file of query ids, one per line (default:
    every judged query). Negatives: with ``teacher.scores``, drawn from each query's scored non-relevant documents;
    otherwise from its BM25 top ``bm25_depth``."""

    cranfield: str | None = None
    docs: str | None = None
    queries: str | None = None
    qrels: str | None = None
    train_queries: str | None = None
    num_negatives: int = Field(3, gt=0)
    bm25_depth: int = Field(30, gt=0)
    query_length: int = Field(64, gt=0)
    doc_length: int = Field(256, gt=0)


class RankingTeacher(TeacherConfig):
    """A live bi-encoder (``path``: a sentence-transformers folder; scores are dot products of its embeddings) or
    a teacher that was run elsewhere: ``scores``, a file of lines ``qid docid score`` (e.g. a cross-encoder's)."""

    scores: str | None = None
