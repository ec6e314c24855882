"""Data-level distillation methods that run as pipeline stages (one method per file)."""
