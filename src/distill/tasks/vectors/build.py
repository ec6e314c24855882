"""``task: vector_classification``: rows of numbers (tabular data, precomputed embeddings) -> class logits.

The smallest complete family: its data section (``section.py``), loading (``data.py``), the task adapter
(``task.py``), its model (``models.py``) and this registration.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.common import class_names
from distill.tasks.vectors.data import load_vectors
from distill.tasks.vectors.models import build_vector_model
from distill.tasks.vectors.section import VectorData
from distill.tasks.vectors.task import VectorClassification


@register_family
class VectorFamily(Family):
    name = "vector_classification"
    summary = "feature vectors -> class logits (.npz x/y or CSV with a label column)"
    data_section = VectorData
    teacher_mixture = True

    def model_archs(self) -> list[str]:
        from distill.tasks.vectors.models import VECTOR_MODELS

        return list(VECTOR_MODELS)

    def model_table(self) -> dict[str, Any]:
        from distill.tasks.vectors.models import VECTOR_MODELS

        return VECTOR_MODELS

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.vectors.models import SUPPLIED, VECTOR_MODELS

        return (VECTOR_MODELS[model_cfg.arch], SUPPLIED) if model_cfg.arch in VECTOR_MODELS else None

    def load(self, cfg: Any) -> Loaded:
        d = cfg.data
        mix = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
        route = mix if mix is not None and mix.route == "column" else None  # its column: each row's member
        train = load_vectors(cfg, "train", route)
        evald = load_vectors(cfg, "eval", classes=train.classes) if d.eval else None
        task = VectorClassification(*VectorClassification.fit_standardizer(train)) if d.standardize \
            else VectorClassification()
        labels = train.tensors[1]
        classes = max(int(labels[labels >= 0].max()) + 1, len(train.classes))
        return Loaded(task, train, evald, num_outputs=classes, info={"in_features": train.tensors[0].shape[1]})

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        return build_vector_model(model_cfg, loaded.info["in_features"], loaded.num_outputs, cfg.base_dir, key)

    def export_formats(self, cfg: Any) -> list[str]:
        return ["safetensors", "onnx"]

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        task = loaded.task
        standardizer = None if task.mean is None else {"mean": task.mean.tolist(), "std": task.std.tolist()}
        return {"num_outputs": loaded.num_outputs, "in_features": loaded.info["in_features"],
                "standardizer": standardizer, **class_names(loaded)}

    def onnx_inputs(self, cfg: Any, loaded: Loaded, student: nn.Module) -> Any:
        """The raw feature rows in: the training set's standardisation (if any) is part of the exported graph."""
        import torch

        from distill.export.onnx import ArgsModule, OnnxSpec

        d = loaded.info["in_features"]
        st = loaded.info.get("standardizer")
        if st is not None:
            mean, std = torch.tensor(st["mean"]), torch.tensor(st["std"])
            module: nn.Module = ArgsModule(student, lambda m, x: m((x - mean) / std))
        else:
            module = student
        note = (f"`features`: float32 N x {d} raw rows ({'standardised inside the graph' if st else 'as trained'}); "
                f"output `logits`: N x {loaded.num_outputs}")
        return OnnxSpec(module, {"features": torch.randn(2, d)}, {"features": {0: "batch"}, "logits": {0: "batch"}},
                        note=note)
