"""Train and select a node classifier with the library's :class:`~distill.train.trainer.Trainer`.

The protocol of the GNN-to-MLP papers (GLNN, FF-G2M): full-batch training (one optimiser step per epoch, the
batch being every node of the training set), model selection on the validation nodes (the trainer's
``eval_data`` is the validation split, early stopping on its accuracy, ties counting as improvements), and the
test accuracy of the best-validation weights. Teachers train on the labelled training nodes; distillation
students train on *all* nodes, with the labels of non-training nodes hidden, so the distillation terms cover
the whole graph (transductive) while cross-entropy sees only the 140 labelled ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.outputs import ModelOutput
from distill.core.teachers import freeze
from distill.data.planetoid import GraphData
from distill.models.weights import read_state_dict
from distill.tasks.graph import GraphNodeClassification, GraphNodes
from distill.train.evaluate import evaluate_model
from distill.train.trainer import TrainConfig


class CachedNodeTeacher:
    """A frozen node classifier whose all-node logits are computed once (eval mode, full graph) and then read
    by node id, the way the GNN-to-MLP papers use their teacher (its logits are constants).

    Deprecated, kept for one release for Python users: the stored teacher of every family is ``teacher.cache``
    (:mod:`distill.cache`); no benchmark or YAML path uses this class any more."""

    def __init__(self, model: nn.Module, graph: GraphData):
        self.model = freeze(model)
        self.logits = node_logits(self.model, graph)

    def to(self, *args: object, **kwargs: object) -> CachedNodeTeacher:
        self.logits = self.logits.to(*args, **kwargs)
        return self

    def __call__(self, batch: Batch, task: object, taps: Sequence[str] = ()) -> ModelOutput:
        if taps:
            raise ValueError(f"the cached node teacher keeps logits only; asked for features {list(taps)}")
        return ModelOutput(self.logits[batch.inputs["nodes"]])


@dataclass
class NodeRun:
    """What :func:`train_node_classifier` returns: the best-validation model and its accuracies."""

    model: nn.Module
    val_accuracy: float
    test_accuracy: float
    epochs: int
    wall_time_s: float


def graph_train_config(seed: int, epochs: int = 500, patience: int = 50, lr: float = 0.01,
                       weight_decay: float = 5e-4, **extra: Any) -> TrainConfig:
    """Adam (L2 in the gradient), constant lr, full batch, early stopping on validation accuracy."""
    return TrainConfig(epochs=epochs, optimizer="adam", lr=lr, weight_decay=weight_decay, schedule="constant",
                       seed=seed, early_stopping_patience=patience, early_stopping_metric="accuracy",
                       early_stopping_min_delta=-1e-9, progress=False, log_every=10_000,
                       checkpoint_every_epochs=50, **extra)


def train_node_classifier(graph: GraphData, model: nn.Module, methods: Composite, cfg: TrainConfig,
                          run_dir: str | Path, teacher: nn.Module | None = None,
                          train_on: str = "train") -> NodeRun:
    """Train ``model`` with ``methods`` (and a frozen ``teacher`` if given) on ``graph``.

    ``train_on="train"`` draws the labelled training nodes; ``"all"`` draws every node, labels visible on the
    training nodes only (for distillation terms over the whole graph). The batch is the whole node set."""
    from distill.core.family import Loaded
    from distill.experiment import assemble

    task = GraphNodeClassification(graph)
    train = GraphNodes.split(graph, train_on, labelled_split="train")
    val = GraphNodes.split(graph, "val")
    test = GraphNodes.split(graph, "test")
    cfg.batch_size = len(train)
    cfg.eval_batch_size = max(graph.num_nodes, cfg.eval_batch_size)
    cfg.drop_last = False
    source = CachedNodeTeacher(teacher, graph) if teacher is not None else None
    loaded = Loaded(task, train, val, None, num_outputs=graph.num_classes, report=test)
    summary = assemble(loaded, model, methods, source, cfg, run_dir).fit()
    best = Path(run_dir) / "best" / "student.safetensors"
    if best.exists():
        model.load_state_dict(read_state_dict(best))
    val_acc = evaluate_model(model, task, val, graph.num_nodes, "cpu")["accuracy"]
    test_acc = evaluate_model(model, task, test, graph.num_nodes, "cpu")["accuracy"]
    return NodeRun(model, val_acc, test_acc, int(summary["epochs_done"]), float(summary["wall_time_s"]))


@torch.no_grad()
def node_logits(model: nn.Module, graph: GraphData) -> torch.Tensor:
    """All-node logits of ``model`` in eval mode."""
    was = model.training
    model.eval()
    out = model(graph.x, graph.edge_index)
    model.train(was)
    return out
