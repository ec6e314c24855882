"""Build the objects of a run (data, task, student, teacher, methods, trainer) from a validated config.

This is the only place where names from a config become objects; everything it builds is also public and
can be built by hand from Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from distill.config import ConfigError, ExperimentConfig, MethodConfig, ModelConfig
from distill.core.compose import Composite
from distill.core.safe_pickle import config_key
from distill.core.teachers import EnsembleTeacher, FrozenTeacher, TeacherSource
from distill.data.augment import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.data.images import ImageArrays, load_images
from distill.methods import METHODS
from distill.models import build_model
from distill.models.weights import load_weights_into
from distill.tasks.classification import ImageClassification
from distill.train.distributed import main_process_first
from distill.train.evaluate import evaluate_model
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer, seed_everything

__all__ = ["Experiment", "build_experiment", "evaluate_model", "resolve_path"]

ASSETS = Path(__file__).resolve().parent / "assets"


def resolve_path(value: str, base_dir: str | None = None) -> Path:
    """``builtin:NAME`` is a file shipped in the package; a relative path is looked up next to the config
    file first, then in the working directory."""
    if value.startswith("builtin:"):
        path = ASSETS / value.removeprefix("builtin:")
        if not path.exists():
            shipped = ", ".join(sorted(p.name for p in ASSETS.iterdir() if not p.name.startswith(".")))
            raise ConfigError(f"{value}: no such built-in file; shipped: {shipped}")
        return path
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        return Path(base_dir) / path
    return path


def build_method(cfg: MethodConfig) -> nn.Module:
    return METHODS.get(cfg.name)(**cfg.options())


def build_methods(cfgs: list[MethodConfig]) -> Composite:
    methods = {(m.label or m.name): build_method(m) for m in cfgs}
    weights = {(m.label or m.name): m.weight for m in cfgs}
    return Composite(methods, weights)


def build_model_from_config(cfg: ModelConfig, num_classes: int, base_dir: str | None,
                            key: str = "model") -> nn.Module:
    """``key`` is where ``cfg`` sits in the config (``student``, ``teacher``, ``teacher.ensemble[1]``): a refused
    file is reported as ``<key>.weights: <file>: <reason>`` (``<key>: ...`` for a model folder named in options)."""
    with config_key(key):
        model = build_model(cfg.arch, num_classes=cfg.num_classes or num_classes, **cfg.options)
    if cfg.weights:
        with config_key(f"{key}.weights"):
            load_weights_into(model, resolve_path(cfg.weights, base_dir))
    return model


def teacher_keys(cfg: ExperimentConfig) -> list[str]:
    """The config key of each teacher member: ``teacher``, or ``teacher.ensemble[i]``."""
    assert cfg.teacher is not None
    return [f"teacher.ensemble[{i}]" for i in range(len(cfg.teacher.ensemble))] if cfg.teacher.ensemble \
        else ["teacher"]


def build_teacher(cfg: ExperimentConfig, num_classes: int) -> TeacherSource | None:
    if cfg.teacher is None:
        return None
    models = [build_model_from_config(m, num_classes, cfg.base_dir, key)
              for m, key in zip(cfg.teacher.members(), teacher_keys(cfg), strict=True)]
    if len(models) == 1 and not cfg.teacher.ensemble:
        return FrozenTeacher(models[0])
    return EnsembleTeacher(models, reduce=cfg.teacher.reduce)


def open_teacher_cache(cfg: ExperimentConfig, teacher: TeacherSource, task: ImageClassification,
                       train: ImageArrays) -> TeacherSource:
    """``teacher.cache``: open (building it first if missing, rank 0 only under DDP) the cache of ``teacher`` on
    ``train``; a cache of augmented views also becomes the task's augmentation-parameter source."""
    import os

    import torch

    from distill.cache import CacheSettings, ensure_teacher_cache

    c = cfg.teacher.cache
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # start the process group so that rank 0 alone builds
        from accelerate import PartialState

        PartialState(cpu=cfg.train.cpu)
    settings = CacheSettings(topk=c.topk, views=c.views, features=tuple(c.features), seed=c.seed, dtype=c.dtype)
    device = "cuda" if torch.cuda.is_available() and not cfg.train.cpu else "cpu"
    with config_key("teacher.cache.path"):
        cache = ensure_teacher_cache(Path(c.path).expanduser(), teacher, task, train, settings, build=c.build,
                                     verify=c.verify, batch_size=c.batch_size, device=device)
    if cache.augmented:
        task.augment_source = cache
    return cache


