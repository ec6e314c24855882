"""Graph node classification (task: graph_node_classification):
a family folder. The package re-exports the names of its task module
(their import path before families were folders, kept for one release)."""

from distill.tasks.graph.task import (  # noqa: F401
    UNLABELED,
    GraphNodeClassification,
    GraphNodes,
    NodeAccuracy,
)
