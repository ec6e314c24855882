"""Loading feature vectors: ``.npz`` (``x``, ``y``) or CSV with a label column."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from distill.config import ConfigError
from distill.tasks.vectors.task import vector_dataset


def read_vectors(path: Path, label: str, key: str) -> TensorDataset:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("x", "y") if k not in z.files]
                if missing:
                    raise ConfigError(f"{key}: {path} has no array {missing[0]!r} (arrays: {z.files})")
                x, y = z["x"], z["y"]
        elif path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or label not in rows[0]:
                raise ConfigError(f"{key}: {path} has no column {label!r} (data.label names it)")
            cols = [c for c in rows[0] if c != label]
            x = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
            y = np.array([int(r[label]) for r in rows])
        else:
            raise ConfigError(f"{key}: {path}: expected a .npz or .csv file")
        return vector_dataset(torch.as_tensor(x), torch.as_tensor(y))
    except (ValueError, OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
