"""Deprecated import path, kept for one release; use distill.methods.logits.tgeo."""

from distill.core.batch import IGNORE_INDEX
from distill.methods.logits.tgeo import (
    ADAM_BETAS,
    ADAM_EPS,
    OMEGA,
    TGeoKD,
    fused_loss,
    label_targets,
    mlp_alpha,
    per_sample_terms,
    relation_features,
    validation_ce,
)

UNLABELED = IGNORE_INDEX

__all__ = ["ADAM_BETAS", "ADAM_EPS", "OMEGA", "TGeoKD", "UNLABELED", "fused_loss", "label_targets", "mlp_alpha",
    "per_sample_terms", "relation_features", "validation_ce"]
