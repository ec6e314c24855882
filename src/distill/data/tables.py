"""Local data files read with Hugging Face ``datasets``, for every family's loader.

A *table* is one of: a CSV, JSONL or parquet file (or a folder of such shards, read in name order), an Arrow folder
written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read in place, memory-mapped), or, for images,
an image folder (``<class>/<image>`` or ``<split>/<class>/<image>``, listed into a table of file paths and labels,
the columns of the ``imagefolder`` builder; the pixels stay in the files). Nothing is downloaded: the package is
switched to offline mode before it is imported, and only its packaged builders are used.

The Arrow files that ``datasets`` writes when it converts CSV, JSONL, parquet or an image folder go to a cache
folder: the ``cache_dir`` a family passes (a ``data.cache_dir`` key), else ``HF_DATASETS_CACHE`` when the user set
it, else a temporary folder of this process, removed when it exits. Never the user's home: a run's data should not
leave copies behind it, and an Arrow folder (``format: arrow``) needs no copy at all.

Errors are one-line :class:`ConfigError` messages that name the config key, the file and, for a missing column,
the columns the file has.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distill.core.errors import ConfigError

#: the ``format`` values read through ``datasets`` (besides ``imagefolder``, which only images have)
TABLE_FORMATS = ("csv", "jsonl", "parquet", "arrow")
TableFormat = Literal["csv", "jsonl", "parquet", "arrow"]
#: file name endings of each file format (a folder given for one of them is read as its shards)
SUFFIXES = {"csv": (".csv", ".tsv"), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}
_BUILDERS = {"csv": "csv", "jsonl": "json", "parquet": "parquet"}

#: the unnamed index column pandas' ``to_csv`` writes first (``""`` in the file; ``Unnamed: 0`` once read by pandas):
#: row numbers, never a feature (a set sorted by class would hand the model its labels), in every reader of rows
INDEX_COLUMNS = ("", "unnamed: 0")

_temp_cache: Path | None = None


def import_datasets(key: str) -> Any:
    """The ``datasets`` module, imported offline; a one-line error naming ``key`` when it is not installed."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key}: this format is read with the Hugging Face 'datasets' package, which is not "
                          "installed; pip install 'distill[data]'") from None
    datasets.disable_progress_bars()
    return datasets


def cache_folder(cache_dir: str | Path | None = None) -> str:
    """Where ``datasets`` writes its Arrow files (see the module docstring)."""
    global _temp_cache
    if cache_dir is not None:
        return str(Path(cache_dir).expanduser() / "datasets")
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    if _temp_cache is None or not _temp_cache.is_dir():
        _temp_cache = Path(tempfile.mkdtemp(prefix="distill-datasets-"))
        atexit.register(shutil.rmtree, _temp_cache, True)
    return str(_temp_cache)


def _data_files(path: Path, fmt: str, key: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    shards = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES[fmt]))
    if not shards:
        raise ConfigError(f"{key}: {path} is a folder without {'/'.join(SUFFIXES[fmt])} files (format: {fmt})")
    return [str(p) for p in shards]


def read_table(path: Path, fmt: str, key: str, *, split: str | tuple[str, ...] | None = None,
               split_key: str | None = None,
               cache_dir: str | Path | None = None) -> Any:
    """The ``datasets.Dataset`` of ``path`` read as ``fmt`` (``csv``, ``jsonl``, ``parquet``, ``arrow`` or
    ``imagefolder``). ``split`` picks a split of an image folder or of a saved ``DatasetDict`` (the first of a
    tuple that it has; ``split_key``: the config key that set it); a file is one split and ignores it. ``key``: the
    config key of ``path``."""
    datasets = import_datasets(key)
    if fmt in ("arrow", "imagefolder") and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file; format {fmt} reads a folder"
                          + (" written by save_to_disk" if fmt == "arrow" else " of class-named subfolders"))
    try:
        if fmt == "arrow":
            table = datasets.load_from_disk(str(path))
        elif fmt == "imagefolder":
            return image_folder_table(datasets, path, split, split_key or key, cache_dir)
        else:
            files = _data_files(path, fmt, key)
            tabs = [f.lower().endswith(".tsv") for f in files]
            if fmt == "csv" and any(tabs) and not all(tabs):
                raise ConfigError(f"{key}: {path} holds both .csv and .tsv shards; keep one separator")
            options = {"sep": "\t"} if fmt == "csv" and all(tabs) else {}  # .tsv: tab-separated
            table = datasets.load_dataset(_BUILDERS[fmt], data_files={"train": files}, split="train",
                                          cache_dir=cache_folder(cache_dir), **options)
            split = None
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError, datasets.exceptions.DatasetsError) \
            as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: {path}: cannot read it as {fmt}: {first}") from None
    if isinstance(table, datasets.DatasetDict):
        table = _pick_split(table, split, path, key, split_key)
    if not isinstance(table, datasets.Dataset):
        raise ConfigError(f"{key}: {path}: expected a table, got a {type(table).__name__}")
    return table


