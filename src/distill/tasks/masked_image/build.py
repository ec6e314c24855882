"""``task: masked_image_pretraining``: MAE pre-training of a ViT student on images (no labels in the loss), with
an optional frozen MAE teacher whose encoder is run only up to the block a method reads (``teacher.options.
stop_after_block``: DMAE's truncated teacher). Students and teachers are :func:`~distill.tasks.masked_image.models.
mae_vit` models; the probe representation of a trained student is its ``features(x)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.config import ConfigError
from distill.core.family import Family, Loaded, register_family
from distill.tasks.common import call_builder, load_model_weights, validate_model_options
from distill.tasks.image.data import build_image_task
from distill.tasks.masked_image.data import load_masked_image_data
from distill.tasks.masked_image.section import MaskedImageData
from distill.tasks.masked_image.task import MaskedImageModelling


@register_family
class MaskedImageFamily(Family):
    name = "masked_image_pretraining"
    summary = ("images -> masked-patch reconstruction (MAE pre-training; DMAE: + feature distillation from a "
               "truncated MAE teacher on the same visible patches)")
    data_section = MaskedImageData

    def model_archs(self) -> list[str]:
        from distill.tasks.masked_image.models import MAE_MODELS

        return list(MAE_MODELS)

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.masked_image.models import MAE_MODELS

        return (MAE_MODELS[model_cfg.arch], ()) if model_cfg.arch in MAE_MODELS else None

    def check(self, cfg: Any) -> None:
        opts = dict(cfg.student.options or {}) if cfg.student is not None else {}
        if opts.get("stop_after_block") is not None:
            raise ValueError("student.options.stop_after_block: only a teacher is truncated (the student needs its "
                             "decoder)")
        if opts.get("patch_size", 4) != cfg.data.patch_size:
            raise ValueError(f"data.patch_size: {cfg.data.patch_size} differs from the student's patch size "
                             f"{opts.get('patch_size', 4)}")

    def augments(self, cfg: Any) -> bool:
        return True  # the masks are random in training, whatever the augmentation

    def load(self, cfg: Any) -> Loaded:
        train, evald, val = load_masked_image_data(cfg)
        d: MaskedImageData = cfg.data
        base = build_image_task(d)
        task = MaskedImageModelling(base.normalize.mean, base.normalize.std, base.augment, d.mask_ratio,
                                    d.patch_size, d.eval_mask_seed)
        images = getattr(train, "images", None)
        side = None
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            h, w = int(images.shape[-2]), int(images.shape[-1])
            if h != w:
                raise ConfigError(f"data.image_size: the MAE ViT reads square images; the training images are "
                                  f"{h} x {w} (set data.image_size)")
            if h % d.patch_size:
                raise ConfigError(f"data.patch_size: {d.patch_size} does not divide the {h}-px images (set "
                                  "data.image_size or data.patch_size)")
            side = h
        return Loaded(task, train, evald, val, num_outputs=None, info={"mask_ratio": d.mask_ratio,
                                                                       "image_size": side})

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        from distill.tasks.masked_image.models import MAE_MODELS

        arch = model_cfg.arch
        if arch not in MAE_MODELS:
            raise ConfigError(f"{key}.arch: unknown model {arch!r} for task masked_image_pretraining; allowed: "
                              f"{', '.join(MAE_MODELS)}")
        options = validate_model_options(MAE_MODELS[arch], model_cfg.options, f"{key}.options", arch, ())
        side = loaded.info.get("image_size")
        if side is not None:
            given = (model_cfg.options or {}).get("image_size")
            if given is not None and given != side:
                raise ConfigError(f"{key}.options.image_size: {given}, but the data's images are {side} x {side} "
                                  "px; drop the option (it follows the data) or set data.image_size")
            options["image_size"] = side
        model = call_builder(MAE_MODELS[arch], key, **options)
        return load_model_weights(model, model_cfg, cfg.base_dir, key)

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"num_outputs": None}
