"""Image classification (task: image_classification): a family folder (section, data, task, models, build)."""
