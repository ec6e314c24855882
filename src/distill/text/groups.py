"""Training groups for ranking distillation: (query, positive, hard negatives) with BM25 negatives.

Two sources: judged training queries (each relevant document a positive, negatives sampled from the BM25 top-k
of that query minus its judged-relevant documents), and unsupervised pseudo-queries (a document's title as the
query, the document as positive, the best BM25 matches of the title other than the document as negatives).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from distill.tasks.text_retrieval import RankingGroups
from distill.text.ir_data import RetrievalCollection
from distill.text.retrieval import BM25Index


def split_queries(qids: Sequence[str], num_test: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A fixed random split of query ids into (train, test), each kept in the original order."""
    if not 0 < num_test < len(qids):
        raise ValueError(f"num_test must be in 1..{len(qids) - 1}, got {num_test}")
    order = list(qids)
    random.Random(seed).shuffle(order)
    test = set(order[:num_test])
    return [q for q in qids if q not in test], [q for q in qids if q in test]


def query_groups(collection: RetrievalCollection, qids: Sequence[str], bm25: BM25Index, num_negatives: int = 3,
                 depth: int = 30, seed: int = 0, max_positives: int | None = None) -> list[tuple[str, str, list[str]]]:
    """(qid, query text, [positive, negatives...]) for each relevant document of each judged query (the
    ``max_positives`` most relevant when given; ties broken by document id)."""
    rng = random.Random(seed)
    scores = bm25.scores([collection.queries[q] for q in qids])
    out = []
    for row, q in zip(scores, qids):
        relevant = {d for d, g in collection.qrels.get(q, {}).items() if g > 0}
        ranked = [bm25.docids[j] for j in torch.argsort(row, descending=True)[: depth + len(relevant)].tolist()]
        pool = [d for d in ranked if d not in relevant][:depth]
        positives = sorted(relevant, key=lambda d: (-collection.qrels[q][d], d))[:max_positives]
        for pos in positives:
            out.append((q, collection.queries[q], [pos, *rng.sample(pool, num_negatives)]))
    return out


def title_groups(collection: RetrievalCollection, docids: Sequence[str], bm25: BM25Index,
                 num_negatives: int = 3) -> list[tuple[str, str, list[str]]]:
    """Pseudo-queries: a document's title, its document as positive, the top BM25 non-self documents as
    negatives. Query ids are ``title:<docid>``."""
    titled = [d for d in docids if collection.titles.get(d)]
    scores = bm25.scores([collection.titles[d] for d in titled])
    out = []
    for row, d in zip(scores, titled):
        ranked = [bm25.docids[j] for j in torch.argsort(row, descending=True)[: num_negatives + 1].tolist()]
        negs = [x for x in ranked if x != d][:num_negatives]
        out.append((f"title:{d}", collection.titles[d], [d, *negs]))
    return out


def to_ranking_groups(groups: list[tuple[str, str, list[str]]], docs: dict[str, str]) -> RankingGroups:
    return RankingGroups([g[0] for g in groups], [g[1] for g in groups], [list(g[2]) for g in groups],
                         [[docs[d] for d in g[2]] for g in groups])
