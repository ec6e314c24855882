"""Steps shared by the family builders: model options validated against the builder's signature, weights loaded
with their format checked first, paths checked for existence and kind, the data's facts checked against the
config; every refusal is a one-line :class:`ConfigError` naming the key."""

from __future__ import annotations

import inspect
import pickle
import typing
import zipfile
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic import Strict as StrictFlag
from torch import nn

from distill.config import RANDOM_WEIGHTS, ConfigError, resolve_path
from distill.models.weights import load_weights_into

#: errors a model builder raises for arguments it refuses, or the allocator for a model too large
BUILD_ERRORS = (TypeError, ValueError, RuntimeError, MemoryError, OverflowError, KeyError)


def _strict_bools(hint: Any) -> Any:
    """``bool`` (also inside ``X | None``) as a strict bool: ``"yes"`` or ``1`` for a switch is a mistake."""
    if hint is bool:
        return Annotated[bool, StrictFlag()]
    args = typing.get_args(hint)
    if type(None) in args and bool in args and len(args) == 2:
        return Annotated[bool, StrictFlag()] | None
    return hint


@cache
def builder_options_model(builder: Callable[..., Any], supplied: frozenset[str]) -> type[BaseModel]:
    """A pydantic model of the keyword arguments of ``builder`` (a function or a class) that a config may set:
    every parameter but ``supplied`` (what the family passes itself, e.g. ``num_classes``), with its annotation
    (``Annotated[int, Field(gt=0)]`` bounds included) and default."""
    target = builder.__init__ if inspect.isclass(builder) else builder  # type: ignore[misc]
    sig = inspect.signature(builder)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except (NameError, TypeError):
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in sig.parameters.items():
        if name in supplied or name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (_strict_bools(hints.get(name, Any)), default)
    label = getattr(builder, "__name__", "model")
    return create_model(f"{label}_options", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


def validate_model_options(builder: Callable[..., Any], options: dict[str, Any], where: str, arch: str,
                           supplied: Iterable[str] = ()) -> dict[str, Any]:
    """``options`` checked against ``builder``'s signature; returns them converted (``where``: the config key of
    the options, e.g. ``student.options``). Unknown names, wrong types and values out of their domain are refused
    with the option's key: ``student.options.nu_mlayers: unknown option for 'graph_gcn'; allowed: ...``."""
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: a mapping of option names to values, got {type(options).__name__}")
    model = builder_options_model(builder, frozenset(supplied))
    try:
        parsed = model.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields) or "none"
            raise ConfigError(f"{where}.{key}: unknown option for {arch!r}; allowed: {allowed}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}.{key}: {msg} (got {err.get('input')!r})") from None
    return {k: getattr(parsed, k) for k in options}


def call_builder(builder: Callable[..., Any], key: str, *args: Any, **kwargs: Any) -> nn.Module:
    """``builder(*args, **kwargs)``; what it refuses (or an allocation that fails) becomes ``KEY.options: ...``."""
    try:
        return builder(*args, **kwargs)
    except BUILD_ERRORS as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}.options: {first}") from None


def check_num_classes(model_cfg: Any, num_classes: int, key: str, what: str = "classes") -> int:
    """``num_classes`` of a model section must agree with the data (it is read from there when not given)."""
    given = getattr(model_cfg, "num_classes", None)
    if given is not None and given != num_classes:
        raise ConfigError(f"{key}.num_classes: {given}, but the data has {num_classes} {what}; drop the key (it "
                          "follows the data) or fix the data")
    return num_classes


# -- weights -------------------------------------------------------------------------------------------------------
def _weights_format(path: Path) -> str | None:
    """``safetensors``, ``zip`` (torch.save) or ``pickle`` (legacy torch.save) by content; None: neither."""
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000 and head[8:9] == b"{" and path.stat().st_size >= 8 + n:
            return "safetensors"
    if zipfile.is_zipfile(path):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "pickle"
    return None


def load_model_weights(model: nn.Module, model_cfg: Any, base_dir: str | None, key: str) -> nn.Module:
    """Load ``model_cfg.weights`` (safetensors or a weights-only checkpoint) into ``model``; ``weights: random``
    keeps the random initialisation."""
    if not model_cfg.weights or model_cfg.weights == RANDOM_WEIGHTS:
        return model
    path = existing_file(model_cfg.weights, base_dir, f"{key}.weights")
    if _weights_format(path) is None:
        raise ConfigError(f"{key}.weights: {path} is not a weights file (safetensors or a torch checkpoint)")
    try:
        return load_weights_into(model, path)
    except (ValueError, RuntimeError, OSError, KeyError, EOFError, pickle.UnpicklingError, AttributeError,
            TypeError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}.weights: {path}: {first}") from None


# -- paths ---------------------------------------------------------------------------------------------------------
def existing_file(value: str, base_dir: str | None, key: str) -> Path:
    try:
        path = resolve_path(value, base_dir)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is a folder, not a file" if path.is_dir() else f"{key}: {path} is not a file")
    return path


def existing_folder(value: str, base_dir: str | None, key: str) -> Path:
    try:
        path = resolve_path(value, base_dir)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a folder")
    return path


def existing_path(value: str, base_dir: str | None, key: str) -> Path:
    """A file or a folder that exists."""
    try:
        path = resolve_path(value, base_dir)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    return path
