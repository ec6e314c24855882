"""``task: super_resolution``: low-resolution images -> high-resolution images (CIFAR-10 and other image sets,
image folders or hr/ + lr/ pairs, texture crops), Y-channel PSNR and SSIM; ConvLoRA students (``student.conv_lora``)
are also saved merged."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.data.augment import RandomFlipRot
from distill.tasks.super_resolution.data import SRPairs, load_sr_data
from distill.tasks.super_resolution.models import build_sr_model
from distill.tasks.super_resolution.section import SuperResolutionData, SuperResolutionStudent
from distill.tasks.super_resolution.task import SuperResolution


@register_family
class SuperResolutionFamily(Family):
    name = "super_resolution"
    summary = "low-resolution -> high-resolution images (bicubic pairs: CIFAR-10, folders, textures), PSNR/SSIM"
    data_section = SuperResolutionData
    student_section = SuperResolutionStudent

    def model_archs(self) -> list[str]:
        from distill.tasks.super_resolution.models import SR_MODELS

        return list(SR_MODELS)

    def model_table(self) -> dict[str, Any]:
        from distill.tasks.super_resolution.models import SR_MODELS

        return SR_MODELS

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.super_resolution.models import SR_MODELS, SUPPLIED

        return (SR_MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in SR_MODELS else None

    def check(self, cfg: Any) -> None:
        d = cfg.data
        if d.source in ("images", "folders") and not d.train:
            raise ValueError(f"data.train: source: {d.source} needs a path")
        if d.patch_size is not None and d.source != "folders":
            raise ValueError(f"data.patch_size: cuts the images of source: folders; source {d.source} has fixed-size "
                             "images" + (" (data.textures.hr_size sets the crops)" if d.source == "textures" else ""))
        if d.patch_size is not None and d.patch_size % d.scale:
            raise ValueError(f"data.patch_size: {d.patch_size} does not divide by data.scale {d.scale}")
        if d.streaming and d.source != "folders":
            raise ValueError(f"data.streaming: reads the image files of source: folders one at a time; source "
                             f"{d.source} is held in memory (set data.source: folders, or turn streaming off)")
        cache = getattr(cfg.teacher, "cache", None) if cfg.teacher is not None else None
        if d.streaming and d.patch_size is not None and cache is not None:
            raise ValueError("teacher.cache: stores one output per training example, but data.streaming with "
                             "data.patch_size cuts a new random patch every epoch; drop the cache (the teacher runs "
                             "live) or turn data.streaming off (fixed tiles)")
        if d.source == "textures" and (d.train or d.eval):
            raise ValueError("data.train: texture crops come from scikit-image; set data.source: images or folders "
                             "to read files")

    def augments(self, cfg: Any) -> bool:
        return cfg.data is not None and bool(cfg.data.augment)

    def load(self, cfg: Any) -> Loaded:
        train, evald = load_sr_data(cfg)
        shape = list(train.lr.shape[1:]) if isinstance(train, SRPairs) else train.input_shape
        # data.augment: 90-degree rotations where every training input is square, flips only otherwise
        if isinstance(train, SRPairs) or train.patch_size is not None:
            square = shape[1] == shape[2]
        else:  # whole streamed images (their sizes may differ when read one per batch)
            square = all(h == w for h, w in train.sizes)
        augment = RandomFlipRot(rotate=square) if cfg.data.augment else None
        task = SuperResolution(cfg.data.scale, cfg.data.border, augment)
        return Loaded(task, train, evald, num_outputs=None, info={"scale": cfg.data.scale, "input_shape": shape})

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_sr_model(model_cfg, int(loaded.info.get("scale") or cfg.data.scale), cfg.base_dir, key)

    def after_fit(self, experiment: Any) -> None:
        """With ``student.conv_lora``: ``student_merged.safetensors``, the base architecture with W + dW."""
        from distill.models.conv_lora import ConvLoRA, merged_state_dict

        student = experiment.student
        if not any(isinstance(m, ConvLoRA) for m in student.modules()):
            return
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(student).items()}
        save_file(state, str(experiment.trainer.run_dir / "student_merged.safetensors"))

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"num_outputs": None, "scale": loaded.info.get("scale"), "input_shape": loaded.info.get("input_shape")}
