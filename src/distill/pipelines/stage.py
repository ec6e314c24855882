"""The parts of a pipeline stage: the stage-kind registry (:class:`StageKind`, :func:`register_stage_kind`), what
a running stage gets (:class:`StageContext`) and returns (:class:`StageOutput`), and the stored, verified output
(:class:`Artefact`: tables in the teacher cache's checksummed format plus a self-checksummed record). The runner
and the pipeline file are in :mod:`distill.pipelines.pipeline`; docs/pipelines.md describes both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from distill.cache.store import (
    CacheError,
    TensorSpec,
    TensorStore,
    TensorStoreWriter,
    _write_json_atomic,
    describe_mismatch,
    sha256_file,
)
from distill.config import ConfigError, Strict, resolve_path

__all__ = ["Artefact", "PipelineError", "STAGE_KINDS", "StageContext", "StageKind", "StageOutput",
           "StaleArtefactError", "digest", "file_identity", "open_artefact", "register_stage_kind", "write_artefact"]

RECORD = "stage.json"
FORMAT = "distill-pipeline-artefact"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class PipelineError(ValueError):
    """A pipeline that cannot run or go on: a bad file, a damaged artefact, a missing input."""


class StaleArtefactError(PipelineError):
    """A stage whose stored (or in-progress) artefact was made from other inputs than the current ones."""


# ----------------------------------------------------------------------------------------------------- registry


class StageKind:
    """Base of every stage kind. Subclasses set ``name``, ``Options`` (a pydantic model; unknown keys refused),
    ``inputs`` (role -> what the stage expects from it, for docs and checks; a role ending in ``?`` is optional)
    and implement :meth:`run`; :meth:`identity` adds what the options do not say (file checksums)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = Strict
    inputs: ClassVar[dict[str, str]] = {}

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        return {}

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        raise NotImplementedError


STAGE_KINDS: dict[str, type[StageKind]] = {}


def register_stage_kind(cls: type[StageKind]) -> type[StageKind]:
    """Class decorator: make ``cls`` the stage kind ``cls.name`` (a name may be registered once)."""
    if not cls.name or not _NAME.match(cls.name):
        raise ValueError(f"stage kind name {cls.name!r}: letters, digits, _ or -, starting with a letter")
    if cls.name in STAGE_KINDS and STAGE_KINDS[cls.name] is not cls:
        raise ValueError(f"stage kind {cls.name!r} is already registered ({STAGE_KINDS[cls.name].__qualname__})")
    STAGE_KINDS[cls.name] = cls
    return cls



# ---------------------------------------------------------------------------------------------------- artefacts


@dataclass
class StageOutput:
    """What a stage returns: ``tables`` (name -> {column -> tensor}, columns of a table share their first
    dimension) and JSON ``meta`` (metrics, the chosen architecture, ...)."""

    tables: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)


