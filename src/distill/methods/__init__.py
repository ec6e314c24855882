"""The method catalogue. Importing this package registers every built-in method in ``METHODS``."""

from distill.core.method import METHODS, Method
from distill.methods import features, logits  # noqa: F401  (registration side effects)
from distill.methods import crd, reviewkd  # noqa: F401
from distill.methods import feature_transfer  # noqa: F401
from distill.methods import meal_v2, nd_loss, pld  # noqa: F401
from distill.methods import logit_variants  # noqa: F401
from distill.methods import relations  # noqa: F401
from distill.methods import dual_head, lelp, mixup  # noqa: F401

__all__ = ["METHODS", "Method"]