#: the splits a saved ``DatasetDict`` may hold an ``eval`` file's rows in, by preference (families without split keys)
HELD_OUT = ("validation", "test", "eval", "dev", "val")


def split_for(key: str) -> str | tuple[str, ...]:
    """The split of a saved ``DatasetDict`` that config key ``data.train`` / ``data.eval`` reads."""
    return HELD_OUT if key.endswith("eval") else "train"


def _folders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _classes_with_images(root: Path, folders: list[str]) -> list[str]:
    """The class folders that hold at least one image, as the native image-folder reader counts classes (so both
    routes number the classes alike); one note each for empty class folders and for files that are not images."""
    from distill.data.images import IMAGE_EXTENSIONS, _note_skipped

    classes, empty, skipped = [], [], []
    for name in folders:
        has = False
        for e in os.scandir(root / name):
            if not e.is_file() or e.name.startswith("."):
                continue
            if e.name.lower().endswith(IMAGE_EXTENSIONS):
                has = True
            else:
                skipped.append((name, e.name))
        (classes if has else empty).append(name)
    _note_skipped(skipped, f"image folder {root}")
    if empty:
        print(f"note: image folder {root}: {len(empty)} class folder(s) without images left out ({', '.join(empty)})",
              file=sys.stderr)
    return classes


