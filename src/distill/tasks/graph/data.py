"""Loading the graph family's data: a Planetoid graph and its node splits."""

from __future__ import annotations

import pickle
from typing import Any

from distill.config import ConfigError
from distill.core.safe_pickle import config_key
from distill.data.planetoid import GraphData, load_planetoid
from distill.tasks.common import existing_path


def load_graph(cfg: Any) -> GraphData:
    d = cfg.data
    folder = existing_path(d.path, cfg.base_dir, "data.path")
    if not folder.is_dir():
        raise ConfigError(f"data.path: {folder} is not a folder (Planetoid raw files ind.{d.dataset}.*)")
    try:
        with config_key("data.path"):
            graph = load_planetoid(folder, d.dataset)
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, pickle.UnpicklingError) as e:
        raise ConfigError(f"data.path: {str(e).splitlines()[0]}") from None
    return graph.row_normalized() if d.normalize_features else graph
