"""The graph family's models: MLP, GCN, GraphSAGE and GAT node classifiers of :mod:`distill.models.gnn`."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.models.gnn import GRAPH_MODELS
from distill.tasks.common import call_builder, check_num_classes, load_model_weights, validate_model_options

#: what the family passes to every builder itself
SUPPLIED = ("in_channels", "num_classes")


def build_graph_model(model_cfg: Any, in_channels: int, num_classes: int, base_dir: str | None,
                      key: str) -> nn.Module:
    if model_cfg.arch not in GRAPH_MODELS:
        raise ConfigError(f"{key}.arch: {model_cfg.arch!r} does not fit task 'graph_node_classification'; allowed: "
                          f"{sorted(GRAPH_MODELS)}")
    builder = GRAPH_MODELS[model_cfg.arch]
    options = validate_model_options(builder, model_cfg.options, f"{key}.options", model_cfg.arch, SUPPLIED)
    num_classes = check_num_classes(model_cfg, num_classes, key)
    model = call_builder(builder, key, in_channels, num_classes, **options)
    return load_model_weights(model, model_cfg, base_dir, key)
