"""Planetoid citation graphs (Cora, CiteSeer, PubMed) read offline from the official raw files.

The Planetoid release (github.com/kimiyoung/planetoid) ships eight files per dataset, ``ind.<name>.{x, tx,
allx, y, ty, ally, graph, test.index}``: pickled scipy sparse feature matrices, one-hot label arrays, a dict of
adjacency lists and a text file of test node ids. :func:`load_planetoid` accepts a folder that holds them
directly, or torch_geometric's layout (``<folder>/<Name>/raw/``), and parses them with torch_geometric's own
raw-file reader (``torch_geometric.io.read_planetoid_data``), so nothing is downloaded and nothing is written.
The split is the standard public one (Cora: 140 train / 500 val / 1,000 test nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

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

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    def row_normalized(self) -> GraphData:
        """A copy whose feature rows sum to 1 (rows of zeros stay zero), the usual Planetoid preprocessing
        (PyG ``NormalizeFeatures``; DGL's Planetoid datasets come normalised this way)."""
        sums = self.x.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return GraphData(self.x / sums, self.edge_index, self.y, self.train_mask, self.val_mask, self.test_mask,
                         self.name)

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


def load_planetoid(folder: str | Path, name: str = "cora") -> GraphData:
    """Read a Planetoid dataset from its raw files (no network), with the public split."""
    try:
        from torch_geometric.io import read_planetoid_data
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("graph data needs torch_geometric: pip install 'distill[graph]'") from e
    root = find_raw_folder(folder, name)
    data = read_planetoid_data(str(root), name.lower())
    edge_index = data.edge_index
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # Planetoid graphs carry a few self-loops
    return GraphData(x=data.x.float(), edge_index=edge_index.long(), y=data.y.long(),
                     train_mask=data.train_mask.bool(), val_mask=data.val_mask.bool(),
                     test_mask=data.test_mask.bool(), name=PLANETOID_NAMES[name.lower()])
