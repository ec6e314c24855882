"""``task: text_classification``: labelled sentences -> class logits; optional transfer set and aspect teacher."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.family import Family, Loaded, register_family
from distill.tasks.text_classification.data import load_aspects, load_text_split, read_tokenizer
from distill.tasks.text_classification.models import build_text_model
from distill.tasks.text_classification.section import TextClassificationData
from distill.tasks.text_classification.task import TextClassification


@register_family
class TextClassificationFamily(Family):
    name = "text_classification"
    summary = "sentences -> class logits (SST lines, TSV, CSV; a local Hugging Face tokenizer)"
    data_section = TextClassificationData
    lora_students = True
    lora_modules_to_save = ("classifier",)  # the new class head of the built-in sentence classifiers

    def model_archs(self) -> list[str]:
        from distill.models import TEXT_MODELS

        return list(TEXT_MODELS)

    def model_table(self) -> dict[str, Any]:
        from distill.models import TEXT_MODELS

        return TEXT_MODELS

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.config import ConfigError
        from distill.models import TEXT_MODELS
        from distill.tasks.text_classification.models import SUPPLIED, text_builder

        if isinstance(model_cfg.options, dict) and "model_dir" in model_cfg.options:
            raise ConfigError(f"{key}.options.model_dir: replaced by {key}.path (a local folder: alone, a Hugging "
                              "Face classifier loaded with its trained head; with arch minilm, a new head on its "
                              "encoder; see docs/models.md)")
        return (text_builder(model_cfg.arch), SUPPLIED) if model_cfg.arch in TEXT_MODELS else None

    def has_teacher(self, cfg: Any) -> bool:
        return cfg.teacher is not None or (cfg.data is not None and cfg.data.aspects is not None)

    def check(self, cfg: Any) -> None:
        from distill.methods import METHODS

        if cfg.data.aspects is not None:
            _check_aspects(cfg)
        if cfg.teacher is not None and cfg.teacher.ensemble:
            raise ValueError("teacher.ensemble: not supported for text_classification yet; give one teacher")
        t = cfg.teacher
        if t is not None and t.arch is not None and t.path is not None and not t.weights:
            raise ValueError(f"teacher.weights: required: arch {t.arch} puts a new, untrained head on the encoder of "
                             "teacher.path; give 'path' alone to load the folder's own trained classifier, or "
                             "weights (the trained teacher's file)")
        teaches = any(METHODS.get(m.name).needs_teacher for m in cfg.methods)
        source_labels = cfg.data.augment_labels == "source"
        if cfg.data.augment is not None and not teaches and not source_labels:
            raise ValueError("data.augment: the augmented copies carry no label, only a teacher's outputs; add a "
                             "method that uses the teacher (e.g. kd or lsf_idm), set data.augment_labels: source "
                             "(each copy labelled like its source sentence) or drop data.augment")
        if source_labels and cfg.data.augment is None:
            raise ValueError("data.augment_labels: labels the augmented copies of data.augment, which is not set")

    def load(self, cfg: Any) -> Loaded:
        tokenizer = read_tokenizer(cfg)
        train = load_text_split(cfg, "train", tokenizer, None)
        evald = load_text_split(cfg, "eval", tokenizer, train.classes) if cfg.data.eval else None
        aspects = load_aspects(cfg, train) if cfg.data.aspects else None
        outputs = train.num_classes + (aspects.probs.shape[1] if aspects is not None else 0)  # makd: C + Q
        info = {"vocab_size": len(tokenizer), "num_classes": train.num_classes, "aspects": aspects,
                "tokenizer": tokenizer}
        return Loaded(TextClassification(), train, evald, None, num_outputs=outputs, info=info)

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        outputs = loaded.num_outputs if key == "student" else loaded.info["num_classes"]
        classes = list(loaded.train.classes) if loaded.train is not None else None
        return build_text_model(model_cfg, outputs, loaded.info["vocab_size"], cfg.base_dir, key,
                                loaded.info.get("tokenizer"), classes)

    def export_formats(self, cfg: Any) -> list[str]:
        from distill.export import hf_folder_student

        return ["safetensors", "onnx"] + (["hf"] if hf_folder_student(cfg) else [])

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"num_outputs": loaded.num_outputs, "vocab_size": loaded.info["vocab_size"],
                "num_classes": loaded.info["num_classes"], "classes": list(loaded.train.classes)}

    def onnx_inputs(self, cfg: Any, loaded: Loaded, student: nn.Module) -> Any:
        """Token ids and attention mask in (padded to ``data.max_length``; traced at that length)."""
        import torch

        from distill.export.onnx import OnnxSpec

        n = cfg.data.max_length
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, int(loaded.info["vocab_size"]), (2, n), generator=g)
        mask = torch.ones(2, n, dtype=torch.long)
        mask[1, n // 2:] = 0
        ids[1, n // 2:] = 0
        note = (f"`input_ids`, `attention_mask`: int64 N x {n} from the tokenizer `{cfg.data.tokenizer}` "
                f"(padding='max_length', max_length={n}, truncation=True); output `logits`: N x {loaded.num_outputs}")
        axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "logits": {0: "batch"}}
        return OnnxSpec(student, {"input_ids": ids, "attention_mask": mask}, axes, note=note)

    def build_teacher(self, cfg: Any, loaded: Loaded) -> Any:
        if loaded.info["aspects"] is not None:  # makd's teacher: offline aspect answers
            return loaded.info["aspects"]
        return super().build_teacher(cfg, loaded)


def _check_aspects(cfg: Any) -> None:
    """``data.aspects`` is the teacher of a method that reads aspect answers (``makd``) and of nothing else."""
    from distill.methods import METHODS

    readers = [m.name for m in cfg.methods if getattr(METHODS.get(m.name), "reads_aspects", False)]
    others = [m.name for m in cfg.methods if METHODS.get(m.name).needs_teacher and m.name not in readers]
    if not readers:
        raise ValueError("data.aspects: aspect answers are the teacher of method 'makd' only; add it or drop "
                         "data.aspects")
    if others:
        raise ValueError(f"data.aspects: methods {others} need a teacher model's logits, which aspect answers do "
                         "not give; run them in another experiment")
    if cfg.teacher is not None:
        raise ValueError("teacher: data.aspects already serves as makd's teacher; drop the teacher section")
    if cfg.data.augment is not None:
        raise ValueError("data.augment: the augmented copies have no aspect answers; drop data.augment when "
                         "data.aspects is set")
