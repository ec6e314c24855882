"""Distillation of text embeddings (family ``embedding``): one module per method."""
