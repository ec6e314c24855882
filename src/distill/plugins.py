"""The one place where code is imported by name: the task families that ship with the package, those that installed
packages declare in the ``distill.families`` entry-point group, their models (``distill.models``) and methods
(``distill.methods``), the modules given to the command line's ``--plugin``, and deprecated import paths resolved on
first use. A YAML file never names a module: it picks registered components by name, and only this module (and the
command line) turns a module name into an import."""

from __future__ import annotations

import importlib
import sys
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
    "distill.tasks.anomaly.build",
    "distill.tasks.segmentation.build",
    "distill.tasks.super_resolution.build",
    "distill.tasks.masked_image.build",
    "distill.tasks.paired_views.build",
)


def load_families() -> None:
    """Import the built-in family modules, then every ``distill.families`` entry point of installed packages (each
    names a module that registers a family when imported)."""
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)
    for ep in entry_points(group="distill.families"):
        where = _where(ep)
        try:
            importlib.import_module(ep.value.partition(":")[0])
        except Exception as e:  # noqa: BLE001 - one broken package must not break every command
            _skip(where, f"cannot be loaded ({type(e).__name__}: {_first_line(e)})")


#: entry-point groups of installed packages: a callable that registers models (``distill.models.register_model``)
#: or returns ``{task: {name: builder}}``; a method class (a ``distill.core.method.Method`` subclass)
MODEL_GROUP = "distill.models"
METHOD_GROUP = "distill.methods"


class PluginError(ValueError):
    """A plugin that cannot be loaded or registered (one line naming it)."""


_entry_points_loaded = False

#: entry points of installed packages that failed to load: ``where`` -> why (each skipped with a warning on stderr)
SKIPPED: dict[str, str] = {}


def _skip(where: str, why: str) -> None:
    """A broken entry point of an installed package: one warning line naming it, and it is skipped (a config that
    names what it would have registered then gets the unknown-name error, which lists what exists)."""
    if where not in SKIPPED:
        SKIPPED[where] = why
        print(f"warning: {where}: {why}; skipped", file=sys.stderr)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _load_entry_point(ep: Any) -> Any:
    where = _where(ep)
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - any failure of third-party code becomes one line naming it
        raise PluginError(f"{where}: cannot be loaded ({type(e).__name__}: {_first_line(e)})") from None


def register_models_from(source: str, result: Any) -> None:
    """``{task: {name: builder}}`` returned by a models plugin, added with ``distill.models.register_model``."""
    from collections.abc import Mapping

    register_model = moved("distill.models", "register_model")  # by name: no import edge back to the families
    if result is None:
        return
    if not isinstance(result, Mapping) or not all(isinstance(v, Mapping) for v in result.values()):
        raise PluginError(f"{source}: returns {type(result).__name__}; expected None (it registers its models "
                          "itself) or a mapping {task: {name: builder}}")
    for task, builders in result.items():
        for name, builder in builders.items():
            try:
                register_model(str(task), str(name), builder)
            except ValueError as e:
                raise PluginError(f"{source}: {e}") from None


def register_method_from(source: str, name: str, obj: Any) -> None:
    """A method class from a plugin, registered under ``name`` unless it registered itself."""
    methods, method = moved("distill.core.method", "METHODS"), moved("distill.core.method", "Method")
    if not (isinstance(obj, type) and issubclass(obj, method)):
        raise PluginError(f"{source}: is {type(obj).__name__}, not a distill.core.method.Method subclass")
    if any(entry.obj is obj for entry in methods):
        return
    try:
        methods.register(name, family="plugin")(obj)
    except ValueError as e:
        raise PluginError(f"{source}: {e}") from None


def load_entry_point_plugins() -> None:
    """The ``distill.models`` and ``distill.methods`` entry points of installed packages, once per process (after
    the families, whose model tables the models join)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    importlib.import_module("distill.methods")  # the built-in methods first: a plugin's name may not take theirs

    for ep in entry_points(group=MODEL_GROUP):
        try:
            _load_models_entry_point(ep)
        except PluginError as e:
            _skip_error(ep, e)
    for ep in entry_points(group=METHOD_GROUP):
        try:
            register_method_from(_where(ep), ep.name, _load_entry_point(ep))
        except PluginError as e:
            _skip_error(ep, e)


def _where(ep: Any) -> str:
    return f"entry point {ep.name!r} = {ep.value!r} (group {ep.group})"


def _skip_error(ep: Any, e: PluginError) -> None:
    where, message = _where(ep), str(e)
    _skip(where, message[len(where) + 2:] if message.startswith(where + ": ") else message)


def _load_models_entry_point(ep: Any) -> None:
    fn = _load_entry_point(ep)
    source = _where(ep)
    if not callable(fn):
        raise PluginError(f"{source}: is {type(fn).__name__}, not a callable that registers models")
    try:
        result = fn()
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"{source}: failed ({type(e).__name__}: {_first_line(e)})") from None
    register_models_from(source, result)


def import_plugin(module: str) -> None:
    """``--plugin MODULE``: import ``module`` (installed, or on ``PYTHONPATH``) so that what it registers
    (``distill.models.register_model``, ``distill.core.method.register_method``, ``register_family``) is there
    before the config is read."""
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise PluginError(f"--plugin {module!r}: a module name (dotted identifiers, e.g. mypackage.models), not a "
                          "path")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise PluginError(f"--plugin {module}: no such module (install it, or put its folder on "
                              "PYTHONPATH)") from None
        raise PluginError(f"--plugin {module}: importing it failed (ModuleNotFoundError: {_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - the user's module: its failure becomes one line naming it
        raise PluginError(f"--plugin {module}: importing it failed ({type(e).__name__}: {_first_line(e)})") from None


def moved(module: str, name: str) -> Any:
    """``name`` from ``module``, looked up at run time: for an old import path kept for one release whose new home
    imports the old module (a static import back would close a circle)."""
    return getattr(importlib.import_module(module), name)
