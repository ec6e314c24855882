"""Semantic segmentation (task: semantic_segmentation): a family folder."""
