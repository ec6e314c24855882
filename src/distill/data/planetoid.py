"""Planetoid citation graphs (Cora, CiteSeer, PubMed) read offline from the official raw files.

The Planetoid release (github.com/kimiyoung/planetoid) ships eight files per dataset, ``ind.<name>.{x, tx,
allx, y, ty, ally, graph, test.index}``: pickled scipy sparse feature matrices, one-hot label arrays, a dict of
adjacency lists and a text file of test node ids. :func:`load_planetoid` accepts a folder that holds them
directly, or torch_geometric's layout (``<folder>/<Name>/raw/``), so nothing is downloaded and nothing is written.

The pickles are read with :class:`distill.core.safe_pickle.RestrictedUnpickler`, never ``pickle.load``: it allows
only the globals those files contain (numpy arrays, ``scipy.sparse.csr_matrix``, ``defaultdict(list)``; see
:data:`distill.core.safe_pickle.PLANETOID_GLOBALS`), so a tampered file is refused with an
:class:`~distill.core.safe_pickle.UnsafeFileError` before any of its code runs. The arrays are then assembled exactly
as torch_geometric's ``read_planetoid_data`` does (same tensors, bit for bit; torch_geometric is needed only for
the graph model layers). The split is the standard public one (Cora: 140 train / 500 val / 1,000 test nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.safe_pickle import PLANETOID_GLOBALS, UnsafeFileError, restricted_load

PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}


@dataclass
class GraphData:
    """One graph for transductive node classification: features, directed edges (both directions of every
    undirected edge, no self-loops), labels and the boolean split masks over the nodes."""

    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor
    name: str = "graph"
    classes: list[str] | None = None  # the class names of labels 0..K-1, when the file names them

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.y.max()) + 1

    def row_normalized(self) -> GraphData:
        """A copy whose feature rows sum to 1 (rows of zeros stay zero), the usual Planetoid preprocessing
        (PyG ``NormalizeFeatures``; DGL's Planetoid datasets come normalised this way)."""
        sums = self.x.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return GraphData(self.x / sums, self.edge_index, self.y, self.train_mask, self.val_mask, self.test_mask,
                         self.name, self.classes)

    def split_nodes(self, split: str) -> torch.Tensor:
        """Node ids of ``train``, ``val``, ``test`` or ``all``."""
        masks = {"train": self.train_mask, "val": self.val_mask, "test": self.test_mask,
                 "all": torch.ones_like(self.train_mask)}
        if split not in masks:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(masks)}")
        return masks[split].nonzero().flatten()


def find_raw_folder(folder: str | Path, name: str) -> Path:
    """The folder holding ``ind.<name>.*``: ``folder`` itself or torch_geometric's ``folder/<Name>/raw``."""
    key = name.lower()
    if key not in PLANETOID_NAMES:
        raise ValueError(f"unknown Planetoid dataset {name!r}; allowed: {', '.join(PLANETOID_NAMES)}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected the Planetoid raw files ind.{key}.*)")
    for candidate in (folder, folder / PLANETOID_NAMES[key] / "raw", folder / key / "raw", folder / "raw"):
        if (candidate / f"ind.{key}.graph").exists():
            root = candidate
            break
    else:
        root = folder
    missing = [f"ind.{key}.{part}" for part in PLANETOID_FILES if not (root / f"ind.{key}.{part}").exists()]
    if missing:
        raise FileNotFoundError(
            f"{root}: missing Planetoid raw file(s) {', '.join(missing)} (the official kimiyoung/planetoid files; "
            f"nothing is downloaded)")
    return root


def _read_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return restricted_load(f, PLANETOID_GLOBALS, path, "Planetoid", encoding="latin1")


