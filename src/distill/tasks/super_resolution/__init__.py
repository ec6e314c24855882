"""Single-image super-resolution (task: super_resolution): a family folder."""
