"""YAML experiment files, validated into the same objects the Python API builds.

Every experiment has the same top level: ``task`` (which family), ``output_dir``, ``seed``, ``deterministic``,
``data`` (the family's own section), ``student``, ``teacher``, ``methods`` and ``train``. The ``data`` section and
the model sections are validated against the classes the family declares (:mod:`distill.tasks`); ``train`` is
validated from :class:`distill.train.trainer.TrainConfig` itself and ``teacher.cache`` from
:class:`distill.cache.CacheSettings`, so each setting is declared once, where it is used.

A bad file fails with one line that names the key and what is allowed, e.g.
``config error: methods[1].temprature: unknown option for method 'kd'; allowed: ce_weight, kl_weight, ...``.
Components are chosen from registries by name; a config never imports code.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic import Strict as StrictFlag

from distill.cache.settings import CacheSettings
from distill.core.errors import ConfigError  # noqa: F401  (public here: distill.config.ConfigError)
from distill.core.family import FAMILIES
from distill.train.config import Flag, TrainConfig


class Strict(BaseModel):
    """Base of every config section: unknown keys are refused, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def given_keys(section: BaseModel) -> set[str]:
    """The keys of a config section the user gave. A run folder's ``distill_config.json`` writes every key out,
    defaults included, and reading it back (``distill export``, ``distill eval``, rerunning it) must not count those
    as given: in a section that sets every key (a saved config), only the keys whose value is not the default
    count."""
    fields = type(section).model_fields
    given = set(section.model_fields_set)
    if not set(fields) <= given:
        return given
    return {k for k in given if getattr(section, k) != fields[k].get_default(call_default_factory=True)}


ASSETS = Path(__file__).resolve().parent / "assets"
#: the largest YAML file read (a config is a few kilobytes)
MAX_CONFIG_BYTES = 1 << 20
#: ``weights: random``: an untrained teacher, on purpose
RANDOM_WEIGHTS = "random"
#: ``weights: new_head``: a model folder (``path``) whose task head is new (initialised at random): its body only
NEW_HEAD = "new_head"


def resolve_path(value: str, base_dir: str | None = None) -> Path:
    """``builtin:NAME`` is a file shipped in the package (never outside its assets folder); a relative path is
    looked up next to the config file first, then in the working directory."""
    if value.startswith("builtin:"):
        name = value.removeprefix("builtin:")
        path = (ASSETS / name).resolve()
        shipped = ", ".join(sorted(p.name for p in ASSETS.iterdir() if not p.name.startswith(".")))
        if not name or Path(name).is_absolute() or not path.is_relative_to(ASSETS) or path == ASSETS:
            raise ConfigError(f"{value}: a built-in file is one of the package's assets; shipped: {shipped}")
        if not path.exists():
            raise ConfigError(f"{value}: no such built-in file; shipped: {shipped}")
        return path
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        return Path(base_dir) / path
    return path


class LoraSettings(Strict):
    """``student.lora``: train low-rank adapters (LoRA, through the optional package ``peft``) instead of the
    student's own weights. ``target_modules``: names of the Linear layers that get adapters (default: PEFT's
    choice for the model type, e.g. ``q_proj``/``v_proj`` of a Llama); ``modules_to_save``: modules trained in full
    beside them (default: the family's new head, e.g. the classifier of a text classifier)."""

    r: int = Field(8, gt=0, le=4096)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, min_length=1)
    modules_to_save: list[str] | None = None


class ModelConfig(Strict):
    """A model of the run's family: ``arch`` names a built-in architecture of the family (``distill methods``
    does not list them; the error for an unknown one does), ``path`` a local model folder or file where the family
    reads one (a Hugging Face or sentence-transformers folder, a GGUF file), ``weights`` a safetensors or
    weights-only checkpoint loaded into it, ``options`` the builder's keyword arguments."""

    arch: str | None = None
    path: str | None = None
    num_classes: int | None = Field(None, gt=0, le=1_000_000)
    weights: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    #: the student only: LoRA adapters (:class:`LoraSettings`)
    lora: LoraSettings | None = None


