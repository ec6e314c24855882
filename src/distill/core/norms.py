"""Normalisation layers' running statistics left untouched by an extra forward pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Run a train-mode forward of ``module`` without changing its BatchNorm layers' running statistics: the
    layers still normalise with the batch's statistics, but with momentum 0 (also in place of None, the
    cumulative average) their running mean and variance keep their values (nothing is copied back, so a graph that
    saved them stays valid), and the batch counters are put back afterwards. For a pass that is not the step's own
    forward (a recomputed block, a second view of the batch), whose statistics must not count twice or leak into
    evaluation."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
