"""YAML experiment files, validated into the same objects the Python API builds.

A bad file fails with one line that names the key and what is allowed, e.g.
``config error: methods[1].temprature: unknown option for method 'kd'; allowed: ce_weight, kl_weight, ...``.
Components are chosen from registries by name; a config never imports code.
"""

from __future__ import annotations

import inspect
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormalizeConfig(_Strict):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class AugmentConfig(_Strict):
    crop_padding: int = Field(4, ge=0)
    flip: bool = True


class DataConfig(_Strict):
    train: str
    eval: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    train_per_class: int | None = Field(None, gt=0)
    eval_per_class: int | None = Field(None, gt=0)
    val_per_class: int | None = Field(None, gt=0)
    labeled_per_class: int | None = Field(None, gt=0)
    #: validation images per class drawn from the rest of ``train_split`` (outside the ``train_per_class`` subset)
    extra_val_per_class: int | None = Field(None, gt=0)
    #: images per class from the rest of ``train_split`` (outside the subset and the extra validation images)
    #: appended to the training set with their labels hidden (semi-supervised methods)
    extra_unlabeled_per_class: int | None = Field(None, gt=0)
    subset_seed: int = 0
    image_size: int | None = Field(None, gt=0)
    normalize: Literal["imagenet", "cifar10"] | NormalizeConfig = "imagenet"
    augment: AugmentConfig | None = AugmentConfig()
    cache_dir: str | None = None
    channels_last: bool = True


class TextAugmentConfig(_Strict):
    """``text.augment``: a transfer set of augmented, teacher-labelled copies of the training sentences (Tang et
    al. 2019; see :mod:`distill.data.text_augment`)."""

    copies: int = Field(4, ge=1)
    p_mask: float = Field(0.1, ge=0.0, le=1.0)
    p_replace: float = Field(0.1, ge=0.0, le=1.0)
    p_ngram: float = Field(0.25, ge=0.0, le=1.0)
    ngram_min: int = Field(1, ge=1)
    ngram_max: int = Field(5, ge=1)
    seed: int = 0


class TextDataConfig(_Strict):
    """Data of ``task: text_classification``: labelled-sentence files (SST ``<label> <sentence>`` lines,
    ``label<TAB>text`` TSV, or TSV/CSV with a header naming text/sentence and label columns), tokenised with a
    local Hugging Face tokenizer (``minilm``: the one packaged with all-MiniLM-L6-v2)."""

    train: str
    eval: str | None = None
    format: Literal["auto", "sst", "tsv", "csv"] = "auto"
    tokenizer: str = "minilm"
    max_length: int = Field(64, ge=2)
    #: compute the teacher's logits over the training set once and serve them by example index
    precompute_teacher: bool = True
    #: safetensors file to save the precomputed teacher logits to (and reuse when it exists)
    teacher_cache: str | None = None
    #: add augmented copies of the training sentences, labelled by the teacher only
    augment: TextAugmentConfig | None = None
    #: offline aspect answers, the teacher of method ``makd``: a safetensors file written by
    #: ``distill.methods.makd.AspectTargets.save`` for the training texts in file order (checked by fingerprint)
    aspects: str | None = None


class ModelConfig(_Strict):
    arch: str
    num_classes: int | None = Field(None, gt=0)
    weights: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from distill.models import MODELS, TEXT_MODELS
        from distill.models.gnn import GRAPH_MODELS

        if v not in MODELS and v not in TEXT_MODELS and v not in GRAPH_MODELS:
            known = sorted([*MODELS, *TEXT_MODELS, *GRAPH_MODELS])
            raise ValueError(f"unknown model {v!r}; allowed: {', '.join(known)}")
        return v


class TeacherCacheConfig(_Strict):
    """``teacher.cache``: serve the teacher's outputs from a cache on disk (see docs/cache.md)."""

    path: str
    topk: int | None = Field(None, gt=0)
    views: int = Field(1, gt=0)
    features: list[str] = Field(default_factory=list)
    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    build: Literal["never", "if_missing", "always"] = "if_missing"
    batch_size: int = Field(256, gt=0)
    verify: bool = True


