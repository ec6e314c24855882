"""The shared-vocabulary check of ``task: causal_lm``: token-level divergences compare the teacher's and the
student's distributions id by id, so both models must read and write the ids of ``data.tokenizer``.

A model loaded from ``path`` is checked when it is built: its own tokenizer (beside it in the folder, or inside
the GGUF file) must have the same token -> id map as ``data.tokenizer``, and its embedding must have a row for
every id the tokenizer produces. A wider head whose extra rows are padding (embedding matrices rounded up to a
multiple of 64 or 128) is fine when the tokens agree: the task slices its logits to the tokenizer's size, and a
note says so. Anything else is refused in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.tasks.causal_lm.task import vocab_fingerprint

CROSS_TOKENIZER = ("token-level distillation needs one shared vocabulary; distilling across tokenizers is a "
                   "separate method, not these divergences")


def model_vocab_rows(model: nn.Module) -> tuple[int | None, int | None]:
    """(rows of the input embedding, width of the output head) of a Hugging Face causal LM, None where unknown."""
    rows = width = None
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if emb is not None and hasattr(emb, "num_embeddings"):
        rows = int(emb.num_embeddings)
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None and hasattr(head, "out_features"):
        width = int(head.out_features)
    elif getattr(getattr(model, "config", None), "vocab_size", None) is not None:
        width = int(model.config.vocab_size)
    return rows, width


def own_tokenizer(path: Path, key: str) -> Any | None:
    """The tokenizer stored with the model at ``path`` (a GGUF file's, or a folder's ``tokenizer.json`` /
    ``tokenizer_config.json``), or None when it keeps none."""
    from distill.tasks.causal_lm.models import load_lm_tokenizer

    if path.suffix == ".gguf" or (path.is_dir() and any((path / f).exists() for f in (
            "tokenizer.json", "tokenizer_config.json", "tokenizer.model"))):
        return load_lm_tokenizer(str(path), None, f"{key}.path")
    return None


def check_shared_vocab(model: nn.Module, tokenizer: Any, key: str, model_tokenizer: Any | None = None,
                       loaded_from: Path | None = None) -> str | None:
    """Refuse (:class:`ConfigError` at ``key``) a model that cannot share ``tokenizer``'s ids; return a note when
    its logits are wider than the tokenizer and will be sliced, else None. ``model_tokenizer``: the tokenizer
    stored with the model, compared token by token; ``loaded_from``: where the model was read (for messages)."""
    size = len(tokenizer)
    where = f"{key}.path" if loaded_from is not None else key
    if model_tokenizer is not None and vocab_fingerprint(model_tokenizer) != vocab_fingerprint(tokenizer):
        theirs, ours = len(model_tokenizer), size
        relation = "a larger" if theirs > ours else "a smaller" if theirs < ours else "a different"
        raise ConfigError(f"{where}: the {key}'s tokenizer ({theirs} tokens) is {relation} vocabulary than "
                          f"data.tokenizer ({ours} tokens; token -> id maps differ): {CROSS_TOKENIZER}")
    rows, width = model_vocab_rows(model)
    for what, n in (("input embedding", rows), ("output head", width)):
        if n is not None and n < size:
            raise ConfigError(f"{where}: the {key}'s {what} has {n} rows, but data.tokenizer produces {size} ids "
                              f"(a smaller vocabulary than the data's): {CROSS_TOKENIZER}")
    if width is not None and width > size:
        if model_tokenizer is None and key.startswith("teacher") and loaded_from is not None:
            raise ConfigError(f"{where}: the {key}'s logits are {width} wide and data.tokenizer has {size} tokens, "
                              f"and no tokenizer is stored beside the {key} to check that its first {size} ids are "
                              f"the same tokens; save the {key}'s tokenizer in {loaded_from} (or use it as "
                              "data.tokenizer)")
        same = "which are the same" if model_tokenizer is not None else "its tokens not compared (no tokenizer)"
        return (f"{key}: logits {width} wide (embedding padded past the tokenizer); sliced to data.tokenizer's "
                f"{size} tokens, {same}")
    return None


def check_lm_model(model: nn.Module, model_cfg: Any, tokenizer: Any, base_dir: str | None, data_tokenizer: str,
                   key: str) -> None:
    """:func:`check_shared_vocab` for the model of ``model_cfg`` (built by the family at config key ``key``),
    reading the tokenizer stored with it when it was loaded from ``path``; prints the note, if any, on stderr."""
    from distill.config import resolve_path

    own, loaded_from = None, None
    if model_cfg.path is not None:
        loaded_from = resolve_path(model_cfg.path, base_dir)
        if loaded_from.resolve() == resolve_path(data_tokenizer, base_dir).resolve():
            own = tokenizer  # the model's file is data.tokenizer's: the tokens agree by construction
        else:
            own = own_tokenizer(loaded_from, key)
    note = check_shared_vocab(model, tokenizer, key, own, loaded_from)
    if note:
        print(f"note: {note}", file=sys.stderr)
