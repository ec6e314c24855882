"""An offline store of a teacher's top-k next-token log-probabilities for LM data (DistillKit-style).

Deprecated: kept for one release for the tinyshakespeare benchmark's recorded runs and Python users. From YAML the
stored teacher of a ``causal_lm`` run is ``teacher.cache`` with ``topk`` (:mod:`distill.cache`), built by
``distill cache build CONFIG``.

Layout of a store directory (memory-mapped ``.npy`` arrays, readable without this package):

* ``indices.npy``: int32 (N, L, k), the k most likely token ids per position, in decreasing probability;
* ``logprobs.npy``: float16 or float32 (N, L, k), their log-probabilities under the teacher's *full* softmax at
  temperature 1 (so the tail mass 1 - sum exp(logprobs) is kept implicitly, never renormalised);
* ``meta.json``: k, vocab size, shape, dtype, ``rows_done`` (building resumes from it), the fingerprint
  (sha256 of teacher weights, data and tokenizer vocabulary) and the sha256 checksums of both arrays.

Row i of the store belongs to row i of the :class:`~distill.tasks.causal_lm.LMData` it was built on; a teacher
source serving it (:class:`TopKStoreTeacher`) looks rows up by ``Batch.indices`` and returns
``ModelOutput(logits=None, topk=TopKLogits(...))``, which methods with ``accepts_topk_teacher`` consume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.cache.store import sha256_file
from distill.core.batch import Batch
from distill.core.outputs import ModelOutput, logits_of
from distill.core.safe_pickle import load_npy
from distill.core.topk import TopKLogits

FORMAT = "distill-topk-lm/1"


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of a model's parameters and buffers."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def store_fingerprint(teacher: str, data: str, tokenizer: str) -> str:
    return hashlib.sha256(f"{teacher}|{data}|{tokenizer}".encode()).hexdigest()


file_sha256 = sha256_file  # the one checksum helper (distill.cache.store)


class TopKStore:
    """A built store, memory-mapped. ``expected_fingerprint`` (optional) must match the stored one."""

    def __init__(self, path: str | Path, expected_fingerprint: str | None = None, verify: bool = True):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no top-k store at {self.path} (meta.json missing)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        if self.meta["rows_done"] < self.meta["shape"][0]:
            raise ValueError(f"the top-k store {self.path} is incomplete ({self.meta['rows_done']} of "
                             f"{self.meta['shape'][0]} rows): finish building it")
        if expected_fingerprint is not None and expected_fingerprint != self.meta["fingerprint"]:
            raise ValueError(f"the top-k store {self.path} was built from another teacher, data or tokenizer "
                             f"(fingerprint {self.meta['fingerprint'][:12]} != expected {expected_fingerprint[:12]})")
        if verify:
            for name in ("indices", "logprobs"):
                got = file_sha256(self.path / f"{name}.npy")
                if got != self.meta["sha256"][name]:
                    raise ValueError(f"{self.path / (name + '.npy')}: checksum mismatch (corrupt or modified)")
        self.indices = load_npy(self.path / "indices.npy", mmap_mode="r")
        self.logprobs = load_npy(self.path / "logprobs.npy", mmap_mode="r")

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __len__(self) -> int:
        return int(self.meta["shape"][0])

    def nbytes(self) -> int:
        return int(self.indices.nbytes + self.logprobs.nbytes)

    def rows(self, idx: torch.Tensor) -> TopKLogits:
        i = np.asarray(idx.detach().cpu().long().numpy())
        return TopKLogits(torch.from_numpy(np.ascontiguousarray(self.indices[i])).long(),
                          torch.from_numpy(np.ascontiguousarray(self.logprobs[i])).float(), self.vocab_size)

    def top1(self) -> torch.Tensor:
        """The teacher's most likely token per position, (N, L) (for agreement metrics)."""
        return torch.from_numpy(np.ascontiguousarray(self.indices[..., 0])).long()


class TopKStoreTeacher:
    """A teacher source that serves a :class:`TopKStore` by dataset row (``Batch.indices``)."""

    def __init__(self, store: TopKStore):
        self.store = store

    def to(self, *args: object, **kwargs: object) -> TopKStoreTeacher:
        return self

    def __call__(self, batch: Batch, task: Any, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"a top-k store holds no teacher features; requested {list(taps)}")
        if batch.indices is None or batch.meta.get("generated"):
            raise ValueError("the top-k store serves only the dataset rows it was built on; this batch was "
                             "generated during training (on-policy): use a live teacher for it")
        topk = self.store.rows(batch.indices)
        length = batch.inputs["input_ids"].shape[1]
        if topk.indices.shape[1] != length:
            raise ValueError(f"store rows have length {topk.indices.shape[1]}, the batch {length}")
        return ModelOutput(None, topk=topk.to(batch.inputs["input_ids"].device))  # type: ignore[arg-type]


