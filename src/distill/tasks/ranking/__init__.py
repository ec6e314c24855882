"""Ranking (task: ranking): a family folder (section, data, task, models, build)."""
