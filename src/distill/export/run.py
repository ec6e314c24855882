"""A finished run folder, read back: its config, the facts its student was built from, its summary and metrics.

Files a run writes for this (``distill train`` and :meth:`distill.experiment.Experiment.fit`, rank 0):

- ``distill_config.json``: the validated experiment config (runs written before it was renamed have
  ``config.json``; it is still read, but never confused with a Hugging Face ``config.json``);
- ``student_spec.json``: the task, the config file's folder (relative paths in the config are read from there),
  the family's facts about the data that the student's builder needs (:meth:`Family.export_facts`: class count,
  feature width, vocabulary size, ...), and the command line that trained it.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_NAME = "distill_config.json"
LEGACY_CONFIG_NAME = "config.json"
SPEC_NAME = "student_spec.json"


class RunFolderError(ValueError):
    """A run folder that cannot be read back (one line naming the file)."""


class ExportError(ValueError):
    """A format that does not fit the run's student, or an export that failed its check (one line)."""


def command_line() -> str:
    """The command this process was started with, as a shell line (``python -m distill ...`` shows as ``distill``)."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith("distill/__main__.py") or Path(argv[0]).name == "distill"):
        argv[0] = "distill"
    return " ".join(shlex.quote(a) for a in argv)


def write_run_files(experiment: Any, run_dir: Path | None = None) -> None:
    """Write ``distill_config.json`` and ``student_spec.json`` into the run folder (call on rank 0 only)."""
    run_dir = Path(run_dir or experiment.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = experiment.config
    (run_dir / CONFIG_NAME).write_text(json.dumps(config_dict(cfg), indent=2))
    facts: dict[str, Any] = {}
    loaded = getattr(experiment, "loaded", None)
    if experiment.family is not None and loaded is not None:
        facts = experiment.family.export_facts(loaded)
    spec = {"task": cfg.task, "base_dir": str(Path(cfg.base_dir).resolve()) if cfg.base_dir else None,
            "facts": facts, "command": command_line(), "cwd": str(Path.cwd())}
    (run_dir / SPEC_NAME).write_text(json.dumps(spec, indent=2, default=str))


def loadable(raw: dict[str, Any]) -> dict[str, Any]:
    """A dumped config as ``parse_config`` reads it back: the trainer section's copies of the top-level ``seed``
    and ``deterministic`` dropped."""
    raw = json.loads(json.dumps(raw))
    if isinstance(raw.get("train"), dict):
        for key in ("seed", "deterministic"):
            raw["train"].pop(key, None)
    return raw


def config_dict(cfg: Any) -> dict[str, Any]:
    """``cfg`` as JSON values that :func:`distill.config.parse_config` validates back into the same config (so
    ``distill train RUN/distill_config.json`` reruns it)."""
    return loadable(json.loads(cfg.model_dump_json()))


def _is_distill_config(raw: dict[str, Any]) -> bool:
    return "methods" in raw and "model_type" not in raw


@dataclass
class RunFolder:
    """A run folder's saved files (see the module docstring)."""

    path: Path
    raw_config: dict[str, Any]
    spec: dict[str, Any] | None
    summary: dict[str, Any] | None

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        if not path.is_dir():
            raise RunFolderError(f"{path}: not a run folder (no such directory)")
        config = path / CONFIG_NAME
        if not config.exists():
            legacy = path / LEGACY_CONFIG_NAME
            if legacy.exists() and _is_distill_config(_read_json(legacy)):
                config = legacy
            else:
                raise RunFolderError(f"{path}: no {CONFIG_NAME} (nor a distill {LEGACY_CONFIG_NAME} of an older run): "
                                     "not a folder written by distill train")
        spec = _read_json(path / SPEC_NAME) if (path / SPEC_NAME).exists() else None
        summary = _read_json(path / "summary.json") if (path / "summary.json").exists() else None
        return cls(path, _read_json(config), spec, summary)

    @property
    def base_dir(self) -> str | None:
        return (self.spec or {}).get("base_dir")

    def config(self) -> Any:
        """The validated :class:`~distill.config.ExperimentConfig` (relative paths read from the original config's
        folder, then the working directory)."""
        from distill.config import parse_config

        return parse_config(loadable(self.raw_config), base_dir=self.base_dir)

    @property
    def task(self) -> str:
        return str(self.raw_config.get("task") or "image_classification")

    @property
    def final(self) -> dict[str, float]:
        return dict((self.summary or {}).get("final") or {})

    @property
    def classes(self) -> list[str] | None:
        """The class names of the student's outputs, in output order (``student_spec.json``'s facts), if any."""
        classes = ((self.spec or {}).get("facts") or {}).get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) and classes else None

    @property
    def train_command(self) -> str | None:
        """The command line that trained the run, with the folder it ran in."""
        spec = self.spec or {}
        if not spec.get("command"):
            return None
        return f"cd {shlex.quote(spec['cwd'])} && {spec['command']}" if spec.get("cwd") else spec["command"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: not a JSON object")
    return data
