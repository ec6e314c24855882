"""The graph family's models: MLP, GCN, GraphSAGE and GAT node classifiers of :mod:`distill.models.gnn`."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.models.gnn import GRAPH_MODELS
from distill.tasks.common import load_model_weights


def build_graph_model(model_cfg: Any, in_channels: int, num_classes: int, base_dir: str | None,
                      key: str) -> nn.Module:
    if model_cfg.arch not in GRAPH_MODELS:
        raise ConfigError(f"{key}.arch: {model_cfg.arch!r} does not fit task 'graph_node_classification'; allowed: "
                          f"{sorted(GRAPH_MODELS)}")
    try:
        model = GRAPH_MODELS[model_cfg.arch](in_channels, model_cfg.num_classes or num_classes, **model_cfg.options)
    except TypeError as e:
        raise ConfigError(f"{key}.options: {e}") from None
    return load_model_weights(model, model_cfg, base_dir, key)
