"""Fetching batches (``task.fetch``: reading, decoding, slicing), in this process or ahead of the step in DataLoader
worker processes (``train.num_workers``).

Which examples make a batch is decided before they are fetched (the trainer's epoch order, a function of the seed,
the epoch and the step), and the randomness of a training batch (augmentation) is drawn afterwards in the main
process, so the batches are the same with any number of workers. Randomness that the fetch itself needs (where a
random training patch of a dense task is cut, so that only the patch crosses from the worker) is drawn before the fetch,
in the training process, by the task's ``draw_positions`` from a generator that is a function of the seed, the
epoch and the step, and handed to the worker with the indices (a :class:`Placed` chunk).
Workers are seeded all the same: the loader's generator is seeded from the ``seed`` given, torch seeds worker
``i`` with its draw plus ``i``, and :func:`seed_worker` gives ``random`` and numpy that seed too, so a fetch that
draws random numbers draws the same ones on every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distill.core.batch import Batch


@dataclass(frozen=True)
class Placed:
    """A chunk to fetch with the positions drawn for it beforehand: ``task.fetch(data, indices,
    positions=positions)`` (``positions``: one row per index, e.g. a patch's top-left corner (y, x))."""

    indices: torch.Tensor
    positions: torch.Tensor


def fetch_chunk(task: Any, data: Any, chunk: torch.Tensor | Placed) -> Batch:
    """``task.fetch`` of one chunk: an index tensor, or a :class:`Placed` one (its positions passed along)."""
    if isinstance(chunk, Placed):
        return task.fetch(data, chunk.indices, positions=chunk.positions)
    return task.fetch(data, chunk)


class _Fetches(Dataset):
    """Item ``i``: ``task.fetch(data, chunks[i])`` (:func:`fetch_chunk`)."""

    def __init__(self, task: Any, data: Any, chunks: Sequence[torch.Tensor | Placed]):
        self.task, self.data, self.chunks = task, data, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Batch | _Failed:
        try:
            return fetch_chunk(self.task, self.data, self.chunks[i])
        except Exception as e:  # noqa: BLE001 - handed to the training process and raised there unchanged
            return _Failed(e)


class _Failed:
    """A fetch that raised in a worker: the exception itself (DataLoader would re-raise a copy with the worker's
    traceback in its message, and the command line would no longer print one line)."""

    def __init__(self, error: BaseException):
        self.error = error


def seed_worker(worker_id: int) -> None:
    """``random`` and numpy seeded like the worker's torch generator (which the DataLoader seeded)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _as_is(batch: Batch) -> Batch:
    return batch


def fetch_batches(task: Any, data: Any, chunks: Sequence[torch.Tensor | Placed], num_workers: int = 0,
                  seed: int = 0) -> Iterator[Batch]:
    """``task.fetch(data, chunk)`` for each of ``chunks`` (index tensors, or :class:`Placed` ones), in order. With
    ``num_workers`` the batches are fetched in that many worker processes, two batches ahead each; closing the
    iterator (or letting it go) stops them."""
    if num_workers == 0 or len(chunks) <= 1:
        for chunk in chunks:
            yield fetch_chunk(task, data, chunk)
        return
    loader = DataLoader(_Fetches(task, data, chunks), batch_size=None, shuffle=False,
                        num_workers=min(num_workers, len(chunks)), collate_fn=_as_is, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(int(seed) % 2**63), prefetch_factor=2)
    batches = iter(loader)
    try:
        for batch in batches:
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch
    finally:
        del batches  # shuts the workers down when the consumer stops early
