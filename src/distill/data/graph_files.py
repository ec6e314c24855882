"""A user's graph for node classification, from the files graph libraries export: an ``.npz`` archive or a folder
of node and edge files (``data.format: npz`` / ``files`` of ``task: graph_node_classification``).

``npz`` (what PyG / DGL users save with ``np.savez``): node features under ``x`` / ``feat`` / ``features``, labels
under ``y`` / ``label`` / ``labels``, edges under ``edge_index`` (2 x E) or ``edges`` (E x 2) or as ``src`` +
``dst`` arrays (DGL's ``g.edges()``); optional boolean ``train_mask`` / ``val_mask`` / ``test_mask`` (DGL's
``ndata`` names; or index arrays ``train_idx`` / ``val_idx`` / ``test_idx``); an optional ``classes`` array
naming the classes (:data:`distill.data.labels.NPZ_CLASS_KEYS`).

``files``: a folder holding the nodes, one row per node in node-id order, as ``nodes.csv`` (a header; the label
column ``data.label_column``, an optional ``split`` column of ``train`` / ``val`` / ``test`` (anything else: no
split) or ``train_mask`` / ``val_mask`` / ``test_mask`` columns of 0/1, an optional node-id column (``node_id``,
``id``, ``node``, ``nid``, or pandas' unnamed index column: ids 0..N-1 put the rows in their order; other ids,
such as paper ids or strings, keep the file's order and are what the edge list names), every other column a
feature) or as
``features.npy`` (N x d) with ``labels.npy`` (or ``labels.csv``, one label a row) and optional ``train_mask.npy`` /
``val_mask.npy`` / ``test_mask.npy``; and the edges as ``edges.csv`` / ``edges.tsv`` / ``edges.txt`` (two columns
of node ids, comma, tab or space separated, an optional header) or ``edges.npy`` (E x 2 or 2 x E).

Node ids are 0..N-1 (the row order of the nodes), or nodes.csv's own ids; an edge naming another id is refused with
the file and the row. Labels are integers 0..K-1 (``data.integer_labels``, :mod:`distill.data.labels`) or class
names (sorted; in an npz, in the order of its ``classes`` array when it has one); a
negative integer or an empty cell marks an unlabelled node, which no split may hold. Without split masks the
labelled nodes are split at random (``data.random_split`` fractions, ``data.split_seed``) and a note says so.
Edges are made undirected (both directions) unless ``data.undirected: false``; self-loops and duplicates go, as
in the Planetoid reader. Errors are one-line :class:`ConfigError` messages naming the key, the file and what is
missing.
"""

from __future__ import annotations

import csv
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distill.core.errors import ConfigError
from distill.data.labels import class_name_list, index_integer_labels, names_to_indices, npz_class_key
from distill.data.planetoid import GraphData
from distill.data.tables import INDEX_COLUMNS

FEATURE_KEYS = ("x", "feat", "features", "node_features")
LABEL_KEYS = ("y", "label", "labels")
EDGE_KEYS = ("edge_index", "edges", "edge_list")
#: edges as two arrays of node ids (DGL's ``g.edges()``)
EDGE_PAIRS = (("src", "dst"), ("row", "col"))
SPLITS = ("train", "val", "test")
UNLABELLED = -1


def _first(files: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in files), None)


def _labels(raw: Sequence[object] | np.ndarray, mode: str, where: str) -> tuple[np.ndarray, list[str]]:
    """(labels 0..K-1 with -1 for unlabelled nodes, class names) of integer or class-name labels."""
    values = list(raw.tolist() if isinstance(raw, np.ndarray) else raw)
    missing = [v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v)
               for v in values]
    given = [v for v, m in zip(values, missing) if not m]

    def integral(v: object) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, (int, np.integer)):
            return True
        if isinstance(v, float):
            return v == round(v)
        return isinstance(v, str) and v.strip().lstrip("-").isdigit()

    out = np.full(len(values), UNLABELLED, dtype=np.int64)
    if all(integral(v) for v in given):
        ints = np.array([int(float(v)) if not isinstance(v, str) else int(v) for v in given], dtype=np.int64)
        keep = ints >= 0  # negative: unlabelled
        idx = np.flatnonzero(~np.array(missing))
        mapped, names = index_integer_labels(ints[keep], mode, where)
        out[idx[keep]] = mapped
        return out, names
    names = sorted({str(v).strip() for v in given})
    lookup = {n: i for i, n in enumerate(names)}
    for i, (v, m) in enumerate(zip(values, missing)):
        if not m:
            out[i] = lookup[str(v).strip()]
    return out, names


