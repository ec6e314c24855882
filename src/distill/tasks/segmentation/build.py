"""``task: semantic_segmentation``: images -> per-pixel class logits (TexMosaic from scikit-image's textures, or
folders of images and mask PNGs), mean IoU."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.core.family import Family, Loaded, register_family
from distill.tasks.segmentation.data import StreamedMasks, load_segmentation_data
from distill.tasks.segmentation.models import build_segmentation_model
from distill.tasks.segmentation.section import SegmentationData
from distill.tasks.segmentation.task import SemanticSegmentation, normalize_stats


@register_family
class SegmentationFamily(Family):
    name = "semantic_segmentation"
    summary = "images -> per-pixel class logits (TexMosaic textures, or images/ + masks/ PNG folders), mIoU"
    data_section = SegmentationData

    def model_archs(self) -> list[str]:
        from distill.tasks.segmentation.models import SEGMENTATION_MODELS

        return list(SEGMENTATION_MODELS)

    def model_table(self) -> dict[str, Any]:
        from distill.tasks.segmentation.models import SEGMENTATION_MODELS

        return SEGMENTATION_MODELS

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.segmentation.models import SEGMENTATION_MODELS, SUPPLIED

        return (SEGMENTATION_MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in SEGMENTATION_MODELS else None

    def check(self, cfg: Any) -> None:
        d = cfg.data
        if d.source == "folders" and not d.train:
            raise ValueError("data.train: source: folders needs a folder holding images/ and masks/")
        if d.source == "texmosaic" and (d.train or d.eval):
            raise ValueError("data.train: TexMosaic is built from scikit-image's textures; set data.source: folders "
                             "to read images/ and masks/ folders")
        if d.streaming and d.source != "folders":
            raise ValueError(f"data.streaming: reads the image and mask files of source: folders one pair at a time; "
                             f"source {d.source} is built in memory (set data.source: folders, or turn streaming off)")
        cache = getattr(cfg.teacher, "cache", None) if cfg.teacher is not None else None
        if d.crop_size is not None and cache is not None:
            raise ValueError("teacher.cache: stores one output per training image, but data.crop_size cuts a new "
                             "random crop every epoch; drop the cache (the teacher runs live) or data.crop_size")
        if d.resize != "shorter_side" and d.image_size is None:  # the default is written out in saved configs
            raise ValueError(f"data.resize: {d.resize} says how data.image_size resizes, but data.image_size is not "
                             "set (the images keep their size); set data.image_size or drop data.resize")
        if d.crop_size is not None and d.image_size is not None and d.crop_size > d.image_size:
            side = "the shorter side" if d.resize == "shorter_side" else "the side"
            raise ValueError(f"data.crop_size: {d.crop_size} px is larger than data.image_size ({d.image_size}), "
                             f"{side} of every resized image (data.resize: {d.resize})")
        if d.texmosaic.min_regions > d.texmosaic.max_regions:
            raise ValueError("data.texmosaic.min_regions: larger than data.texmosaic.max_regions")

    def load(self, cfg: Any) -> Loaded:
        train, evald = load_segmentation_data(cfg)
        d = cfg.data
        mean, std = normalize_stats(d.normalize)
        crop = d.crop_size
        several = train.crop_size is not None if isinstance(train, StreamedMasks) else train.sizes is not None
        if crop is None and several:  # resize: shorter_side gave the training images several sizes
            crop = d.image_size
            cache = getattr(cfg.teacher, "cache", None) if getattr(cfg, "teacher", None) is not None else None
            if cache is not None:
                raise ConfigError("teacher.cache: stores one output per training image, but with data.resize: "
                                  "shorter_side the training images have several sizes, so training cuts a new "
                                  f"random {d.image_size}-pixel square (data.image_size) every epoch; set data.resize: "
                                  "longer_side_pad (or stretch), or drop the cache")
        task = SemanticSegmentation(mean, std, train.num_classes, channels_last=d.channels_last, crop_size=crop,
                                    resize=d.resize if d.image_size is not None and d.source == "folders" else None)
        if isinstance(train, StreamedMasks):
            shape = train.input_shape
        else:
            shape = list(train.images.shape[1:])
            if train.sizes is not None:
                shape[1:] = [int(v) for v in train.sizes.min(0).values]
            if crop is not None and crop > min(shape[1:]):
                raise ConfigError(f"data.crop_size: {crop} px is larger than the training images ({shape[1]} x "
                                  f"{shape[2]})")
            shape = [shape[0], crop, crop] if crop is not None else shape
        return Loaded(task, train, evald, num_outputs=train.num_classes, info={"input_shape": shape})

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_segmentation_model(model_cfg, loaded.num_outputs, cfg.base_dir, key)

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"num_outputs": loaded.num_outputs, "input_shape": loaded.info.get("input_shape"),
                "mean": list(loaded.task.normalize.mean), "std": list(loaded.task.normalize.std)}
