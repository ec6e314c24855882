"""The method catalogue. Importing this package registers every built-in method in ``METHODS``."""

from distill.core.method import METHODS, Method
from distill.llm import generation as _generation  # noqa: F401,E402  (registers the on-policy method)
from distill.methods import (  # noqa: F401  (imported for their registrations)
    crd,
    dual_head,
    feature_transfer,
    features,
    graph_kd,
    lelp,
    lm_divergences,
    logit_variants,
    logits,
    lsf_idm,
    makd,
    meal_v2,
    mixup,
    nd_loss,
    pld,
    relations,
    retrieval,
    reviewkd,
    tgeo,
)

__all__ = ["METHODS", "Method"]
