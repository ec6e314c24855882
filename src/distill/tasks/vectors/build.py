"""``task: vector_classification``: rows of numbers (tabular data, precomputed embeddings) -> class logits.

The smallest complete family: its data section (``section.py``), loading (``data.py``), the task adapter
(``task.py``), its model (``models.py``) and this registration.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.common import existing_file
from distill.tasks.vectors.data import read_vectors
from distill.tasks.vectors.models import build_vector_model
from distill.tasks.vectors.section import VectorData
from distill.tasks.vectors.task import VectorClassification


@register_family
class VectorFamily(Family):
    name = "vector_classification"
    summary = "feature vectors -> class logits (.npz x/y or CSV with a label column)"
    data_section = VectorData

    def model_archs(self) -> list[str]:
        from distill.tasks.vectors.models import VECTOR_MODELS

        return list(VECTOR_MODELS)

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.vectors.models import SUPPLIED, VECTOR_MODELS

        return (VECTOR_MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in VECTOR_MODELS else None

    def load(self, cfg: Any) -> Loaded:
        d = cfg.data
        train = read_vectors(existing_file(d.train, cfg.base_dir, "data.train"), d.label, "data.train")
        evald = read_vectors(existing_file(d.eval, cfg.base_dir, "data.eval"), d.label, "data.eval") if d.eval else None
        task = VectorClassification(*VectorClassification.fit_standardizer(train)) if d.standardize \
            else VectorClassification()
        labels = train.tensors[1]
        classes = int(labels[labels >= 0].max()) + 1
        if evald is not None:
            classes = max(classes, int(evald.tensors[1].max()) + 1)
        return Loaded(task, train, evald, num_outputs=classes, info={"in_features": train.tensors[0].shape[1]})

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_vector_model(model_cfg, loaded.info["in_features"], loaded.num_outputs, cfg.base_dir, key)
