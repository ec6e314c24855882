"""The method catalogue. Importing this package registers every built-in method in ``METHODS``."""

from distill.core.method import METHODS, Method
from distill.methods import (  # noqa: F401  (imported for their registrations)
    crd,
    dual_head,
    feature_transfer,
    features,
    lelp,
    logit_variants,
    logits,
    lsf_idm,
    meal_v2,
    mixup,
    nd_loss,
    pld,
    relations,
    reviewkd,
    tgeo,
)

__all__ = ["METHODS", "Method"]
