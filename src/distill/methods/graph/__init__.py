"""Graph distillation (families ``graph`` and ``graph-unlearning``): one module per method; the shared base and
edge helpers are in :mod:`distill.methods.graph.base`."""
