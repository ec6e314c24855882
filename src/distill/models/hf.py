"""Local Hugging Face folders as students and teachers (``student.path`` / ``teacher.path``).

A folder is loaded through the ``AutoModelFor*`` class of the task (:data:`AUTO_CLASSES`) with its own config and
head: a folder without a trained head for the task, or whose ``num_labels`` differs from the data's classes, is
refused unless the config asks for a new head (``weights: new_head``). The loaded model is wrapped in
:class:`HFLogits`, which returns the logits tensor and keeps the Hugging Face module reachable as ``.model``, so
feature taps and methods that hook layers name ``model.<module path>`` (or the aliases of ``feature_taps``).

A sentence-transformers folder becomes a text classifier with :class:`SentenceClassifier`: the folder's encoder
and pooling, then a new linear head on the sentence embedding.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.outputs import logits_of

#: the ``transformers`` auto class that loads a model folder for each task family
AUTO_CLASSES = {
    "text_classification": "AutoModelForSequenceClassification",
    "image_classification": "AutoModelForImageClassification",
    "causal_lm": "AutoModelForCausalLM",
}


def _short(names: list[str], n: int = 4) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _placeholder_names(names: list[str]) -> bool:
    """Names that say nothing of a class: transformers' default ``LABEL_0``.., or bare indices."""
    return all(re.fullmatch(r"(label_)?\d+", n.strip().lower()) for n in names)


