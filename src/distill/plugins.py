"""The one place where code is imported by name: the task families that ship with the package, those that installed
packages declare in the ``distill.families`` entry-point group, and deprecated import paths resolved on first use.
A YAML file never names a module: it picks registered components by name, and only this module (and the command
line) turns a module name into an import."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

#: modules that register the built-in task families (``distill.core.family.register_family``)
BUILTIN_FAMILIES = (
    "distill.tasks.image.build",
    "distill.tasks.text_classification.build",
    "distill.tasks.embedding.build",
    "distill.tasks.ranking.build",
    "distill.tasks.causal_lm.build",
    "distill.tasks.graph.build",
    "distill.tasks.vectors.build",
)


def load_families() -> None:
    """Import the built-in family modules, then every ``distill.families`` entry point of installed packages (each
    names a module that registers a family when imported)."""
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)
    for ep in entry_points(group="distill.families"):
        importlib.import_module(ep.value.partition(":")[0])


def moved(module: str, name: str) -> Any:
    """``name`` from ``module``, looked up at run time: for an old import path kept for one release whose new home
    imports the old module (a static import back would close a circle)."""
    return getattr(importlib.import_module(module), name)
