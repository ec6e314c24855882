"""Learning-rate schedules as pure functions of the optimiser step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_factor(
    schedule: str,
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    ``cosine``: 0.5 (1 + cos(pi t / T)) from 1 down to ``min_factor`` after a linear warm-up.
    ``step``: ``gamma`` ** (number of milestones, in epochs, that the current epoch has reached), the
    RepDistiller/mdistiller CIFAR rule (lr x0.1 at epochs 150, 180, 210 of 240). ``constant``: 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return gamma ** sum(1 for m in milestones if epoch >= m)
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        t = min(max(step - warmup_steps, 0), span) / span
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}; allowed: cosine, step, constant")
