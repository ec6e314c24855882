"""The one builder: a validated config becomes the objects of a run (data, task, student, teacher, methods, module,
trainer). The family named by ``task:`` supplies what differs (its data, task adapter and models); everything else
is done here once. Everything it builds is also public and can be built by hand from Python.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import ConfigError, ExperimentConfig, MethodConfig, method_error, resolve_path
from distill.core.compose import Composite
from distill.core.family import FAMILIES, Family, Loaded
from distill.core.safe_pickle import config_key
from distill.core.teachers import TeacherSource
from distill.methods import METHODS
from distill.train.evaluate import evaluate_model
from distill.train.module import DistillModule
from distill.train.trainer import Trainer, seed_everything

__all__ = ["Experiment", "build_experiment", "build_methods", "build_parts", "evaluate_model", "open_teacher_cache",
           "resolve_path", "train_config", "assemble"]


def build_method(cfg: MethodConfig, where: str = "methods") -> nn.Module:
    """The method of ``cfg``; what its constructor refuses is a :class:`ConfigError` naming ``where.OPTION``."""
    try:
        return METHODS.get(cfg.name)(**cfg.options())
    except (ValueError, TypeError, OverflowError) as e:
        raise method_error(cfg.name, where, e) from None


def build_methods(cfgs: list[MethodConfig]) -> Composite:
    methods = {(m.label or m.name): build_method(m, f"methods[{i}]") for i, m in enumerate(cfgs)}
    weights = {(m.label or m.name): m.weight for m in cfgs}
    return Composite(methods, weights)


def check_cache_features(cfg: ExperimentConfig) -> None:
    """Refuse a ``teacher.cache`` that would not store the teacher taps the methods read, before it is built (the
    training step would otherwise stop at its first batch, after the whole cache was written)."""
    cache = getattr(cfg.teacher, "cache", None) if cfg.teacher is not None else None
    if cache is None:
        return
    stored = list(getattr(cache, "features", None) or ())
    missing = [t for t in build_methods(cfg.methods).teacher_taps() if t not in stored]
    if missing:
        raise ConfigError(f"teacher.cache.features: the methods read the teacher's taps {missing}, which the cache "
                          f"would not store (features: {stored}); add them to teacher.cache.features")


def open_teacher_cache(cfg: ExperimentConfig, teacher: TeacherSource, task: Any, train: Any, settings: Any = None,
                       key: str = "teacher.cache") -> TeacherSource:
    """``teacher.cache`` (or the cache ``settings`` at config key ``key``, e.g. a mixture member's): open (building
    it first if missing, rank 0 only under DDP) the cache of ``teacher`` on ``train``; a cache of augmented views
    also becomes the task's augmentation-parameter source."""
    from distill.cache import ensure_teacher_cache
    from distill.train.distributed import run_device

    c = cfg.teacher.cache if settings is None else settings
    device = run_device(cfg.train.cpu)  # under a launcher this also starts the process group: rank 0 alone builds
    path = Path(c.path).expanduser()
    if not path.is_absolute() and cfg.base_dir is not None:  # next to the config file, unless only the working
        beside = Path(cfg.base_dir) / path                      # directory holds a cache of that name
        path = beside if beside.exists() or not path.exists() else path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}.path: {path} is a file, not a cache folder")
    with config_key(f"{key}.path"):
        cache = ensure_teacher_cache(path, teacher, task, train, c, build=c.build, verify=c.verify,
                                     batch_size=c.batch_size, device=device)
    if cache.augmented:
        task.augment_source = cache
    return cache


#: keys that only say where something is kept, not what is computed: a teacher cache's location and build options
#: (the cache's own fingerprint is in the recipe), how a served teacher is reached (its ``model`` names it) and
#: the data's download folder
_CACHE_ONLY = ("path", "build", "batch_size", "verify")


def _where_only(key: str) -> bool:
    parts = key.split(".")
    return (key == "data.cache_dir"
            or (parts[0] == "teacher" and len(parts) > 2 and parts[-2] == "cache" and parts[-1] in _CACHE_ONLY)
            or (parts[:2] == ["teacher", "served"] and len(parts) > 2 and parts[2] != "model"))


_HASH_LIMIT = 256 << 20  # weights files up to this size are hashed; larger ones are named by size and mtime


def _plain(section: Any) -> Any:
    """A config section as plain JSON values, without the fields left at their defaults."""
    if section is None:
        return None
    if hasattr(section, "model_dump"):
        return section.model_dump(mode="json", exclude_defaults=True)
    try:
        from pydantic import TypeAdapter

        return TypeAdapter(type(section)).dump_python(section, mode="json", exclude_defaults=True)
    except Exception:  # noqa: BLE001 - not a pydantic type: its repr names it
        return repr(section)


