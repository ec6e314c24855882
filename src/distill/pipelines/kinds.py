"""The stage kinds shipped with distill: ``train`` (an ordinary distill run), ``teacher_logits`` (a teacher's
logits on a labelled pool and a test split, both horizontal flips) and the methods' kinds (imported at the end so
that they register themselves: ``pcoreset_select``, ``diswot_search``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from distill.config import Strict
from distill.pipelines.images import (
    ImageSource,
    TeacherSpec,
    build_cifar_model,
    load_source,
    model_logits,
    normalise,
    source_identity,
)
from distill.pipelines.stage import (
    Artefact,
    PipelineError,
    StageContext,
    StageKind,
    StageOutput,
    file_identity,
    register_stage_kind,
)

__all__ = ["ImageSource", "StageContext", "TeacherLogits", "TeacherSpec", "Train", "file_identity", "load_source",
           "normalise"]

# -------------------------------------------------------------------------------------------------------- kinds


class TeacherLogitsOptions(Strict):
    data: ImageSource
    teacher: TeacherSpec = TeacherSpec()
    batch_size: int = Field(256, gt=0)


@register_stage_kind
class TeacherLogits(StageKind):
    """A teacher's logits (image and flipped image) on the pool and the test split; tables ``pool`` and ``test``
    (columns ``index`` into the full split, ``label``, ``logits`` N x 2 x K), meta: the teacher's test accuracy."""

    name = "teacher_logits"
    summary = "a teacher's logits on a labelled pool and a test split (both flips)"
    Options = TeacherLogitsOptions

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        w = options.teacher.weights
        return {**source_identity(ctx, options.data),
                "teacher#file": w if w == "random" else file_identity(w, ctx.base_dir)}

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        torch.manual_seed(ctx.seed)
        tables = {}
        meta: dict[str, Any] = {"data": options.data.model_dump(mode="json")}
        model = None
        for split in ("train", "test"):
            data, idx = load_source(ctx, options.data, split)
            if model is None:
                model = build_cifar_model(options.teacher, ctx, data.num_classes)
                meta["classes"] = data.classes
            logits = model_logits(model, data.images, options.batch_size)
            name = "pool" if split == "train" else "test"
            tables[name] = {"index": idx, "label": data.labels, "logits": logits}
            meta[f"{name}_accuracy"] = round(float((logits[:, 0].argmax(1) == data.labels).float().mean()), 4)
            ctx.log(f"[{ctx.name}] {name}: {len(data)} images, teacher accuracy {meta[f'{name}_accuracy']:.4f}")
        return StageOutput(tables, meta)


class TrainOptions(Strict):
    """``config``: a ``distill train`` YAML file (relative to the pipeline file) or the config inline;
    ``set``: ``KEY=VALUE`` overrides as in ``distill train --set``; ``subset_table``: the input table whose
    ``index`` column restricts the training data (input ``subset``)."""

    config: str | dict[str, Any]
    set: list[str] = Field(default_factory=list)
    subset_table: str = "selection"


