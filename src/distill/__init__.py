"""distill: knowledge distillation from any teacher into any student.

The Python API mirrors the YAML configs: build a student and a teacher source, compose methods from the
catalogue (``distill.methods.METHODS``), pick a task adapter, and hand them to :class:`distill.train.Trainer`.
"""

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.method import METHODS, Method, register_method
from distill.core.outputs import ModelOutput, StepInputs
from distill.core.taps import FeatureTaps
from distill.core.teachers import EnsembleTeacher, FrozenTeacher

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Composite",
    "EnsembleTeacher",
    "FeatureTaps",
    "FrozenTeacher",
    "METHODS",
    "Method",
    "ModelOutput",
    "StepInputs",
    "register_method",
]


def _register_builtins() -> None:
    import distill.methods  # noqa: F401


_register_builtins()
