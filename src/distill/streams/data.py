"""The datasets a stream can be cut from, by name (:data:`DATASETS`).

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; shipped inside scikit-learn, no
download), as (N, 1, 8, 8) images scaled to [0, 1] and standardised with the training rows' mean and standard
deviation; a stratified split, one third of each class held out for test, fixed by ``data_seed``; with
``train_per_class`` n, n rows of each class (drawn by ``data_seed``) train and every other row is the test set (the
few-label setting of a new label space).

``cifar10_jpeg``: the CIFAR-10 JPEG image folders (``train/<class>/*.jpg``, ``test/<class>/*.jpg``, read from the tar
archive or a folder at ``path``; ``builtin:cifar10_demo.tar.gz`` is the small subset shipped in the package),
``train_per_class`` / ``test_per_class`` images of each class drawn in a ``data_seed`` order, normalised with
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (pipelines.md F0); class ids in alphabetical folder order
(airplane 0 ... truck 9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distill.streams.stream import Dataset


def digits(data_seed: int = 0, test_fraction: float = 1 / 3, train_per_class: int | None = None) -> Dataset:
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
        if train_per_class is not None:
            if not 0 < train_per_class < len(rows):
                raise ValueError(f"train_per_class: {train_per_class} is not in 1..{len(rows) - 1} (class {c})")
            test[rows[train_per_class:]] = True
        else:
            test[rows[: int(round(len(rows) * test_fraction))]] = True
    xt = torch.from_numpy(x[~test])
    mean, std = xt.mean(), xt.std()
    norm = lambda a: (torch.from_numpy(a) - mean) / std  # noqa: E731
    return Dataset("digits", norm(x[~test]), torch.from_numpy(y[~test]), norm(x[test]), torch.from_numpy(y[test]))


def _per_class(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.nonzero(labels == c, as_tuple=True)[0] for c in torch.unique(labels)]
    return torch.cat([r[torch.randperm(len(r), generator=g)[:n]].sort().values for r in rows])


def cifar10_jpeg(data_seed: int = 0, path: str = "../shared/data/cifar10-jpeg.tar.gz", train_per_class: int = 300,
                 test_per_class: int = 100) -> Dataset:
    """CIFAR-10 JPEG images (see the module docstring)."""
    from distill.config import resolve_path
    from distill.data.images import load_image_folder, load_image_tar

    root = resolve_path(path)
    load = load_image_folder if root.is_dir() else load_image_tar
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        arrays = load(root, split=split)
        keep = _per_class(arrays.labels, n, data_seed)
        out += [(arrays.images[keep].float() / 255 - mean) / std, arrays.labels[keep]]
    return Dataset("cifar10_jpeg", *out)


DATASETS: dict[str, Callable[..., Dataset]] = {"digits": digits, "cifar10_jpeg": cifar10_jpeg}


def load_dataset(name: str, data_seed: int = 0, options: dict[str, Any] | None = None) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"stream.dataset: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name](data_seed=data_seed, **(options or {}))
