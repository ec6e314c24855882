"""The datasets a stream can be cut from, by name (:data:`DATASETS`).

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; shipped inside scikit-learn, no
download), as (N, 1, 8, 8) images scaled to [0, 1] and standardised with the training rows' mean and standard
deviation; a stratified split, one third of each class held out for test, fixed by ``data_seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distill.streams.stream import Dataset


def digits(data_seed: int = 0, test_fraction: float = 1 / 3) -> Dataset:
    """scikit-learn's digits as images (see the module docstring)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the 'continual' extra
        raise ImportError("the digits stream needs scikit-learn: pip install 'distill[continual]'") from e
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(data_seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test[rows[: int(round(len(rows) * test_fraction))]] = True
    xt = torch.from_numpy(x[~test])
    mean, std = xt.mean(), xt.std()
    norm = lambda a: (torch.from_numpy(a) - mean) / std  # noqa: E731
    return Dataset("digits", norm(x[~test]), torch.from_numpy(y[~test]), norm(x[test]), torch.from_numpy(y[test]))


DATASETS: dict[str, Callable[..., Dataset]] = {"digits": digits}


def load_dataset(name: str, data_seed: int = 0) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"stream.dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name](data_seed=data_seed)