def _flatten(value: Any, key: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in sorted(value.items()):
            if not _where_only(f"{key}.{k}"):
                _flatten(v, f"{key}.{k}", out)
        if not value:
            out[key] = "{}"
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{key}[{i}]", out)
        if not value:
            out[key] = "[]"
    else:
        text = json.dumps(value, sort_keys=True, default=repr)
        out[key] = text if len(text) <= 96 else f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _file_identity(value: str, base_dir: str | None) -> str | None:
    """Size and sha256 (or mtime, for a large file) of the weights file ``value`` names; None when it is no file."""
    try:
        path = resolve_path(value, base_dir)
        if not path.is_file():
            return None
        st = path.stat()
        if st.st_size > _HASH_LIMIT:
            return f"{st.st_size} bytes, mtime {st.st_mtime_ns}"
        from distill.train.checkpoint import sha256_file

        return f"{st.st_size} bytes, sha256 {sha256_file(path)[:16]}"
    except (ConfigError, OSError, ValueError):
        return None


def _method_options(m: MethodConfig) -> dict[str, Any]:
    """``m``'s options without those given at their constructor default (so ``temperature: 4`` equals leaving
    it out when 4 is the default)."""
    import inspect

    try:
        params = inspect.signature(METHODS.get(m.name)).parameters
    except (TypeError, ValueError, KeyError):
        params = {}
    out = {}
    for k, v in m.options().items():
        p = params.get(k)
        if p is not None and p.default is not inspect.Parameter.empty:
            try:
                numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (p.default, v))
                if bool(p.default == v) and (type(p.default) is type(v) or numbers):
                    continue
            except Exception:  # noqa: BLE001 - incomparable: keep it
                pass
        out[k] = v
    return out


def run_identity(cfg: ExperimentConfig) -> dict[str, str]:
    """What a resumed run must agree on besides the training settings: each method's options, the student, the
    teacher (with the size and checksum of the weights files it names) and the data (with the same for each data
    file it names; a folder is named only), as ``section.key: value``
    strings (long values as a short hash). Leaves out where things are kept (a teacher cache's path, the data's
    download folder) and the output, progress and logging settings."""
    out: dict[str, str] = {"identity": "1"}
    for i, m in enumerate(cfg.methods):
        _flatten(_method_options(m), f"methods[{i}]", out)
        out.pop(f"methods[{i}]", None)  # no options: nothing to compare
    for name in ("student", "teacher", "data"):
        if getattr(cfg, name) is None:  # absent: its keys are missing (a section given later is a change)
            continue
        section: dict[str, str] = {}
        _flatten(_plain(getattr(cfg, name)), name, section)
        if name in section:  # an empty section, or one that is not a mapping
            whole = section.pop(name)
            if whole != "{}":
                section[f"{name}.value"] = whole
        for key, value in list(section.items()):
            if (name == "data" or key.rsplit(".", 1)[-1] in ("weights", "path")) and value.startswith('"'):
                found = _file_identity(json.loads(value), cfg.base_dir)
                if found is not None:
                    section[f"{key}#file"] = found
        out.update(section)
    return out


def train_config(cfg: ExperimentConfig) -> Any:
    """The trainer's settings of ``cfg`` (its ``train:`` section with the top-level seed and determinism)."""
    from dataclasses import replace

    return replace(cfg.train, seed=cfg.seed, deterministic=cfg.deterministic)


@dataclass
class Parts:
    """What :func:`build_parts` returns: the family, its data and task, the teacher source (cached when the
    config says so) and the student when one was asked for. Enough to build or verify a teacher cache without a
    trainer."""

    family: Family
    loaded: Loaded
    teacher: TeacherSource | None
    live_teacher: TeacherSource | None = None
    student: nn.Module | None = None


