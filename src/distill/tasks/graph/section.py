"""The ``data:`` section of ``task: graph_node_classification``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from distill.config import Strict
from distill.data.labels import IntegerLabels
from distill.train.config import Flag

Fraction = Annotated[float, Field(ge=0, le=1)]


class GraphDataSection(Strict):
    """``format``: ``planetoid`` (the default): ``path`` is a folder holding the Planetoid raw files
    ``ind.<dataset>.*`` (or ``<folder>/<Name>/raw/``), read with the public split; ``npz``: ``path`` is an ``.npz``
    archive as PyG / DGL users export one (arrays ``x``/``feat``, ``y``/``label``, ``edge_index``, optional
    ``train_mask``/``val_mask``/``test_mask``); ``files``: ``path`` is a folder with ``nodes.csv`` (features, the
    ``label_column`` and an optional ``split`` column or mask columns) or ``features.npy`` + ``labels.npy``, and an
    edge list ``edges.csv``/``.tsv``/``.txt`` (two columns of node ids 0..N-1). The file layouts, and the errors:
    :mod:`distill.data.graph_files`. Without masks the labelled nodes are split at random (``random_split``: the
    train / val / test fractions, ``split_seed``). ``undirected``: add the reverse of every listed edge (npz and
    files). ``integer_labels``: see :mod:`distill.data.labels`. ``normalize_features``: rows scaled to sum 1 (the
    Planetoid preprocessing for bag-of-words features; default on for Planetoid, off for the other formats).
    ``train_on``: the nodes a step covers (``train``: the labelled training nodes; ``all``: every node, labels
    visible on the training nodes only, so distillation terms cover the whole graph)."""

    path: str
    format: Literal["planetoid", "npz", "files"] = "planetoid"
    dataset: Literal["cora", "citeseer", "pubmed"] = "cora"
    normalize_features: Flag | None = None
    train_on: Literal["train", "all"] = "train"
    label_column: str = "label"
    undirected: Flag = True
    random_split: tuple[Fraction, Fraction, Fraction] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    integer_labels: IntegerLabels = "strict"
