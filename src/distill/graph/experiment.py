"""Build a graph node-classification run from a validated config (``task: graph_node_classification``).

    task: graph_node_classification
    data: {train: ../shared/data/planetoid}        # a folder holding ind.cora.* (or <folder>/Cora/raw/)
    graph: {dataset: cora, train_on: all}
    student: {arch: graph_mlp, options: {hidden: 512, num_layers: 3}}
    teacher: {arch: graph_gcn, weights: gcn.safetensors, options: {hidden: 512, num_layers: 3}}
    methods: [{name: ffg2m, lam: 0.4, tau: 1.5}]
    train: {optimizer: adam, lr: 0.01, weight_decay: 5e-4, schedule: constant, epochs: 500,
            early_stopping_patience: 50}

The trainer's evaluation split is the validation nodes (model selection, early stopping; the best weights are
saved in ``<run>/best/student.safetensors``). ``distill eval CONFIG --weights <run>/best/student.safetensors``
reports the test nodes' accuracy, as :func:`distill.graph.node.train_node_classifier` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from distill.config import ExperimentConfig, ModelConfig
from distill.core.safe_pickle import config_key
from distill.data.planetoid import load_planetoid
from distill.models.gnn import GRAPH_MODELS
from distill.models.weights import load_weights_into
from distill.tasks.graph import GraphNodeClassification, GraphNodes
from distill.train.module import DistillModule
from distill.train.trainer import Trainer

if TYPE_CHECKING:
    from distill.experiment import Experiment


def build_graph_model(cfg: ModelConfig, in_channels: int, num_classes: int, base_dir: str | None,
                      key: str = "model") -> nn.Module:
    from distill.experiment import resolve_path

    model = GRAPH_MODELS[cfg.arch](in_channels, cfg.num_classes or num_classes, **cfg.options)
    if cfg.weights:
        with config_key(f"{key}.weights"):  # a refused file: "<key>.weights: <file>: <reason>"
            load_weights_into(model, resolve_path(cfg.weights, base_dir))
    return model


def build_graph_experiment(cfg: ExperimentConfig, output_dir: str | Path | None = None) -> Experiment:
    from distill.core.teachers import EnsembleTeacher, FrozenTeacher
    from distill.experiment import Experiment, build_methods, resolve_path, teacher_keys, train_config

    g = cfg.graph
    assert g is not None
    with config_key("data.train"):
        graph = load_planetoid(resolve_path(cfg.data.train, cfg.base_dir), g.dataset)
    if g.normalize_features:
        graph = graph.row_normalized()
    task = GraphNodeClassification(graph)
    train = GraphNodes.split(graph, g.train_on, labelled_split="train")
    val = GraphNodes.split(graph, "val")
    student = build_graph_model(cfg.student, graph.num_features, graph.num_classes, cfg.base_dir, "student")
    teacher = None
    if cfg.teacher is not None:
        members = [build_graph_model(m, graph.num_features, graph.num_classes, cfg.base_dir, key)
                   for m, key in zip(cfg.teacher.members(), teacher_keys(cfg), strict=True)]
        teacher = (FrozenTeacher(members[0]) if len(members) == 1 and not cfg.teacher.ensemble
                   else EnsembleTeacher(members, reduce=cfg.teacher.reduce))
    methods = build_methods(cfg.methods)
    module = DistillModule(student, methods, teacher, task)
    tc = train_config(cfg)
    tc.batch_size, tc.eval_batch_size, tc.drop_last = len(train), graph.num_nodes, False
    trainer = Trainer(module, train, val, tc, Path(output_dir or cfg.output_dir))
    test = GraphNodes.split(graph, "test")
    # the trainer selects on the validation nodes; ``distill eval`` (Experiment.eval_data) reports the test nodes
    return Experiment(cfg, task, train, test, val, student, teacher, methods, module, trainer)  # type: ignore[arg-type]
