"""The learner registry, filled: importing this module registers every built-in continual learner."""

from distill.methods.continual import crkd, dynamic_ykd, onpro  # noqa: F401  (register their learners)
from distill.streams.learners import LEARNERS

__all__ = ["LEARNERS"]
