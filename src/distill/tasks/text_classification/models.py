"""The text-classification family's models: sentence classifiers called as ``model(input_ids, attention_mask)``.

``arch`` builds a named model (``minilm`` / ``minilm_truncated`` take ``path``: the local BERT-like folder their
encoder comes from, with a new mean-pooling head); ``path`` alone loads a local folder as it is: a Hugging Face
sequence classifier with its trained head (:func:`distill.models.hf.load_hf_classifier`), or a sentence-transformers
folder as a student (its encoder and a new linear head, :class:`distill.models.hf.SentenceClassifier`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distill.config import NEW_HEAD, ConfigError
from distill.core.safe_pickle import config_key
from distill.models import TEXT_MODELS, build_model
from distill.models.text_students import VOCAB_MODELS
from distill.tasks.common import (
    call_builder,
    check_num_classes,
    existing_folder,
    load_model_weights,
    validate_model_options,
)

#: what the family passes to every builder itself (``model_dir``: from ``path``)
SUPPLIED = ("num_classes", "model_dir")
#: the archs whose encoder is read from a folder (``path``; default the packaged MiniLM)
FOLDER_ARCHS = ("minilm", "minilm_truncated")


def text_builder(arch: str) -> Any:
    """The function or class whose keyword arguments ``options`` are (``bilstm``/``textcnn`` forward theirs to the
    classes)."""
    from distill.models.text_students import BiLSTMClassifier, TextCNN

    return {"bilstm": BiLSTMClassifier, "textcnn": TextCNN}.get(arch) or TEXT_MODELS[arch]


def build_text_model(model_cfg: Any, num_outputs: int, vocab_size: int, base_dir: str | None, key: str,
                     tokenizer: Any = None, classes: list[str] | None = None) -> nn.Module:
    """Embedding-from-scratch models get the tokenizer's vocabulary size unless ``options`` set one."""
    if model_cfg.arch is None and model_cfg.path is not None:
        return load_text_folder(model_cfg, num_outputs, tokenizer, classes, base_dir, key)
    if model_cfg.arch is None or model_cfg.arch not in TEXT_MODELS:
        raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task text_classification; allowed: "
                          f"{', '.join(sorted(TEXT_MODELS))} (or give 'path' alone: a local model folder)")
    if model_cfg.path is not None and model_cfg.arch not in FOLDER_ARCHS:
        raise ConfigError(f"{key}.path: arch {model_cfg.arch!r} reads no folder; give 'path' alone (a local model "
                          f"folder) or with arch {' / '.join(FOLDER_ARCHS)} (a new head on the folder's encoder)")
    options = validate_model_options(text_builder(model_cfg.arch), model_cfg.options, f"{key}.options",
                                     model_cfg.arch, SUPPLIED)
    if model_cfg.path is not None:
        options["model_dir"] = str(existing_folder(model_cfg.path, base_dir, f"{key}.path"))
    if model_cfg.arch in VOCAB_MODELS:
        options.setdefault("vocab_size", vocab_size)
        if options["vocab_size"] < vocab_size:
            raise ConfigError(f"{key}.options.vocab_size: {options['vocab_size']}, but the tokenizer has {vocab_size} "
                              "ids; drop the option (it follows the tokenizer)")
    if model_cfg.arch in FOLDER_ARCHS and options.get("pretrained", True) and tokenizer is not None:
        _check_pretrained_vocab(options.get("model_dir", "minilm"), tokenizer, key)
    num_outputs = check_num_classes(model_cfg, num_outputs, key, "outputs" if key == "student" else "classes")
    with config_key(f"{key}.path"):
        model = call_builder(build_model, key, model_cfg.arch, num_classes=num_outputs, **options)
    return load_model_weights(model, model_cfg, base_dir, key)


def _check_pretrained_vocab(model_dir: str, tokenizer: Any, key: str) -> None:
    """A pretrained MiniLM-type encoder indexes its word embeddings by its own tokenizer's ids: ``data.tokenizer``
    must be that tokenizer, or every id reads another word's embedding."""
    from distill.data.text import resolve_model_dir
    from distill.models.hf import FolderError, check_folder_tokenizer

    try:
        check_folder_tokenizer(resolve_model_dir(model_dir), tokenizer)
    except FileNotFoundError:
        return  # the missing folder is reported by the builder, naming the key
    except FolderError as e:
        detail = str(e).splitlines()[0].split(": ", 1)[-1].split(";")[0]  # "its tokenizer (N tokens) differs ..."
        fix = "minilm" if model_dir == "minilm" else model_dir
        raise ConfigError(f"{key}: its pretrained word embeddings are indexed by the tokenizer of {fix}: {detail}; "
                          f"set data.tokenizer: {fix}, or {key}.options.pretrained: false") from None


def load_text_folder(model_cfg: Any, num_outputs: int, tokenizer: Any, classes: list[str] | None,
                     base_dir: str | None, key: str) -> nn.Module:
    """``path`` alone: a Hugging Face sequence classifier (its head kept) or a sentence-transformers folder (a
    student: the folder's embedding model and a new linear head)."""
    from distill.models.hf import FolderError, check_folder_tokenizer, load_hf_classifier

    folder = existing_folder(model_cfg.path, base_dir, f"{key}.path")
    num_outputs = check_num_classes(model_cfg, num_outputs, key, "outputs" if key == "student" else "classes")
    try:
        with config_key(f"{key}.path"):
            if (folder / "modules.json").is_file():
                model = _sentence_classifier(folder, num_outputs, model_cfg, key)
                check_folder_tokenizer(_st_tokenizer_folder(folder), tokenizer)
            else:
                model = load_hf_classifier(folder, "text_classification", num_outputs,
                                           new_head=model_cfg.weights == NEW_HEAD,
                                           weights_given=model_cfg.weights not in (None, NEW_HEAD, "random"),
                                           class_names=classes if classes and len(classes) == num_outputs else None)
                check_folder_tokenizer(folder, tokenizer, model)
    except FolderError as e:
        raise ConfigError(f"{key}.path: {e}") from None
    return load_model_weights(model, model_cfg, base_dir, key)


def _st_tokenizer_folder(folder: Path) -> Path:
    """Where a sentence-transformers folder keeps its tokenizer: the folder itself, or its first module's
    subfolder (``0_Transformer`` in folders of older versions)."""
    import json

    try:
        modules = json.loads((folder / "modules.json").read_text())
        first = modules[0].get("path", "") if isinstance(modules, list) and modules else ""
    except (OSError, ValueError, AttributeError):
        first = ""
    return folder / first if isinstance(first, str) and first and (folder / first).is_dir() else folder


def _sentence_classifier(folder: Path, num_outputs: int, model_cfg: Any, key: str) -> nn.Module:
    from distill.models.hf import FolderError, SentenceClassifier
    from distill.text.st_models import load_sentence_model

    if key != "student" and model_cfg.weights in (None, NEW_HEAD):
        raise FolderError(f"{folder} is a sentence-transformers folder: it holds no classification head, so as a "
                          "teacher it would classify at random; give a fine-tuned classifier folder (or weights)")
    try:
        encoder = load_sentence_model(folder)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise FolderError(str(e).splitlines()[0]) from None
    return SentenceClassifier(encoder, num_outputs)
