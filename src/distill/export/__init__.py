"""``distill export RUN --format F``: a run folder's student as a Hugging Face folder, a sentence-transformers
folder, safetensors weights with the JSON to rebuild them, or ONNX; a model card (``README.md``) beside it.

The student is rebuilt by its family's builder from the run's saved config and the facts saved at train time
(``student_spec.json``), without reading the training data; runs written before those files existed fall back to
the family's data loader. Each family says which formats fit its students (:meth:`Family.export_formats`); others
are refused in one line naming the allowed ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distill.export.card import model_card
from distill.export.run import CONFIG_NAME, ExportError, RunFolder, RunFolderError, write_run_files

FORMATS = ("hf", "sentence-transformers", "safetensors", "onnx")

__all__ = ["FORMATS", "ExportError", "RunFolder", "RunFolderError", "export_run", "rebuild_student",
           "write_run_files"]


def rebuild_student(run: RunFolder, weights: Path | None = None) -> tuple[Any, Any, Any, Any]:
    """``(cfg, family, loaded, student)``: the student of ``run`` with its trained weights loaded, in eval mode (a
    LoRA student with its adapters merged into the base weights)."""
    cfg, family, loaded, student, adapters = _rebuild(run, weights)
    if adapters is not None:
        from distill.models.lora import merged

        student = merged(adapters).eval()
    return cfg, family, loaded, student


def _rebuild(run: RunFolder, weights: Path | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """:func:`rebuild_student` before any merge; the last item is the ``peft.PeftModel`` of a LoRA student."""
    from distill.config import NEW_HEAD, RANDOM_WEIGHTS
    from distill.core.family import FAMILIES
    from distill.models.weights import load_weights_into

    cfg = run.config()
    family = FAMILIES.get(cfg.task)
    if run.spec is not None:
        facts = run.spec.get("facts") or {}
    else:  # a run written before student_spec.json: the facts come from the data
        facts = family.export_facts(family.load(cfg))
    loaded = family.export_loaded(cfg, facts)
    student_cfg = cfg.student
    if student_cfg is not None and getattr(student_cfg, "weights", None) not in (None, NEW_HEAD, RANDOM_WEIGHTS):
        cfg.student = student_cfg.model_copy(update={"weights": None})  # the run's own weights replace the file
    student = family.export_student(cfg, loaded)
    cfg.student = student_cfg
    weights = Path(weights) if weights is not None else run.path / "student.safetensors"
    if not weights.exists():
        raise ExportError(f"{weights}: no student weights (did the run finish?)")
    adapters = None
    lora = getattr(student_cfg, "lora", None)
    if lora is not None:  # the weights carry the adapters under the names of the injected student
        from distill.models.lora import lora_export_model

        adapters = lora_export_model(student, lora)
        load_weights_into(adapters.base_model.model, weights)
        adapters.eval()
    else:
        load_weights_into(student, weights)
    return cfg, family, loaded, student.eval(), adapters


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               weights: str | Path | None = None) -> Path:
    """Export the student of ``run_dir`` as ``fmt`` into ``out`` (default ``<run_dir>/export-<fmt>``)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown format; allowed: {', '.join(FORMATS)}")
    run = RunFolder.open(run_dir)
    from distill.core.family import FAMILIES

    cfg0 = run.config()
    allowed = FAMILIES.get(cfg0.task).export_formats(cfg0)
    if fmt not in allowed:
        raise ExportError(f"--format {fmt}: not available for task {cfg0.task} "
                          f"(student {cfg0.student.arch if cfg0.student is not None else 'default'}); "
                          f"allowed: {', '.join(allowed)}")
    cfg, family, loaded, student, adapters = _rebuild(run, Path(weights) if weights else None)
    out = Path(out) if out is not None else run.path / f"export-{fmt}"
    out.mkdir(parents=True, exist_ok=True)
    if adapters is not None:  # a LoRA student: its adapter folder, then the merged model in the asked format
        from distill.models.lora import merged, save_adapter

        save_adapter(adapters, out / "adapter")
        student = merged(adapters).eval()
    writer = {"hf": _hf, "sentence-transformers": _sentence_transformers, "safetensors": _safetensors,
              "onnx": _onnx}[fmt]
    usage, note = writer(run, cfg, family, loaded, student, out)
    shutil.copyfile(run.path / CONFIG_NAME if (run.path / CONFIG_NAME).exists() else run.path / "config.json",
                    out / CONFIG_NAME)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "README.md")
    (out / "README.md").write_text(model_card(run, fmt, usage, note, files + ["README.md"]))
    return out


#: the auto class that reopens an exported Hugging Face folder, by task
AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "text_classification": "AutoModelForSequenceClassification",
                "image_classification": "AutoModelForImageClassification"}


