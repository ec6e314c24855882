"""``task: paired_views``: distillation across two synchronised views of the same items (exo -> ego). The frozen
teacher reads the teacher's view, the student the other; no label reaches the training loss. The student may start
from the teacher's weights (``student.weights``: the teacher's file), and may carry a residual adapter after one of
its stages (``student.adapter``: the feature-level variant, the exo model frozen and only the adapter trained, or
the combined variant, the adapter frozen and the model trained)."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.image.data import build_image_task
from distill.tasks.paired_views.data import load_paired_view_data
from distill.tasks.paired_views.models import build_paired_model
from distill.tasks.paired_views.section import PairedViewData, PairedViewStudent
from distill.tasks.paired_views.task import PairedViews, TeacherView


@register_family
class PairedViewsFamily(Family):
    name = "paired_views"
    summary = ("synchronised view pairs -> the student on one view matches a frozen teacher on the other "
               "(exo -> ego; labels hidden from the loss; top-1 on the student's view)")
    data_section = PairedViewData
    student_section = PairedViewStudent
    #: the image-classification methods apply too (ce for the oracle, kd or fitnet across the views)
    methods_as = "image_classification"

    def model_archs(self) -> list[str]:
        from distill.models import MODELS

        return list(MODELS)

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.models import MODELS
        from distill.tasks.image.models import SUPPLIED

        return (MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in MODELS else None

    def check(self, cfg: Any) -> None:
        adapter = getattr(cfg.student, "adapter", None) if cfg.student is not None else None
        if adapter is None:
            return
        if adapter.train == "model" and adapter.weights is None:
            raise ValueError("student.adapter.weights: train: model freezes the adapter, so it needs the trained "
                             "adapter's weights (a finished adapter run's student.safetensors)")
        if cfg.student.path is not None:
            raise ValueError("student.adapter: the adapter goes into a built-in architecture (student.arch), not a "
                             "model folder (student.path)")

    def augments(self, cfg: Any) -> bool:
        return cfg.data is not None and cfg.data.augment is not None

    def load(self, cfg: Any) -> Loaded:
        train, evald, val = load_paired_view_data(cfg)
        d: PairedViewData = cfg.data
        base = build_image_task(d)
        task = PairedViews(base.normalize.mean, base.normalize.std, base.augment, d.ego.crop, d.ego.flip,
                           d.ego.rotation, d.ego.gamma, d.labels_in_training)
        return Loaded(task, train, evald, val, num_outputs=train.num_classes)

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        model = build_paired_model(model_cfg, loaded.num_outputs, cfg.base_dir, key, loaded)
        return TeacherView(model) if key.startswith("teacher") else model
