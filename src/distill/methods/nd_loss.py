"""Deprecated import path, kept for one release; use distill.methods.features.nd."""

from distill.methods.features.nd import NormDirection, emb_projector, nd_loss

__all__ = ["NormDirection", "emb_projector", "nd_loss"]
