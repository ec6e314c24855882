"""Integer class labels read from a user's file, turned into class indices 0..K-1.

Files often number their classes 1..K (or skip a value). Taking such integers as indices as they are would give
the model K+1 outputs and a class 0 that no example has, silently. ``data.integer_labels`` says what to do when the
training labels are not exactly 0..K-1 (every value present):

- ``strict`` (the default): refuse, naming the file, the values and the two settings below;
- ``names``: take the values as class names: the sorted values become indices 0..K-1, class ``k`` named by its
  value (1..K -> 0..K-1 named "1".."K"); the evaluation files are mapped by the same names; a note says so;
- ``indices``: keep the values as indices with the empty classes (e.g. for a teacher trained with those outputs);
  a note names the empty classes.

A label space that names its classes (a ``ClassLabel`` column, class-name strings, an npz ``classes`` array, image
folders) is taken as given.
"""

from __future__ import annotations

import sys
from typing import Literal

import numpy as np

from distill.core.errors import ConfigError

IntegerLabels = Literal["strict", "names", "indices"]
KEY = "data.integer_labels"


def _values(values: np.ndarray) -> str:
    v = [int(x) for x in values]
    return f"{v[0]}..{v[-1]}" if len(v) > 1 and v == list(range(v[0], v[-1] + 1)) else str(v[:10])[1:-1] + (
        ", ..." if len(v) > 10 else "")


def index_integer_labels(values: np.ndarray, mode: str, where: str,
                         ignore: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(labels as indices 0..K-1, class names) of the integer training labels ``values`` (non-negative, checked by
    the caller) read from ``where`` (the config key and file, cited in errors). ``ignore``: a label kept as it is
    (unlabelled rows, -100)."""
    values = np.asarray(values, dtype=np.int64)
    known = values if ignore is None else values[values != ignore]
    present = np.unique(known)
    k = int(present[-1]) + 1 if present.size else 0
    if present.size == k:  # exactly 0..K-1
        return values, [str(i) for i in range(k)]
    empty = sorted(set(range(k)) - {int(v) for v in present})
    if mode == "indices":
        print(f"note: {where}: integer labels kept as indices (data.integer_labels: indices): {k} classes, "
              f"{len(empty)} without an example ({_values(np.array(empty))})", file=sys.stderr)
        return values, [str(i) for i in range(k)]
    if mode == "names":
        out = values.copy()
        mask = np.ones(values.shape, dtype=bool) if ignore is None else values != ignore
        out[mask] = np.searchsorted(present, values[mask])
        print(f"note: {where}: integer labels {_values(present)} taken as class names (data.integer_labels: names): "
              f"indices 0..{present.size - 1}", file=sys.stderr)
        return out, [str(int(v)) for v in present]
    hint = (f"the labels ({_values(present)}) start at {int(present[0])}" if int(present[0]) > 0
            else f"no example has label {_values(np.array(empty))}")
    raise ConfigError(
        f"{where}: integer labels must be 0..K-1, but {hint} (a model would get {k} outputs, "
        f"{len(empty)} of them for classes no example has). Set {KEY}: names to take the values as class names "
        f"({_values(present)} -> 0..{present.size - 1}), or {KEY}: indices to keep them as indices (e.g. for a "
        f"teacher trained with {k} outputs)")


def map_by_name(values: np.ndarray, classes: list[str], where: str, ignore: int | None = None) -> np.ndarray:
    """Integer labels of an evaluation file mapped onto the training ``classes`` by name (``data.integer_labels:
    names``): the value ``v`` becomes the index of the class named ``str(v)``."""
    lookup = {c: i for i, c in enumerate(classes)}
    values = np.asarray(values, dtype=np.int64)
    out = values.copy()
    for j, v in enumerate(values.tolist()):
        if ignore is not None and v == ignore:
            continue
        if str(v) not in lookup:
            raise ConfigError(f"{where}: label {v} (row {j}, counting from 0) is not among the training classes "
                              f"{classes[:10]} ({KEY}: names)")
        out[j] = lookup[str(v)]
    return out


#: arrays of an ``.npz`` file that name its classes (label ``k`` is named by entry ``k``), in every family that reads
#: an npz (images, feature rows, graphs); looked up case-insensitively, the first one found wins. ``names`` is read
#: for images only: beside feature rows or nodes it as often names the rows (``node_names``-like) as the classes
NPZ_CLASS_KEYS = ("classes", "class_names", "label_names", "names")


def npz_class_key(files: list[str], images: bool = False) -> str | None:
    """The name of the array of an npz with arrays ``files`` that names its classes (:data:`NPZ_CLASS_KEYS`;
    ``names`` only when ``images``)."""
    lower = {f.lower(): f for f in files}
    keys = NPZ_CLASS_KEYS if images else tuple(k for k in NPZ_CLASS_KEYS if k != "names")
    return next((lower[k] for k in keys if k in lower), None)


def class_name_list(arr: np.ndarray) -> list[str]:
    """The class names of an npz ``classes`` array (str or bytes entries, any shape)."""
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.asarray(arr).reshape(-1).tolist()]


def names_to_indices(names: list[str], classes: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """(int64 indices, class names) of labels given as class names: the training file's (``classes`` None) are
    numbered in sorted order; an evaluation file's are mapped onto the training ``classes`` by name, a name the
    training file lacks refused with its first row."""
    order = sorted(set(names)) if classes is None else list(classes)
    lookup = {c: i for i, c in enumerate(order)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        row = next(i for i, t in enumerate(names) if t not in lookup)
        raise ConfigError(f"{where}: labels {unknown[:5]} are not among the training classes {order[:10]} (first at "
                          f"row {row}, counting from 0)")
    return np.array([lookup[t] for t in names], dtype=np.int64), order


def remap_named(values: np.ndarray, names: list[str], classes: list[str] | None, where: str,
                ignore: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(labels, class names) of labels ``values`` that index the file's own class ``names`` (a ``ClassLabel``
    column, an npz ``classes`` array): as they are for the training file (``classes`` None), else mapped onto the
    training ``classes`` by name (a class the training file lacks refused). ``ignore``: a label kept as it is."""
    values = np.asarray(values, dtype=np.int64)
    known = values if ignore is None else values[values != ignore]
    if known.size and (int(known.min()) < 0 or int(known.max()) >= len(names)):
        bad = int(known.max()) if int(known.max()) >= len(names) else int(known.min())
        raise ConfigError(f"{where}: label {bad} has no class name ({len(names)} classes named: {names[:10]})")
    if classes is None or names == list(classes):
        return values, list(names if classes is None else classes)
    lookup = {c: i for i, c in enumerate(classes)}
    missing = [n for n in names if n not in lookup]
    if missing:
        raise ConfigError(f"{where}: classes {missing[:5]} are not among the training classes {list(classes)[:10]}")
    table = np.array([lookup[n] for n in names], dtype=np.int64)
    out = values.copy()
    keep = np.ones(values.shape, dtype=bool) if ignore is None else values != ignore
    out[keep] = table[values[keep]]
    return out, list(classes)
