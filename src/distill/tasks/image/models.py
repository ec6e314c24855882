"""The image family's models: the CIFAR architectures of :mod:`distill.models` by name, ``timm:<name>`` (a timm
model, when timm is installed) or ``path``: a local Hugging Face image classifier with its trained head."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn

from distill.config import NEW_HEAD, RANDOM_WEIGHTS, ConfigError
from distill.core.safe_pickle import config_key
from distill.models import MODELS, build_model
from distill.tasks.common import (
    call_builder,
    check_num_classes,
    existing_folder,
    load_model_weights,
    validate_model_options,
)

#: what the family passes to every builder itself
SUPPLIED = ("num_classes",)
#: ``arch: timm:<name>``: a model of the timm library (imported only when such an arch is asked for)
TIMM_PREFIX = "timm:"


def timm_create_model(key: str) -> Any:
    """``timm.create_model``; without timm a one-line :class:`ConfigError` says how to install it."""
    timm = sys.modules.get("timm")
    if timm is None:
        try:
            import timm
        except ImportError:
            raise ConfigError(f"{key}.arch: timm is not installed: pip install timm (arch 'timm:<name>' builds "
                              "timm models; install a timm wheel that matches your torch)") from None
    return timm.create_model


def timm_model(name: str, num_classes: int, key: str) -> nn.Module:
    """``timm.create_model(name, num_classes=...)`` without pretrained weights (no network: give ``weights``)."""
    create = timm_create_model(key)
    try:
        model = create(name, pretrained=False, num_classes=num_classes)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}.arch: timm cannot build {name!r}: {first}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}.arch: timm.create_model({name!r}) returned {type(model).__name__}, not a model")
    return model


def build_image_model(model_cfg: Any, num_classes: int, base_dir: str | None, key: str,
                      loaded: Any = None) -> nn.Module:
    if model_cfg.path is not None:
        if model_cfg.arch is not None:
            raise ConfigError(f"{key}.arch: give 'arch' or 'path' (a local Hugging Face image classifier), not both")
        return load_image_folder(model_cfg, num_classes, base_dir, key, loaded)
    if model_cfg.arch is None:
        raise ConfigError(f"{key}.arch: required key is missing; allowed: {', '.join(sorted(MODELS))}, "
                          f"{TIMM_PREFIX}<name> (or give 'path')")
    num_classes = check_num_classes(model_cfg, num_classes, key)
    if model_cfg.arch.startswith(TIMM_PREFIX):
        if model_cfg.options:
            raise ConfigError(f"{key}.options: timm models take no options here (the name picks the variant)")
        name = model_cfg.arch.removeprefix(TIMM_PREFIX)
        if not name:
            raise ConfigError(f"{key}.arch: give the timm model name after '{TIMM_PREFIX}', e.g. timm:resnet18")
        return load_model_weights(timm_model(name, num_classes, key), model_cfg, base_dir, key)
    if model_cfg.arch not in MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task image_classification; "
                          f"allowed: {', '.join(sorted(MODELS))}, {TIMM_PREFIX}<name> (or give 'path')")
    options = validate_model_options(MODELS[model_cfg.arch], model_cfg.options, f"{key}.options", model_cfg.arch,
                                     SUPPLIED)
    side = _square_side(loaded)
    sized = "image_size" in inspect.signature(MODELS[model_cfg.arch]).parameters
    if sized and side is None and _square_side(loaded, square=False) is not None:
        shape = tuple(loaded.train.images.shape[-2:])
        raise ConfigError(f"data.image_size: {model_cfg.arch} reads square images; the training images are "
                          f"{shape[0]} x {shape[1]} (set data.image_size)")
    if sized and side is not None:
        given = options.get("image_size")
        if given is not None and given != side:
            raise ConfigError(f"{key}.options.image_size: {given}, but the data's images are {side} x {side} px; "
                              "drop the option (it follows the data) or set data.image_size")
        options["image_size"] = side  # a ViT's position table follows the data (data.image_size)
    model = call_builder(build_model, key, model_cfg.arch, num_classes=num_classes, **options)
    return load_model_weights(model, model_cfg, base_dir, key)


def _square_side(loaded: Any, square: bool = True) -> int | None:
    """The side of the training images when they are held in memory and square (``square``; else their width);
    None otherwise."""
    images = getattr(getattr(loaded, "train", None), "images", None)
    if isinstance(images, torch.Tensor) and images.dim() == 4 and (images.shape[-1] == images.shape[-2] or not square):
        return int(images.shape[-1])
    return None


def load_image_folder(model_cfg: Any, num_classes: int, base_dir: str | None, key: str, loaded: Any) -> nn.Module:
    """A Hugging Face ``AutoModelForImageClassification`` folder; its image processor's normalisation and size must
    be the run's (``data.normalize``, ``data.image_size``)."""
    from distill.models.hf import FolderError, check_image_processor, load_hf_classifier

    folder = existing_folder(model_cfg.path, base_dir, f"{key}.path")
    num_classes = check_num_classes(model_cfg, num_classes, key)
    task = getattr(loaded, "task", None)
    train = getattr(loaded, "train", None)
    classes = getattr(train, "classes", None)
    try:
        if task is not None and train is not None:
            check_image_processor(folder, tuple(task.normalize.mean), tuple(task.normalize.std),
                                  int(train.images.shape[-1]))
        with config_key(f"{key}.path"):
            model = load_hf_classifier(folder, "image_classification", num_classes,
                                       new_head=model_cfg.weights == NEW_HEAD,
                                       weights_given=model_cfg.weights not in (None, NEW_HEAD, RANDOM_WEIGHTS),
                                       class_names=[str(c) for c in classes] if classes else None)
    except FolderError as e:
        raise ConfigError(f"{key}.path: {e}") from None
    return load_model_weights(model, model_cfg, base_dir, key)