def _same_name(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def check_class_order(path: Path, id2label: dict[Any, str] | None, class_names: list[str]) -> None:
    """A folder whose ``id2label`` names real classes must list the data's classes in the data's order: otherwise its
    logits would be read under other classes (names compared ignoring case, spaces, ``_`` and ``-``)."""
    if not id2label or not class_names:
        return
    try:
        folder = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return
    if len(folder) != len(class_names) or _placeholder_names(folder) or _placeholder_names(class_names):
        return
    mine, theirs = [_same_name(n) for n in folder], [_same_name(n) for n in class_names]
    if mine == theirs:
        return
    if sorted(mine) == sorted(theirs):
        first = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        raise FolderError(f"{path}: its id2label (config.json) has the data's classes in another order (from index "
                          f"{first}: folder {_short(folder[first:])}; data {_short(class_names[first:])}): its logits "
                          "would be read under the wrong classes; give a folder trained in the data's class order")
    raise FolderError(f"{path}: its id2label (config.json) names other classes than the data's (folder "
                      f"{_short(folder)}; data {_short(class_names)}); give a folder trained on these classes, or "
                      "weights: new_head for a student with a new head on its body")


def hf_feature_taps(model: nn.Module, prefix: str = "") -> dict[str, str]:
    """Aliases for a Hugging Face model's features: ``embedding`` (its first ``*embeddings`` module), ``layer{i}``
    (the blocks of its longest block list) and ``pooled`` (the input of a linear ``classifier``)."""
    taps: dict[str, str] = {}
    blocks: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "embedding" not in taps and leaf.endswith("embeddings"):
            taps["embedding"] = prefix + name
        if isinstance(module, nn.ModuleList) and leaf in ("layer", "layers", "h", "blocks", "stages"):
            if blocks is None or len(module) > len(blocks[1]):
                blocks = (name, module)
    if blocks is not None:
        taps.update({f"layer{i}": f"{prefix}{blocks[0]}.{i}" for i in range(len(blocks[1]))})
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        taps["pooled"] = f"{prefix}classifier:input"
    return taps


class HFLogits(nn.Module):
    """A Hugging Face model called as usual (``model(input_ids, attention_mask)``, ``model(pixel_values)``) that
    returns the logits tensor instead of an output object. ``self.model`` is the Hugging Face module itself."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.feature_taps = hf_feature_taps(model, "model.")

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))


class FolderError(ValueError):
    """A model folder that does not fit the run (one line; the caller adds the config key)."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FolderError(f"{path}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise FolderError(f"{path}: expected a JSON object")
    return value


def is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file()


def load_hf_classifier(path: Path, task: str, num_classes: int, *, new_head: bool, weights_given: bool,
                       class_names: list[str] | None = None) -> HFLogits:
    """The folder's ``AutoModelFor*`` of ``task`` with its trained head, as :class:`HFLogits`.

    Refused (:class:`FolderError`): a ``num_labels`` other than ``num_classes``, or a head the folder does not hold
    (its weights would be random), unless ``new_head`` (a fresh ``num_classes``-way head on the folder's body) or
    ``weights_given`` (a weights file loaded afterwards supplies every tensor)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers.utils import logging as hf_logging

    from distill.core.safe_pickle import hf_folder_guard

    if not (path / "config.json").is_file():
        raise FolderError(f"{path}: not a Hugging Face model folder (no config.json)")
    auto = getattr(transformers, AUTO_CLASSES[task])
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise FolderError(f"{path}: {str(e).splitlines()[0]}") from None
    kwargs: dict[str, Any] = {}
    if new_head:
        names = class_names or [str(i) for i in range(num_classes)]
        config.num_labels = num_classes
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
        kwargs["ignore_mismatched_sizes"] = True
    elif config.num_labels != num_classes:
        raise FolderError(f"{path}: its head has num_labels {config.num_labels} (config.json), but the data has "
                          f"{num_classes} classes; give a folder trained on these classes, or weights: new_head for "
                          "a new head on its body")
    elif not weights_given and class_names:
        check_class_order(path, getattr(config, "id2label", None), class_names)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the missing-head warning is turned into a refusal below
    try:
        with hf_folder_guard(path):
            model, info = auto.from_pretrained(str(path), config=config, local_files_only=True,
                                               output_loading_info=True, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise FolderError(f"{path}: a {config.model_type} model has no {AUTO_CLASSES[task]} class in "
                              "transformers (not a model type for this task)") from None
        raise FolderError(f"{path}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise FolderError(f"{path}: {str(e).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(level)
    missing = list(info.get("missing_keys") or [])
    if missing and not new_head and not weights_given:
        raise FolderError(f"{path}: holds no trained {task} head for {type(model).__name__} (weights missing from "
                          f"the folder: {_short(sorted(missing))}); they would be random. Give a folder saved from a "
                          "fine-tuned classifier, or weights: new_head to train a new head on its body")
    return HFLogits(model.eval())


#: files whose presence says a model folder keeps its own tokenizer (fast, WordPiece, BPE or sentencepiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def check_folder_tokenizer(path: Path, tokenizer: Any, model: HFLogits | None = None) -> None:
    """A text model folder must read the ids of the run's tokenizer (``data.tokenizer``): when the folder holds a
    tokenizer its vocabulary must be the same; the model's embedding table must hold every id."""
    from distill.tasks.causal_lm.task import vocab_fingerprint

    if tokenizer is None:  # rebuilt without its data (``distill export``): checked when it was trained
        return
    if any((path / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            own = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise FolderError(f"{path}: its tokenizer cannot be read ({str(e).splitlines()[0]})") from None
        if vocab_fingerprint(own) != vocab_fingerprint(tokenizer):
            raise FolderError(f"{path}: its tokenizer ({len(own)} tokens) differs from data.tokenizer "
                              f"({len(tokenizer)} tokens); set data.tokenizer to this folder")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and vocab < len(tokenizer):
        raise FolderError(f"{path}: its embedding table has {vocab} ids, fewer than the {len(tokenizer)} of "
                          "data.tokenizer; set data.tokenizer to this folder's tokenizer")


def check_image_processor(path: Path, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
    """The folder's image processor (``preprocessor_config.json``) against the run's pipeline: the images are
    normalised with ``data.normalize`` (mean, std) at ``size`` pixels. A mismatch is refused, naming the setting
    that gives the model the inputs it was trained on."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return
    proc = read_json(file)
    if not proc.get("do_rescale", True) or abs(float(proc.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-6:
        raise FolderError(f"{file.name}: the model reads pixels not scaled to [0, 1] (do_rescale / rescale_factor); "
                          "the run scales them by 1/255 before normalising")
    if proc.get("do_normalize", True) and "image_mean" in proc and "image_std" in proc:
        want_mean = [float(v) for v in proc["image_mean"]]
        want_std = [float(v) for v in proc["image_std"]]
        close = all(abs(a - b) < 1e-3 for a, b in zip([*mean, *std], [*want_mean, *want_std], strict=False))
        if not close or len(want_mean) != len(mean):
            raise FolderError(f"{file.name} normalises with mean {want_mean} and std {want_std}, but the run "
                              f"uses mean {[round(m, 4) for m in mean]} and std {[round(s, 4) for s in std]}; set "
                              f"data.normalize: {{mean: {want_mean}, std: {want_std}}}")
    want = proc.get("size")
    side = None
    if isinstance(want, dict) and "height" in want and "width" in want:
        if want["height"] != want["width"]:
            raise FolderError(f"{file.name}: the model reads {want['height']}x{want['width']} images; the run's "
                              "images are square")
        side = int(want["height"])
    elif isinstance(want, int):
        side = want
    if side is not None and side != size:
        raise FolderError(f"{file.name}: the model reads {side}x{side} images, but the run's are {size}x{size}; "
                          f"set data.image_size: {side}")


class SentenceClassifier(nn.Module):
    """A sentence-transformers model (encoder, pooling and any later modules of the folder) and a new linear head
    on its sentence embedding, called as ``model(input_ids, attention_mask)``. ``encoder`` is the
    SentenceTransformer; its transformer layers are ``encoder.0.auto_model...``."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        from distill.text.st_models import embedding_dim

        width = embedding_dim(encoder)
        if not width:
            raise FolderError("the sentence-transformers model does not report its embedding width")
        self.classifier = nn.Linear(int(width), num_classes)
        body = getattr(encoder[0], "auto_model", None)
        layers = hf_feature_taps(body, "encoder.0.auto_model.") if body is not None else {}
        self.feature_taps = {**layers, "pooled": "classifier:input"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        from distill.text.st_models import embed

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.classifier(embed(self.encoder, tokens))
