"""Ranking (``task: ranking``): (query, positive, negatives) groups in, a (B, 1 + n) matrix of dot-product scores
out (positive in column 0, so the label of every group is 0).

Evaluation: on a :class:`RetrievalEval` (held-out judged queries and the documents they are ranked among), the
corpus-level measures nDCG@10, MRR@10 and Recall@100 (:data:`RETRIEVAL_MEASURES`, through
:func:`distill.text.retrieval.evaluate_run`): every query and document is embedded once per evaluation, in the
trainer's evaluation batches, and each batch of documents is scored against all queries as it arrives (a running
top 100 per query, or the query's own candidates when re-ranking), so the document embeddings are never held
together. On groups (no evaluation set given), how often the positive ranks first in its group and the mean
reciprocal rank within the group.
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
    column 0). Read like :class:`RankingGroups` (``qids``, ``queries``, ``docids``, ``docs``), item by item.
    ``made_up_ids``: the ids were made up in order seen (triples of texts), not read from the files."""

    query_ids: list[str]
    query_texts: list[str]
    doc_ids: list[str]
    doc_texts: list[str]
    query_index: np.ndarray
    doc_index: np.ndarray
    made_up_ids: bool = False

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


#: the measures of a retrieval evaluation: names in metrics.csv -> ir-measures strings (RR@10: MS MARCO's MRR@10)
RETRIEVAL_MEASURES = {"ndcg@10": "nDCG@10", "mrr@10": "RR@10", "recall@100": "R@100"}
#: how many documents of each query's ranking are kept for the measures (Recall@100 reads the top 100)
RUN_DEPTH = 100
GROUP_METRICS = ("group_accuracy", "group_mrr")


@dataclass
class RetrievalEval:
    """Held-out judged queries and the documents they are ranked among, for a corpus-level evaluation.

    ``candidates`` None: every query ranks every document (full retrieval over ``docs``); otherwise
    ``candidates[i]`` holds the indices (into ``docids``) of query ``i``'s candidates (re-ranking, e.g. MS MARCO's
    top1000.dev). Items ``0 .. Q-1`` are the queries and ``Q ..`` the documents, so that the trainer's evaluation
    batches embed each text once and the queries come first. ``qrels`` holds the judgments of these queries."""

    qids: list[str]
    queries: list[str]
    docids: list[str]
    docs: list[str]
    qrels: dict[str, dict[str, int]]
    candidates: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if len(self.qids) != len(self.queries) or len(self.docids) != len(self.docs):
            raise ValueError("retrieval evaluation: ids and texts differ in length")
        if not self.qids or not self.docids:
            raise ValueError("retrieval evaluation: no queries or no documents")
        if self.candidates is not None:
            if len(self.candidates) != len(self.qids):
                raise ValueError("retrieval evaluation: one candidate list per query is needed")
            for c in self.candidates:
                if len(c) and (c.min() < 0 or c.max() >= len(self.docids)):
                    raise ValueError("retrieval evaluation: a candidate outside the documents")

    def __len__(self) -> int:
        return len(self.qids) + len(self.docids)


