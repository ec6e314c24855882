"""``task: anomaly_detection``: normal texture crops in training, synthetic defects in evaluation, anomaly maps
scored by image and pixel AUROC. The teacher is a frozen CIFAR ResNet (its taps ``f0``..``f3``); the student is a
reverse student (:mod:`distill.tasks.anomaly.models`) whose frozen encoder receives the teacher's weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.core.family import Family, Loaded, register_family
from distill.tasks.anomaly.data import load_anomaly_data
from distill.tasks.anomaly.section import AnomalyData
from distill.tasks.anomaly.task import AnomalyDetection
from distill.tasks.common import call_builder, load_model_weights, validate_model_options


@register_family
class AnomalyFamily(Family):
    name = "anomaly_detection"
    summary = ("texture crops or MVTec-layout folders -> anomaly maps (reverse distillation; normal-only training, "
               "image and pixel AUROC)")
    data_section = AnomalyData

    def model_archs(self) -> list[str]:
        from distill.tasks.anomaly.models import ANOMALY_MODELS, TEACHER_ARCHS

        return [*ANOMALY_MODELS, *TEACHER_ARCHS]

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.models import MODELS
        from distill.tasks.anomaly.models import ANOMALY_MODELS

        if model_cfg.arch in ANOMALY_MODELS:
            return ANOMALY_MODELS[model_cfg.arch], ()
        return (MODELS[model_cfg.arch], ("num_classes",)) if model_cfg.arch in MODELS else None

    def check(self, cfg: Any) -> None:
        from distill.tasks.anomaly.models import ANOMALY_MODELS, TEACHER_ARCHS

        if cfg.data is not None and cfg.data.source == "folders" and not cfg.data.root:
            raise ValueError("data.root: source: folders needs a category folder in the MVTec AD layout (train/good/, "
                             "test/good/, test/<defect>/, ground_truth/<defect>/)")
        if cfg.student is not None and cfg.student.arch not in ANOMALY_MODELS:
            raise ValueError(f"student.arch: {cfg.student.arch!r} is no reverse student; allowed: "
                             f"{', '.join(ANOMALY_MODELS)}")
        if cfg.teacher is not None and getattr(cfg.teacher, "arch", None) not in TEACHER_ARCHS:
            raise ValueError(f"teacher.arch: {getattr(cfg.teacher, 'arch', None)!r} is no encoder this family "
                             f"reads; allowed: {', '.join(TEACHER_ARCHS)}")

    def augments(self, cfg: Any) -> bool:
        return cfg.data is not None and (cfg.data.flip or cfg.data.train_blur)

    def load(self, cfg: Any) -> Loaded:
        train, evald = load_anomaly_data(cfg)
        task = AnomalyDetection(flip=cfg.data.flip, blur=cfg.data.train_blur)
        size = cfg.data.image_size if cfg.data.source == "folders" else cfg.data.crop
        return Loaded(task, train, evald, num_outputs=None, info={"crop": size})

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        from distill.models import MODELS
        from distill.tasks.anomaly.models import ANOMALY_MODELS

        arch = model_cfg.arch
        if arch in ANOMALY_MODELS:
            options = validate_model_options(ANOMALY_MODELS[arch], model_cfg.options, f"{key}.options", arch, ())
            model = call_builder(ANOMALY_MODELS[arch], key, **options)
        elif arch in MODELS:
            model = call_builder(MODELS[arch], key, num_classes=10)
        else:
            raise ConfigError(f"{key}.arch: unknown model {arch!r} for task anomaly_detection; allowed: "
                              f"{', '.join(self.model_archs())}")
        return load_model_weights(model, model_cfg, cfg.base_dir, key)

    def prepare_student(self, student: Any, teacher: Any, cfg: Any, loaded: Loaded) -> None:
        """The student's frozen encoder takes the teacher's weights (unless the student's own weights were given:
        a trained detector carries its encoder)."""
        if teacher is not None and not cfg.student.weights:
            model = getattr(teacher, "model", None)
            if model is None:
                raise ConfigError("teacher: the anomaly family needs a live teacher model (not a cache or ensemble)")
            try:
                student.load_encoder(model)
            except RuntimeError as e:
                raise ConfigError(f"teacher.arch: its weights do not fit student.options.encoder: "
                                  f"{str(e).splitlines()[0]}") from None

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"num_outputs": None, "crop": loaded.info.get("crop")}
