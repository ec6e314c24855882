"""Deprecated import path, kept for one release; use distill.methods.features.crd."""

from distill.methods.features.crd import CRD, EmbedHead, l2_normalize, nce_loss, sample_negatives

__all__ = ["CRD", "EmbedHead", "l2_normalize", "nce_loss", "sample_negatives"]
