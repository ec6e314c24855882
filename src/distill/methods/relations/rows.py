"""The row view the relational methods share: one float32 row per example of the batch."""

from __future__ import annotations

import torch


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """One float32 row per example: (B, ...) -> (B, D)."""
    return x.float().flatten(1)
