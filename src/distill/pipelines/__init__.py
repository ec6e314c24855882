"""Pipelines: what is more than a loss (multi-stage training, selection, unlearning), built from the library's parts."""
