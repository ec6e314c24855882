"""Loading the graph family's data: a Planetoid graph and its node splits."""

from __future__ import annotations

from typing import Any

from distill.config import ConfigError, resolve_path
from distill.core.safe_pickle import config_key
from distill.data.planetoid import GraphData, load_planetoid


def load_graph(cfg: Any) -> GraphData:
    d = cfg.data
    folder = resolve_path(d.path, cfg.base_dir)
    if not folder.is_dir():
        raise ConfigError(f"data.path: {folder} is not a folder (Planetoid raw files ind.{d.dataset}.*)")
    try:
        with config_key("data.path"):
            graph = load_planetoid(folder, d.dataset)
    except (FileNotFoundError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data.path: {str(e).splitlines()[0]}") from None
    return graph.row_normalized() if d.normalize_features else graph
