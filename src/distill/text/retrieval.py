"""Ranking and its measurement: BM25 (the ``bm25s`` package), dense retrieval with separate query and document
encoders (symmetric or asymmetric), and the standard measures through ``ir-measures`` (pytrec_eval).

A *run* maps ``qid -> {docid: score}``; qrels map ``qid -> {docid: gain}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

#: names in our result files -> ir-measures measure strings
MEASURES = {"ndcg@10": "nDCG@10", "map@100": "AP@100", "recall@100": "R@100"}


def evaluate_run(run: Run, qrels: Qrels, measures: dict[str, str] | None = None) -> dict[str, float]:
    """Mean of each measure over the queries of ``run`` that have judgments (ir-measures / pytrec_eval).

    A query in ``qrels`` that is missing from ``run`` counts as zero, as trec_eval's ``-c`` does."""
    import ir_measures

    measures = measures or MEASURES
    parsed = {name: ir_measures.parse_measure(m) for name, m in measures.items()}
    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if q in run}
    full_run = {q: run.get(q, {}) for q in judged}
    per_query: dict[str, dict[str, float]] = {name: {} for name in parsed}
    for metric in ir_measures.iter_calc(list(parsed.values()), judged, full_run):
        for name, m in parsed.items():
            if metric.measure == m:
                per_query[name][metric.query_id] = float(metric.value)
    return {name: float(np.mean([vals.get(q, 0.0) for q in judged])) if judged else 0.0
            for name, vals in per_query.items()}


def top_k(scores: torch.Tensor, qids: Sequence[str], docids: Sequence[str], k: int = 100) -> Run:
    """A run from a (Q, D) score matrix: the ``k`` best documents of each query."""
    k = min(k, scores.shape[1])
    vals, idx = scores.float().topk(k, dim=1)
    return {q: {docids[j]: float(v) for v, j in zip(vals[i].tolist(), idx[i].tolist())} for i, q in enumerate(qids)}


class BM25Index:
    """BM25 over a collection with ``bm25s`` (Lucene variant, k1=1.5, b=0.75 by default, English stopwords, no
    stemming)."""

    def __init__(self, docs: dict[str, str], k1: float = 1.5, b: float = 0.75):
        import bm25s

        self._bm25s = bm25s
        self.docids = list(docs)
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(bm25s.tokenize([docs[d] for d in self.docids], stopwords="en", show_progress=False),
                         show_progress=False)

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """(Q, D) BM25 scores of every document, columns in ``self.docids`` order."""
        toks = self._bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        return torch.from_numpy(np.stack([self.index.get_scores(t) for t in toks]).astype(np.float32))

    def run(self, queries: dict[str, str], k: int = 100) -> Run:
        qids = list(queries)
        return top_k(self.scores([queries[q] for q in qids]), qids, self.docids, k)


Encoder = Callable[[list[str]], torch.Tensor]


def dense_scores(query_emb: torch.Tensor, doc_emb: torch.Tensor) -> torch.Tensor:
    """Dot products (cosine for normalised embeddings), (Q, D)."""
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(f"query embeddings have dim {query_emb.shape[1]} but documents {doc_emb.shape[1]}: "
                         "asymmetric retrieval needs a student in the teacher's space")
    return query_emb.float() @ doc_emb.float().T


def dense_run(encode_queries: Encoder, doc_emb: torch.Tensor, queries: dict[str, str], docids: Sequence[str],
              k: int = 100) -> Run:
    """Rank all documents (embedded beforehand, rows in ``docids`` order) for each query."""
    qids = list(queries)
    q = encode_queries([queries[i] for i in qids])
    return top_k(dense_scores(q, doc_emb), qids, docids, k)
