"""``task: graph_node_classification``: transductive node classification on a Planetoid graph.

The protocol of the GNN-to-MLP papers (GLNN, FF-G2M): full-batch training (one optimiser step per epoch, the batch
being every node of ``data.train_on``), model selection on the validation nodes (the trainer's evaluation split;
early stopping; the best weights in ``<run>/best/student.safetensors``). ``distill eval CONFIG --weights
<run>/best/student.safetensors`` reports the test nodes' accuracy.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.graph.data import load_graph
from distill.tasks.graph.models import build_graph_model
from distill.tasks.graph.section import GraphDataSection
from distill.tasks.graph.task import GraphNodeClassification, GraphNodes
from distill.train.config import TrainConfig


@register_family
class GraphFamily(Family):
    name = "graph_node_classification"
    summary = "nodes of one graph -> class logits (Planetoid raw files, an npz, or node + edge files; full-batch)"
    data_section = GraphDataSection

    def model_archs(self) -> list[str]:
        from distill.models.gnn import GRAPH_MODELS

        return list(GRAPH_MODELS)

    def model_table(self) -> dict[str, Any]:
        from distill.models.gnn import GRAPH_MODELS

        return GRAPH_MODELS

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.models.gnn import GRAPH_MODELS
        from distill.tasks.graph.models import SUPPLIED

        return (GRAPH_MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in GRAPH_MODELS else None

    def check(self, cfg: Any) -> None:
        d = cfg.data
        if abs(sum(d.random_split) - 1.0) > 1e-6:
            raise ValueError(f"data.random_split: the train / val / test fractions {list(d.random_split)} must sum "
                             "to 1")
        defaults = GraphDataSection(path=".")  # keys set to their defaults may be written out (a run's config)
        changed = {k for k in type(d).model_fields if getattr(d, k) != getattr(defaults, k)}
        if d.format == "planetoid":
            for key in ("label_column", "undirected", "random_split", "split_seed", "integer_labels"):
                if key in changed:
                    raise ValueError(f"data.{key}: read with data.format npz or files; Planetoid files come with "
                                     "their own labels, edges and public split")
        elif "dataset" in changed:
            raise ValueError(f"data.dataset: names a Planetoid graph; data.format {d.format} reads data.path")
        default = TrainConfig()
        for key in ("batch_size", "eval_batch_size"):
            if getattr(cfg.train, key) != getattr(default, key):
                raise ValueError(f"train.{key}: {self.name} trains and evaluates full-batch (every node of "
                                 "data.train_on per step); drop this key")

    def load(self, cfg: Any) -> Loaded:
        graph = load_graph(cfg)
        train = GraphNodes.split(graph, cfg.data.train_on, labelled_split="train")
        # the trainer selects on the validation nodes; ``distill eval`` (Experiment.eval_data) reports the test nodes
        val = GraphNodes.split(graph, "val")
        test = GraphNodes.split(graph, "test")
        return Loaded(GraphNodeClassification(graph), train, val, None, num_outputs=graph.num_classes,
                      info={"graph": graph}, report=test)

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_graph_model(model_cfg, loaded.info["graph"].num_features, loaded.num_outputs, cfg.base_dir, key)

    def export_formats(self, cfg: Any) -> list[str]:
        return ["safetensors", "onnx"] if cfg.student.arch == "graph_mlp" else ["safetensors"]

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        g = loaded.info["graph"]
        names = getattr(g, "classes", None)
        classes = {"classes": list(names)} if names and len(names) == loaded.num_outputs else {}
        return {"num_outputs": loaded.num_outputs, "num_features": g.num_features, "num_nodes": g.num_nodes,
                **classes}

    def export_loaded(self, cfg: Any, facts: dict[str, Any]) -> Loaded:
        from types import SimpleNamespace

        graph = SimpleNamespace(num_features=facts["num_features"], num_nodes=facts.get("num_nodes"))
        return Loaded(task=None, train=None, num_outputs=facts["num_outputs"], info={**facts, "graph": graph})

    def onnx_inputs(self, cfg: Any, loaded: Loaded, student: nn.Module) -> Any:
        """MLP students only (they read node features, not edges: the point of GNN-to-MLP distillation)."""
        import copy

        import torch

        from distill.export.onnx import ArgsModule, OnnxSpec

        d = loaded.info["num_features"]
        note = (f"`x`: float32 N x {d} node features (as the Planetoid reader gives them); output `logits`: "
                f"N x {loaded.num_outputs}; no edges needed")
        dense = copy.deepcopy(student)
        if hasattr(dense, "sparse_input"):
            dense.sparse_input = False  # the CSR shortcut (same values) has no ONNX operator
        return OnnxSpec(ArgsModule(dense, lambda m, x: m(x)), {"x": torch.rand(3, d)},
                        {"x": {0: "nodes"}, "logits": {0: "nodes"}}, note=note)

    def train_config(self, cfg: Any, loaded: Loaded) -> Any:
        tc = super().train_config(cfg, loaded)
        return replace(tc, batch_size=len(loaded.train), eval_batch_size=loaded.info["graph"].num_nodes,
                       drop_last=False)
