"""Loading the graph family's data: a Planetoid graph, or a user's graph (an ``.npz`` archive or a folder of node
and edge files: :mod:`distill.data.graph_files`), and its node splits."""

from __future__ import annotations

import pickle
from typing import Any

from distill.config import ConfigError
from distill.core.safe_pickle import config_key
from distill.data.graph_files import load_graph_files, load_graph_npz
from distill.data.planetoid import GraphData, load_planetoid
from distill.tasks.common import existing_path


def load_graph(cfg: Any) -> GraphData:
    d = cfg.data
    path = existing_path(d.path, cfg.base_dir, "data.path")
    if d.format == "npz":
        if not path.is_file():
            raise ConfigError(f"data.path: {path} is not a file (data.format: npz reads an .npz archive)")
        graph = load_graph_npz(path, integer_labels=d.integer_labels, undirected=d.undirected,
                               random_split=d.random_split, split_seed=d.split_seed)
    elif d.format == "files":
        if not path.is_dir():
            raise ConfigError(f"data.path: {path} is not a folder (data.format: files reads nodes.csv or "
                              "features.npy and an edge list from a folder)")
        graph = load_graph_files(path, label_column=d.label_column, integer_labels=d.integer_labels,
                                 undirected=d.undirected, random_split=d.random_split, split_seed=d.split_seed)
    else:
        if not path.is_dir():
            hint = " (an .npz archive: data.format: npz)" if path.suffix == ".npz" else ""
            raise ConfigError(f"data.path: {path} is not a folder (Planetoid raw files ind.{d.dataset}.*){hint}")
        try:
            with config_key("data.path"):
                graph = load_planetoid(path, d.dataset)
        except ConfigError:
            raise
        except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, pickle.UnpicklingError) as e:
            raise ConfigError(f"data.path: {str(e).splitlines()[0]}") from None
    normalize = d.normalize_features if d.normalize_features is not None else d.format == "planetoid"
    if normalize and bool((graph.x < 0).any()):
        raise ConfigError("data.normalize_features: the node features hold negative values; scaling rows to sum 1 "
                          "fits non-negative (bag-of-words) features only: set it to false")
    return graph.row_normalized() if normalize else graph