def hf_folder_student(cfg: Any) -> bool:
    """Whether the run's student is a Hugging Face model folder given by ``student.path`` (not a
    sentence-transformers folder, not a built-in ``arch``)."""
    from distill.config import resolve_path

    student = cfg.student
    if student is None or student.path is None or student.arch is not None:
        return False
    folder = resolve_path(student.path, cfg.base_dir)
    return (folder / "config.json").is_file() and not (folder / "modules.json").exists()


def _hf(run: RunFolder, cfg: Any, family: Any, loaded: Any, student: Any, out: Path) -> tuple[str, str]:
    from distill.models.hf import HFLogits

    model = student.model if isinstance(student, HFLogits) else student
    if not hasattr(model, "save_pretrained"):
        raise ExportError(f"--format hf: the student of task {cfg.task} is not a Hugging Face model")
    classes = loaded.info.get("classes")
    config = getattr(model, "config", None)
    if classes and config is not None and len(classes) == getattr(config, "num_labels", -1):
        config.id2label = {i: str(c) for i, c in enumerate(classes)}
        config.label2id = {str(c): i for i, c in enumerate(classes)}
    model.save_pretrained(str(out))
    tok = loaded.info.get("tokenizer")
    if tok is not None and hasattr(tok, "save_pretrained"):
        tok.save_pretrained(str(out))
    if cfg.student is not None and cfg.student.path is not None:  # the image processor travels with the model
        from distill.config import resolve_path

        processor = resolve_path(cfg.student.path, cfg.base_dir) / "preprocessor_config.json"
        if processor.is_file():
            shutil.copyfile(processor, out / processor.name)
    auto = AUTO_CLASSES.get(cfg.task, "AutoModel")
    usage = f'from transformers import {auto}\nmodel = {auto}.from_pretrained("{out}")'
    if tok is not None:
        usage = usage.replace(f"import {auto}", f"import {auto}, AutoTokenizer")
        usage += f'\ntokenizer = AutoTokenizer.from_pretrained("{out}")'
    return usage, ""


def _sentence_transformers(run: RunFolder, cfg: Any, family: Any, loaded: Any, student: Any,
                           out: Path) -> tuple[str, str]:
    student.save(str(out))
    usage = (f'from sentence_transformers import SentenceTransformer\n'
             f'model = SentenceTransformer("{out}")\n'
             f'embeddings = model.encode(["a sentence", "another one"])')
    return usage, ""


def _safetensors(run: RunFolder, cfg: Any, family: Any, loaded: Any, student: Any, out: Path) -> tuple[str, str]:
    from distill.train.checkpoint import save_weights

    save_weights(out / "student.safetensors", student.state_dict())
    arch: dict[str, Any] = {
        "task": cfg.task,
        "student": cfg.student.model_dump(mode="json") if cfg.student is not None else None,
        "facts": {k: v for k, v in loaded.info.items() if _jsonable(v)} | {"num_outputs": loaded.num_outputs},
        "class": f"{type(student).__module__}.{type(student).__qualname__}",
        "parameters": int(sum(p.numel() for p in student.parameters())),
    }
    hf_config = getattr(student, "config", None)
    if hf_config is not None and hasattr(hf_config, "to_dict"):
        arch["hf_config"] = hf_config.to_dict()
    (out / "student_config.json").write_text(json.dumps(arch, indent=2, default=str))
    usage = ("# the student rebuilt by its family's builder from the saved config, then these weights loaded\n"
             "from distill.export import RunFolder, rebuild_student\n"
             f'cfg, family, loaded, student = rebuild_student(RunFolder.open("{run.path}"),\n'
             f'                                               weights="{out / "student.safetensors"}")\n'
             "# or, without distill: safetensors.torch.load_file(...) into the class named in student_config.json")
    return usage, ""


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _onnx(run: RunFolder, cfg: Any, family: Any, loaded: Any, student: Any, out: Path) -> tuple[str, str]:
    from distill.export.onnx import check_onnx, export_onnx

    spec = family.onnx_inputs(cfg, loaded, student)
    if spec is None:
        raise ExportError(f"--format onnx: task {cfg.task} gives no ONNX inputs")
    path = out / "student.onnx"
    export_onnx(spec, path)
    diff = check_onnx(spec, path)
    checked = ("onnxruntime was not installed, so the file was not checked against PyTorch" if diff is None
               else f"onnxruntime's output on the example inputs differs from PyTorch's by at most {diff:.2g}")
    feeds = ", ".join(f'"{k}": {k}' for k in spec.inputs)
    usage = (f'import onnxruntime as ort\n'
             f'session = ort.InferenceSession("{path}")\n'
             f'(logits,) = session.run(None, {{{feeds}}})  # numpy arrays')
    return usage, f"Inputs: {spec.note}. At export, {checked}."
