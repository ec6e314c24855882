"""Paired views (task: paired_views): a family folder."""
