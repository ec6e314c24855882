"""The models of ``task: paired_views``: the CIFAR/ImageNet-style classifiers of ``task: image_classification``
(:data:`distill.models.MODELS`); the teacher is wrapped in :class:`~distill.tasks.paired_views.task.TeacherView` so
that it reads the other view; a student with ``adapter`` is wrapped in
:class:`~distill.models.paired_view_adapter.PairedViewAdapted` (a residual adapter after one of its stages)."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.tasks.common import existing_file
from distill.tasks.image.models import build_image_model


def build_paired_model(model_cfg: Any, num_outputs: int | None, base_dir: str | None, key: str, loaded: Any
                       ) -> nn.Module:
    """A classifier with its weights, built as ``task: image_classification`` builds it, then the adapter of
    ``student.adapter`` inserted (after ``weights`` are loaded into the model)."""
    model = build_image_model(model_cfg, num_outputs, base_dir, key, loaded)
    settings = getattr(model_cfg, "adapter", None)
    return model if settings is None else add_adapter(model, settings, base_dir, f"{key}.adapter")


def add_adapter(model: nn.Module, settings: Any, base_dir: str | None, key: str) -> nn.Module:
    """``model`` with the residual adapter of ``settings`` (:class:`~distill.tasks.paired_views.section.
    PairedViewAdapterConfig`), its weights loaded from ``settings.weights`` when given."""
    from distill.models.paired_view_adapter import PairedViewAdapted, load_adapter_file

    try:
        adapted = PairedViewAdapted(model, at=settings.at, hidden=settings.hidden, kernel=settings.kernel,
                                    layers=settings.layers, channels=settings.channels, train=settings.train)
    except ValueError as e:
        raise ConfigError(f"{key}.{e}") from None  # the message starts with the key at fault
    if settings.weights is not None:
        path = existing_file(settings.weights, base_dir, f"{key}.weights")
        try:
            load_adapter_file(adapted, path)
        except (ValueError, OSError) as e:
            raise ConfigError(f"{key}.weights: {str(e).splitlines()[0]}") from None
    return adapted
