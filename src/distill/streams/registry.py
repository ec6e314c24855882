"""The learner registry, filled: importing this module registers every built-in continual learner."""

from distill.methods.continual import crkd, dynamic_ykd, onpro, proc_kd  # noqa: F401  (register their learners)
from distill.streams.learners import LEARNERS

__all__ = ["LEARNERS"]