@register_stage_kind
class Train(StageKind):
    """An ordinary distill training run in ``work/run`` (resumed from its checkpoints by the trainer). Inputs:
    ``subset`` (a stage with an ``index`` table: train only on those training examples) and ``student`` (a stage
    whose meta names ``student: {arch, options}``, e.g. a DisWOT search's winner). Output: table ``summary``
    (the final step) and meta with the final metrics and the student's checksum."""

    name = "train"
    summary = "an ordinary distill training run (config inline or by path)"
    Options = TrainOptions
    inputs = {"subset?": "a stage whose table has an 'index' column of training examples",
              "student?": "a stage whose meta has student: {arch, options}"}

    def config(self, ctx: StageContext, options: TrainOptions, inputs: dict[str, Artefact] | None = None) -> Any:
        from distill.config import deep_merge, load_raw, parse_config, set_override

        if isinstance(options.config, str):
            path = ctx.resolve(options.config)
            raw, base = load_raw(path), str(Path(path).parent)
        else:
            raw, base = deep_merge({}, options.config), ctx.base_dir
        for a in options.set:
            set_override(raw, a)
        raw["output_dir"] = str(ctx.work / "run")
        if inputs and "student" in inputs:
            student = inputs["student"].meta.get("student")
            if not isinstance(student, dict) or "arch" not in student:
                raise PipelineError(f"stage {ctx.name!r}: input 'student' ({inputs['student'].stage!r}) names no "
                                    "student in its meta")
            raw["student"] = {**raw.get("student", {}), "arch": student["arch"], "options": student.get("options", {})}
        return parse_config(raw, base_dir=base)

    def identity(self, ctx: StageContext, options: Any) -> dict[str, str]:
        from distill.experiment import _flatten, _plain, run_identity

        cfg = self.config(ctx, options)
        out = {f"run.{k}": v for k, v in run_identity(cfg).items()}
        train: dict[str, str] = {}
        _flatten(_plain(cfg.train), "train", train)
        skip = ("progress", "log_every", "eval_every", "checkpoint_every", "step_delay", "progress_every")
        out.update({k: v for k, v in train.items() if k.rsplit(".", 1)[-1] not in skip})
        out["seed"] = str(cfg.seed)
        return out

    def run(self, ctx: StageContext, options: Any, inputs: dict[str, Artefact]) -> StageOutput:
        from distill.experiment import assemble, build_methods, build_parts
        from distill.train.checkpoint import sha256_file

        cfg = self.config(ctx, options, inputs)
        subset = None
        if "subset" in inputs:
            subset = inputs["subset"].table(options.subset_table).get("index")
            if subset is None:
                raise PipelineError(f"stage {ctx.name!r}: input 'subset' table {options.subset_table!r} has no "
                                    "'index' column")

            for key in ("train_per_class", "val_per_class", "labeled_per_class", "extra_val_per_class"):
                if getattr(cfg.data, key, None):
                    raise PipelineError(f"stage {ctx.name!r}: data.{key} is set, but the 'subset' input indexes the "
                                        "whole training split: remove it from the training config")

        def student(family: Any, loaded: Any) -> Any:
            if subset is not None:
                n = len(loaded.train)
                if int(subset.max()) >= n:
                    raise PipelineError(f"stage {ctx.name!r}: subset index {int(subset.max())} is outside the "
                                        f"training data ({n} examples): do the stages read the same data?")
                loaded.train = loaded.train.subset(subset.long())
            return family.build_student(cfg, loaded)

        parts = build_parts(cfg, student=student)
        family, loaded = parts.family, parts.loaded
        family.prepare_student(parts.student, parts.live_teacher, cfg, loaded)
        exp = assemble(loaded, parts.student, build_methods(cfg.methods), parts.teacher,
                       family.train_config(cfg, loaded), cfg.output_dir, cfg=cfg, family=family,
                       live_teacher=parts.live_teacher)
        summary = exp.fit(resume=True)
        final = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.get("final", {}).items()
                 if isinstance(v, (int, float, str))}
        weights = exp.trainer.run_dir / "student.safetensors"
        meta = {"final": final, "train_examples": len(loaded.train), "run_dir": "work/run",
                "student_sha256": sha256_file(weights)[:16] if weights.exists() else None,
                "student": {"arch": cfg.student.arch, "options": cfg.student.options}}
        return StageOutput({"summary": {"step": torch.tensor([int(summary.get("steps", 0))])}}, meta)


# the methods' kinds register themselves on import
from distill.pipelines.methods import dd_eval as _dd_eval  # noqa: E402,F401
from distill.pipelines.methods import dense2moe as _dense2moe  # noqa: E402,F401
from distill.pipelines.methods import diswot as _diswot  # noqa: E402,F401
from distill.pipelines.methods import infer as _infer  # noqa: E402,F401
from distill.pipelines.methods import kd3 as _kd3  # noqa: E402,F401
from distill.pipelines.methods import nrr_dd as _nrr_dd  # noqa: E402,F401
from distill.pipelines.methods import pcoreset as _pcoreset  # noqa: E402,F401
from distill.pipelines.methods import pgkd as _pgkd  # noqa: E402,F401
from distill.pipelines.methods import rationale_kd as _rationale_kd  # noqa: E402,F401
from distill.pipelines.methods import symbolic_kd as _symbolic_kd  # noqa: E402,F401