def build_parts(cfg: ExperimentConfig, *, need_teacher: bool | None = None,
                student: Any = None) -> Parts:
    """Seed, load the family's data and build the teacher (frozen, ensemble or cached). ``student``: a callable
    ``(family, loaded) -> student`` run between the data and the teacher (the order every builder used before
    the families were merged, so a seed gives the student the same initial weights as it did then)."""
    from distill.train.progress import progress_enabled

    family = FAMILIES.get(cfg.task)
    seed_everything(cfg.seed, cfg.deterministic)
    shown = cfg.train.progress and os.environ.get("RANK", "0") == "0"  # long steps report on rank 0 only
    with progress_enabled(shown, cfg.train.progress_every):
        loaded = family.load(cfg)
        check_run_classes(cfg, family, loaded)
        built = student(family, loaded) if student is not None else None
        if need_teacher is None:
            need_teacher = any(METHODS.get(m.name).needs_teacher for m in cfg.methods)
        live = family.build_teacher(cfg, loaded) if need_teacher or cfg.teacher is not None else None
        precision = getattr(cfg.teacher, "precision", "fp32")
        if live is not None and precision != "fp32":
            from distill.core.teachers import set_teacher_precision

            try:
                set_teacher_precision(live, precision)
            except ValueError as e:
                raise ConfigError(f"teacher.precision: {e}") from None
        teacher = live
        mixture = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
        if live is not None and mixture is not None and any(m.cache is not None for m in mixture.members):
            teacher = live.with_members([  # each member with a cache of its own is served from it
                open_teacher_cache(cfg, member, loaded.task, loaded.train, m.cache,
                                   f"teacher.mixture.members[{i}].cache") if m.cache is not None else member
                for i, (m, member) in enumerate(zip(mixture.members, live.members, strict=True))])
        if live is not None and cfg.teacher is not None and getattr(cfg.teacher, "cache", None) is not None:
            teacher = open_teacher_cache(cfg, live, loaded.task, loaded.train)
    return Parts(family, loaded, teacher, live, built)


def check_run_classes(cfg: ExperimentConfig, family: Family, loaded: Loaded) -> None:
    """Refuse ``student.weights`` / ``teacher.weights`` written by an earlier distill run of this task (its
    ``student.safetensors`` or ``best/student.safetensors``, with ``student_spec.json`` in the run folder) whose
    classes differ from the data's by name or order: the same number of outputs would load without a word, and
    every output would be read as another class (a class folder renamed, added or removed before this run). Classes
    known by number only ("0".."K-1": integer labels) name nothing to compare."""
    names = family.export_facts(loaded).get("classes") if loaded.train is not None else None
    if not names:
        return
    for key in ("student", "teacher"):
        weights = getattr(getattr(cfg, key, None), "weights", None)
        if not isinstance(weights, str) or ":" in weights.split("/")[0] or weights in ("random", "new_head"):
            continue
        try:
            path = resolve_path(weights, cfg.base_dir)
        except ConfigError:
            continue  # the model builder names what is wrong with the path
        run = path.parent.parent if path.parent.name == "best" else path.parent
        spec = run / "student_spec.json"
        if path.name != "student.safetensors" or not spec.is_file():
            continue
        try:
            facts = json.loads(spec.read_text())
            trained = facts.get("facts", {}).get("classes") if facts.get("task") == cfg.task else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        numbered = [str(i) for i in range(len(names))]  # classes known by number only: nothing to compare
        if isinstance(trained, list) and trained and [str(c) for c in trained] != [str(c) for c in names] \
                and numbered not in ([str(c) for c in trained], [str(c) for c in names]):
            how = "in another order" if sorted(map(str, trained)) == sorted(map(str, names)) else "other classes"
            raise ConfigError(f"{key}.weights: {path} was trained on classes {trained[:10]} ({spec}), but the data's "
                              f"classes are {list(names)[:10]} ({how}): its outputs would be read as the wrong "
                              "classes; train on data with the same class names, or start from other weights")


def student_builder(cfg: ExperimentConfig) -> Any:
    """The ``student`` argument of :func:`build_parts`: the family builds the config's student."""
    return lambda family, loaded: family.build_student(cfg, loaded)


