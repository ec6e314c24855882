"""Teacher sources for text tasks whose teacher outputs are computed once and looked up afterwards.

- :class:`TextEmbeddingCache`: teacher embeddings keyed by a hash of the text (so the same sentence in any
  dataset or order finds its vector); filled once from a live model, saved to and loaded from safetensors.
- :class:`ScoreFileTeacher`: ranking scores read from a plain score file, one ``qid docid score`` per line
  (whitespace- or tab-separated), as published for MS MARCO teachers; looked up per (query, document) pair.
- :class:`GroupScoreTeacher`: the scores of every training group held as one (N, 1 + n) matrix, served by the
  batch's example indices (MS MARCO's per-triple score files, and per-pair files read for large training sets).

Both follow the teacher-source protocol ``source(batch, task, taps) -> ModelOutput`` and never carry gradients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput


def text_key(text: str) -> str:
    """The cache key of a text: SHA-1 of its UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TextEmbeddingCache:
    """Teacher embeddings keyed by text hash; reads ``batch.meta["texts"]``.

    Deprecated, kept for one release for Python users: the stored teacher of every family is ``teacher.cache``
    (:mod:`distill.cache`); no benchmark or YAML path uses this class any more.

    ``encoder(texts) -> (N, d) tensor`` computes missing entries (e.g. a frozen sentence-transformers teacher);
    without an encoder, a text that is not cached is an error naming it."""

    def __init__(self, encoder: Callable[[list[str]], torch.Tensor] | None = None,
                 table: dict[str, torch.Tensor] | None = None):
        self.encoder = encoder
        self.table: dict[str, torch.Tensor] = dict(table or {})
        self.device: torch.device | str = "cpu"

    def __len__(self) -> int:
        return len(self.table)

    def fill(self, texts: Sequence[str], batch_size: int = 256) -> int:
        """Compute and store the embeddings of texts not yet cached; returns how many were computed."""
        missing = list(dict.fromkeys(t for t in texts if text_key(t) not in self.table))
        if missing and self.encoder is None:
            raise KeyError(f"{len(missing)} texts are not cached and no encoder is set, e.g. {missing[0][:60]!r}")
        from distill.train.progress import track

        starts = range(0, len(missing), batch_size)
        shown = None if len(missing) > batch_size else False  # one batch (e.g. a training step's texts): no bar
        for start in track(starts, "teacher embeddings", len(missing),
                           size=lambda s: min(batch_size, len(missing) - s), enabled=shown):
            chunk = missing[start:start + batch_size]
            with torch.no_grad():
                emb = self.encoder(chunk).detach().float().cpu()  # type: ignore[misc]
            for t, e in zip(chunk, emb):
                self.table[text_key(t)] = e.clone()
        return len(missing)

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        self.fill(texts) if self.encoder is not None else None
        try:
            return torch.stack([self.table[text_key(t)] for t in texts])
        except KeyError:
            bad = next(t for t in texts if text_key(t) not in self.table)
            raise KeyError(f"no cached teacher embedding for text {bad[:60]!r}") from None

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.table.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path, encoder: Callable[[list[str]], torch.Tensor] | None = None) -> TextEmbeddingCache:
        from distill.core.safe_pickle import load_safetensors

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such embedding cache")
        return cls(encoder, load_safetensors(path))  # safetensors only; anything else is an UnsafeFileError

    def to(self, device: Any = None, *args: object, **kwargs: object) -> TextEmbeddingCache:
        if isinstance(device, (str, torch.device)):
            self.device = device
        return self

    def __call__(self, batch: Batch, task: Any = None, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"an embedding cache has no features; requested taps {list(taps)}")
        texts = batch.meta.get("texts")
        if texts is None:
            raise KeyError("TextEmbeddingCache needs batch.meta['texts'] (the text embedding task provides it)")
        return ModelOutput(self.lookup(texts).to(self.device))


def read_score_file(path: str | Path, layout: str = "auto") -> dict[tuple[str, str], float]:
    """``{(qid, docid): score}`` of a score file: ``qid docid score`` lines (tabs or spaces; ``#`` comments and
    blank lines skipped), or the other layouts of :mod:`distill.text.msmarco` (per-triple lines, JSONL); pickles
    are refused."""
    from distill.text.msmarco import read_pair_scores

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such score file")
    return read_pair_scores(path, layout)


def write_score_file(path: str | Path, scores: dict[tuple[str, str], float]) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for (q, d), s in scores.items():
            fh.write(f"{q}\t{d}\t{s:.6g}\n")


class ScoreFileTeacher:
    """Cached ranking-teacher scores; reads ``batch.meta["qids"]`` (B) and ``batch.meta["docids"]`` (B lists of
    the group's documents, positive first) and returns the (B, group) raw teacher scores."""

    def __init__(self, scores: dict[tuple[str, str], float] | str | Path):
        self.source = str(scores) if isinstance(scores, (str, Path)) else "scores"
        self.scores = read_score_file(scores) if isinstance(scores, (str, Path)) else dict(scores)
        self.device: torch.device | str = "cpu"

    def to(self, device: Any = None, *args: object, **kwargs: object) -> ScoreFileTeacher:
        if isinstance(device, (str, torch.device)):
            self.device = device
        return self

    def __call__(self, batch: Batch, task: Any = None, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"a score file has no features; requested taps {list(taps)}")
        qids, docids = batch.meta["qids"], batch.meta["docids"]
        rows = []
        for q, docs in zip(qids, docids):
            try:
                rows.append([self.scores[(q, d)] for d in docs])
            except KeyError:
                d = next(d for d in docs if (q, d) not in self.scores)
                raise KeyError(f"{self.source}: no teacher score for query {q!r}, document {d!r}") from None
        return ModelOutput(torch.tensor(rows, dtype=torch.float32, device=self.device))


class GroupScoreTeacher:
    """A stored ranking teacher: the raw scores of every training group, an (N, 1 + n) matrix aligned with the
    groups (positive in column 0), served as ``scores[batch.indices]``. Each batch's query ids are checked against
    the groups the scores were read for, so serving them for other data fails loudly."""

    def __init__(self, scores: torch.Tensor, qids: Sequence[str], source: str = "scores"):
        if scores.ndim != 2 or scores.shape[0] != len(qids):
            raise ValueError(f"{source}: {tuple(scores.shape)} scores for {len(qids)} groups")
        self.scores = scores.detach().float()
        self.qids = qids
        self.source = source

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: Any = None, *args: object, **kwargs: object) -> GroupScoreTeacher:
        if isinstance(device, (str, torch.device)):
            self.scores = self.scores.to(device)
        return self

    def __call__(self, batch: Batch, task: Any = None, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"a score file has no features; requested taps {list(taps)}")
        if batch.indices is None:
            raise ValueError(f"{self.source}: stored group scores need batch.indices (the groups' positions)")
        idx = [int(i) for i in batch.indices]
        if idx and (min(idx) < 0 or max(idx) >= len(self)):
            raise IndexError(f"{self.source}: batch indices reach {max(idx)}, scores are stored for {len(self)} groups")
        for i, q in zip(idx, batch.meta.get("qids", [])):
            if self.qids[i] != q:
                raise ValueError(f"{self.source}: group {i} is query {q!r} in this batch, but the scores were read for "
                                 f"query {self.qids[i]!r} (serving other data?)")
        rows = self.scores[torch.as_tensor(idx, dtype=torch.long, device=self.scores.device)]
        return ModelOutput(rows)
