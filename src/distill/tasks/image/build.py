"""``task: image_classification``: images in memory, random crop and flip with explicit randomness, top-k accuracy."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.common import class_names
from distill.tasks.image.data import build_image_task, load_image_data
from distill.tasks.image.models import build_image_model
from distill.tasks.image.section import ImageData


@register_family
class ImageFamily(Family):
    name = "image_classification"
    summary = ("images -> class logits (CIFAR folders, tar archives, npz, CIFAR python batches; image folders, "
               "parquet, JSONL, CSV, Arrow through datasets)")
    data_section = ImageData
    arch_prefixes = ("timm:",)
    teacher_mixture = True

    def model_archs(self) -> list[str]:
        from distill.models import MODELS

        return list(MODELS)

    def model_table(self) -> dict[str, Any]:
        from distill.models import MODELS

        return MODELS

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.models import MODELS
        from distill.tasks.image.models import SUPPLIED

        return (MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in MODELS else None

    def check(self, cfg: Any) -> None:
        """``data.extra_*_per_class`` draw from outside the training subset, so there must be one."""
        d = cfg.data
        if d.streaming and d.format == "auto":
            raise ValueError("data.streaming: reads images per batch from a Hugging Face datasets table; set "
                             "data.format to one of imagefolder, parquet, jsonl, csv, arrow")
        if d.streaming and d.extra_unlabeled_per_class:
            raise ValueError("data.extra_unlabeled_per_class: not available with data.streaming (the unlabelled "
                             "images are appended in memory); turn data.streaming off")
        if not (d.extra_val_per_class or d.extra_unlabeled_per_class):
            return
        key = "extra_val_per_class" if d.extra_val_per_class else "extra_unlabeled_per_class"
        if d.train_per_class is None:
            raise ValueError(f"data.{key}: draws from outside the training subset; set data.train_per_class")
        if d.extra_val_per_class and d.val_per_class:
            raise ValueError("data.extra_val_per_class: give one validation split, this or data.val_per_class")

    def augments(self, cfg: Any) -> bool:
        return cfg.data is not None and cfg.data.augment is not None

    def load(self, cfg: Any) -> Loaded:
        train, evald, val = load_image_data(cfg)
        return Loaded(build_image_task(cfg.data), train, evald, val, num_outputs=train.num_classes)

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_image_model(model_cfg, loaded.num_outputs, cfg.base_dir, key, loaded)

    def export_formats(self, cfg: Any) -> list[str]:
        from distill.export import hf_folder_student

        return ["safetensors", "onnx"] + (["hf"] if hf_folder_student(cfg) else [])

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"num_outputs": loaded.num_outputs, "input_shape": list(loaded.train.images.shape[1:]),
                "mean": list(loaded.task.normalize.mean),
                "std": list(loaded.task.normalize.std), **class_names(loaded)}

    def onnx_inputs(self, cfg: Any, loaded: Loaded, student: nn.Module) -> Any:
        import torch

        from distill.export.onnx import OnnxSpec

        shape = loaded.info.get("input_shape") or [3, cfg.data.image_size or 32, cfg.data.image_size or 32]
        mean, std = loaded.info.get("mean"), loaded.info.get("std")
        note = (f"`pixels`: float32 N x {' x '.join(map(str, shape))}, scaled to [0, 1] then normalised with "
                f"mean {mean} and std {std}; output `logits`: N x {loaded.num_outputs}")
        return OnnxSpec(student, {"pixels": torch.rand(2, *shape)}, {"pixels": {0: "batch"}, "logits": {0: "batch"}},
                        note=note)