@dataclass
class Experiment:
    config: ExperimentConfig
    task: Any
    train_data: Any
    eval_data: Any | None
    val_data: Any | None
    student: nn.Module
    teacher: TeacherSource | None
    methods: Composite
    module: DistillModule
    trainer: Trainer
    family: Family | None = None
    live_teacher: TeacherSource | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: what the family loaded (its facts are saved for ``distill export``)
    loaded: Loaded | None = None

    def fit(self, resume: bool = True, teacher_metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Train (resuming from the run folder's checkpoints unless ``resume`` is False). Also writes the files
        ``distill export`` reads (``distill_config.json``, ``student_spec.json``) and logs hyperparameters,
        throughput and ``teacher_metrics`` (if given) beside the trainer's metrics (:mod:`distill.train.runlog`)."""
        from distill.export.run import write_run_files
        from distill.train.runlog import RunLog

        main = self.trainer.accelerator.is_main_process
        if self.config is None:  # assembled from Python objects (no config to save or log)
            summary = self.trainer.fit(resume=resume)
            if self.family is not None and main:
                self.family.after_fit(self)
            return summary
        if main:
            write_run_files(self)
        runlog = RunLog(self.trainer, self.config, teacher_metrics)
        self.trainer.callbacks.append(runlog)
        try:
            summary = self.trainer.fit(resume=resume)
        finally:
            self.trainer.callbacks.remove(runlog)
            runlog.close()
        if self.family is not None and main:
            self.family.after_fit(self)
        return summary


def check_early_stopping_metric(loaded: Loaded, train_cfg: Any) -> None:
    """``train.early_stopping_metric`` must be a key the task's evaluation reports for this data (a task that
    says which through ``metric_names(num_outputs)``; e.g. ``top5`` is not reported with 5 classes or fewer):
    refused before training rather than at the first evaluation."""
    name = getattr(train_cfg, "early_stopping_metric", None)
    names_of = getattr(loaded.task, "metric_names", None)
    if name is None or names_of is None:
        return
    names = names_of(loaded.num_outputs)
    if name not in names:
        why = (f" (top-k accuracy is reported only with more than k classes; this data has {loaded.num_outputs})"
               if name.startswith("top") and name[3:].isdigit() else "")
        raise ConfigError(f"train.early_stopping_metric: {name!r} is not among the metrics of this run "
                          f"{list(names)}{why}; pick one of them")


def assemble(loaded: Loaded, student: nn.Module, methods: Composite, teacher: TeacherSource | None, train_cfg: Any,
             run_dir: str | Path, *, cfg: ExperimentConfig | None = None, family: Family | None = None,
             live_teacher: TeacherSource | None = None) -> Experiment:
    """The last, shared step of every run, from a config or from Python objects: module and trainer over the
    family's data (``loaded``)."""
    try:
        module = DistillModule(student, methods, teacher, loaded.task)
    except ValueError as e:  # e.g. a feature tap a method names that the model does not have
        raise ConfigError(f"methods: {str(e).splitlines()[0]}") from None
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir: {run_dir} is a file, not a folder")
    check_early_stopping_metric(loaded, train_cfg)
    n = loaded.task.num_examples(loaded.train)
    if train_cfg.drop_last and n < train_cfg.batch_size:
        raise ConfigError(f"train.batch_size: {train_cfg.batch_size}, but the training set has {n} examples (fewer "
                          "than one batch); lower train.batch_size or add data")
    try:
        trainer = Trainer(module, loaded.train, loaded.eval, train_cfg, run_dir, val_data=loaded.val,
                          identity=run_identity(cfg) if cfg is not None else None)
    except ValueError as e:  # the trainer's rules about its settings (e.g. the batch across processes)
        msg = str(e).splitlines()[0]
        raise ConfigError(msg if msg.startswith("train.") else f"train: {msg}") from None
    report = loaded.report if loaded.report is not None else loaded.eval
    val = loaded.val if loaded.report is None else loaded.eval
    return Experiment(cfg, loaded.task, loaded.train, report, val, student, teacher, methods, module,  # type: ignore[arg-type]
                      trainer, family, live_teacher, dict(loaded.info), loaded)


def build_experiment(cfg: ExperimentConfig, output_dir: str | Path | None = None) -> Experiment:
    """Build every object of the run described by ``cfg`` (see the module docstring)."""
    from distill.train.trainer import launcher_precision, refuse_sharding

    cpu = cfg.train.cpu or not torch.cuda.is_available()  # the launcher's settings are refused before any loading
    launcher_precision(cfg.train.mixed_precision, cpu)
    refuse_sharding(cpu)
    check_cache_features(cfg)
    if output_dir is not None:  # the run folder's distill_config.json names where the run is (distill eval reads it)
        cfg.output_dir = str(output_dir)
    parts = build_parts(cfg, student=student_builder(cfg))
    family, loaded = parts.family, parts.loaded
    student = parts.student
    family.prepare_student(student, parts.live_teacher, cfg, loaded)
    if getattr(cfg.student, "lora", None) is not None:  # after prepare_student: its copies are the frozen base
        from distill.models.lora import add_lora

        add_lora(student, cfg.student.lora, family.lora_modules_to_save)
    methods = build_methods(cfg.methods)
    return assemble(loaded, student, methods, parts.teacher, family.train_config(cfg, loaded),
                    output_dir or cfg.output_dir, cfg=cfg, family=family, live_teacher=parts.live_teacher)