def _numeric(arr: Any, path: Path, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise UnsafeFileError(path, f"not a Planetoid {what}: expected a numeric numpy array, "
                                    f"got {type(arr).__name__}")
    return arr


def _read_matrix(path: Path) -> torch.Tensor:
    """A feature matrix (scipy CSR, densified) or label matrix (numpy array) as a float32 tensor, as
    torch_geometric's ``read_file`` gives it (``torch.from_numpy(dense).to(torch.float)``)."""
    from scipy.sparse import csr_matrix

    obj = _read_pickle(path)
    if isinstance(obj, csr_matrix):
        for part in ("data", "indices", "indptr"):
            _numeric(getattr(obj, part, None), path, f"sparse matrix ({part})")
        try:
            obj.check_format(full_check=True)
            dense = np.asarray(obj.todense())
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            raise UnsafeFileError(path, f"not a valid Planetoid sparse matrix ({e})") from None
    else:
        dense = _numeric(obj, path, "matrix")
    if dense.ndim != 2:
        raise UnsafeFileError(path, f"not a Planetoid matrix: {dense.ndim} dimensions, expected 2")
    return torch.from_numpy(np.ascontiguousarray(dense)).to(torch.float)


def _read_graph(path: Path) -> dict[int, list[int]]:
    """The adjacency lists, checked to be a dict of int -> list of ints (the file's ``defaultdict(list)`` becomes a
    plain dict, so no default factory travels on)."""
    obj = _read_pickle(path)
    if not isinstance(obj, dict):
        raise UnsafeFileError(path, f"not a Planetoid graph: expected a dict of adjacency lists, "
                                    f"got {type(obj).__name__}")
    graph: dict[int, list[int]] = {}
    for k, v in obj.items():
        if not isinstance(k, int | np.integer) or not isinstance(v, list | tuple) or \
                not all(isinstance(u, int | np.integer) for u in v):
            raise UnsafeFileError(path, "not a Planetoid graph: expected int node ids mapped to lists of ints")
        graph[int(k)] = [int(u) for u in v]
    return graph


def _read_index(path: Path) -> torch.Tensor:
    try:
        ids = [int(tok) for line in path.read_text(encoding="latin-1").splitlines() for tok in line.split()]
    except ValueError as e:
        raise UnsafeFileError(path, f"not a Planetoid test index: {e}") from None
    if not ids:
        raise UnsafeFileError(path, "not a Planetoid test index: no node ids")
    return torch.tensor(ids, dtype=torch.long)


def _edge_index(graph: dict[int, list[int]], num_nodes: int, path: Path) -> torch.Tensor:
    """Both directions as listed, self-loops and duplicates removed, sorted by (target, source): what
    torch_geometric's ``edge_index_from_dict`` (``coalesce(..., sort_by_row=False)``) returns."""
    rows = [k for k, v in graph.items() for _ in v]
    cols = [u for v in graph.values() for u in v]
    row, col = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    if row.numel() and (min(int(row.min()), int(col.min())) < 0 or max(int(row.max()), int(col.max())) >= num_nodes):
        raise UnsafeFileError(path, f"not a Planetoid graph: node ids outside 0..{num_nodes - 1}")
    keep = row != col
    key = torch.unique(col[keep] * num_nodes + row[keep])  # sorted, deduplicated
    return torch.stack([key % num_nodes, torch.div(key, num_nodes, rounding_mode="floor")], dim=0)


def load_planetoid(folder: str | Path, name: str = "cora") -> GraphData:
    """Read a Planetoid dataset from its raw files (no network), with the public split.

    The pickles go through a restricted unpickler (numpy arrays, scipy CSR matrices and ``defaultdict(list)``
    only); a file that asks for anything else, or holds something other than the expected arrays, raises
    :class:`~distill.core.safe_pickle.UnsafeFileError` naming it."""
    key = name.lower()
    root = find_raw_folder(folder, name)
    files = {part: root / f"ind.{key}.{part}" for part in PLANETOID_FILES}
    x, tx, allx, y, ty, ally = (_read_matrix(files[p]) for p in ("x", "tx", "allx", "y", "ty", "ally"))
    graph = _read_graph(files["graph"])
    test_index = _read_index(files["test.index"])
    sorted_test_index = test_index.sort()[0]
    if key == "citeseer":  # isolated test nodes have no row in tx/ty: zero rows fill the gaps
        span = int(test_index.max() - test_index.min()) + 1
        tx_ext = torch.zeros(span, tx.size(1), dtype=tx.dtype)
        tx_ext[sorted_test_index - test_index.min(), :] = tx
        ty_ext = torch.zeros(span, ty.size(1), dtype=ty.dtype)
        ty_ext[sorted_test_index - test_index.min(), :] = ty
        tx, ty = tx_ext, ty_ext
    try:
        feats = torch.cat([allx, tx], dim=0)
        feats[test_index] = feats[sorted_test_index]
        labels = torch.cat([ally, ty], dim=0).max(dim=1)[1]
        labels[test_index] = labels[sorted_test_index]
    except (RuntimeError, IndexError) as e:
        raise UnsafeFileError(root, f"Planetoid raw files of {key} do not fit together ({e})") from None
    n = labels.size(0)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    masks[0][: y.size(0)] = True
    masks[1][y.size(0): y.size(0) + 500] = True
    masks[2][test_index] = True
    edge_index = _edge_index(graph, n, files["graph"])
    return GraphData(x=feats.float(), edge_index=edge_index.long(), y=labels.long(), train_mask=masks[0],
                     val_mask=masks[1], test_mask=masks[2], name=PLANETOID_NAMES[key])