def load_split(path: str, split: str, per_class: int | None, seed: int, cfg: ExperimentConfig) -> ImageArrays:
    d = cfg.data
    data = load_images(resolve_path(path, cfg.base_dir), split=split, image_size=d.image_size,
                       cache_dir=d.cache_dir)
    return data.balanced_subset(per_class, seed) if per_class else data


def build_task(cfg: ExperimentConfig) -> ImageClassification:
    d = cfg.data
    if d.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif d.normalize == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = d.normalize.mean, d.normalize.std
    augment = RandomCropFlip(padding=d.augment.crop_padding, flip=d.augment.flip) if d.augment else None
    return ImageClassification(mean, std, augment, channels_last=d.channels_last)


def train_config(cfg: ExperimentConfig) -> TrainConfig:
    t = cfg.train.model_dump()
    t["betas"] = tuple(t["betas"])
    return TrainConfig(seed=cfg.seed, deterministic=cfg.deterministic, **t)


@dataclass
class Experiment:
    config: ExperimentConfig
    task: ImageClassification
    train_data: ImageArrays
    eval_data: ImageArrays | None
    val_data: ImageArrays | None
    student: nn.Module
    teacher: TeacherSource | None
    methods: Composite
    module: DistillModule
    trainer: Trainer

    def fit(self, resume: bool = True) -> dict[str, Any]:
        return self.trainer.fit(resume=resume)


def build_experiment(cfg: ExperimentConfig, output_dir: str | Path | None = None) -> Experiment:
    if cfg.task == "causal_lm":
        from distill.llm.experiment import build_lm_experiment

        return build_lm_experiment(cfg, output_dir)
    if cfg.task in ("embedding", "ranking"):  # text tasks: distill.text.experiment (needs the 'retrieval' extra)
        from distill.text.experiment import build_text_experiment

        return build_text_experiment(cfg, output_dir)  # type: ignore[return-value]
    if cfg.task == "text_classification":
        from distill.experiment_text import build_text_experiment as build_text_classification

        return build_text_classification(cfg, output_dir)
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.task == "graph_node_classification":
        from distill.graph.experiment import build_graph_experiment

        return build_graph_experiment(cfg, output_dir)
    d = cfg.data
    with main_process_first():  # several processes: rank 0 decodes (and fills data.cache_dir), the others then read
        with config_key("data.train"):
            train = load_split(d.train, d.train_split, d.train_per_class, d.subset_seed, cfg)
        with config_key("data.eval"):
            evald = load_split(d.eval, d.eval_split, d.eval_per_class, d.subset_seed, cfg) if d.eval else None
    if evald is not None and evald.classes != train.classes:
        raise ConfigError(f"data.eval: its classes {evald.classes[:5]}... differ from data.train's")
    val = None
    if d.val_per_class:
        val, train = train.split_off(d.val_per_class, d.subset_seed + 1)
    if d.labeled_per_class:
        train = train.hide_labels(d.labeled_per_class, d.subset_seed + 2)
    task = build_task(cfg)
    student = build_model_from_config(cfg.student, train.num_classes, cfg.base_dir, "student")
    teacher = build_teacher(cfg, train.num_classes)
    if teacher is not None and cfg.teacher.cache is not None:
        teacher = open_teacher_cache(cfg, teacher, task, train)
    methods = build_methods(cfg.methods)
    module = DistillModule(student, methods, teacher, task)
    run_dir = Path(output_dir or cfg.output_dir)
    trainer = Trainer(module, train, evald, train_config(cfg), run_dir, val_data=val)
    return Experiment(cfg, task, train, evald, val, student, teacher, methods, module, trainer)