def _named_labels(raw: np.ndarray, names: list[str], where: str) -> np.ndarray:
    """Labels 0..K-1 (-1 for unlabelled nodes) of an npz whose ``classes`` array names the classes: integer labels
    index it (a negative one: unlabelled), string labels are names from it (an empty one: unlabelled)."""
    if raw.dtype.kind in "iuf":
        if raw.dtype.kind == "f" and not np.all(raw[np.isfinite(raw)] == np.round(raw[np.isfinite(raw)])):
            raise ConfigError(f"{where}: labels must be whole numbers or class names")
        values = np.where(np.isfinite(raw), raw, UNLABELLED).astype(np.int64)
        values[values < 0] = UNLABELLED
        if values.size and int(values.max()) >= len(names):
            raise ConfigError(f"{where}: label {int(values.max())} has no class name ({len(names)} classes named: "
                              f"{names[:10]})")
        return values
    text = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in raw.tolist()]
    given = [i for i, t in enumerate(text) if t.strip()]
    out = np.full(len(text), UNLABELLED, dtype=np.int64)
    out[given] = names_to_indices([text[i].strip() for i in given], names, where)[0]
    return out


def _mask(arr: np.ndarray, n: int, name: str, where: str) -> torch.Tensor:
    """A boolean mask over the ``n`` nodes from a boolean / 0-1 array of length n, or from node indices."""
    arr = np.asarray(arr).reshape(-1)
    indices = name.endswith(("_idx", "_index"))
    if arr.dtype == bool or (arr.shape[0] == n and np.isin(arr, (0, 1)).all() and not indices):
        if arr.shape[0] != n:
            raise ConfigError(f"{where}: {name!r} has {arr.shape[0]} values for {n} nodes")
        return torch.from_numpy(arr.astype(bool))
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{where}: {name!r} is neither a boolean mask nor node indices ({arr.dtype})")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ConfigError(f"{where}: {name!r} holds node id {int(arr.max() if arr.max() >= n else arr.min())} "
                          f"outside 0..{n - 1}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(arr.astype(np.int64))] = True
    return mask