@torch.no_grad()
def build_topk_store(teacher: nn.Module, task: Any, data: Any, path: str | Path, k: int, batch_size: int = 8,
                     dtype: str = "float16", fingerprint: str = "", log: Any = None,
                     dense_path: str | Path | None = None) -> TopKStore:
    """Run ``teacher`` over every row of ``data`` through ``task`` and write its top-k log-probabilities.

    Resumable: rows already written (``rows_done`` in meta.json) are skipped when the fingerprint and k match;
    otherwise an existing store is refused. ``fingerprint`` identifies teacher + data + tokenizer
    (:func:`store_fingerprint`). ``dense_path``: also write the dense float16 log-probabilities (N, L, V) to this
    ``.npy`` file in the same teacher pass (2 V bytes per token: for comparisons with the top-k store only)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n = task.num_examples(data)
    length = int(data.input_ids.shape[1])
    vocab = int(task.vocab_size)
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}], got {k}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    meta_path = path / "meta.json"
    shape = [n, length, k]
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fingerprint or meta.get("shape") != shape or meta.get("dtype") != dtype:
            raise ValueError(f"{path} holds a different top-k store (fingerprint/shape/dtype differ); "
                             "remove it or choose another path")
        idx_arr = load_npy(path / "indices.npy", mmap_mode="r+")
        lp_arr = load_npy(path / "logprobs.npy", mmap_mode="r+")
    else:
        meta = {"format": FORMAT, "k": k, "vocab_size": vocab, "shape": shape, "dtype": dtype, "rows_done": 0,
                "fingerprint": fingerprint, "sha256": {}}
        idx_arr = np.lib.format.open_memmap(path / "indices.npy", mode="w+", dtype=np.int32, shape=tuple(shape))
        lp_arr = np.lib.format.open_memmap(path / "logprobs.npy", mode="w+", dtype=np.dtype(dtype),
                                           shape=tuple(shape))
    dense = None
    if dense_path is not None:
        dp = Path(dense_path)
        if dp.is_file() and meta["rows_done"] > 0:
            dense = load_npy(dp, mmap_mode="r+")
        else:
            dense = np.lib.format.open_memmap(dp, mode="w+", dtype=np.float16, shape=(n, length, vocab))
            meta["rows_done"] = 0
    teacher.eval()
    start = int(meta["rows_done"])
    from distill.train.progress import track

    for s in track(range(start, n, batch_size), "top-k store", n - start, size=lambda s: min(batch_size, n - s)):
        rows = torch.arange(s, min(s + batch_size, n))
        batch = task.fetch(data, rows)
        logits = logits_of(task.forward(teacher, batch))
        topk = TopKLogits.from_logits(logits, k)
        if dense is not None:
            dense[s:s + len(rows)] = torch.log_softmax(logits.float(), -1).numpy().astype(np.float16)
            dense.flush()
        idx_arr[s:s + len(rows)] = topk.indices.numpy().astype(np.int32)
        lp_arr[s:s + len(rows)] = topk.logprobs.numpy().astype(dtype)
        idx_arr.flush()
        lp_arr.flush()
        meta["rows_done"] = s + len(rows)
        meta_path.write_text(json.dumps(meta, indent=1))
        if log is not None:
            log(f"top-k store {path.name}: {meta['rows_done']}/{n} rows")
    del idx_arr, lp_arr, dense
    meta["sha256"] = {name: file_sha256(path / f"{name}.npy") for name in ("indices", "logprobs")}
    meta_path.write_text(json.dumps(meta, indent=1))
    return TopKStore(path, fingerprint or None)


def truncate_store(src: TopKStore, path: str | Path, k: int) -> TopKStore:
    """A store with the first ``k`` of ``src``'s entries per position (the entries are sorted, so this equals
    building with k directly, up to the stored precision)."""
    if not 1 <= k <= src.k:
        raise ValueError(f"k must be in [1, {src.k}], got {k}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "indices.npy", np.ascontiguousarray(src.indices[..., :k]))
    np.save(path / "logprobs.npy", np.ascontiguousarray(src.logprobs[..., :k]))
    meta = dict(src.meta, k=k, shape=[*src.meta["shape"][:2], k])
    meta["sha256"] = {name: file_sha256(path / f"{name}.npy") for name in ("indices", "logprobs")}
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    return TopKStore(path)
