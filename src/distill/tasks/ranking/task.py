"""Ranking (``task: ranking``): (query, positive, negatives) groups in, a (B, 1 + n) matrix of dot-product scores
out (positive in column 0, so the label of every group is 0). Metric: how often the positive ranks first in its
group, and the mean reciprocal rank within the group. Corpus-level retrieval measures are computed by
:mod:`distill.text.retrieval` after training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.core.batch import Batch
from distill.tasks.embedding.task import text_ids
from distill.text.st_models import embed, encode, tokenize


@dataclass
class RankingGroups:
    """``qids[i]``/``queries[i]`` with ``docids[i]``/``docs[i]``: the positive first, then the negatives.
    Every group has the same size."""

    qids: list[str]
    queries: list[str]
    docids: list[list[str]]
    docs: list[list[str]]

    def __post_init__(self) -> None:
        n = {len(self.qids), len(self.queries), len(self.docids), len(self.docs)}
        if len(n) != 1:
            raise ValueError(f"ranking groups: qids, queries, docids and docs differ in length ({sorted(n)})")
        sizes = {len(d) for d in self.docids} | {len(d) for d in self.docs}
        if len(sizes) > 1 or (sizes and min(sizes) < 2):
            raise ValueError(f"every group needs one positive and the same number (>= 1) of negatives; "
                             f"group sizes {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.qids)


class _Column:
    """A read-only sequence whose item ``i`` is computed on access."""

    def __init__(self, n: int, get: Callable[[int], Any]):
        self.n = n
        self.get = get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.get(int(i) % self.n)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self.get(i) for i in range(self.n))


@dataclass
class IndexedGroups:
    """Ranking groups kept compact for large training sets (MS MARCO's millions of triples): each distinct query
    and passage text once, the groups as index arrays, ``query_index`` (N,) and ``doc_index`` (N, G) (positive in
    column 0). Read like :class:`RankingGroups` (``qids``, ``queries``, ``docids``, ``docs``), item by item."""

    query_ids: list[str]
    query_texts: list[str]
    doc_ids: list[str]
    doc_texts: list[str]
    query_index: np.ndarray
    doc_index: np.ndarray

    def __post_init__(self) -> None:
        if self.doc_index.ndim != 2 or self.doc_index.shape[1] < 2 or len(self.query_index) != len(self.doc_index):
            raise ValueError(f"ranking groups: query_index {self.query_index.shape} and doc_index "
                             f"{self.doc_index.shape} must be (N,) and (N, 1 + n) with n >= 1")
        if len(self.query_ids) != len(self.query_texts) or len(self.doc_ids) != len(self.doc_texts):
            raise ValueError("ranking groups: ids and texts differ in length")
        q, d = self.query_index, self.doc_index
        if len(q) and (q.min() < 0 or q.max() >= len(self.query_ids) or d.min() < 0 or d.max() >= len(self.doc_ids)):
            raise ValueError("ranking groups: an index outside the id tables")

    def __len__(self) -> int:
        return len(self.query_index)

    @property
    def qids(self) -> _Column:
        return _Column(len(self), lambda i: self.query_ids[self.query_index[i]])

    @property
    def queries(self) -> _Column:
        return _Column(len(self), lambda i: self.query_texts[self.query_index[i]])

    @property
    def docids(self) -> _Column:
        return _Column(len(self), lambda i: [self.doc_ids[j] for j in self.doc_index[i]])

    @property
    def docs(self) -> _Column:
        return _Column(len(self), lambda i: [self.doc_texts[j] for j in self.doc_index[i]])


class RankingMetrics:
    def __init__(self) -> None:
        self.first = 0
        self.rr = 0.0
        self.n = 0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        rank = (outputs[:, 1:] >= outputs[:, :1]).sum(1) + 1
        self.first += int((rank == 1).sum())
        self.rr += float((1.0 / rank.float()).sum())
        self.n += outputs.shape[0]

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"group_accuracy": self.first / n, "group_mrr": self.rr / n}


def _prefixed(prefix: str, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tokens.items()}


def _unprefixed(prefix: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in inputs.items() if k.startswith(prefix)}


class TextRanking:
    """Score (query, documents) groups with a bi-encoder: s(q, d) = <E(q), E(d)> (dot product, the
    sentence-transformers default for Margin-MSE)."""

    primary_metric = "group_mrr"
    higher_is_better = True

    def __init__(self, tokenizer_model: nn.Module, query_length: int = 64, doc_length: int = 128):
        self.tokenizer_model = tokenizer_model
        self.query_length = query_length
        self.doc_length = doc_length

    def num_examples(self, data: RankingGroups | IndexedGroups) -> int:
        return len(data)

    def fetch(self, data: RankingGroups | IndexedGroups, indices: torch.Tensor) -> Batch:
        idx = [int(i) for i in indices]
        query_col, doc_col = data.queries, data.docs
        queries = [query_col[i] for i in idx]
        groups = [doc_col[i] for i in idx]
        docs = [d for g in groups for d in g]
        inputs = {}
        if self.tokenizer_model is not None:
            inputs = {**_prefixed("q_", tokenize(self.tokenizer_model, queries, self.query_length)),
                      **_prefixed("d_", tokenize(self.tokenizer_model, docs, self.doc_length))}
        qids, docids = data.qids, data.docids
        meta = {"qids": [qids[i] for i in idx], "docids": [docids[i] for i in idx],
                "group_size": len(groups[0]) if idx else 0, "queries": queries, "docs": docs}
        return Batch(inputs, torch.zeros(len(idx), dtype=torch.long), indices, meta)

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        q = embed(model, _unprefixed("q_", batch.inputs))
        d = embed(model, _unprefixed("d_", batch.inputs))
        return group_scores(q, d)

    def teacher_forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A sentence-transformers teacher scores the groups from their texts with its own tokenizer."""
        q = encode(model, batch.meta["queries"], batch_size=64, max_length=self.query_length)
        d = encode(model, batch.meta["docs"], batch_size=64, max_length=self.doc_length)
        return group_scores(q, d)

    def guard_inputs(self, batch: Batch) -> torch.Tensor:
        """A teacher cache's input guard compares the texts of each group (query and documents)."""
        g = max(int(batch.meta["group_size"]), 1)
        docs = batch.meta["docs"]
        return text_ids(["\x1f".join([q, *docs[i * g:(i + 1) * g]]) for i, q in enumerate(batch.meta["queries"])])

    def new_metrics(self) -> RankingMetrics:
        return RankingMetrics()


def group_scores(query_emb: torch.Tensor, doc_emb: torch.Tensor) -> torch.Tensor:
    """(B, d) queries and (B * G, d) documents, grouped in order -> (B, G) dot products."""
    b = query_emb.shape[0]
    if b == 0 or doc_emb.shape[0] % b:
        raise ValueError(f"{doc_emb.shape[0]} documents do not split into {b} equal groups")
    return torch.einsum("bd,bgd->bg", query_emb, doc_emb.view(b, -1, doc_emb.shape[-1]))


def texts_of(groups: RankingGroups | IndexedGroups) -> Sequence[str]:
    return [*groups.queries, *(d for ds in groups.docs for d in ds)]
