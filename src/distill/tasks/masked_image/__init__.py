"""Masked-image pre-training (task: masked_image_pretraining): a family folder."""
