"""Text classification (task: text_classification): a family folder (section, data, task, models, build)."""
