"""The configuration of a continual / domain-shift run (a stream config file), validated once here.

    stream:   {dataset: digits, kind: class_incremental, tasks: [[0, 1], [2, 3], ...]}
              {dataset: digits, kind: domains, domains: [identity, blur], heldout: [invert]}
              {dataset: digits, kind: novel_classes, known: [0, 1, 2, 3, 4], novel: [5, 6, 7, 8, 9]}
    learner:  {name: onpro, options: {...}}     # a learner of distill.streams.learners.LEARNERS; options are
                                                # checked against its constructor
    train:    {epochs_per_task: 1, batch_size: 10, optimizer: adam, lr: 5e-4, checkpoint_every: 20}
    seed: 0
    deterministic: true
    output_dir: runs/continual/onpro

A bad file fails with one line naming the key (``stream.tasks: required for kind class_incremental``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from distill.config import Strict, builder_options_model, format_validation_error, read_yaml
from distill.core.errors import ConfigError
from distill.streams.transforms import IMAGE_DOMAINS


class StreamSection(Strict):
    dataset: str = "digits"
    #: keyword options of the dataset's loader (e.g. ``path``, ``train_per_class`` of ``cifar10_jpeg``)
    dataset_options: dict[str, Any] = {}
    #: the seed of the dataset's train/test split (fixed across run seeds)
    data_seed: int = 0
    kind: Literal["class_incremental", "domains", "novel_classes"]
    tasks: list[list[Annotated[int, Field(ge=0)]]] | None = None
    domains: list[str] | None = None
    heldout: list[str] = []
    known: list[Annotated[int, Field(ge=0)]] | None = None
    novel: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _kind_keys(self) -> StreamSection:
        need = {"class_incremental": ("tasks",), "domains": ("domains",), "novel_classes": ("known", "novel")}
        for key in need[self.kind]:
            if not getattr(self, key):
                raise ValueError(f"{key}: required for kind {self.kind}")
        for key in {"tasks", "domains", "known", "novel"} - set(need[self.kind]):
            if getattr(self, key):
                raise ValueError(f"{key}: not used by kind {self.kind}")
        if self.heldout and self.kind != "domains":
            raise ValueError(f"heldout: not used by kind {self.kind}")
        for key in ("domains", "heldout"):
            for d in getattr(self, key) or []:
                if d not in IMAGE_DOMAINS:
                    raise ValueError(f"{key}: unknown domain {d!r}; allowed: {', '.join(IMAGE_DOMAINS)}")
        return self


class LearnerSection(Strict):
    name: str
    options: dict[str, Any] = {}


class StreamTrain(Strict):
    epochs_per_task: Annotated[int, Field(gt=0)] = 1
    batch_size: Annotated[int, Field(gt=0)] = 10
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 5e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    #: write a checkpoint every this many optimiser steps (0: only at the end of each task)
    checkpoint_every: Annotated[int, Field(ge=0)] = 0
    keep: Annotated[int, Field(ge=1)] = 2
    eval_batch_size: Annotated[int, Field(gt=0)] = 512


class StreamConfig(Strict):
    stream: StreamSection
    learner: LearnerSection
    train: StreamTrain = StreamTrain()
    seed: int = 0
    deterministic: bool = True
    output_dir: str = "runs/continual"


def parse_stream_config(raw: Any) -> StreamConfig:
    """A stream config dict validated (learner options against the learner's constructor); a
    :class:`~distill.core.errors.ConfigError` naming the key otherwise."""
    from distill.streams.registry import LEARNERS

    if not isinstance(raw, dict):
        raise ConfigError("(top level): a stream config is a mapping")
    try:
        cfg = StreamConfig.model_validate(raw)
    except ValidationError as e:  # a section validator's "key: ..." joins the section's name: "stream.key: ..."
        raise ConfigError(re.sub(r"^(\w+): (\w+): ", r"\1.\2: ", format_validation_error(e))) from None
    from distill.streams.data import DATASETS

    if cfg.stream.dataset not in DATASETS:
        raise ConfigError(f"stream.dataset: unknown dataset {cfg.stream.dataset!r}; allowed: {', '.join(DATASETS)}")
    loader = builder_options_model(DATASETS[cfg.stream.dataset], frozenset({"data_seed"}))
    try:
        cfg.stream.dataset_options = loader.model_validate(cfg.stream.dataset_options).model_dump(exclude_unset=True)
    except ValidationError as e:
        raise ConfigError("stream.dataset_options." + format_validation_error(e)) from None
    if cfg.learner.name not in LEARNERS:
        raise ConfigError(f"learner.name: unknown learner {cfg.learner.name!r}; allowed: {', '.join(sorted(LEARNERS))}")
    model = builder_options_model(LEARNERS[cfg.learner.name], frozenset({"num_classes", "channels"}))
    try:
        cfg.learner.options = model.model_validate(cfg.learner.options).model_dump()
    except ValidationError as e:
        raise ConfigError("learner.options." + format_validation_error(e)) from None
    return cfg


def load_stream_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StreamConfig:
    raw = read_yaml(path)
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **overrides}
    return parse_stream_config(raw)
