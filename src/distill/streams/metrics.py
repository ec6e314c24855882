"""The metrics of each stream setting.

* Class-incremental: after task t, ``acc[t][j]`` is the accuracy on the test rows of task j <= t (single head, the
  prediction an arg-max over all classes seen so far). Reported: the accuracy on all seen classes pooled
  (``seen_accuracy``), the mean of the per-task accuracies (``average_accuracy``, A_t = (1/(t+1)) sum_j acc[t][j])
  and the average forgetting F_t = (1/t) sum_{j<t} (max_{l<t} acc[l][j] - acc[t][j]) (Chaudhry et al. 2018).
* Domains: the accuracy on each domain's test set after every task, held-out domains included.
* Novel classes: clustering accuracy with the Hungarian matching of clusters to classes,
  ACC = max_{perm} (1/N) sum_i 1[y_i = perm(c_i)] (scipy's linear_sum_assignment).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def clustering_accuracy(clusters: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Accuracy of a clustering under the best one-to-one matching of cluster ids to labels (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    c = np.asarray(clusters, dtype=np.int64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if c.shape != y.shape:
        raise ValueError(f"clusters {c.shape} and labels {y.shape} differ in shape")
    if len(y) == 0:
        return float("nan")
    _, c = np.unique(c, return_inverse=True)
    _, y = np.unique(y, return_inverse=True)
    d = max(c.max(), y.max()) + 1
    counts = np.zeros((d, d), dtype=np.int64)
    np.add.at(counts, (c, y), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(y))


def average_accuracy(row: Sequence[float]) -> float:
    return float(np.mean(row))


def forgetting(acc: Sequence[Sequence[float]]) -> float:
    """Average forgetting after the last row of the lower-triangular accuracy matrix ``acc`` (row t: the accuracies
    on tasks 0..t after task t); 0 after the first task."""
    t = len(acc) - 1
    if t == 0:
        return 0.0
    drops = [max(acc[k][j] for k in range(j, t)) - acc[t][j] for j in range(t)]
    return float(np.mean(drops))
