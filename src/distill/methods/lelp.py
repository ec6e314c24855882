"""Deprecated import path, kept for one release; use distill.methods.logits.lelp."""

from distill.core.batch import IGNORE_INDEX
from distill.methods.logits.lelp import (
    LELP,
    SubclassInference,
    haar_orthogonal,
    linear_readout,
    null_space_projector,
    top_directions,
)

UNLABELED = IGNORE_INDEX

__all__ = ["LELP", "SubclassInference", "UNLABELED", "haar_orthogonal", "linear_readout", "null_space_projector",
    "top_directions"]
