"""The method catalogue. Importing this package registers every built-in method in ``METHODS``."""

from distill.core.method import METHODS, Method
from distill.methods import (  # noqa: F401  (registration side effects)  # noqa: F401  # noqa: F401  # noqa: F401
    crd,
    dual_head,
    feature_transfer,  # noqa: F401
    features,
    lelp,
    logit_variants,  # noqa: F401
    logits,
    meal_v2,
    mixup,
    nd_loss,
    pld,
    relations,  # noqa: F401
    reviewkd,
)

__all__ = ["METHODS", "Method"]
