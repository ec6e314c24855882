"""Pipelines: an ordered list of stages, each a training run or a step that produces data, run by
``distill pipeline CONFIG``; every stage's output is a fingerprinted, checksummed artefact.

A pipeline file (YAML, validated by :class:`PipelineConfig`)::

    output_dir: runs/pipelines/pcoreset      # one folder per pipeline: stages/<name>/{artefact,work}, report.*
    seed: 0
    stages:
      - name: teacher                      # a data-producing stage: its kind is registered in STAGE_KINDS
        kind: teacher_logits
        options: {data: ..., teacher: {...}}
      - name: select
        kind: pcoreset_select
        inputs: {teacher: teacher}         # role -> an earlier stage's name
        options: {strategy: pcoreset, rounds: 8}
      - name: distil
        kind: train                        # an ordinary ``distill train`` config, by relative path or inline
        inputs: {subset: select}
        options: {config: ../cifar10/kd.yaml, set: ["train.epochs=3"]}

**Artefacts.** A stage's output is a set of named *tables* (columns = tensors sharing their first dimension) plus
JSON ``meta``. Each table is a :class:`distill.cache.TensorStore` (the stored-teacher format: sharded ``.npy``,
sha256 per file, a self-checksummed manifest written last), under ``stages/<name>/artefact/<table>/``; the stage's
record ``artefact/stage.json`` (written last, atomically) holds its fingerprint, meta and each table's manifest
checksum. Reading a stage verifies every checksum.

**Fingerprints.** A stage's fingerprint is a flat ``key: value`` mapping of its kind, its validated options, the
fingerprints (digests) of its input artefacts and its kind's data identity (e.g. the size and sha256 of the data
file, or a training run's :func:`distill.experiment.run_identity`). A completed stage whose fingerprint matches is
skipped; one whose fingerprint differs is **refused** with the keys that changed (``options.rounds``,
``inputs.teacher``, ``identity.data#file`` ...) unless ``--rebuild NAME`` is given, which rebuilds that stage and
every stage downstream of it. A stage interrupted mid-way (SIGKILL) leaves ``work/`` (its fingerprint and its
checkpoints) and no ``stage.json``: the next run resumes it, after checking that the fingerprint is unchanged.

**Stage kinds** are classes registered with :func:`register_stage_kind` (see docs/pipelines.md). A kind declares
its ``Options`` (a pydantic model), the input roles it needs and a ``run(ctx, options, inputs)`` that returns a
:class:`StageOutput`; a looping kind checkpoints with ``ctx.save_state`` / ``ctx.load_state``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, field_validator

from distill.cache.store import _write_json_atomic, describe_mismatch
from distill.config import ConfigError, Strict, format_validation_error, read_yaml
from distill.pipelines import kinds as _kinds  # noqa: F401  (the built-in stage kinds register themselves)
from distill.pipelines.stage import (
    _NAME,
    RECORD,
    STAGE_KINDS,
    Artefact,
    PipelineError,
    StageContext,
    StageKind,
    StageOutput,
    StaleArtefactError,
    _changes,
    _flat,
    digest,
    file_identity,
    open_artefact,
    register_stage_kind,
    write_artefact,
)

__all__ = ["Artefact", "PipelineConfig", "PipelineError", "STAGE_KINDS", "StageConfig", "StageContext", "StageKind",
           "StageOutput", "StaleArtefactError", "digest", "file_identity", "load_pipeline", "load_stage",
           "register_stage_kind", "run_pipeline", "stage_dataset"]


# ------------------------------------------------------------------------------------------------------- config


class StageConfig(Strict):
    name: str
    kind: str
    inputs: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: a stage name is letters, digits, _ or -, starting with a letter (<= 64)")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in STAGE_KINDS:
            raise ValueError(f"unknown stage kind {v!r}; allowed: {', '.join(sorted(STAGE_KINDS))}")
        return v


class PipelineConfig(Strict):
    output_dir: str
    seed: int = 0
    stages: list[StageConfig] = Field(min_length=1)
    #: the folder of the pipeline file (relative paths in options are looked up there first)
    base_dir: str | None = None


@dataclass
class Pipeline:
    config: PipelineConfig
    options: dict[str, Any]  # stage name -> validated options object

    @property
    def output_dir(self) -> Path:
        out = Path(self.config.output_dir).expanduser()
        return out


def parse_pipeline(raw: Any, base_dir: str | Path | None = None, where: str = "pipeline") -> Pipeline:
    """Validate a pipeline mapping: keys, stage names (unique), kinds, inputs (earlier stages, roles the kind
    knows) and each stage's options against its kind's ``Options``; errors name the key
    (``stages[1].options.rounds``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: (top level): a pipeline is a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    if base_dir is not None:
        raw["base_dir"] = str(base_dir)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    seen: dict[str, StageConfig] = {}
    options: dict[str, Any] = {}
    for i, st in enumerate(cfg.stages):
        if st.name in seen:
            raise ConfigError(f"stages[{i}].name: {st.name!r} is used by an earlier stage; names are unique")
        kind = STAGE_KINDS[st.kind]
        for role, src in st.inputs.items():
            known = {r.rstrip("?") for r in kind.inputs}
            if role not in known:
                raise ConfigError(f"stages[{i}].inputs.{role}: stage kind {st.kind!r} takes no input {role!r}; "
                                  f"it takes: {', '.join(sorted(known)) or 'none'}")
            if src not in seen:
                raise ConfigError(f"stages[{i}].inputs.{role}: {src!r} is not an earlier stage "
                                  f"(earlier: {', '.join(seen) or 'none'})")
        for role in kind.inputs:
            if not role.endswith("?") and role not in st.inputs:
                raise ConfigError(f"stages[{i}].inputs.{role}: required by stage kind {st.kind!r} "
                                  f"({kind.inputs[role]})")
        try:
            options[st.name] = kind.Options.model_validate(st.options)
        except ValidationError as e:
            msg = format_validation_error(e)
            raise ConfigError("; ".join(f"stages[{i}].options.{m}" for m in msg.split("; "))) from None
        seen[st.name] = st
    return Pipeline(cfg, options)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Read and validate a pipeline YAML file (``yaml.safe_load``); ``overrides``: ``KEY=VALUE`` as in
    ``distill train --set`` (e.g. ``stages.1.options.rounds=2`` is written ``stages[1]...`` nowhere: use dots)."""
    from distill.config import set_override

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    raw = read_yaml(path)
    for assignment in overrides or []:
        _set_stage_override(raw, assignment, set_override)
    return parse_pipeline(raw, base_dir=path.resolve().parent, where=str(path))


def _set_stage_override(raw: Any, assignment: str, set_override: Callable[[dict[str, Any], str], None]) -> None:
    """``STAGE.KEY=VALUE`` sets ``KEY`` (dotted) in the options of the stage named ``STAGE``; others go to the
    top level (``seed=1``)."""
    key, _, _value = assignment.partition("=")
    head, _, rest = key.partition(".")
    stages = raw.get("stages") if isinstance(raw, dict) else None
    for st in stages or []:
        if isinstance(st, dict) and st.get("name") == head and rest:
            opts = st.setdefault("options", {})
            set_override(opts, assignment[len(head) + 1:])
            return
    set_override(raw, assignment)


def stage_fingerprint(pipe: Pipeline, st: StageConfig, inputs: dict[str, Artefact],
                      ctx: StageContext) -> dict[str, str]:
    kind = STAGE_KINDS[st.kind]()
    opts = pipe.options[st.name]
    out: dict[str, str] = {"kind": st.kind, "seed": str(pipe.config.seed)}
    _flat(opts.model_dump(mode="json"), "options", out)
    for role, art in sorted(inputs.items()):
        out[f"inputs.{role}"] = art.digest
    for k, v in kind.identity(ctx, opts).items():
        out[f"identity.{k}"] = v
    return out


def option_defaults(kind: type[StageKind]) -> dict[str, str]:
    """The fingerprint keys of ``kind``'s options at their defaults (``options.rounds: '8'``)."""
    out: dict[str, str] = {}
    for name, f in kind.Options.model_fields.items():
        if f.is_required():
            continue
        value = f.get_default(call_default_factory=True)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        _flat(json.loads(json.dumps(value, default=repr)), f"options.{name}", out)
    return out


def comparable(fp: dict[str, str], stored: dict[str, Any], kind: type[StageKind]) -> dict[str, str]:
    """``fp`` without the option keys that ``stored`` lacks and that hold their default: an option added to a kind
    after an artefact was made, left at the value that reproduces the old behaviour, does not make it stale."""
    defaults = option_defaults(kind)
    return {k: v for k, v in fp.items() if k in stored or defaults.get(k) != v}


def _downstream(pipe: Pipeline, names: set[str]) -> set[str]:
    out = set(names)
    for st in pipe.config.stages:
        if any(src in out for src in st.inputs.values()):
            out.add(st.name)
    return out


def run_pipeline(pipe: Pipeline, rebuild: list[str] | None = None, log: Callable[[str], None] = print,
                 device: str = "cpu") -> dict[str, Any]:
    """Run every stage in order (skipping completed, unchanged ones; resuming an interrupted one) and write
    ``report.json`` / ``report.md`` in the output folder. ``rebuild``: stage names to redo (with everything
    downstream). Raises :class:`StaleArtefactError` for a changed stage not named in ``rebuild``."""
    names = [s.name for s in pipe.config.stages]
    for r in rebuild or []:
        if r not in names:
            raise PipelineError(f"--rebuild {r}: no such stage; stages: {', '.join(names)}")
    redo = _downstream(pipe, set(rebuild or []))
    out_dir = pipe.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, Artefact] = {}
    rows = []
    for st in pipe.config.stages:
        folder = out_dir / "stages" / st.name
        art_dir, work = folder / "artefact", folder / "work"
        ctx = StageContext(st.name, work, pipe.config.seed, pipe.config.base_dir, log, device)
        inputs = {role: done[src] for role, src in st.inputs.items()}
        fp = stage_fingerprint(pipe, st, inputs, ctx)
        if st.name in redo:
            for p in (art_dir, work):
                if p.exists():
                    shutil.rmtree(p)
        started = time.time()
        status = "built"
        if (art_dir / RECORD).exists():
            try:
                stored = json.loads((art_dir / RECORD).read_text()).get("fingerprint", {})
                art = open_artefact(art_dir, expected=comparable(fp, stored, STAGE_KINDS[st.kind]))
            except StaleArtefactError as e:
                raise StaleArtefactError(f"{e}. Rerun with --rebuild {st.name} to rebuild it (and what follows "
                                         "it)") from None
            status = "reused"
            log(f"[{st.name}] up to date ({art.digest[:12]}), skipped")
        else:
            work.mkdir(parents=True, exist_ok=True)
            mark = work / "fingerprint.json"
            if mark.exists():
                before = json.loads(mark.read_text())
                diff = describe_mismatch(comparable(fp, before, STAGE_KINDS[st.kind]), before)
                if diff:
                    raise StaleArtefactError(
                        f"stage {st.name!r}: an interrupted run was started with other inputs: "
                        f"{_changes(diff, 'interrupted run')}"
                        f". Rerun with --rebuild {st.name} to start it again")
                status = "resumed"
                log(f"[{st.name}] resuming an interrupted run")
            else:
                _write_json_atomic(mark, fp)
                log(f"[{st.name}] running ({st.kind})")
            result = STAGE_KINDS[st.kind]().run(ctx, pipe.options[st.name], inputs)
            art = write_artefact(art_dir, st.name, st.kind, fp, result)
        done[st.name] = art
        rows.append({"stage": st.name, "kind": st.kind, "status": status, "fingerprint": art.digest[:16],
                     "seconds": round(time.time() - started, 1),
                     "tables": {t: s.num_examples for t, s in art.stores.items()}, "meta": art.meta})
    report = {"output_dir": out_dir.name, "seed": pipe.config.seed, "stages": rows}
    _write_json_atomic(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(report_markdown(report))
    return report


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Pipeline report: {report['output_dir']}", "", f"seed {report['seed']}", "",
             "| stage | kind | status | fingerprint | tables (rows) | seconds |", "|---|---|---|---|---|---|"]
    for r in report["stages"]:
        tables = ", ".join(f"{t} ({n})" for t, n in r["tables"].items())
        lines.append(f"| {r['stage']} | {r['kind']} | {r['status']} | {r['fingerprint']} | {tables} | {r['seconds']} |")
    for r in report["stages"]:
        if r["meta"]:
            lines += ["", f"## {r['stage']}", "", "```json", json.dumps(r["meta"], indent=1, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- Python API


def load_stage(output_dir: str | Path, name: str) -> Artefact:
    """A completed stage's artefact from a pipeline's output folder (verified)."""
    return open_artefact(Path(output_dir) / "stages" / name / "artefact")


def stage_dataset(art: Artefact, table: str | None = None, base: Any = None) -> torch.utils.data.Dataset:
    """A stage's table as a torch ``Dataset``: a table with an ``index`` column over ``base`` (a dataset, e.g. the
    training images) is ``Subset(base, index)`` (an :class:`~distill.data.images.ImageArrays` gives its own
    ``subset``); any other table (soft labels, a synthetic set, a ranking) is a ``TensorDataset`` of its columns
    in stored order (``dataset.columns`` names them)."""
    cols = art.table(table)
    if "index" in cols and base is not None:
        idx = cols["index"].long()
        if hasattr(base, "subset") and hasattr(base, "images"):
            return base.subset(idx)
        return torch.utils.data.Subset(base, idx.tolist())
    ds = torch.utils.data.TensorDataset(*cols.values())
    ds.columns = list(cols)  # type: ignore[attr-defined]
    return ds