def _flat(value: Any, key: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in sorted(value.items()):
            _flat(v, f"{key}.{k}" if key else str(k), out)
    else:
        text = json.dumps(value, sort_keys=True, default=repr)
        out[key] = text if len(text) <= 96 else f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def digest(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_identity(value: str, base_dir: str | None) -> str:
    """``<size> bytes, sha256 <first 16>`` of the file ``value`` names (``builtin:`` assets too), or ``missing``."""
    try:
        path = resolve_path(value, base_dir)
    except ConfigError:
        return "missing"
    if not path.is_file():
        return "missing" if not path.is_dir() else f"folder {path.name}"
    return f"{path.stat().st_size} bytes, sha256 {sha256_file(path)[:16]}"


@dataclass
class Artefact:
    """A completed stage's verified output: ``tables`` (opened :class:`TensorStore` s), ``meta`` and its
    ``fingerprint``. ``table(name)`` gives a table's columns as tensors."""

    path: Path
    stage: str
    kind: str
    fingerprint: dict[str, str]
    meta: dict[str, Any]
    stores: dict[str, TensorStore]
    columns: dict[str, list[str]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest(self.fingerprint)

    def table(self, name: str | None = None) -> dict[str, torch.Tensor]:
        if name is None:
            if len(self.stores) != 1:
                raise PipelineError(f"stage {self.stage!r} has tables {sorted(self.stores)}: name one")
            name = next(iter(self.stores))
        if name not in self.stores:
            raise PipelineError(f"stage {self.stage!r} has no table {name!r}; it has {sorted(self.stores)}")
        store = self.stores[name]
        cols = store.get(torch.arange(store.num_examples), 0)
        order = self.columns.get(name, sorted(cols))
        return {c: cols[c] for c in order}


def write_artefact(path: Path, stage: str, kind: str, fingerprint: dict[str, str], out: StageOutput) -> Artefact:
    """Store ``out`` under ``path`` (tables first, the record last and atomically) and open it back."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    sums = {}
    for tname, cols in out.tables.items():
        if not _NAME.match(tname) or not cols:
            raise PipelineError(f"stage {stage!r}: table {tname!r} needs a plain name and at least one column")
        n = {int(t.shape[0]) for t in cols.values()}
        if len(n) != 1 or 0 in n:
            raise PipelineError(f"stage {stage!r}: table {tname!r}: columns must share a non-zero first dimension, "
                                f"got {sorted(n)}")
        rows = n.pop()
        specs = {c: TensorSpec(tuple(t.shape[1:]), str(t.dtype).removeprefix("torch.")) for c, t in cols.items()}
        w = TensorStoreWriter(path / tname, rows, 1, specs, shard_size=max(rows, 1))
        w.write(torch.arange(rows), 0, cols)
        manifest = w.close({"stage": stage, "table": tname, "stage_fingerprint": digest(fingerprint)}, {})
        sums[tname] = manifest["manifest_sha256"]
    record = {"format": FORMAT, "version": 1, "stage": stage, "kind": kind, "fingerprint": fingerprint,
              "meta": out.meta, "tables": sums, "columns": {t: list(c) for t, c in out.tables.items()},
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record["record_sha256"] = digest({k: v for k, v in record.items() if k != "written"})
    _write_json_atomic(path / RECORD, record)
    return open_artefact(path)


def _changes(diff: list[str], was: str) -> str:
    """``describe_mismatch`` lines in this module's words: ``KEY (<was> OLD, now NEW)``."""
    return "; ".join(d.replace("(cache ", f"({was} ").replace(", expected ", ", now ") for d in diff)


def open_artefact(path: str | Path, expected: Mapping[str, str] | None = None) -> Artefact:
    """Open and verify a stored stage output (every table's checksums); ``expected``: the fingerprint it must
    have (a :class:`StaleArtefactError` names each key that differs)."""
    path = Path(path)
    file = path / RECORD
    if not file.is_file():
        raise PipelineError(f"{path}: no {RECORD}; the stage has not completed")
    try:
        rec = json.loads(file.read_text())
        body = {k: v for k, v in rec.items() if k not in ("written", "record_sha256")}
        ok = rec.get("format") == FORMAT and rec.get("record_sha256") == digest(body)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        ok = False
    if not ok:
        raise PipelineError(f"{file}: damaged stage record (checksum or format); rebuild the stage")
    if expected is not None:
        diff = describe_mismatch(dict(expected), rec["fingerprint"])
        if diff:
            raise StaleArtefactError(f"stage {rec['stage']!r}: stale artefact, its inputs changed: "
                                     f"{_changes(diff, 'artefact')}")
    stores = {}
    for tname, msum in rec["tables"].items():
        try:
            store = TensorStore.open(path / tname, expected={"stage": rec["stage"], "table": tname,
                                                             "stage_fingerprint": digest(rec["fingerprint"])})
        except CacheError as e:
            raise PipelineError(f"stage {rec['stage']!r}, table {tname!r}: {e}") from None
        if store.manifest.get("manifest_sha256") != msum:
            raise PipelineError(f"{path / tname}: the table was replaced after the stage completed; rebuild it")
        stores[tname] = store
    return Artefact(path, rec["stage"], rec["kind"], rec["fingerprint"], rec["meta"], stores, rec.get("columns", {}))


# ------------------------------------------------------------------------------------------------------ running


@dataclass
class StageContext:
    """What a running stage gets: its ``work`` folder (kept across a crash), the pipeline's ``seed`` and
    ``base_dir``, the device and a ``log`` function. ``save_state``/``load_state`` checkpoint a looping stage
    (atomically; tensors, numbers, strings, lists and dicts only: loaded with ``weights_only=True``)."""

    name: str
    work: Path
    seed: int
    base_dir: str | None
    log: Callable[[str], None] = print
    device: str = "cpu"

    def resolve(self, value: str) -> Path:
        return resolve_path(value, self.base_dir)

    @property
    def _state(self) -> Path:
        return self.work / "state.pt"

    def save_state(self, state: dict[str, Any]) -> None:
        tmp = self.work / f".state.pt.tmp-{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self._state)
        if os.environ.get("DISTILL_TEST_PIPELINE_DELAY"):  # tests: room to SIGKILL between checkpoints
            time.sleep(float(os.environ["DISTILL_TEST_PIPELINE_DELAY"]))

    def load_state(self) -> dict[str, Any] | None:
        if not self._state.exists():
            return None
        return torch.load(self._state, map_location="cpu", weights_only=True)