class RetrievalScorer:
    """Scores one evaluation's embeddings of a :class:`RetrievalEval` as they arrive (items in any batching; a
    document batch that comes before every query is embedded waits), and ranks with dot products."""

    def __init__(self, data: RetrievalEval, depth: int = RUN_DEPTH):
        self.data = data
        self.depth = depth
        self.nq = len(data.qids)
        self.q: torch.Tensor | None = None
        self.q_seen = torch.zeros(self.nq, dtype=torch.bool)
        self.waiting: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.docs_seen = 0
        self.top_vals: torch.Tensor | None = None
        self.top_idx: torch.Tensor | None = None
        if data.candidates is not None:  # (query, document) pairs ordered by document, to find a batch's pairs
            pair_q = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(data.candidates)])
            pair_d = np.concatenate([np.asarray(c, dtype=np.int64) for c in data.candidates])
            self.order = np.argsort(pair_d, kind="stable")
            self.sorted_d = pair_d[self.order]
            self.sorted_q = pair_q[self.order]
            self.pair_scores = np.full(len(pair_d), np.nan, dtype=np.float32)

    def add(self, indices: torch.Tensor, emb: torch.Tensor) -> None:
        indices = indices.to(torch.long).cpu()
        emb = emb.detach().float()
        is_q = indices < self.nq
        if bool(is_q.any()):
            if self.q is None:
                self.q = torch.zeros(self.nq, emb.shape[1], device=emb.device)
            self.q[indices[is_q].to(self.q.device)] = emb[is_q.to(emb.device)]
            self.q_seen[indices[is_q]] = True
        if bool((~is_q).any()):
            self.waiting.append((indices[~is_q] - self.nq, emb[(~is_q).to(emb.device)]))
        if self.waiting and bool(self.q_seen.all()):
            for d_idx, d_emb in self.waiting:
                self._score(d_idx, d_emb)
            self.waiting = []

    def _score(self, d_idx: torch.Tensor, d_emb: torch.Tensor) -> None:
        from distill.text.retrieval import dense_scores

        assert self.q is not None
        self.docs_seen += len(d_idx)
        d_emb = d_emb.to(self.q.device)
        if self.data.candidates is None:
            s = dense_scores(self.q, d_emb)  # (Q, b)
            idx = d_idx.to(self.q.device).expand(self.nq, -1)
            if self.top_vals is not None:
                s = torch.cat([self.top_vals, s], 1)
                idx = torch.cat([self.top_idx, idx], 1)  # type: ignore[list-item]
            k = min(self.depth, s.shape[1])
            self.top_vals, pos = s.topk(k, dim=1)
            self.top_idx = idx.gather(1, pos)
            return
        d_np = d_idx.numpy()
        lo = np.searchsorted(self.sorted_d, d_np, "left")
        hi = np.searchsorted(self.sorted_d, d_np, "right")
        counts = hi - lo
        if not counts.sum():
            return
        pos = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        rows = torch.from_numpy(np.repeat(np.arange(len(d_np)), counts)).to(d_emb.device)
        qs = torch.from_numpy(self.sorted_q[pos]).to(self.q.device)
        vals = (self.q[qs] * d_emb[rows]).sum(-1)
        self.pair_scores[self.order[pos]] = vals.float().cpu().numpy()

    def run(self) -> dict[str, dict[str, float]]:
        """``{qid: {docid: score}}``, each query's best ``depth`` documents."""
        data = self.data
        if not bool(self.q_seen.all()) or self.docs_seen < len(data.docids):
            raise ValueError(f"retrieval evaluation: {int(self.q_seen.sum())} of {self.nq} queries and "
                             f"{self.docs_seen} of {len(data.docids)} documents were embedded; an evaluation must "
                             "embed all of them")
        if data.candidates is None:
            assert self.top_vals is not None and self.top_idx is not None
            vals, idx = self.top_vals.cpu().tolist(), self.top_idx.cpu().tolist()
            return {q: {data.docids[j]: v for v, j in zip(vals[i], idx[i])} for i, q in enumerate(data.qids)}
        run: dict[str, dict[str, float]] = {}
        start = 0
        for q, cand in zip(data.qids, data.candidates, strict=True):
            s = self.pair_scores[start:start + len(cand)]
            start += len(cand)
            best = np.argsort(-s, kind="stable")[: self.depth]
            run[q] = {data.docids[int(cand[j])]: float(s[j]) for j in best}
        return run