class TeacherConfig(_Strict):
    arch: str | None = None
    weights: str | None = None
    num_classes: int | None = Field(None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    ensemble: list[ModelConfig] | None = None
    reduce: Literal["logits", "probs"] = "logits"
    cache: TeacherCacheConfig | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        return ModelConfig._known_arch(v) if v is not None else v

    def members(self) -> list[ModelConfig]:
        if self.ensemble:
            return list(self.ensemble)
        if self.arch is None:
            raise ConfigError("teacher: give 'arch' (and usually 'weights') or an 'ensemble' list")
        return [ModelConfig(arch=self.arch, weights=self.weights, num_classes=self.num_classes,
                            options=self.options)]


class MethodConfig(BaseModel):
    """``name`` picks a registered method; ``weight`` scales it; other keys are the method's options."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
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


class TrainSection(_Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    grad_accum: int = Field(1, gt=0)
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr_factor: float = Field(0.0, ge=0, le=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    early_stopping_metric: str | None = None
    early_stopping_min_delta: float = Field(0.0, ge=0)
    eval_every: int = Field(1, gt=0)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(0, ge=0)
    checkpoint_every_epochs: int = Field(1, ge=0)
    keep_checkpoints: int = Field(2, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False
    progress: bool = True
    max_steps: int | None = Field(None, gt=0)
    step_delay: float = Field(0.0, ge=0)
    # several processes and speed options (docs/ddp.md)
    find_unused_parameters: bool = True
    sync_batchnorm: bool = False
    broadcast_buffers: bool = True
    teacher_inference_mode: bool = False
    compile_student: bool = False


class LMDataConfig(_Strict):
    """Causal-LM data: a plain-text corpus (``text``, chunked into blocks with a fixed train/val split) or
    prompt/response JSONL files (``train_jsonl`` and optionally ``eval_jsonl``)."""

    text: str | None = None
    train_jsonl: str | None = None
    eval_jsonl: str | None = None
    block_size: int = Field(128, ge=2)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    max_tokens: int | None = Field(None, gt=0)
    max_length: int = Field(256, ge=2)
    train_blocks: int | None = Field(None, gt=0)
    eval_blocks: int | None = Field(None, gt=0)


class LMStudentConfig(_Strict):
    """A small Llama student with the tokenizer's vocabulary (``distill.llm.models.small_llama`` options), or a
    Hugging Face model directory (``path``). ``init_from_teacher`` copies teacher layers (equal widths only)."""

    path: str | None = None
    hidden_size: int = Field(256, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(704, gt=0)
    max_positions: int = Field(256, gt=0)
    init_from_teacher: bool = False
    teacher_layers: list[int] | None = None


class LMSection(_Strict):
    """The ``lm:`` section of a ``task: causal_lm`` run. ``tokenizer`` and ``teacher`` are a GGUF file or a Hugging
    Face model directory; ``topk_store`` serves a built offline top-k store instead of a live teacher."""

    tokenizer: str
    data: LMDataConfig
    student: LMStudentConfig = LMStudentConfig()
    teacher: str | None = None
    topk_store: str | None = None
    agreement: bool = True


class GraphSection(_Strict):
    """The graph task (``task: graph_node_classification``): ``data.train`` is a folder of Planetoid raw files
    (``ind.<dataset>.*``); teachers and students are ``graph_*`` models; training is full-batch on the nodes of
    ``train_on`` (``all`` for distillation terms over every node, labels visible on the training split only)."""

    dataset: Literal["cora", "citeseer", "pubmed"] = "cora"
    normalize_features: bool = True
    train_on: Literal["train", "all"] = "train"


class TextStudentConfig(_Strict):
    """A sentence-transformers student built from a teacher folder (default: the shipped all-MiniLM-L6-v2):
    ``static`` (its input word embeddings, mean-pooled) or ``truncated`` (its first ``num_layers`` layers)."""

    kind: Literal["static", "truncated"] = "static"
    num_layers: int = Field(2, ge=1)
    projection_dim: int | None = Field(None, gt=0)
    normalize: bool = True
    source: str | None = None


class EmbeddingSection(_Strict):
    """``task: embedding``: regress a sentence-transformers teacher's embeddings of unlabelled text (LEAF).
    Text files hold one text per line; the teacher's embeddings are computed once into ``teacher_cache``."""

    train_texts: str
    eval_texts: str | None = None
    teacher: str | None = None
    teacher_cache: str | None = None
    student: TextStudentConfig = TextStudentConfig(projection_dim=384)
    max_length: int = Field(128, gt=0)


class RankingSection(_Strict):
    """``task: ranking``: (query, positive, negatives) groups from a collection (``cranfield`` folder as shipped,
    or ``docs``/``queries`` TSV or JSONL + TREC ``qrels``). With ``teacher_scores`` (lines ``qid docid score``)
    the negatives of a query are drawn from its scored, non-relevant documents; without, from its BM25 top
    ``bm25_depth``. ``train_queries`` is a file of query ids, one per line (default: every judged query)."""

    cranfield: str | None = None
    docs: str | None = None
    queries: str | None = None
    qrels: str | None = None
    train_queries: str | None = None
    teacher_scores: str | None = None
    num_negatives: int = Field(3, gt=0)
    bm25_depth: int = Field(30, gt=0)
    student: TextStudentConfig = TextStudentConfig()
    query_length: int = Field(64, gt=0)
    doc_length: int = Field(256, gt=0)


class ExperimentConfig(_Strict):
    task: Literal["image_classification", "text_classification", "graph_node_classification", "causal_lm",
                  "embedding", "ranking"] = "image_classification"
    graph: GraphSection | None = None
    output_dir: str = "runs/experiment"
    seed: int = 0
    deterministic: bool = False
    data: DataConfig | None = None
    text: TextDataConfig | None = None
    student: ModelConfig | None = None
    embedding: EmbeddingSection | None = None
    ranking: RankingSection | None = None
    teacher: TeacherConfig | None = None
    lm: LMSection | None = None
    methods: list[MethodConfig] = Field(min_length=1)
    train: TrainSection = TrainSection()
    base_dir: str | None = Field(None, exclude=True)


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
    return create_model(f"{name}_options", __config__=ConfigDict(extra="forbid"), **fields)


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


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = _loc(tuple(err["loc"])) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    msg = _clean(err["msg"])
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None) -> ExperimentConfig:
    """Validate a dict (from YAML or Python) into an :class:`ExperimentConfig`, or raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"(top level): a config is a mapping of keys, got {type(raw).__name__}")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    _check_task_sections(cfg)
    labels = set()
    for i, m in enumerate(cfg.methods):
        validate_method_options(m.name, m.options(), f"methods[{i}]")
        label = m.label or m.name
        if label in labels:
            raise ConfigError(f"methods[{i}].label: {label!r} is used twice; give each repeated method a label")
        labels.add(label)
    from distill.methods import METHODS

    _check_text_task(cfg)
    if any(METHODS.get(m.name).needs_teacher for m in cfg.methods) and not _has_teacher(cfg):
        names = [m.name for m in cfg.methods if METHODS.get(m.name).needs_teacher]
        raise ConfigError(f"teacher: required key is missing (methods {names} need a teacher)")
    if cfg.teacher is not None and cfg.teacher.cache is not None:
        _check_cache(cfg)
    if cfg.teacher is not None and cfg.teacher.ensemble:
        _check_ensemble_reduce(cfg)
    if cfg.train.schedule == "step" and not cfg.train.milestones:
        raise ConfigError("train.milestones: the 'step' schedule needs milestones (epochs), e.g. [30, 40]")
    _check_graph_task(cfg)
    _check_extra_splits(cfg)
    cfg.base_dir = str(base_dir) if base_dir is not None else None
    return cfg


def _check_extra_splits(cfg: ExperimentConfig) -> None:
    """``data.extra_*_per_class`` draw from outside the training subset, so there must be one."""
    d = cfg.data
    if d is None or not (d.extra_val_per_class or d.extra_unlabeled_per_class):
        return
    key = "extra_val_per_class" if d.extra_val_per_class else "extra_unlabeled_per_class"
    if d.train_per_class is None:
        raise ConfigError(f"data.{key}: draws from outside the training subset; set data.train_per_class")
    if d.extra_val_per_class and d.val_per_class:
        raise ConfigError("data.extra_val_per_class: give one validation split, this or data.val_per_class")


def _check_text_task(cfg: ExperimentConfig) -> None:
    if cfg.task != "text_classification" or cfg.text is None:
        return
    _check_text_aspects(cfg)
    if cfg.text.augment is None:
        return
    a = cfg.text.augment
    if a.p_mask + a.p_replace > 1.0:
        raise ConfigError(f"text.augment.p_mask: p_mask + p_replace must be <= 1, got {a.p_mask + a.p_replace}")
    if a.ngram_min > a.ngram_max:
        raise ConfigError(f"text.augment.ngram_min: {a.ngram_min} is above ngram_max {a.ngram_max}")
    from distill.methods import METHODS

    if not any(METHODS.get(m.name).needs_teacher for m in cfg.methods):
        raise ConfigError("text.augment: the augmented copies carry no label, only a teacher's outputs; add a "
                          "method that uses the teacher (e.g. kd or lsf_idm) or drop text.augment")


def _check_text_aspects(cfg: ExperimentConfig) -> None:
    """``text.aspects`` is the teacher of ``makd`` and of nothing else."""
    from distill.methods import METHODS
    from distill.methods.makd import MultiAspectKD

    assert cfg.text is not None
    makd = [m.name for m in cfg.methods if METHODS.get(m.name) is MultiAspectKD]
    others = [m.name for m in cfg.methods if METHODS.get(m.name).needs_teacher and m.name not in makd]
    if makd and cfg.text.aspects is None:
        raise ConfigError(f"text.aspects: required by method {makd[0]!r} (a file of aspect answers scored on the "
                          "training texts; see docs/text.md)")
    if cfg.text.aspects is None:
        return
    if not makd:
        raise ConfigError("text.aspects: aspect answers are the teacher of method 'makd' only; add it or drop "
                          "text.aspects")
    if others:
        raise ConfigError(f"text.aspects: methods {others} need a teacher model's logits, which aspect answers "
                          "do not give; run them in another experiment")
    if cfg.teacher is not None:
        raise ConfigError("teacher: text.aspects already serves as makd's teacher; drop the teacher section")
    if cfg.text.augment is not None:
        raise ConfigError("text.augment: the augmented copies have no aspect answers; drop text.augment when "
                          "text.aspects is set")


def _check_ensemble_reduce(cfg: ExperimentConfig) -> None:
    """A method that needs one way of combining ensemble members (MEAL V2: mean probabilities) is not left to the
    default; an explicit other choice is respected."""
    from distill.methods import METHODS

    assert cfg.teacher is not None
    if "reduce" in cfg.teacher.model_fields_set:
        return
    for m in cfg.methods:
        want = METHODS.get(m.name).ensemble_reduce
        if want is not None and want != cfg.teacher.reduce:
            raise ConfigError(f"teacher.reduce: method {m.name!r} distils the ensemble's mean {want}; set "
                              f"reduce: {want} (the default, {cfg.teacher.reduce}, averages logits)")


def _check_cache(cfg: ExperimentConfig) -> None:
    from distill.methods import METHODS

    cache = cfg.teacher.cache
    if cache.views > 1 and (cfg.data is None or cfg.data.augment is None):
        raise ConfigError(f"teacher.cache.views: {cache.views} stored views need random augmentation, but "
                          "data.augment is off")
    if cache.topk is not None:
        classes = {m.name: METHODS.get(m.name) for m in cfg.methods}
        dense = [n for n, c in classes.items() if c.needs_teacher and not getattr(c, "accepts_topk_teacher", False)]
        if dense:
            raise ConfigError(f"teacher.cache.topk: methods {dense} need the teacher's dense logits; drop topk "
                              "(a full-logits cache) or use methods that accept a top-k teacher (kd)")


def _check_graph_task(cfg: ExperimentConfig) -> None:
    from distill.models.gnn import GRAPH_MODELS

    graph_task = cfg.task == "graph_node_classification"
    if cfg.graph is not None and not graph_task:
        raise ConfigError("graph: only used with task: graph_node_classification")
    if graph_task and cfg.graph is None:
        cfg.graph = GraphSection()
    if cfg.task not in ("image_classification", "graph_node_classification") or cfg.student is None:
        return
    models = [("student.arch", cfg.student.arch)]
    if cfg.teacher is not None:
        models += [(f"teacher.ensemble[{i}].arch" if cfg.teacher.ensemble else "teacher.arch", m.arch)
                   for i, m in enumerate(cfg.teacher.members())]
    for where, arch in models:
        if graph_task != (arch in GRAPH_MODELS):
            allowed = sorted(GRAPH_MODELS) if graph_task else "an image model"
            raise ConfigError(f"{where}: {arch!r} does not fit task {cfg.task!r}; allowed: {allowed}")


#: per task: the top-level sections it requires, and the ones it may have (every other section must be absent)
TASK_SECTIONS: dict[str, tuple[set[str], set[str]]] = {
    "image_classification": ({"data", "student"}, {"data", "student", "teacher"}),
    "graph_node_classification": ({"data", "student"}, {"data", "student", "teacher", "graph"}),
    "text_classification": ({"text", "student"}, {"text", "student", "teacher"}),
    "causal_lm": ({"lm"}, {"lm"}),
    "embedding": ({"embedding"}, {"embedding"}),
    "ranking": ({"ranking"}, {"ranking"}),
}
_ALL_SECTIONS = ("data", "student", "teacher", "text", "graph", "lm", "embedding", "ranking")


def _has_teacher(cfg: ExperimentConfig) -> bool:
    if cfg.task == "causal_lm":
        return cfg.lm is not None and bool(cfg.lm.teacher or cfg.lm.topk_store)
    if cfg.task in ("embedding", "ranking"):
        return True  # their sections name the teacher (default: the shipped all-MiniLM-L6-v2)
    if cfg.task == "text_classification" and cfg.text is not None and cfg.text.aspects is not None:
        return True
    return cfg.teacher is not None


def _check_task_sections(cfg: ExperimentConfig) -> None:
    """Each task reads its own sections: say which required one is missing or which one does not belong."""
    required, allowed = TASK_SECTIONS[cfg.task]
    for key in _ALL_SECTIONS:
        present = getattr(cfg, key) is not None
        if key in required and not present:
            raise ConfigError(f"{key}: required key is missing (task: {cfg.task} reads its settings there)")
        if present and key not in allowed:
            raise ConfigError(f"{key}: not used with task: {cfg.task}; its settings go under "
                              f"{', '.join(sorted(required))}")
    if cfg.task == "causal_lm" and not (cfg.lm.data.text or cfg.lm.data.train_jsonl):
        raise ConfigError("lm.data: give 'text' (a plain-text corpus) or 'train_jsonl' (prompt/response lines)")
    if cfg.task == "ranking":
        r = cfg.ranking
        if r.cranfield is None and None in (r.docs, r.queries, r.qrels):
            raise ConfigError("ranking: give 'cranfield' (a folder) or all of 'docs', 'queries' and 'qrels'")




def set_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict; list items by index (``methods.1.weight``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
    key, _, text = assignment.partition("=")
    value = yaml.safe_load(text)
    parts = key.strip().split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{path}: not valid YAML at {where}: {getattr(e, 'problem', e)}") from None


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
    raw = _read_yaml(path)
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
    return parse_config(raw, base_dir=path.parent)
