"""Loading feature vectors: ``.npz`` (``x``, ``y``) or CSV with a label column."""

from __future__ import annotations

import csv
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from distill.config import ConfigError
from distill.tasks.common import existing_file, existing_path
from distill.tasks.vectors.task import vector_dataset


def feature_columns(columns: list[str], skip: tuple[str | None, ...], where: str) -> list[str]:
    """The feature columns: all but ``skip`` and pandas' index column (dropped with a note on stderr)."""
    from distill.data.tables import INDEX_COLUMNS

    index = [c for c in columns if c.strip().lower() in INDEX_COLUMNS and c not in skip]
    if index:
        print(f"note: {where}: column {index[0]!r} (the row index pandas' to_csv writes) is not used as a feature",
              file=sys.stderr)
    return [c for c in columns if c not in skip and c not in index]


def read_vectors(path: Path, label: str, key: str, route: Any = None) -> TensorDataset:
    """``route``: a ``teacher.mixture`` with ``route: column``: its column (an npz array, or a CSV column that is
    then not a feature) becomes a third tensor of member indices, one per row.

    Labels are integers, or named: by an npz ``classes`` array (label ``k`` is its entry ``k``), or by class names
    in the CSV's label column (numbered in sorted order); the names are kept as the dataset's ``file_classes``."""
    from distill.data.labels import class_name_list, names_to_indices, npz_class_key

    column = route.column if route is not None else None
    file_classes = None
    try:
        routes = None
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("x", "y", *([column] if column else [])) if k not in z.files]
                if missing:
                    where = "teacher.mixture.column" if missing[0] == column else key
                    raise ConfigError(f"{where}: {path} has no array {missing[0]!r} (arrays: {z.files})")
                x, y = z["x"], z["y"]
                routes = z[column] if column else None
                ckey = npz_class_key(list(z.files))
                file_classes = class_name_list(z[ckey]) if ckey is not None else None
            if y.dtype.kind in "US":  # class names stored as the labels
                y, file_classes = names_to_indices(class_name_list(y), file_classes, f"{key}: {path}['y']")
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
            if not rows or label not in rows[0]:
                raise ConfigError(f"{key}: {path} has no column {label!r} (data.label names it)")
            if column and column not in rows[0]:
                raise ConfigError(f"teacher.mixture.column: {path} has no column {column!r}")
            cols = feature_columns(list(rows[0]), (label, column), f"{key}: {path}")
            x = np.empty((len(rows), len(cols)), dtype=np.float32)
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    try:
                        x[i, j] = float(r[c])
                    except (TypeError, ValueError):
                        raise ConfigError(f"{key}: {path}: line {i + 2}, column {c!r}: {r[c]!r} is not a number "
                                          f"(every column but {label!r} is a feature)") from None
            raw = [(r[label] or "").strip() for r in rows]
            empty = next((i for i, v in enumerate(raw) if not v), None)
            if empty is not None:
                raise ConfigError(f"{key}: {path}: line {empty + 2} has an empty label in column {label!r}")
            if all(v.lstrip("-").isdigit() for v in raw):
                y = np.array([int(v) for v in raw])
            else:  # class names
                y, file_classes = names_to_indices(raw, None, f"{key}: {path}: column {label!r}")
            routes = [r[column] for r in rows] if column else None
        else:
            raise ConfigError(f"{key}: {path}: expected a .npz or .csv file")
        data = vector_dataset(torch.as_tensor(x), torch.as_tensor(y))
        data.file_classes = file_classes  # type: ignore[attr-defined]
        if routes is None:
            return data
        from distill.core.mixture import route_indices

        ids = route_indices(routes, route.names(), "teacher.mixture.column")
        if ids.shape[0] != len(data):
            raise ConfigError(f"teacher.mixture.column: {path} has {ids.shape[0]} route values for {len(data)} rows")
        out = TensorDataset(*data.tensors, ids)
        out.file_classes = file_classes  # type: ignore[attr-defined]
        return out
    except (ValueError, OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_vector_table(path: Path, fmt: str, label: str, key: str, classes: list[str] | None = None,
                      integer_labels: str = "strict") -> TensorDataset:
    """Rows of a ``datasets`` table: column ``label`` (integers, or class names taken in sorted order) and every
    other column a feature (numbers, or equal-length lists of numbers). ``classes``, ``integer_labels``: see
    :func:`distill.data.tables.labels_of`; the class names are kept as the dataset's ``classes``."""
    from distill.data.tables import check_columns, labels_of, read_table, split_for

    table = read_table(path, fmt, key, split=split_for(key))
    check_columns(table, {"data.label": label}, path)
    labels, names = labels_of(table, label, key, path, classes, integer_labels)
    columns = feature_columns(list(table.column_names), (label,), f"{key}: {path}")
    if not columns:
        raise ConfigError(f"{key}: {path} has no feature column beside {label!r}")
    try:
        parts = [np.asarray(table.select_columns([c]).with_format("numpy")[:][c], dtype=np.float32) for c in columns]
        x = np.concatenate([p.reshape(len(labels), -1) for p in parts], axis=1)
        data = vector_dataset(torch.as_tensor(x), torch.as_tensor(labels))
        data.classes = names  # type: ignore[attr-defined]
        return data
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {path}: feature columns {columns[:5]}: {str(e).splitlines()[0]}") from None


def integer_classes(data: TensorDataset, mode: str, classes: list[str] | None, where: str) -> TensorDataset:
    """The integer labels of an npz / CSV file as ``data.integer_labels`` says (:mod:`distill.data.labels`): those
    of the training file (``classes`` None) must be 0..K-1, or are taken as names, or kept as indices; with
    ``names`` an evaluation file is mapped onto the training ``classes`` by name. Unlabelled rows (-100) stay."""
    from distill.data.images import UNLABELED
    from distill.data.labels import index_integer_labels, map_by_name, remap_named

    tensors = list(data.tensors)
    labels = tensors[1].numpy()
    if labels.size and int(labels[labels != UNLABELED].min(initial=0)) < 0:
        raise ConfigError(f"{where}: negative label {int(labels[labels != UNLABELED].min())}; labels are 0..K-1 "
                          f"(or {UNLABELED} for an unlabelled row)")
    named = getattr(data, "file_classes", None)
    if named is not None:  # the file names its classes: taken as given, an evaluation file mapped by name
        values, names = remap_named(labels, named, classes, where, ignore=UNLABELED)
    elif classes is None:
        values, names = index_integer_labels(labels, mode, where, ignore=UNLABELED)
    elif mode == "names":
        values, names = map_by_name(labels, list(classes), where, ignore=UNLABELED), list(classes)
    else:
        values, names = labels, list(classes)
        beyond = np.flatnonzero(values >= len(classes))
        if beyond.size:  # a class no training row has: the model would get an output it never learns
            raise ConfigError(f"{where}: label {int(values[beyond[0]])} (row {int(beyond[0])}, counting from 0) is "
                              f"not among the {len(classes)} training classes 0..{len(classes) - 1}")
    tensors[1] = torch.as_tensor(values)
    out = TensorDataset(*tensors)
    out.classes = names  # type: ignore[attr-defined]
    return out


def load_vectors(cfg: Any, key: str, route: Any = None, classes: list[str] | None = None) -> TensorDataset:
    """``route``: see :func:`read_vectors` (npz and CSV files read by ``format: auto`` only). ``classes``: the
    training file's class names (kept as the ``classes`` of the dataset returned for it), for an evaluation file
    read with ``data.integer_labels: names``."""
    d = cfg.data
    if d.format == "auto":
        path = existing_file(getattr(d, key), cfg.base_dir, f"data.{key}")
        return integer_classes(read_vectors(path, d.label, f"data.{key}", route), d.integer_labels, classes,
                               f"data.{key}: {path}")
    if route is not None:
        raise ConfigError(f"teacher.mixture.column: read from an .npz or .csv data.train (data.format: auto), not "
                          f"with data.format: {d.format}")
    return read_vector_table(existing_path(getattr(d, key), cfg.base_dir, f"data.{key}"), d.format, d.label,
                             f"data.{key}", classes, d.integer_labels)
