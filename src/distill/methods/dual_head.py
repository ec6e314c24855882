"""Deprecated import path, kept for one release; use distill.methods.logits.dho."""

from distill.core.batch import IGNORE_INDEX
from distill.methods.logits.dho import A_GRID, B_GRID, DHO, DualHeadInference, combine_heads, search_combiner

UNLABELED = IGNORE_INDEX

__all__ = ["A_GRID", "B_GRID", "DHO", "DualHeadInference", "UNLABELED", "combine_heads", "search_combiner"]
