"""Steps shared by the family builders: model options validated against the builder's signature, weights loaded
with their format checked first, paths checked for existence and kind, the data's facts checked against the
config; every refusal is a one-line :class:`ConfigError` naming the key."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from distill.config import (  # noqa: F401 - validate_model_options is part of this module's API
    NEW_HEAD,
    RANDOM_WEIGHTS,
    ConfigError,
    builder_options_model,
    resolve_path,
    validate_model_options,
)
from distill.core.safe_pickle import config_key
from distill.models.weights import load_weights_into

#: errors a model builder raises for arguments it refuses, or the allocator for a model too large
BUILD_ERRORS = (TypeError, ValueError, RuntimeError, MemoryError, OverflowError, KeyError)


def call_builder(builder: Callable[..., Any], key: str, *args: Any, **kwargs: Any) -> nn.Module:
    """``builder(*args, **kwargs)``; what it refuses (or an allocation that fails) becomes ``KEY.options: ...``."""
    try:
        return builder(*args, **kwargs)
    except BUILD_ERRORS as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}.options: {first}") from None


def class_names(loaded: Any) -> dict[str, list[str]]:
    """``{"classes": names}`` for a run's saved facts when the training set names one class per student output (the
    model card and the report list them), else nothing."""
    names = getattr(loaded.train, "classes", None)
    if isinstance(names, list | tuple) and names and len(names) == loaded.num_outputs:
        return {"classes": [str(c) for c in names]}
    return {}


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
    keeps the random initialisation, ``weights: new_head`` the folder's weights with a new head."""
    if not model_cfg.weights or model_cfg.weights in (RANDOM_WEIGHTS, NEW_HEAD):
        return model
    path = existing_file(model_cfg.weights, base_dir, f"{key}.weights")
    if _weights_format(path) is None:
        raise ConfigError(f"{key}.weights: {path} is not a weights file (safetensors or a torch checkpoint)")
    try:
        with config_key(f"{key}.weights"):
            return load_weights_into(model, path)
    except ConfigError:
        raise
    except (ValueError, RuntimeError, OSError, KeyError, EOFError, pickle.UnpicklingError, AttributeError,
            TypeError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}.weights: {path}: {first}") from None


# -- paths ---------------------------------------------------------------------------------------------------------
def existing_path(value: str, base_dir: str | None, key: str) -> Path:
    """A file or a folder that exists (``key`` names the config key in every refusal)."""
    try:
        path = resolve_path(value, base_dir)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    return path


def existing_file(value: str, base_dir: str | None, key: str) -> Path:
    """A file that exists."""
    path = existing_path(value, base_dir, key)
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is a folder, not a file" if path.is_dir() else f"{key}: {path} is not a file")
    return path


def existing_folder(value: str, base_dir: str | None, key: str) -> Path:
    """A folder that exists."""
    path = existing_path(value, base_dir, key)
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a folder")
    return path
