"""Graph distillation losses: FF-G2M and GLNN (GNN -> MLP) and D2DGN (unlearning by distillation).

All three read logits the graph task produced (one row per node of the batch, or one score per node pair for
link prediction). FF-G2M needs the graph's edges; it reads them from the task in :meth:`Method.setup`
(``RunInfo.task.edge_index``) and, on each step, keeps the edges whose two ends are both in the batch, so with
the full-batch setting of the paper (every node in one batch) it sees every edge.

This module holds the base class and the row KL shared by ``ffg2m``, ``glnn`` and ``d2dgn`` (one module each).
"""

from __future__ import annotations

import torch

from distill.core.method import Method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_teacher
from distill.methods.logits.losses import cross_entropy


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities: sum_k p_k (log p_k - log q_k)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def batch_edges(edge_index: torch.Tensor, nodes: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The edges of ``edge_index`` with both ends among ``nodes``, renumbered to row positions in the batch."""
    pos = torch.full((num_nodes,), -1, dtype=torch.long, device=nodes.device)
    pos[nodes] = torch.arange(nodes.numel(), device=nodes.device)
    mapped = pos[edge_index.to(nodes.device)]
    return mapped[:, (mapped >= 0).all(dim=0)]


class GraphKD(Method):
    tasks = frozenset({"graph_node_classification"})
    needs_teacher = True
    needs_labels = True
    method_name = "graph_kd"

    def __init__(self, lam: float) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam = float(lam)
        self.register_buffer("edge_index", torch.zeros(2, 0, dtype=torch.long), persistent=False)
        self.num_nodes = 0

    def set_graph(self, edge_index: torch.Tensor, num_nodes: int) -> None:
        """Give the method the graph's directed edges (self-loops are dropped; LFD adds one per node)."""
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
        self.edge_index = edge_index.long().to(self.edge_index.device)
        self.num_nodes = int(num_nodes)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        task = info.task
        if getattr(task, "edge_index", None) is None:
            raise ValueError(f"method {self.method_name!r} needs a graph task (one with edge_index), "
                             f"got {type(task).__name__}")
        self.set_graph(task.edge_index, task.num_nodes)

    def _batch(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if inputs.indices is None:
            raise ValueError(f"method {self.method_name!r} needs the batch's node ids (Batch.indices)")
        if self.num_nodes == 0:
            raise RuntimeError(f"method {self.method_name!r} has no graph: call setup() or set_graph() first")
        zt = require_teacher(inputs, self.method_name).logits.detach()
        return inputs.student.logits, zt, batch_edges(self.edge_index, inputs.indices, self.num_nodes)

    def _ce(self, inputs: StepInputs, zs: torch.Tensor) -> torch.Tensor:
        if inputs.labels is None:
            raise ValueError(f"method {self.method_name!r} needs labels (UNLABELED = -100 on unlabelled nodes)")
        return cross_entropy(zs, inputs.labels)
