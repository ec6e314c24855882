"""Result files that travel: every path a benchmark records is stored relative to the repository root
(``../shared/...`` for the data folder beside it), never as an absolute path of the machine that ran it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def portable(value: Any) -> Any:
    """``value`` with every string that is an absolute path under the repository's parent folder rewritten
    relative to the repository root (walks dicts and lists)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith(os.sep):
        path = Path(value)
        if path.is_relative_to(REPO.parent):
            return os.path.relpath(path, REPO)
    return value


def write_json(path: Path, obj: Any, **dump: Any) -> None:
    """Write ``obj`` (paths made portable) to ``path`` atomically: a temporary file, then a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(portable(obj), **({"indent": 2} | dump)))
    tmp.replace(path)
