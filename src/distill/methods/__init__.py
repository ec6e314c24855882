"""The method catalogue. Importing this package registers every built-in method in ``METHODS``."""

from distill.core.method import METHODS, Method
from distill.methods import features, logits  # noqa: F401  (registration side effects)

__all__ = ["METHODS", "Method"]
