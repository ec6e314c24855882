"""Graph models for transductive node classification: GCN, GraphSAGE and GAT teachers (torch_geometric layers)
and the MLP student. Every model is called as ``model(x, edge_index)`` and returns logits for all nodes; the MLP
ignores ``edge_index``, which is why it can serve without the graph once trained (the point of GNN-to-MLP KD).

Layout follows the FF-G2M reference code (LirongWu/FF-G2M ``src/models.py``): ``num_layers`` layers of width
``hidden``, ReLU and dropout between them, no activation after the last one. Feature taps: ``hidden`` is the
input of the last layer (the penultimate node embedding).
"""

from __future__ import annotations

import warnings
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .bounds import Layers, Rate, Width


def to_csr(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a sparse CSR tensor, without torch's "CSR support is in beta" warning (the CSR path is exact,
    tested against dense features)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return x.to_sparse_csr()


def _require_pyg() -> None:
    try:
        import torch_geometric  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("graph models need torch_geometric: pip install 'distill[graph]'") from e


class GraphStack(nn.Module):
    """Layers with ReLU and dropout between them (none on the input or after the last layer).

    Bag-of-words node features are ~99% zeros; with ``sparse_input`` the features are turned into a CSR
    tensor before the first layer (same result, several times less work on CPU)."""

    def __init__(self, layers: list[nn.Module], dropout: float, uses_graph: bool, sparse_input: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout = float(dropout)
        self.uses_graph = uses_graph
        self.sparse_input = sparse_input
        self.feature_taps = {"hidden": f"layers.{len(layers) - 1}:input"}

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor | None = None) -> torch.Tensor:
        h = to_csr(x) if self.sparse_input and x.layout == torch.strided and x.dim() == 2 else x
        for i, layer in enumerate(self.layers):
            h = layer(h, edge_index) if self.uses_graph else layer(h)
            if i < len(self.layers) - 1:
                h = F.dropout(F.relu(h), self.dropout, self.training)
        return h


def _dims(in_channels: int, hidden: int, num_classes: int, num_layers: int) -> list[tuple[int, int]]:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    sizes = [in_channels] + [hidden] * (num_layers - 1) + [num_classes]
    return list(zip(sizes[:-1], sizes[1:]))


def graph_mlp(in_channels: int, num_classes: int, hidden: Width = 512, num_layers: Layers = 3,
              dropout: Rate = 0.6) -> GraphStack:
    """The MLP student (no message passing)."""
    return GraphStack([nn.Linear(a, b) for a, b in _dims(in_channels, hidden, num_classes, num_layers)],
                      dropout, uses_graph=False)


def graph_gcn(in_channels: int, num_classes: int, hidden: Width = 512, num_layers: Layers = 3,
              dropout: Rate = 0.5) -> GraphStack:
    """GCN (Kipf & Welling 2017) with symmetric normalisation and self-loops (PyG ``GCNConv`` defaults, which
    equal DGL ``GraphConv(norm='both')`` on a graph with self-loops added)."""
    _require_pyg()
    from torch_geometric.nn import GCNConv

    return GraphStack([GCNConv(a, b) for a, b in _dims(in_channels, hidden, num_classes, num_layers)],
                      dropout, uses_graph=True)


def graph_sage(in_channels: int, num_classes: int, hidden: Width = 512, num_layers: Layers = 3,
               dropout: Rate = 0.5) -> GraphStack:
    """GraphSAGE with mean aggregation (PyG ``SAGEConv``)."""
    _require_pyg()
    from torch_geometric.nn import SAGEConv

    return GraphStack([SAGEConv(a, b) for a, b in _dims(in_channels, hidden, num_classes, num_layers)],
                      dropout, uses_graph=True, sparse_input=False)  # SAGEConv rejects sparse features


def graph_gat(in_channels: int, num_classes: int, hidden: Width = 64, num_layers: Layers = 2,
              heads: Annotated[int, Field(gt=0, le=64)] = 8, dropout: Rate = 0.6) -> GraphStack:
    """GAT: hidden layers with ``heads`` concatenated attention heads of ``hidden // heads`` channels, one head
    in the output layer (PyG ``GATConv``)."""
    _require_pyg()
    from torch_geometric.nn import GATConv

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must divide by heads ({heads})")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(_dims(in_channels, hidden, num_classes, num_layers)):
        last = i == num_layers - 1
        layers.append(GATConv(a, b, heads=1) if last else GATConv(a, b // heads, heads=heads, dropout=dropout))
    return GraphStack(layers, dropout, uses_graph=True)


GRAPH_MODELS = {"graph_mlp": graph_mlp, "graph_gcn": graph_gcn, "graph_sage": graph_sage, "graph_gat": graph_gat}