def _folder_rows(root: str, classes: tuple[str, ...], state: str) -> Iterator[dict[str, Any]]:
    """(path, label) rows of an image folder, by class then file name; one class folder listed at a time.
    ``state`` only keys the ``datasets`` cache (the folders' modification times)."""
    from distill.data.images import IMAGE_EXTENSIONS

    for label, name in enumerate(classes):
        files = sorted(e.name for e in os.scandir(Path(root, name))
                       if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
        for file in files:
            yield {"image": str(Path(root, name, file)), "label": label}


def image_folder_table(datasets: Any, path: Path, split: str | tuple[str, ...] | None, split_key: str,
                       cache_dir: str | Path | None) -> Any:
    """An image folder (``<class>/<image>`` or ``<split>/<class>/<image>``) as a ``datasets`` table with the
    ``imagefolder`` builder's columns: ``image`` (the file paths, as ``Image`` values) and ``label``
    (``ClassLabel``, the sorted class folder names). The files are listed one class folder at a time and written
    to Arrow in batches, so memory does not grow with the number of images (the ``imagefolder`` builder lists every
    file first). A folder of class folders is the ``train`` split only."""
    path = path.resolve()  # the table holds absolute paths, whatever folder the run starts in
    names = _folders(path)
    wanted = split if isinstance(split, str) else None
    if wanted is not None and wanted in names and _folders(path / wanted):
        root = path / wanted
    elif set(names) & set(SPLIT_NAMES):
        splits = [n for n in names if n in SPLIT_NAMES]
        raise ConfigError(f"{split_key}: {path} has no split {split!r}; its splits: {splits}")
    elif wanted in (None, "train"):
        root = path
    else:
        raise ConfigError(f"{split_key}: {path} has no split {split!r}; its splits: ['train'] (one set of class "
                          "folders)")
    folders = _folders(root)
    if not folders:
        raise ConfigError(f"{split_key}: {root} has no class folders (<class>/<image>)")
    classes = _classes_with_images(root, folders)
    state = ";".join(f"{c}:{os.stat(root / c).st_mtime_ns}" for c in classes)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    table = datasets.Dataset.from_generator(_folder_rows, features=features, cache_dir=cache_folder(cache_dir),
                                            # a tuple: datasets would shard a list over several generator calls
                                            gen_kwargs={"root": str(root), "classes": tuple(classes), "state": state})
    if len(table) == 0:
        raise ConfigError(f"{split_key}: {root} holds no images in its class folders")
    return table


#: folder names an image folder's split folders have
SPLIT_NAMES = ("train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval")


def _pick_split(tables: Any, split: str | tuple[str, ...] | None, path: Path, key: str,
                split_key: str | None) -> Any:
    names = list(tables)
    for name in (split,) if not isinstance(split, tuple) else split:
        if name in names:
            return tables[name]
    if split is None and len(names) == 1:
        return tables[names[0]]
    # one split only: it is the training data, never silently the evaluation set
    if split == "train" and len(names) == 1 and names[0] not in ("test", "validation", "val", "eval"):
        return tables[names[0]]
    raise ConfigError(f"{split_key or key}: {path} has no split {split!r}; its splits: {names}")


def check_columns(table: Any, wanted: dict[str, str | None], path: Path) -> None:
    """Every ``{config key: column name}`` of ``wanted`` (None: not asked for) is a column of ``table``."""
    for key, name in wanted.items():
        if name is not None and name not in table.column_names:
            raise ConfigError(f"{key}: no column {name!r} in {path}; its columns: {table.column_names}")


def pick_column(table: Any, given: str | None, candidates: tuple[str, ...], key: str, path: Path) -> str:
    """``given`` (checked), or the first of ``candidates`` the table has (case-insensitive)."""
    if given is not None:
        check_columns(table, {key: given}, path)
        return given
    lowered = {c.lower(): c for c in table.column_names}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise ConfigError(f"{key}: {path} has none of the columns {list(candidates)}; name one of its columns "
                      f"{table.column_names}")


def column_values(table: Any, name: str) -> list[Any]:
    """The values of one column as Python objects (read through Arrow: the other columns are not touched)."""
    return table.select_columns([name]).with_format("arrow")[:].column(0).to_pylist()


def column_array(table: Any, name: str) -> np.ndarray:
    """One column of scalars as a numpy array (zero-copy where Arrow allows)."""
    return table.select_columns([name]).with_format("arrow")[:].column(0).to_numpy()


def labels_of(table: Any, column: str, key: str, path: Path, classes: list[str] | None = None,
              integer_labels: str = "strict") -> tuple[np.ndarray, list[str]]:
    """(int64 labels, class names) of a label column: a ``ClassLabel`` column (its names), integers ``0..K-1``
    (named ``"0"..."K-1"``; other integers as ``integer_labels``, ``data.integer_labels``, says:
    :mod:`distill.data.labels`) or class names (sorted). With ``classes`` (e.g. the training split's), labels are
    mapped onto them by name, integers being taken as indices (as names with ``integer_labels: names``)."""
    from distill.data.labels import index_integer_labels, map_by_name, names_to_indices, remap_named

    feature = table.features[column]
    names = list(getattr(feature, "names", None) or [])
    if names:
        return remap_named(column_array(table, column).astype(np.int64), names, classes, f"{key}: {path}")
    raw = column_values(table, column)
    if any(v is None for v in raw):
        raise ConfigError(f"{key}: {path}: column {column!r} has empty labels (row {raw.index(None)})")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        values = np.asarray(raw, dtype=np.int64)
        if values.size and int(values.min()) < 0:
            raise ConfigError(f"{key}: {path}: column {column!r} has a negative label {int(values.min())}; labels "
                              "are 0..K-1 or class names")
        if classes is None:
            return index_integer_labels(values, integer_labels, f"{key}: {path}: column {column!r}")
        if integer_labels == "names":
            return map_by_name(values, list(classes), f"{key}: {path}: column {column!r}"), list(classes)
        k = int(values.max()) + 1 if values.size else 0
        if k > len(classes):
            raise ConfigError(f"{key}: {path}: label {k - 1} is out of range for {len(classes)} classes")
        return values, list(classes)
    return names_to_indices([str(v) for v in raw], classes, f"{key}: {path}")


def texts_of(table: Any, column: str, key: str, path: Path) -> list[str]:
    """A column of strings (empty cells refused, naming the row)."""
    values = column_values(table, column)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            what = "empty (null / NaN)" if v is None or (isinstance(v, float) and v != v) else type(v).__name__
            raise ConfigError(f"{key}: {path}: column {column!r} row {i} (counting from 0) is {what}, not text")
    return values
