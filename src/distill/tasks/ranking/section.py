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
    ``title_column`` (default ``title`` when there is one).

    MS MARCO-style training files (docs/retrieval.md, "MS MARCO training files"), read as streams: ``docs`` is
    then ``collection.tsv`` (``pid<TAB>passage``) and ``queries`` ``queries.train.tsv`` (``qid<TAB>query``), of
    which only the texts the training groups name are kept. The groups come from ``triples``: by id
    (``qidpidtriples.train.full.tsv``: ``qid<TAB>pid_pos<TAB>pid_neg``) or by text (``triples.train.small.tsv``:
    ``query<TAB>positive<TAB>negative``, no ``docs``/``queries``); ``triples_format`` says which (``auto``: ids
    when no field of the first line holds a space). Or from ``hard_negatives``: sentence-transformers'
    ``msmarco-hard-negatives.jsonl.gz``, one group per positive (the first ``max_positives``) with
    ``num_negatives`` negatives drawn with the run's seed from the lists of ``hard_negative_systems`` (default:
    every system of the line). Or, with neither, from a per-triple ``teacher.scores`` file itself
    (``score_pos<TAB>score_neg<TAB>qid<TAB>pid_pos<TAB>pid_neg``, Hofstaetter et al.'s published teacher files).
    ``max_triples``: read only the first N triples (hard negatives: groups); the rest of the file is not read.
    A first line that is clearly a header row (``qid<TAB>query``, ``query<TAB>positive<TAB>negative``) is skipped
    with a note on stderr.

    Evaluation (docs/retrieval.md, "Evaluation"): held-out judged queries rank documents by the dot product of the
    student's embeddings (cosine for a normalising student); ``ndcg@10``, ``mrr@10`` and ``recall@100`` go to
    metrics.csv at each evaluation (``train.eval_every``) and after training, to summary.json and to ``distill
    eval``. Judged collections (``cranfield`` / ``qrels``): ``eval_queries`` is a file of query ids, one per line,
    ranked over the whole collection; by default the judged queries not in ``train_queries`` when that is given,
    otherwise none; given without ``train_queries``, training uses the judged queries not in it; a query in both is
    refused. MS MARCO-style runs evaluate when ``eval_qrels`` is given (TREC ``qid 0 pid grade``, ``qid pid grade``
    or ``qid pid`` lines; MS MARCO's qrels.dev.tsv): each query ranks either its candidates in ``eval_candidates``
    (``qid<TAB>pid<TAB>query<TAB>passage``, MS MARCO's top1000.dev: re-ranking, how MS MARCO dev is scored;
    ``eval_queries``, when given, then a ``qid<TAB>query`` file, chooses the queries), or a subset of ``docs``
    (with ``eval_queries``, queries.dev.tsv): the passages judged for the evaluation queries plus the first
    passages of the file, ``eval_max_docs`` in all (every passage when unset: give it for the 8.8M of
    collection.tsv). ``eval_max_queries``: only the first N evaluation queries (in file order) with a relevant
    judgment (0: no evaluation). Runs select (best/student.safetensors) on ``ndcg@10`` for judged collections
    and ``mrr@10`` for MS MARCO-style runs."""

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
    triples: str | None = None
    triples_format: Literal["auto", "ids", "texts"] = "auto"
    hard_negatives: str | None = None
    hard_negative_systems: list[str] | None = Field(None, min_length=1)
    max_triples: int | None = Field(None, gt=0)
    eval_queries: str | None = None
    eval_qrels: str | None = None
    eval_candidates: str | None = None
    eval_max_docs: int | None = Field(None, gt=0)
    eval_max_queries: int | None = Field(None, ge=0)

    def msmarco(self) -> bool:
        """Whether the groups come from MS MARCO-style files (triples, hard negatives or a per-triple score file)
        rather than from judged queries (``cranfield`` or ``qrels``)."""
        return self.cranfield is None and self.qrels is None


class RankingTeacher(TeacherConfig):
    """A live bi-encoder (``path``: a sentence-transformers folder; scores are dot products of its embeddings) or
    a teacher that was run elsewhere: ``scores``, a file of its scores (e.g. a cross-encoder's), in the layout
    ``scores_format`` names: ``pairs`` (``qid docid score`` lines), ``triples`` (``score_pos score_neg qid pid_pos
    pid_neg``, one line per training triple), ``jsonl`` (``{"qid", "pid", "score"}`` or ``{"qid", "scores": {pid:
    score}}`` a line) or ``auto`` (by the name, then by the first line's fields). Pickles are refused."""

    scores: str | None = None
    scores_format: Literal["auto", "pairs", "triples", "jsonl"] = "auto"
