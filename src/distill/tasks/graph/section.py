"""The ``data:`` section of ``task: graph_node_classification``."""

from __future__ import annotations

from typing import Literal

from distill.config import Strict
from distill.train.config import Flag


class GraphDataSection(Strict):
    """``path``: a folder holding the Planetoid raw files ``ind.<dataset>.*`` (or ``<folder>/<Name>/raw/``), read
    with the public split. ``train_on``: the nodes a step covers (``train``: the labelled training nodes; ``all``:
    every node, labels visible on the training nodes only, so distillation terms cover the whole graph)."""

    path: str
    dataset: Literal["cora", "citeseer", "pubmed"] = "cora"
    normalize_features: Flag = True
    train_on: Literal["train", "all"] = "train"
