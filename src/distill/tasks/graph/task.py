"""Transductive node classification on one graph: batches are node ids, models see the whole graph.

The trainer draws batches of *node ids* from a :class:`GraphNodes` set (e.g. the 140 labelled training nodes
of Cora, or all 2,708 nodes for distillation). :meth:`GraphNodeClassification.forward` runs the model on the
full graph (features and every edge) and returns the logits of the batch's nodes only, in batch order; teacher
sources call the same ``forward``, so student and teacher rows line up. Nodes whose labels are hidden (all
non-training nodes when a distillation method reads every node) carry the label ``UNLABELED`` (-100), which
cross-entropy skips. Metrics: accuracy (and mean cross-entropy) over the labelled nodes of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX, Batch
from distill.data.planetoid import GraphData

UNLABELED = IGNORE_INDEX


@dataclass
class GraphNodes:
    """A set of node ids of ``graph``; ``labelled`` marks which of them expose their label to training."""

    graph: GraphData
    nodes: torch.Tensor
    labelled: torch.Tensor

    @classmethod
    def split(cls, graph: GraphData, split: str, labelled_split: str | None = None) -> GraphNodes:
        """Nodes of ``split`` (train/val/test/all); labels visible on ``labelled_split`` (default: the same)."""
        nodes = graph.split_nodes(split)
        visible = torch.zeros(graph.num_nodes, dtype=torch.bool)
        visible[graph.split_nodes(labelled_split or split)] = True
        return cls(graph, nodes, visible[nodes])

    def __len__(self) -> int:
        return int(self.nodes.numel())


class NodeAccuracy:
    """Accuracy and mean cross-entropy over the labelled nodes seen."""

    def __init__(self) -> None:
        self.n = 0
        self.correct = 0
        self.loss_sum = 0.0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        labels = batch.labels
        assert labels is not None
        keep = labels != UNLABELED
        outputs, labels = outputs[keep].float(), labels[keep]
        self.correct += int((outputs.argmax(-1) == labels).sum())
        self.loss_sum += float(F.cross_entropy(outputs, labels, reduction="sum")) if labels.numel() else 0.0
        self.n += int(labels.numel())

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"accuracy": self.correct / n, "loss": self.loss_sum / n}


class GraphNodeClassification:
    """The task adapter (see the module docstring). ``graph`` supplies the features and edges every forward
    uses; methods that need the edges (FF-G2M) read :attr:`edge_index` through ``RunInfo.task``."""

    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, graph: GraphData):
        self.graph = graph

    @property
    def edge_index(self) -> torch.Tensor:
        return self.graph.edge_index

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    def num_examples(self, data: GraphNodes) -> int:
        return len(data)

    def fetch(self, data: GraphNodes, indices: torch.Tensor) -> Batch:
        if data.graph is not self.graph:
            raise ValueError("the node set belongs to a different graph than the task's")
        nodes = data.nodes[indices]
        labels = torch.where(data.labelled[indices], self.graph.y[nodes], torch.full_like(nodes, UNLABELED))
        # node ids first: Batch.__len__ reads the first entry of a dict input
        return Batch(inputs={"nodes": nodes, "x": self.graph.x, "edge_index": self.graph.edge_index},
                     labels=labels, indices=nodes, meta={"positions": indices})

    def cache_index(self, batch: Batch) -> torch.Tensor:
        """A teacher cache stores node set positions; ``batch.indices`` are node ids (what FF-G2M reads)."""
        return batch.meta["positions"]

    def guard_inputs(self, batch: Batch) -> torch.Tensor:
        """The cache's input guard compares node ids (the graph itself is part of the data fingerprint)."""
        return batch.inputs["nodes"]

    def describe(self) -> dict[str, str]:
        return {"task": "graph_node_classification"}

    def prepare(self, batch: Batch, *, train: bool, generator: torch.Generator | None) -> Batch:
        return batch

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs = batch.inputs
        return model(inputs["x"], inputs["edge_index"])[inputs["nodes"]]

    def new_metrics(self) -> NodeAccuracy:
        return NodeAccuracy()
