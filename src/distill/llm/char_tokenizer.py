"""A character-level tokenizer built from a corpus: one token per distinct character (sorted by code point) plus
an end-of-text token, as a Hugging Face fast tokenizer (so it gives character offsets and decodes exactly).

``data.tokenizer: chars`` builds it from ``data.text``: the student then has its own small vocabulary (65
characters + 1 for tinyshakespeare), unlike the teacher's BPE, and distils across tokenizers
(:mod:`distill.tasks.causal_lm.cross_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"


def char_tokenizer(chars: str | set[str]) -> Any:
    """A fast tokenizer over the characters of ``chars`` (id 0: the end-of-text token, also padding; then the
    characters by code point). A character outside the set is an error when encoding (no unknown token)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(set(chars) - {""})
    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate(alphabet)}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, pad_token=EOS)
    tok.name_or_path = f"chars({len(alphabet)})"
    return tok


def corpus_char_tokenizer(path: str | Path) -> Any:
    """:func:`char_tokenizer` over every character of the UTF-8 text file ``path`` (train and held-out parts alike,
    so no held-out character is unknown; the alphabet is not a statistic of the held-out text's content)."""
    return char_tokenizer(set(Path(path).read_text(encoding="utf-8")))
