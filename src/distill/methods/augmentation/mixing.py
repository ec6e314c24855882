"""MIX-KD: per-sample mixup of the batch that teacher and student both see (FMU / PMU), and the MIXSTD loss.

Three registered names, so that mixup composes with any loss:

- ``mixup``: the batch transform only (no loss term). Put it beside ``ce``/``kd``/... to distil on mixed
  batches at any temperature (e.g. ``[mixup, ce 0.1, kd 0.9 T=1]``).
- ``mixstd``: the MIXSTD loss only (per-sample standard-deviation scaling, no T^2), on whatever batch it gets.
- ``mixkd``: the paper's recipe in one entry, PMU + MIXSTD with the official defaults.

This module holds the mixing utilities shared by ``mixup``, ``mixstd`` and ``mixkd`` (one module each).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from distill.core.batch import IGNORE_INDEX, Batch

MIX_PROVENANCE = dict(
    paper="Understanding the Role of Mixup in Knowledge Distillation: An Empirical Study",
    year=2023,
    arxiv="2211.03946",
    repo="https://github.com/hchoi71/MIX-KD",
    venue="WACV",
)


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) class indices -> (B, K) one-hot floats (an unlabelled row, -100, becomes all zeros); (B, K) float
    targets pass through unchanged."""
    if labels.is_floating_point():
        if labels.ndim != 2:
            raise ValueError(f"soft targets must be (B, K), got shape {tuple(labels.shape)}")
        return labels
    labels = labels.long()
    known = labels != IGNORE_INDEX
    out = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    out[known] = F.one_hot(labels[known], num_classes).float()
    return out


def sample_mixing(batch_size: int, generator: torch.Generator, strategy: Literal["fmu", "pmu"], beta: float,
                  partmixup: float = 0.9, pmu_sampling: Literal["with_replacement", "exact"] = "with_replacement",
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of one mixed batch: two permutations and a per-sample lambda (float64, CPU).

    lambda_i ~ Beta(beta, beta) independently per row. PMU then forces lambda = 1 (row left unmixed, only
    permuted) on floor(B * partmixup) row indices: drawn with replacement as the official ``randint`` does
    (so fewer distinct rows: the expected unmixed fraction is 1 - (1 - 1/B)^floor(B p)), or ``exact``: that
    many distinct rows. All randomness comes from ``generator``; the Beta draw uses a NumPy generator seeded
    from it (torch has no generator-driven Beta/Gamma sampler).
    """
    rp1 = torch.randperm(batch_size, generator=generator)
    rp2 = torch.randperm(batch_size, generator=generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(beta, beta, batch_size))
    if strategy == "pmu":
        k = int(batch_size * partmixup)
        if pmu_sampling == "with_replacement":
            keep = torch.randint(0, batch_size, (k,), generator=generator)
        else:
            keep = torch.randperm(batch_size, generator=generator)[:k]
        lam[keep] = 1.0
    elif strategy != "fmu":
        raise ValueError(f"unknown mixup strategy {strategy!r}; allowed: fmu, pmu")
    return rp1, rp2, lam


def mix_batch(batch: Batch, rp1: torch.Tensor, rp2: torch.Tensor, lam: torch.Tensor, num_classes: int) -> Batch:
    """x~_i = lam_i x_rp1(i) + (1 - lam_i) x_rp2(i) and the same for the one-hot (or soft) targets.

    Works for inputs of any shape (B, ...). ``indices`` follow the first permutation (the row's main source);
    the draws are kept in ``meta["mixup"]``.
    """
    x = batch.inputs
    if not isinstance(x, torch.Tensor):
        raise TypeError("mixup needs the batch inputs to be one tensor of shape (B, ...)")
    if batch.labels is None:
        raise ValueError("mixup needs labels to build the mixed targets, but the batch has none")
    device = x.device
    rp1, rp2 = rp1.to(device), rp2.to(device)
    lam_x = lam.to(device=device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    lam_x = lam_x.view(-1, *([1] * (x.ndim - 1)))
    mixed = lam_x * x[rp1] + (1 - lam_x) * x[rp2]
    y = soft_targets(batch.labels, num_classes).to(device)
    lam_y = lam.to(device=device, dtype=y.dtype)[:, None]
    targets = lam_y * y[rp1] + (1 - lam_y) * y[rp2]
    indices = batch.indices[rp1.to(batch.indices.device)] if batch.indices is not None else None
    meta = {**batch.meta, "mixup": {"lam": lam.to(device), "perm1": rp1, "perm2": rp2}}
    return Batch(inputs=mixed, labels=targets, indices=indices, meta=meta)