def _edges(arr: np.ndarray, n: int, where: str, undirected: bool, rows: Sequence[int] | None = None) -> torch.Tensor:
    """(2, E) edge index from (2, E) or (E, 2) node ids, checked against 0..n-1; ``rows``: the file line of each
    edge, cited when one is out of range."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or 2 not in arr.shape:
        raise ConfigError(f"{where}: edges must be 2 x E or E x 2 node ids, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ConfigError(f"{where}: edge node ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
    pairs = arr.T if arr.shape[0] == 2 and arr.shape[1] != 2 else arr  # (E, 2); a 2 x 2 array is two edges
    pairs = pairs.astype(np.int64)
    bad = np.flatnonzero((pairs < 0).any(axis=1) | (pairs >= n).any(axis=1))
    if bad.size:
        i = int(bad[0])
        at = f"line {rows[i]}" if rows is not None else f"edge {i} (counting from 0)"
        raise ConfigError(f"{where}: {at}: edge {int(pairs[i, 0])} -> {int(pairs[i, 1])} names a node outside "
                          f"0..{n - 1} (node ids are the row numbers of the {n} nodes; {bad.size} such edges)")
    src, dst = torch.from_numpy(pairs[:, 0].copy()), torch.from_numpy(pairs[:, 1].copy())
    if undirected:
        src, dst = torch.cat([src, dst]), torch.cat([dst, src])
    keep = src != dst
    key = torch.unique(dst[keep] * n + src[keep])  # sorted by (target, source), deduplicated
    return torch.stack([key % n, torch.div(key, n, rounding_mode="floor")], dim=0)


def _random_masks(labels: np.ndarray, fractions: Sequence[float], seed: int,
                  where: str) -> tuple[torch.Tensor, ...]:
    labelled = np.flatnonzero(labels >= 0)
    order = labelled[np.random.default_rng(seed).permutation(labelled.size)]
    total = float(sum(fractions))
    cuts = np.round(np.cumsum(fractions) / total * labelled.size).astype(int)
    parts = np.split(order, cuts[:-1])
    n = labels.shape[0]
    masks = []
    for part in parts:
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.from_numpy(part)] = True
        masks.append(m)
    print(f"note: {where}: no train/val/test masks; the {labelled.size} labelled nodes split at random "
          f"{[int(m.sum()) for m in masks]} (data.random_split {list(fractions)}, data.split_seed {seed})",
          file=sys.stderr)
    return tuple(masks)


def _graph(x: np.ndarray, labels: np.ndarray, edge_index: torch.Tensor, masks: tuple[torch.Tensor, ...] | None,
           fractions: Sequence[float], seed: int, where: str, name: str, classes: list[str] | None = None) -> GraphData:
    n = x.shape[0]
    if labels.shape[0] != n:
        raise ConfigError(f"{where}: {labels.shape[0]} labels for {n} nodes")
    if masks is None:
        masks = _random_masks(labels, fractions, seed, where)
    for split, m in zip(SPLITS, masks):
        unl = np.flatnonzero(m.numpy() & (labels < 0))
        if unl.size:
            raise ConfigError(f"{where}: node {int(unl[0])} is in the {split} split but has no label")
        if not bool(m.any()):
            raise ConfigError(f"{where}: the {split} split holds no node")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{where}: node features hold NaN or infinite values")
    return GraphData(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), edge_index,
                     torch.from_numpy(labels), *masks, name=name, classes=classes)


def load_graph_npz(path: Path, *, integer_labels: str = "strict", undirected: bool = True,
                   random_split: Sequence[float] = (0.6, 0.2, 0.2), split_seed: int = 0,
                   key: str = "data.path") -> GraphData:
    """A graph from an ``.npz`` archive (see the module docstring); never unpickles (``allow_pickle=False``)."""
    where = f"{key}: {path}"
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            fkey, lkey, ekey = _first(files, FEATURE_KEYS), _first(files, LABEL_KEYS), _first(files, EDGE_KEYS)
            pair = next((p for p in EDGE_PAIRS if p[0] in files and p[1] in files), None)
            for found, wanted, what in ((fkey, FEATURE_KEYS, "node features"), (lkey, LABEL_KEYS, "labels"),
                                        (ekey or pair, [*EDGE_KEYS, *("+".join(p) for p in EDGE_PAIRS)], "edges")):
                if found is None:
                    raise ConfigError(f"{where}: no {what} array: expected one of {list(wanted)}; its arrays: "
                                      f"{files}")
            x, y = z[fkey], z[lkey]
            if ekey is None:  # DGL's g.edges(): two arrays of source and target ids
                assert pair is not None
                ekey = "+".join(pair)
                src, dst = np.asarray(z[pair[0]]).reshape(-1), np.asarray(z[pair[1]]).reshape(-1)
                if src.shape != dst.shape:
                    raise ConfigError(f"{where}: {pair[0]!r} and {pair[1]!r} differ in length ({src.size} vs "
                                      f"{dst.size})")
                e = np.stack([src, dst])
            else:
                e = z[ekey]
            split_keys = [[f"{s}_mask", f"{s}_idx", f"{s}_index"] for s in SPLITS]
            found_splits = [_first(files, names) for names in split_keys]
            raw_masks = [z[k] if k else None for k in found_splits]
            ckey = npz_class_key(files)
            class_names = class_name_list(z[ckey]) if ckey is not None else None
    except ValueError as err:
        if "pickle" in str(err):
            raise ConfigError(f"{where}: holds object arrays, which need pickle (never loaded); store numeric "
                              "arrays") from None
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(f"{where}: not a readable .npz archive ({str(err).splitlines()[0]})") from None
    if x.ndim != 2:
        raise ConfigError(f"{where}: {fkey!r} must be N x d node features, got shape {tuple(x.shape)}")
    n = x.shape[0]
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot rows
        y = np.where(y.sum(axis=1) > 0, y.argmax(axis=1), UNLABELLED)
    if class_names is None:
        labels, class_names = _labels(y.reshape(-1), integer_labels, f"{where}[{lkey!r}]")
    else:
        labels = _named_labels(y.reshape(-1), class_names, f"{where}[{lkey!r}] (classes in {ckey!r})")
    masks = None
    if any(k is not None for k in found_splits):
        missing = [names[0] for names, k in zip(split_keys, found_splits) if k is None]
        if missing:
            raise ConfigError(f"{where}: has {[k for k in found_splits if k]} but no {missing} (give all three "
                              "splits, or none for a random split)")
        masks = tuple(_mask(m, n, k, where) for m, k in zip(raw_masks, found_splits))  # type: ignore[arg-type]
    edges = _edges(e, n, f"{where}[{ekey!r}]", undirected)
    return _graph(x, labels, edges, masks, random_split, split_seed, where, path.stem, class_names)


def _sniff_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return []
    first = lines[0]
    if "\t" in first:
        return [ln.split("\t") for ln in lines]
    if "," in first:
        return list(csv.reader(lines))
    return [ln.split() for ln in lines]


def read_edge_list(path: Path, n: int, undirected: bool, where: str,
                   ids: dict[str, int] | None = None) -> torch.Tensor:
    """An edge list file: two columns of node ids a row (comma, tab or whitespace separated), an optional header;
    or an ``.npy`` array (E x 2 or 2 x E). ``ids``: the node of each id (any strings) when the nodes file names
    its nodes by ids other than 0..N-1; the edges then name nodes by those ids."""
    if path.suffix == ".npy" and ids is None:
        return _edges(np.load(path, allow_pickle=False), n, where, undirected)
    if path.suffix == ".npy":
        raise ConfigError(f"{where}: an .npy edge list holds row numbers 0..N-1, but nodes.csv names its nodes by "
                          "other ids; write the edges as edges.csv with those ids")
    rows = _sniff_rows(path)
    if ids is None:
        start = 1 if rows and not all(c.strip().lstrip("-").isdigit() for c in rows[0][:2]) else 0
    else:  # a header row names no node
        start = 1 if rows and not all(c.strip() in ids for c in rows[0][:2]) else 0
    pairs, lines = [], []
    for i, row in enumerate(rows[start:], start=start + 1):
        cells = [c.strip() for c in row if c.strip()]
        if ids is not None:
            unknown = [c for c in cells[:2] if c not in ids]
            if len(cells) < 2 or unknown:
                raise ConfigError(f"{where}: line {i}: node id {unknown[0] if unknown else row[:3]!r} is not in "
                                  f"nodes.csv's node-id column ({n} nodes)")
            pairs.append((ids[cells[0]], ids[cells[1]]))
            lines.append(i)
            continue
        if len(cells) < 2 or not all(c.lstrip("-").isdigit() for c in cells[:2]):
            raise ConfigError(f"{where}: row {i}: expected two integer node ids, got {row[:3]}")
        pairs.append((int(cells[0]), int(cells[1])))
        lines.append(i)
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return _edges(arr, n, where, undirected, lines)


def load_graph_files(folder: Path, *, label_column: str = "label", integer_labels: str = "strict",
                     undirected: bool = True, random_split: Sequence[float] = (0.6, 0.2, 0.2), split_seed: int = 0,
                     key: str = "data.path") -> GraphData:
    """A graph from a folder of node and edge files (see the module docstring)."""
    where = f"{key}: {folder}"
    names = {p.name for p in folder.iterdir()}
    edge_file = _first(sorted(names), ("edges.csv", "edges.tsv", "edges.txt", "edges.npy"))
    if edge_file is None:
        raise ConfigError(f"{where}: no edge list: expected edges.csv, edges.tsv, edges.txt or edges.npy; the "
                          f"folder holds {sorted(names)[:10]}")
    masks: tuple[torch.Tensor, ...] | None = None
    node_ids: dict[str, int] | None = None
    if "nodes.csv" in names:
        path = folder / "nodes.csv"
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        fwhere = f"{key}: {path}"
        if label_column not in header:
            raise ConfigError(f"data.label_column: no column {label_column!r} in {path}; its columns: {header}")
        mask_cols = [f"{s}_mask" for s in SPLITS]
        given = [c for c in mask_cols if c in header]
        if given and len(given) < 3:
            raise ConfigError(f"{fwhere}: has columns {given} but not {[c for c in mask_cols if c not in given]} "
                              "(give all three, a 'split' column, or neither for a random split)")
        id_col = next((c for c in header if c.strip().lower() in ID_COLUMNS), None)
        if id_col is not None:
            rows, node_ids = _rows_by_id(rows, id_col, fwhere)
        skip = {label_column, "split", *given, *([id_col] if id_col is not None else [])}
        feats = [c for c in header if c not in skip]
        if not feats:
            raise ConfigError(f"{fwhere}: no feature column beside {sorted(skip & set(header))}")
        x = np.empty((len(rows), len(feats)), dtype=np.float32)
        for i, r in enumerate(rows):
            try:
                x[i] = [float(r[c]) for c in feats]
            except (TypeError, ValueError):
                bad = next(c for c in feats if not _is_number(r[c]))
                at = f"node {i}" if id_col is not None else f"row {i} (node {i})"
                raise ConfigError(f"{fwhere}: {at}, column {bad!r}: {r[bad]!r} is not a number "
                                  f"(every column but {sorted(skip & set(header))} is a feature)") from None
        labels, class_names = _labels([r[label_column] for r in rows], integer_labels,
                                      f"{fwhere}: column {label_column!r}")
        if given:
            masks = tuple(_mask(np.array([_truthy(r[c], c, i, fwhere) for i, r in enumerate(rows)]), len(rows), c,
                                fwhere) for c in mask_cols)
        elif "split" in header:
            values = [(r["split"] or "").strip().lower() for r in rows]
            alias = {"valid": "val", "validation": "val", "dev": "val", "eval": "val"}
            values = [alias.get(v, v) for v in values]
            masks = tuple(torch.tensor([v == s for v in values]) for s in SPLITS)
    elif "features.npy" in names:
        fwhere = f"{key}: {folder / 'features.npy'}"
        x = np.load(folder / "features.npy", allow_pickle=False)
        if x.ndim != 2:
            raise ConfigError(f"{fwhere}: must be N x d node features, got shape {tuple(x.shape)}")
        if "labels.npy" in names:
            raw = np.load(folder / "labels.npy", allow_pickle=False).reshape(-1)
            lwhere = f"{key}: {folder / 'labels.npy'}"
        elif "labels.csv" in names:
            rows_l = _sniff_rows(folder / "labels.csv")
            start = 1 if rows_l and not _is_number(rows_l[0][-1]) and label_column in rows_l[0] else 0
            col = rows_l[0].index(label_column) if start else -1
            raw = np.array([r[col].strip() for r in rows_l[start:]], dtype=object)
            lwhere = f"{key}: {folder / 'labels.csv'}"
        else:
            raise ConfigError(f"{where}: features.npy needs labels.npy or labels.csv beside it")
        labels, class_names = _labels(list(raw), integer_labels, lwhere)
        found = [f"{s}_mask.npy" for s in SPLITS if f"{s}_mask.npy" in names]
        if found:
            if len(found) < 3:
                raise ConfigError(f"{where}: has {found} but not all of train_mask.npy, val_mask.npy, test_mask.npy")
            masks = tuple(_mask(np.load(folder / f, allow_pickle=False), x.shape[0], f, where) for f in found)
    else:
        raise ConfigError(f"{where}: no nodes: expected nodes.csv (features, label and optional split columns) or "
                          f"features.npy with labels.npy; the folder holds {sorted(names)[:10]}")
    edges = read_edge_list(folder / edge_file, x.shape[0], undirected, f"{key}: {folder / edge_file}", node_ids)
    return _graph(x, labels, edges, masks, random_split, split_seed, where, folder.name, class_names)


#: names of a node-id column in ``nodes.csv`` (``""`` and ``unnamed: 0``: the index column pandas' ``to_csv`` writes):
#: never a feature; ids 0..N-1 put the rows in their order, other ids name the nodes for the edge list
ID_COLUMNS = ("node_id", "id", "node", "nid", *INDEX_COLUMNS)


def _rows_by_id(rows: list[dict[str, str]], column: str,
                where: str) -> tuple[list[dict[str, str]], dict[str, int] | None]:
    """(rows, ids): ids that are the integers 0..N-1 put the rows in their order (ids None: the edge list names
    nodes by those numbers); any other ids (paper ids, strings) keep the file's row order and map each id to its
    row, the ids the edge list names. An empty or repeated id is refused."""
    n = len(rows)
    values = [(r.get(column) or "").strip() for r in rows]
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if not v:
            raise ConfigError(f"{where}: row {i}, node-id column {column!r} is empty")
        if v in seen:
            raise ConfigError(f"{where}: row {i}, node-id column {column!r}: node {v} is listed twice (first at row "
                              f"{seen[v]})")
        seen[v] = i
    if all(v.isdigit() and int(v) < n for v in values):  # 0..N-1, each once
        order: list[dict[str, str]] = [rows[0]] * n
        for r, v in zip(rows, values):
            order[int(v)] = r
        return order, None
    return rows, seen


def _is_number(s: str | None) -> bool:
    try:
        float(s or "")
        return True
    except ValueError:
        return False


def _truthy(v: str | None, column: str, row: int, where: str) -> bool:
    s = (v or "").strip().lower()
    if s in ("1", "true", "yes"):
        return True
    if s in ("0", "false", "no", ""):
        return False
    raise ConfigError(f"{where}: row {row}, column {column!r}: {v!r} is not 0/1 or true/false")
