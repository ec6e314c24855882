"""A teacher source that serves outputs computed once, looked up by the batch's example indices.

When training batches are not augmented (sentences, graphs, cached features), the teacher's output on an example
never changes, so running the teacher every step wastes most of a run. :class:`PrecomputedTeacher` runs a frozen
model once over the whole training set, keeps the (N, K) logits, and answers each batch with
``logits[batch.indices]``. It can be saved to and loaded from a safetensors file, so several runs (arms, seeds)
share one pass.

Each example's inputs are also reduced to a checksum at computation time and checked on every lookup, so serving
the wrong dataset (e.g. the evaluation split, whose indices also start at 0) fails loudly instead of silently
returning another example's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.outputs import ModelOutput, logits_of
from distill.core.teachers import RunsModels, freeze


def input_checksum(inputs: Any) -> torch.Tensor:
    """One float64 per example summarising its inputs: sum over positions of (position + 1) * value, over every
    tensor of the inputs (a tensor, or a dict of tensors). Zero padding appended at the end does not change it,
    so the same sentence gives the same checksum in batches of different widths."""
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else [v for _, v in sorted(inputs.items())
                                                                  if isinstance(v, torch.Tensor)]
    total = None
    for t in tensors:
        flat = t.reshape(t.shape[0], -1).to(torch.float64)
        weights = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64, device=flat.device)
        s = (flat * weights).sum(1)
        total = s if total is None else total + s
    if total is None:
        raise TypeError("cannot checksum batch inputs without tensors")
    return total


class PrecomputedTeacher:
    """Teacher outputs held in memory, one row per training example, served by ``batch.indices``.

    Deprecated, kept for one release for Python users: the stored teacher of every family is ``teacher.cache``
    (:mod:`distill.cache`); no benchmark or YAML path uses this class any more.

    Build with :meth:`from_model` (one no-grad pass over ``data`` through ``task``) or :meth:`load`. Only the
    logits are stored: methods that tap teacher features need a live teacher (``FrozenTeacher``).
    """

    def __init__(self, logits: torch.Tensor, checksums: torch.Tensor | None = None):
        if logits.ndim < 2:
            raise ValueError(f"precomputed logits need shape (N, ...), got {tuple(logits.shape)}")
        if checksums is not None and checksums.shape[0] != logits.shape[0]:
            raise ValueError(f"{checksums.shape[0]} checksums for {logits.shape[0]} examples")
        self.logits = logits.detach()
        self.checksums = None if checksums is None else checksums.detach().to(torch.float64)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, task: Any, data: Any, batch_size: int = 256,
                   device: torch.device | str = "cpu", order: torch.Tensor | None = None) -> PrecomputedTeacher:
        """Run the frozen ``model`` over every example of ``data`` (eval mode, no augmentation).

        ``order``: a permutation of the example indices to visit them in (e.g. sorted by sentence length, so
        batches carry little padding); the stored rows are always in index order."""
        n = task.num_examples(data)
        order = torch.arange(n) if order is None else order.long().cpu()
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError(f"order must be a permutation of 0..{n - 1}")
        freeze(model).to(device)
        logits: torch.Tensor | None = None
        sums = torch.zeros(n, dtype=torch.float64)
        from distill.train.progress import track

        for start in track(range(0, n, batch_size), "teacher pass", n, size=lambda s: min(batch_size, n - s)):
            idx = order[start:start + batch_size]
            batch = task.prepare(task.fetch(data, idx).to(device), train=False, generator=None)
            out = logits_of(task.forward(model, batch)).float().cpu()
            if logits is None:
                logits = torch.zeros((n, *out.shape[1:]))
            logits[idx] = out
            sums[idx] = input_checksum(batch.inputs).cpu()
        if logits is None:
            raise ValueError("cannot precompute teacher outputs on an empty dataset")
        return cls(logits, sums)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        from safetensors.torch import save_file

        tensors = {"logits": self.logits.cpu().contiguous()}
        if self.checksums is not None:
            tensors["checksums"] = self.checksums.cpu().contiguous()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> PrecomputedTeacher:
        from distill.core.safe_pickle import load_safetensors

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"precomputed teacher outputs {path} do not exist")
        tensors = load_safetensors(path)  # safetensors only; anything else is an UnsafeFileError
        if "logits" not in tensors:
            raise ValueError(f"{path}: no 'logits' tensor (found {sorted(tensors)})")
        return cls(tensors["logits"], tensors.get("checksums"))

    def to(self, *args: object, **kwargs: object) -> PrecomputedTeacher:
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        if device is not None:
            self.logits = self.logits.to(device)
            if self.checksums is not None:
                self.checksums = self.checksums.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: Batch, task: RunsModels | None = None, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"a precomputed teacher stores logits only; features {list(taps)} need a live teacher")
        if batch.indices is None:
            raise ValueError("a precomputed teacher needs batch.indices (the examples' positions in the training set)")
        idx = batch.indices.to(self.logits.device)
        n = len(self)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"batch indices reach {int(idx.max())}, but outputs were precomputed for {n} examples")
        if self.checksums is not None:
            got = input_checksum(batch.inputs).to(self.checksums.device)
            want = self.checksums[idx.to(self.checksums.device)]
            if not torch.allclose(got, want, rtol=1e-9, atol=1e-6):
                bad = int((~torch.isclose(got, want, rtol=1e-9, atol=1e-6)).nonzero()[0, 0])
                raise ValueError(
                    f"example {int(idx[bad])}: its inputs differ from those the teacher outputs were computed on "
                    f"(serving a different dataset or tokenisation?)"
                )
        return ModelOutput(self.logits[idx])