class RankingMetrics:
    """On groups: ``group_accuracy`` (the positive first) and ``group_mrr``. On a :class:`RetrievalEval` (batches
    whose ``meta["retrieval"]`` is set): the corpus-level :data:`RETRIEVAL_MEASURES` of the ranking."""

    def __init__(self, retrieval: RetrievalEval | None = None) -> None:
        self.first = 0
        self.rr = 0.0
        self.n = 0
        self.scorer = RetrievalScorer(retrieval) if retrieval is not None else None

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        if batch.meta.get("retrieval"):
            if self.scorer is None:
                raise ValueError("a retrieval evaluation batch, but the task has no retrieval evaluation set")
            self.scorer.add(batch.indices, outputs)
            return
        rank = (outputs[:, 1:] >= outputs[:, :1]).sum(1) + 1
        self.first += int((rank == 1).sum())
        self.rr += float((1.0 / rank.float()).sum())
        self.n += outputs.shape[0]

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.scorer is not None and (self.scorer.q_seen.any() or self.scorer.docs_seen or not self.n):
            from distill.text.retrieval import evaluate_run

            data = self.scorer.data
            out.update(evaluate_run(self.scorer.run(), {q: data.qrels.get(q, {}) for q in data.qids},
                                    RETRIEVAL_MEASURES))
        if self.n or self.scorer is None:
            n = max(self.n, 1)
            out.update({"group_accuracy": self.first / n, "group_mrr": self.rr / n})
        return out


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
        self.retrieval: RetrievalEval | None = None

    def set_retrieval(self, data: RetrievalEval, primary: str) -> None:
        """Evaluate on ``data`` (corpus-level measures) and select on ``primary``, one of them."""
        self.retrieval = data
        self.primary_metric = primary

    def metric_names(self, num_outputs: int | None = None) -> tuple[str, ...]:
        """The keys :meth:`new_metrics` reports: the retrieval measures when there is a retrieval evaluation set."""
        return tuple(RETRIEVAL_MEASURES) if self.retrieval is not None else GROUP_METRICS

    def num_examples(self, data: RankingGroups | IndexedGroups | RetrievalEval) -> int:
        return len(data)

    def fetch(self, data: RankingGroups | IndexedGroups | RetrievalEval, indices: torch.Tensor) -> Batch:
        if isinstance(data, RetrievalEval):
            return self._fetch_texts(data, indices)
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

    def _fetch_texts(self, data: RetrievalEval, indices: torch.Tensor) -> Batch:
        """Items of a retrieval evaluation: queries (tokenised at ``query_length``, inputs ``q_*``) then documents
        (``doc_length``, ``d_*``); the model's output is their embeddings, rows in ``batch.indices`` order."""
        nq = len(data.qids)
        idx = [int(i) for i in indices]
        qi, di = [i for i in idx if i < nq], [i for i in idx if i >= nq]
        queries, docs = [data.queries[i] for i in qi], [data.docs[i - nq] for i in di]
        inputs: dict[str, torch.Tensor] = {}
        if self.tokenizer_model is not None:
            if queries:
                inputs.update(_prefixed("q_", tokenize(self.tokenizer_model, queries, self.query_length)))
            if docs:
                inputs.update(_prefixed("d_", tokenize(self.tokenizer_model, docs, self.doc_length)))
        meta = {"retrieval": True, "queries": queries, "docs": docs}
        return Batch(inputs, None, torch.tensor(qi + di, dtype=torch.long), meta)

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if batch.meta.get("retrieval"):  # embeddings of an evaluation's queries and documents
            parts = [embed(model, _unprefixed(p, batch.inputs)) for p, texts in
                     (("q_", batch.meta["queries"]), ("d_", batch.meta["docs"])) if texts]
            return torch.cat(parts) if len(parts) > 1 else parts[0]
        q = embed(model, _unprefixed("q_", batch.inputs))
        d = embed(model, _unprefixed("d_", batch.inputs))
        return group_scores(q, d)

    def teacher_forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A sentence-transformers teacher scores the groups (or embeds an evaluation's texts) from their texts
        with its own tokenizer."""
        if batch.meta.get("retrieval"):
            parts = [encode(model, texts, batch_size=64, max_length=n) for texts, n in
                     ((batch.meta["queries"], self.query_length), (batch.meta["docs"], self.doc_length)) if texts]
            return torch.cat(parts) if len(parts) > 1 else parts[0]
        q = encode(model, batch.meta["queries"], batch_size=64, max_length=self.query_length)
        d = encode(model, batch.meta["docs"], batch_size=64, max_length=self.doc_length)
        return group_scores(q, d)

    def guard_inputs(self, batch: Batch) -> torch.Tensor:
        """A teacher cache's input guard compares the texts of each group (query and documents)."""
        if batch.meta.get("retrieval"):
            return text_ids([*batch.meta["queries"], *batch.meta["docs"]])
        g = max(int(batch.meta["group_size"]), 1)
        docs = batch.meta["docs"]
        return text_ids(["\x1f".join([q, *docs[i * g:(i + 1) * g]]) for i, q in enumerate(batch.meta["queries"])])

    def new_metrics(self) -> RankingMetrics:
        return RankingMetrics(self.retrieval)


def group_scores(query_emb: torch.Tensor, doc_emb: torch.Tensor) -> torch.Tensor:
    """(B, d) queries and (B * G, d) documents, grouped in order -> (B, G) dot products."""
    b = query_emb.shape[0]
    if b == 0 or doc_emb.shape[0] % b:
        raise ValueError(f"{doc_emb.shape[0]} documents do not split into {b} equal groups")
    return torch.einsum("bd,bgd->bg", query_emb, doc_emb.view(b, -1, doc_emb.shape[-1]))


def texts_of(groups: RankingGroups | IndexedGroups) -> Sequence[str]:
    return [*groups.queries, *(d for ds in groups.docs for d in ds)]