class MixtureMember(ModelConfig):
    """One teacher of a mixture: a model (the keys of :class:`ModelConfig`), its ``name`` (what a route column may
    hold besides its index) and optionally its own ``cache`` (its outputs on the whole training set, served from
    disk instead of running it)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    cache: CacheSettings | None = None


class RouterConfig(Strict):
    """The learned router of ``route: learned`` / ``aggregate``: it reads the members' outputs (``input:
    teachers``) or the student's (``input: student``), through ``hidden`` units; ``balance`` weighs MST-Distill's
    load-balance term (added to the loss as ``teacher.balance``)."""

    input: Literal["teachers", "student"] = "teachers"
    hidden: int = Field(64, gt=0, le=65536)
    balance: float = Field(0.0, ge=0)


class MixtureConfig(Strict):
    """Several teachers, one per example (docs/teachers.md): ``route: column`` takes each example's member from the
    data's field ``column`` (a member name or index); ``learned`` picks the top-1 member with a trained router
    (MST-Distill); ``aggregate`` blends the members with trained per-example softmax weights (Meta-DMoE), combined
    by ``reduce``."""

    members: list[MixtureMember] = Field(min_length=2, max_length=64)
    route: Literal["column", "learned", "aggregate"] = "column"
    column: str | None = Field(None, min_length=1, max_length=200)
    router: RouterConfig | None = None
    reduce: Literal["logits", "probs"] = "logits"

    def names(self) -> list[str | None]:
        return [m.name for m in self.members]

    def router_settings(self) -> RouterConfig:
        return self.router if self.router is not None else RouterConfig()


class TeacherConfig(ModelConfig):
    """The teacher: one model (the keys of :class:`ModelConfig`), an ``ensemble`` of them combined by ``reduce``,
    or a ``mixture`` of them chosen per example (docs/teachers.md); optionally ``cache``: its outputs computed once
    and served from disk (docs/cache.md)."""

    ensemble: list[ModelConfig] | None = None
    reduce: Literal["logits", "probs"] = "logits"
    mixture: MixtureConfig | None = None
    cache: CacheSettings | None = None
    #: the frozen live teacher's weights cast once to this dtype (its outputs come back as float32)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def members(self) -> list[ModelConfig]:
        if self.mixture is not None:
            return list(self.mixture.members)
        if self.ensemble:
            return list(self.ensemble)
        if self.arch is None and self.path is None:
            raise ConfigError("teacher: give 'arch' (and usually 'weights'), 'path' or an 'ensemble' list")
        return [ModelConfig(arch=self.arch, path=self.path, weights=self.weights, num_classes=self.num_classes,
                            options=self.options)]


class MethodConfig(BaseModel):
    """``name`` picks a registered method; ``weight`` scales it; other keys are the method's options."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    weight: float = Field(1.0, ge=0)
    label: str | None = None

    @field_validator("name")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from distill.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(METHODS.names())}")
        return METHODS.canonical(v)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExperimentConfig(Strict):
    """The top level of every experiment. ``data``, ``student`` and ``teacher`` hold the family's own section
    classes after :func:`parse_config`."""

    task: str = "image_classification"
    output_dir: str = "runs/experiment"
    seed: int = 0
    deterministic: Flag = False
    data: Any = None
    student: Any = None
    teacher: Any = None
    methods: list[MethodConfig] = Field(min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    base_dir: str | None = Field(None, exclude=True)

    @property
    def family(self) -> Any:
        return FAMILIES.get(self.task)


@cache
def _family_model(task: str) -> type[ExperimentConfig]:
    """The experiment model of one family: its own ``data``, ``student`` and ``teacher`` classes."""
    fam = FAMILIES.get(task)
    student = fam.student_section or ModelConfig
    teacher = fam.teacher_section or TeacherConfig
    return create_model(
        f"{fam.name}_experiment", __base__=ExperimentConfig,
        data=(fam.data_section | None, None), student=(student | None, None), teacher=(teacher | None, None))


# -- method options, validated against each method's own constructor ------------------------------------------
@cache
def method_options_model(name: str) -> type[BaseModel]:
    """A pydantic model of the keyword arguments of the method's ``__init__`` (the Python API's truth)."""
    from distill.methods import METHODS

    cls = METHODS.get(name)
    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for pname, param in sig.parameters.items():
        if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (hints.get(pname, Any), default)
    return create_model(f"{name}_options", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


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


def validate_method_options(name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    model = method_options_model(name)
    try:
        parsed = model.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(["weight", "label", *model.model_fields]) or "none"
            raise ConfigError(f"{where}.{key}: unknown option for method {name!r}; allowed: {allowed}") from None
        raise ConfigError(f"{where}.{key}: {_clean(err['msg'])} (got {err.get('input')!r})") from None
    return {k: getattr(parsed, k) for k in options}


def method_error(name: str, where: str, e: Exception) -> ConfigError:
    """A method constructor's ``ValueError`` ("alpha must be in [0, 1], got 1e+30", "pkt: eps must be >= 0") as a
    one-line error naming ``methods[i].OPTION`` (the first option the message names), else ``methods[i]``."""
    import re

    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    msg = msg.removeprefix(f"{name}: ")
    try:
        options = list(method_options_model(name).model_fields)
    except Exception:  # noqa: BLE001 - an unknown method is reported elsewhere
        options = []
    found = [(m.start(), opt) for opt in options for m in [re.search(rf"(?<![\w.]){re.escape(opt)}(?!\w)", msg)] if m]
    if found:
        return ConfigError(f"{where}.{min(found)[1]}: {msg}")
    return ConfigError(f"{where} ({name}): {msg}")


def check_method(name: str, options: dict[str, Any], where: str) -> None:
    """Build the method once to run the checks of its constructor (domains of its options) while the file is
    read; a refusal names the option."""
    from distill.methods import METHODS

    try:
        METHODS.get(name)(**options)
    except (ValueError, TypeError, OverflowError) as e:
        raise method_error(name, where, e) from None


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith("function-") or "[" in part):
            continue  # pydantic's names of union branches and validators, not keys of the file
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = _loc(tuple(err["loc"])) or "(top level)"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{where}: unknown key"
    if err["type"] in ("missing", "missing_argument"):
        return f"{where}: required key is missing"
    msg = _clean(err["msg"])
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


#: keys of earlier releases, refused with where their setting lives now
MOVED_KEYS: dict[str, str] = {
    "text": "task text_classification reads 'data:' (its old 'text:' keys), 'student:' and 'teacher:'",
    "graph": "task graph_node_classification reads 'data:' (dataset, normalize_features, train_on go there)",
    "lm": "task causal_lm reads 'data:' (tokenizer and corpus), 'student:' and 'teacher:' (lm.teacher -> "
          "teacher.path, lm.topk_store -> teacher.cache with topk)",
    "embedding": "task embedding reads 'data:' (train, eval, max_length), 'student:' and 'teacher:' "
                 "(embedding.teacher_cache -> teacher.cache)",
    "ranking": "task ranking reads 'data:' (collection and groups), 'student:' and 'teacher:'",
}
#: stored-teacher spellings of earlier releases: ``teacher.cache`` is the only one
OLD_CACHE_KEYS = ("precompute_teacher", "teacher_cache", "topk_store")


def _refuse_old_keys(raw: dict[str, Any]) -> None:
    for key, where in MOVED_KEYS.items():
        if key in raw:
            sub = raw[key] if isinstance(raw[key], dict) else {}
            for old in OLD_CACHE_KEYS:
                if old in sub:
                    raise ConfigError(f"{key}.{old}: replaced by teacher.cache (the one stored teacher of every "
                                      "family; see docs/cache.md)")
            raise ConfigError(f"{key}: not a key any more; {where}")
    data = raw.get("data")
    if isinstance(data, dict):
        for old in OLD_CACHE_KEYS:
            if old in data:
                raise ConfigError(f"data.{old}: replaced by teacher.cache (the one stored teacher of every family; "
                                  "see docs/cache.md)")
    train = raw.get("train")
    if isinstance(train, dict):
        for key in ("seed", "deterministic"):
            if key in train:
                raise ConfigError(f"train.{key}: set '{key}' at the top level of the file")


def _refuse_other_file_kinds(raw: dict[str, Any]) -> None:
    """A pipeline, stream or benchmark-settings file given to ``distill train`` is named as what it is, with the
    command that runs it (rather than ``methods: required key is missing``)."""
    if "methods" in raw:
        return
    if "stages" in raw:
        raise ConfigError("(top level): this is a pipeline file (stages:), not a training run; run it with "
                          "`distill pipeline FILE` (docs/pipelines.md)")
    if "stream" in raw and "learner" in raw:
        raise ConfigError("(top level): this is a stream file (stream:, learner:), not a training run; run it with "
                          "`distill stream FILE` (docs/streams.md)")
    if isinstance(raw.get("pipeline"), str):
        raise ConfigError(f"(top level): this file holds the settings of the {raw['pipeline']!r} pipeline "
                          "(pipeline:), not a training run; it is read by the benchmarks/ script its first "
                          "comment names (python benchmarks/SCRIPT.py --config FILE)")


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None) -> ExperimentConfig:
    """Validate a dict (from YAML or Python) into an :class:`ExperimentConfig`, or raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"(top level): a config is a mapping of keys, got {type(raw).__name__}")
    _refuse_other_file_kinds(raw)
    task = raw.get("task", "image_classification")
    if task not in FAMILIES:
        raise ConfigError(f"task: unknown task {task!r}; allowed: {', '.join(FAMILIES.names())}")
    family = FAMILIES.get(task)
    _refuse_old_keys(raw)
    try:
        cfg = _family_model(family.name).model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    cfg.base_dir = str(base_dir) if base_dir is not None else None
    if cfg.data is None and family.data_required:
        raise ConfigError(f"data: required key is missing (task: {cfg.task} reads its data settings there)")
    if cfg.student is None and family.student_required:
        raise ConfigError(f"student: required key is missing (task: {cfg.task})")
    _check_archs(cfg, family)
    _check_models(cfg, family)
    _check_lora(cfg, family)
    _check_mixed_precision(cfg)
    if cfg.train.trackers:
        from distill.train.trackers import missing_tracker

        missing = missing_tracker(list(cfg.train.trackers))
        if missing:
            raise ConfigError(f"train.{missing}")
    labels = set()
    for i, m in enumerate(cfg.methods):
        options = validate_method_options(m.name, m.options(), f"methods[{i}]")
        check_method(m.name, options, f"methods[{i}]")
        label = m.label or m.name
        if label in labels:
            raise ConfigError(f"methods[{i}].label: {label!r} is used twice; give each repeated method a label")
        labels.add(label)
    from distill.methods import METHODS

    for i, m in enumerate(cfg.methods):  # rules of a method about the rest of the file live on the method
        pipeline = METHODS.get(m.name).pipeline
        if pipeline is not None:
            raise ConfigError(f"methods[{i}].name: {m.name!r} is trained by the pipeline {pipeline}, not from a "
                              "methods list (see its docstring)")
        refusal = applicability_error(m.name, cfg.task)
        if refusal:
            raise ConfigError(f"methods[{i}].name: {refusal}")
        try:
            METHODS.get(m.name).check_experiment(cfg, i)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    needs = [m.name for m in cfg.methods if METHODS.get(m.name).needs_teacher]
    if needs and not family.has_teacher(cfg):
        raise ConfigError(f"teacher: required key is missing (methods {needs} need a teacher)")
    if cfg.teacher is not None and getattr(cfg.teacher, "mixture", None) is not None:
        _check_mixture(cfg, family)
    if cfg.teacher is not None and cfg.teacher.cache is not None:
        _check_cache(cfg)
    if cfg.teacher is not None and getattr(cfg.teacher, "ensemble", None):
        _check_ensemble_reduce(cfg)
    if cfg.train.schedule == "step" and not cfg.train.milestones:
        raise ConfigError("train.milestones: the 'step' schedule needs milestones (epochs), e.g. [30, 40]")
    try:
        family.check(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def applicability_error(name: str, task: str) -> str | None:
    """Why method ``name`` does not apply to ``task`` (its declared ``tasks``), or None when it does."""
    from distill.methods import METHODS

    tasks = METHODS.get(name).tasks
    if tasks is None or task in tasks or (task in FAMILIES and FAMILIES.get(task).methods_as in tasks):
        return None
    listed = ", ".join(sorted(tasks))
    return f"{name!r} applies to task{'s' if len(tasks) > 1 else ''} {listed}; this run is {task}"


def _check_archs(cfg: ExperimentConfig, family: Any) -> None:
    allowed = family.model_archs()
    for key, m in model_sections(cfg):
        prefixes = tuple(getattr(family, "arch_prefixes", ()))
        if m.arch is not None and allowed and m.arch not in allowed and not m.arch.startswith(prefixes):
            more = "".join(f", {p}<name>" for p in prefixes)
            raise ConfigError(f"{key}.arch: unknown model {m.arch!r}; allowed: {', '.join(sorted(allowed))}{more} "
                              f"(task {cfg.task})")


def model_sections(cfg: ExperimentConfig) -> list[tuple[str, Any]]:
    """``(key, section)`` of every model of the file: the student, the teacher or each ensemble member."""
    models = [("student", cfg.student)] if cfg.student is not None else []
    if cfg.teacher is not None:
        if getattr(cfg.teacher, "mixture", None) is not None:
            models += [(f"teacher.mixture.members[{i}]", m) for i, m in enumerate(cfg.teacher.mixture.members)]
        elif getattr(cfg.teacher, "ensemble", None):
            models += [(f"teacher.ensemble[{i}]", m) for i, m in enumerate(cfg.teacher.ensemble)]
        else:
            models.append(("teacher", cfg.teacher))
    return models


def _check_models(cfg: ExperimentConfig, family: Any) -> None:
    """Each model's ``options`` against its builder's signature (:meth:`Family.model_builder`), and a teacher
    built from an architecture has trained weights unless ``weights: random`` says otherwise."""
    for key, m in model_sections(cfg):
        builder = family.model_builder(m, key)
        if builder is not None:
            fn, supplied = builder
            validate_model_options(fn, m.options, f"{key}.options", m.arch or "model", supplied)
        elif m.options and m.arch is None and (m.path is not None or key.startswith("teacher")):
            raise ConfigError(f"{key}.options: a model loaded from a folder or file ('path', or the family's "
                              "default teacher) takes no options")
        if key.startswith("teacher") and m.arch is not None and m.path is None and not m.weights:
            raise ConfigError(f"{key}.weights: required (give the trained teacher's weights, or weights: "
                              f"{RANDOM_WEIGHTS} for an untrained teacher)")
        if key.startswith("teacher") and m.weights == NEW_HEAD:
            raise ConfigError(f"{key}.weights: {NEW_HEAD} gives a randomly initialised head, and a teacher is frozen, "
                              "so it would teach at chance; give a fine-tuned classifier folder (or its weights)")
        if m.weights == NEW_HEAD and m.path is None:
            raise ConfigError(f"{key}.weights: {NEW_HEAD} puts a new head on a model folder; give {key}.path (a "
                              f"model built from 'arch' is random unless its weights are given)")


def _check_lora(cfg: ExperimentConfig, family: Any) -> None:
    """LoRA adapters train a student, of a family whose students are Hugging Face models."""
    for key, m in model_sections(cfg):
        if key != "student" and getattr(m, "lora", None) is not None:
            raise ConfigError(f"{key}.lora: LoRA adapters train the student; a teacher is frozen (drop it)")
    if cfg.student is None or getattr(cfg.student, "lora", None) is None:
        return
    if not family.lora_students:
        allowed = ", ".join(f.name for f in FAMILIES if f.lora_students)
        raise ConfigError(f"student.lora: LoRA students are supported for tasks {allowed}; not yet for task "
                          f"{cfg.task} (train the whole student, or use train.gradient_checkpointing / "
                          f"teacher.precision to save memory)")


def _check_mixed_precision(cfg: ExperimentConfig) -> None:
    """fp16 autocast needs a GPU (accelerate refuses it on a CPU); bf16 autocast runs on CPUs too. The same for a
    teacher cast to fp16 (``teacher.precision``): CPU kernels for half precision are missing or slow."""
    import torch

    on_cpu = cfg.train.cpu or not torch.cuda.is_available()
    if getattr(cfg.teacher, "precision", "fp32") == "fp16" and on_cpu:
        where = "train.cpu is set" if cfg.train.cpu else "no CUDA device here"
        raise ConfigError(f"teacher.precision: fp16 needs a GPU ({where}); use bf16 (runs on CPUs) or fp32")
    if cfg.train.mixed_precision != "fp16":
        return
    if on_cpu:
        where = "train.cpu is set" if cfg.train.cpu else "no CUDA device here"
        raise ConfigError(f"train.mixed_precision: fp16 needs a GPU ({where}); use bf16 (CPU autocast) or no")


def _check_ensemble_reduce(cfg: ExperimentConfig) -> None:
    """A method that needs one way of combining ensemble members (MEAL V2: mean probabilities) is not left to the
    default; an explicit other choice is respected."""
    from distill.methods import METHODS

    if "reduce" in cfg.teacher.model_fields_set:
        return
    for m in cfg.methods:
        want = METHODS.get(m.name).ensemble_reduce
        if want is not None and want != cfg.teacher.reduce:
            raise ConfigError(f"teacher.reduce: method {m.name!r} distils the ensemble's mean {want}; set "
                              f"reduce: {want} (the default, {cfg.teacher.reduce}, averages logits)")


def _check_cache(cfg: ExperimentConfig, cache: Any = None, key: str = "teacher.cache") -> None:
    from distill.methods import METHODS

    cache = cfg.teacher.cache if cache is None else cache
    if cache.hidden and not getattr(cfg.family, "hidden_cache", False):
        raise ConfigError(f"{key}.hidden: stores a language model's final hidden states and output head; task "
                          f"{cfg.task} has no output head over a vocabulary to recompute its logits from (causal_lm "
                          "only); drop the key")
    if cache.hidden and key != "teacher.cache":
        raise ConfigError(f"{key}.hidden: a mixture combines its members' logits, which the chunked path never forms; "
                          "store the member's logits instead (drop the key)")
    if cache.path is None:
        raise ConfigError(f"{key}.path: required key is missing (the folder the cache is written to)")
    if cache.views > 1 and not cfg.family.augments(cfg):
        raise ConfigError(f"{key}.views: {cache.views} stored views need random augmentation, but "
                          "the run does not augment (data.augment)")
    if cache.topk is not None:
        classes = {m.name: METHODS.get(m.name) for m in cfg.methods}
        dense = [n for n, c in classes.items() if c.needs_teacher and not getattr(c, "accepts_topk_teacher", False)]
        if dense:
            raise ConfigError(f"{key}.topk: methods {dense} need the teacher's dense logits; drop topk "
                              "(a full-logits cache) or use methods that accept a top-k teacher (kd)")


def _check_mixture(cfg: ExperimentConfig, family: Any) -> None:
    """``teacher.mixture`` beside the rest of the file: alone in its section, a family that routes, a column for
    column routing and nowhere else, unique member names, caches where they can serve."""
    t, mix = cfg.teacher, cfg.teacher.mixture
    if not getattr(family, "teacher_mixture", False):
        raise ConfigError(f"teacher.mixture: not supported for task {cfg.task} yet (image_classification, "
                          "vector_classification, causal_lm)")
    if t.ensemble:
        raise ConfigError("teacher.mixture: give a mixture or an ensemble, not both")
    for k in ("arch", "path", "weights", "num_classes"):
        if getattr(t, k) is not None:
            raise ConfigError(f"teacher.{k}: a mixture's models are its members (teacher.mixture.members[i].{k})")
    if t.options:
        raise ConfigError("teacher.options: a mixture's models are its members (teacher.mixture.members[i].options)")
    if "reduce" in given_keys(t):
        raise ConfigError("teacher.reduce: combines an ensemble; a mixture's is teacher.mixture.reduce")
    seen: dict[str, int] = {}
    for i, m in enumerate(mix.members):
        if m.name is None:
            continue
        if m.name.strip().lstrip("-").isdigit():
            raise ConfigError(f"teacher.mixture.members[{i}].name: {m.name!r} is a number; numbers route by "
                              "position, give a word")
        if m.name in seen:
            raise ConfigError(f"teacher.mixture.members[{i}].name: {m.name!r} is also members[{seen[m.name]}]'s "
                              "name; give each member its own")
        seen[m.name] = i
    if mix.route == "column":
        if mix.column is None:
            raise ConfigError("teacher.mixture.column: required with route: column (the data field that names each "
                              "example's member)")
        if mix.router is not None:
            raise ConfigError("teacher.mixture.router: only read with route: learned or aggregate")
        if "reduce" in given_keys(mix):
            raise ConfigError("teacher.mixture.reduce: only read with route: aggregate")
    else:
        if mix.column is not None:
            raise ConfigError(f"teacher.mixture.column: only read with route: column (route: {mix.route} learns "
                              "its choice)")
        if mix.route == "learned" and "reduce" in given_keys(mix):
            raise ConfigError("teacher.mixture.reduce: only read with route: aggregate")
        if t.cache is not None:
            raise ConfigError(f"teacher.cache: the output of route: {mix.route} changes as its router learns; "
                              "cache the members instead (teacher.mixture.members[i].cache)")
    member_caches = [i for i, m in enumerate(mix.members) if m.cache is not None]
    if t.cache is not None and member_caches:
        raise ConfigError(f"teacher.mixture.members[{member_caches[0]}].cache: teacher.cache already stores the "
                          "routed outputs; give one or the other")
    for i in member_caches:
        _check_cache(cfg, mix.members[i].cache, f"teacher.mixture.members[{i}].cache")
    topk = [m.cache is not None and m.cache.topk is not None for m in mix.members]
    if any(topk) and not all(topk):
        i = topk.index(True)
        raise ConfigError(f"teacher.mixture.members[{i}].cache.topk: every member then gives top-k log-probabilities "
                          "(a mixture serves one kind of output); give each member a top-k cache, or none")


def set_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict; list items by index (``methods.1.weight``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
    key, _, text = assignment.partition("=")
    value = parse_yaml(text, f"--set {key}")
    parts = key.strip().split(".")
    node: Any = raw
    try:
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise TypeError
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise TypeError
    except (ValueError, IndexError, TypeError):
        raise ConfigError(f"--set {key}: no such place in the config (list items by index: methods.0.weight)") from None


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what a config never needs and a mistake or an attack produces: a key given
    twice in one mapping (PyYAML keeps the last silently) and anchors/aliases (``&a`` / ``*a``: an alias bomb
    expands to billions of nodes from a few lines)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias *{event.anchor} refused (configs take no anchors or aliases; repeat the value)",
                event.start_mark)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"anchor &{anchor} refused (configs take no anchors or aliases; repeat the value)",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a scalar, got {type(key).__name__}",
                    key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key].line + 1}); give each key "
                    "once", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """``text`` read with :class:`ConfigLoader`; any YAML problem is a one-line :class:`ConfigError` naming
    ``where`` and the line."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a small file")
    try:
        loader = ConfigLoader(text)  # a yaml.SafeLoader that also refuses duplicate keys and aliases
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a small file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as text ({type(e).__name__})") from None
    return parse_yaml(text, str(path))


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, any other value (lists included) replaces."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML experiment file, with its ``base:`` chain merged in (not validated).

    ``base: RELATIVE.yaml`` names another YAML file, relative to the file that names it; that file is read
    (``yaml.safe_load``, nothing imported) and deep-merged under this one (:func:`deep_merge`). Paths inside
    either file keep being resolved next to the file given to :func:`load_config`."""
    path = Path(path)
    if not path.exists():
        where = f"{_chain[-1]}: base" if _chain else str(path)
        raise ConfigError(f"{where}: {path}: no such file")
    raw = read_yaml(path)
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): a config is a mapping of keys, got {type(raw).__name__}")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or Path(base).is_absolute() or Path(base).suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: base: a relative path to another .yaml file, got {base!r}")
    target = (path.parent / base).resolve()
    chain = (*_chain, path.resolve())
    if target in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(target):], target))
        raise ConfigError(f"{path}: base: {base!r} makes a cycle ({cycle})")
    return deep_merge(load_raw(target, chain), raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    raw = load_raw(path)
    for assignment in overrides or []:
        set_override(raw, assignment)
    return parse_config(raw, base_dir=run_base_dir(path) or path.parent)


def run_base_dir(path: Path) -> str | None:
    """For a run folder's ``distill_config.json``: the folder of the config file the run was started from (kept
    in ``student_spec.json`` beside it), against which its relative data and weight paths resolve; else None."""
    spec = path.parent / "student_spec.json"
    if path.name != "distill_config.json" or not spec.is_file():
        return None
    try:
        base = json.loads(spec.read_text()).get("base_dir")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return base if isinstance(base, str) and Path(base).is_dir() else None
