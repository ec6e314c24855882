"""Sentence embeddings (task: embedding): a family folder (section, data, task, models, build)."""
