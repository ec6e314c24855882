"""Loading the causal-LM family's corpus: text blocks, prompt/response JSONL or chat JSONL (``messages`` rendered
through the tokenizer's chat template, the loss on the assistant's turns)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from distill.config import ConfigError
from distill.core.batch import IGNORE_INDEX
from distill.tasks.causal_lm.task import LMData, pad_id, prompt_response_jsonl, read_jsonl, text_blocks
from distill.tasks.common import existing_file


def load_lm_data(cfg: Any, tok: Any) -> tuple[LMData, LMData | None]:
    d = cfg.data
    key = "data.text" if d.text else "data.train_jsonl"
    try:
        if d.text and d.text_format != "text":
            train, evald = table_text_blocks(cfg, tok)
        elif d.text:
            path = existing_file(d.text, cfg.base_dir, "data.text")
            train, evald = text_blocks(path, tok, d.block_size, d.val_fraction, d.max_tokens)
        else:
            train = jsonl_data(existing_file(d.train_jsonl, cfg.base_dir, "data.train_jsonl"), tok, d.max_length,
                               "data.train_jsonl")
            key = "data.eval_jsonl"
            evald = (jsonl_data(existing_file(d.eval_jsonl, cfg.base_dir, "data.eval_jsonl"), tok, d.max_length,
                                "data.eval_jsonl") if d.eval_jsonl else None)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:  # ConfigError is a ValueError: kept as is
        if isinstance(e, ConfigError):
            raise
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # a KeyError's str() is its repr
        raise ConfigError(f"{key}: {text.splitlines()[0] if text else type(e).__name__}") from None
    if d.train_blocks:
        train = train.subset(slice(0, d.train_blocks))
    if d.eval_blocks and evald is not None:
        evald = evald.subset(slice(0, d.eval_blocks))
    if len(train) == 0:
        raise ConfigError("data: the training corpus gives no examples")
    return train, evald


def table_text_blocks(cfg: Any, tok: Any) -> tuple[LMData, LMData]:
    """``data.text_format`` other than ``text``: the rows of column ``data.text_column`` of a ``datasets`` table,
    joined by newlines, cut into blocks as a plain-text file with those lines would be."""
    import tempfile
    from pathlib import Path

    from distill.data.tables import read_table, split_for, texts_of
    from distill.tasks.common import existing_path

    d = cfg.data
    path = existing_path(d.text, cfg.base_dir, "data.text")
    table = read_table(path, d.text_format, "data.text", split=split_for("train"))
    if d.text_column not in table.column_names:
        raise ConfigError(f"data.text_column: no column {d.text_column!r} in {path}; its columns: "
                          f"{table.column_names}")
    with tempfile.TemporaryDirectory(prefix="distill-corpus-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts_of(table, d.text_column, "data.text", path)) + "\n", encoding="utf-8")
        train, evald = text_blocks(corpus, tok, d.block_size, d.val_fraction, d.max_tokens)
    for part in (train, evald):
        part.meta["source"] = str(path)
    return train, evald


def sequence_kd_data(cfg: Any, tok: Any, train: LMData, teacher: Any) -> LMData:
    """``data.sequence_kd``: the teacher's continuations of ``train`` (generated once into its folder)."""
    import hashlib

    from distill.cache import teacher_fingerprint
    from distill.config import resolve_path
    from distill.llm.generation import teacher_sequences
    from distill.tasks.causal_lm.task import vocab_fingerprint
    from distill.train.distributed import run_device

    s = cfg.data.sequence_kd
    # the teacher and its vocabulary; teacher_sequences adds the data and the settings to its key
    fingerprint = hashlib.sha256(f"{teacher_fingerprint(teacher)}|{vocab_fingerprint(tok)}".encode()).hexdigest()
    return teacher_sequences(teacher, train, resolve_path(s.path, cfg.base_dir), pad_id=tok.pad_token_id,
                             eos_id=tok.eos_token_id, fingerprint=fingerprint, max_new_tokens=s.max_new_tokens,
                             do_sample=s.do_sample, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                             prefix_tokens=s.prefix_tokens, batch_size=s.batch_size, seed=s.seed,
                             device=run_device(cfg.train.cpu))


def is_chat_jsonl(path: str | Path) -> bool:
    """Whether the first row of a JSONL file holds chat ``messages`` (else prompt/response rows)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False  # the row loader names the line
                return isinstance(row, dict) and "messages" in row
    return False


def jsonl_data(path: str | Path, tokenizer: Any, max_length: int, key: str) -> LMData:
    """Chat rows (:func:`chat_jsonl`) or prompt/response rows, by the first row's keys; ``key``: the config key."""
    if not is_chat_jsonl(path):
        return prompt_response_jsonl(path, tokenizer, max_length)
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(f"data.tokenizer: {name!r} has no chat template, which the chat rows ('messages') of "
                          f"{key} need; use a tokenizer that has one (chat_template in tokenizer_config.json) or "
                          "give prompt/response rows")
    return chat_jsonl(path, tokenizer, max_length)


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: every message needs a string 'role' and a string 'content', got {m!r}"[:300])
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise ValueError(f"{where}: no 'assistant' message, so nothing to learn; roles: {roles}")
    if roles[0] == "assistant":
        raise ValueError(f"{where}: the conversation starts with the assistant; give the prompt (a system or user "
                         "message) first")


def chat_spans(tokenizer: Any, messages: list[dict[str, str]], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered by the tokenizer's chat template, and the character spans of the assistant's
    turns in it: from the end of the conversation before the turn rendered with the generation prompt (what the
    model is given at inference) to the end of the conversation with the turn (its end-of-turn marker included)."""

    def render(msgs: list[dict[str, str]], prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    text = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ValueError(f"{where}: the tokenizer's chat template does not render this conversation as growing "
                             "prefixes (turn by turn), so the assistant's tokens cannot be located")
        spans.append((len(before), len(upto)))
    return text, spans


def chat_jsonl(path: str | Path, tokenizer: Any, max_length: int = 256) -> LMData:
    """Load chat rows ``{"messages": [{"role": ..., "content": ...}, ...]}`` rendered through the tokenizer's chat
    template. Only the assistant's turns (with their end-of-turn markers) carry a loss; the rest (system, user,
    the template's own markup and the generation prompt before each assistant turn) and padding get label -100.
    Each piece is tokenised on its own, the prompt as the model sees it at inference. ``prompt_lengths`` counts the
    tokens before the last assistant turn (the prompt an on-policy sample continues). Rows are cut to
    ``max_length`` tokens and padded to the longest row (training batches are cut to their own longest row)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template (tokenizer.chat_template); chat rows need one")
    ids_list, lab_list, plens = [], [], []
    for i, row in enumerate(rows):
        where = f"{path} line {i + 1}"
        if not isinstance(row, dict) or "messages" not in row:
            raise ValueError(f"{where}: needs the key 'messages' (a chat file); has "
                           f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
        _check_messages(row["messages"], where)
        text, spans = chat_spans(tokenizer, row["messages"], where)
        ids: list[int] = []
        labels: list[int] = []
        last_start, pos = 0, 0
        for start, end in spans:
            piece = tokenizer(text[pos:start], add_special_tokens=False)["input_ids"] if start > pos else []
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
            last_start = len(ids)
            answer = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
            ids += answer
            labels += answer
            pos = end
        tail = tokenizer(text[pos:], add_special_tokens=False)["input_ids"] if pos < len(text) else []
        ids += tail
        labels += [IGNORE_INDEX] * len(tail)
        ids_list.append(ids[:max_length])
        lab_list.append(labels[:max_length])
        plens.append(min(last_start, max_length))
    return _padded(ids_list, lab_list, plens, pad_id(tokenizer), str(path))


def _padded(ids_list: list[list[int]], lab_list: list[list[int]], plens: list[int], pad: int, source: str) -> LMData:
    """Right-padded rows (to the longest) with their masks and labels."""
    n, width = len(ids_list), max(2, max(len(s) for s in ids_list))
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(ids_list, lab_list, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[i, : len(s)] = 1
    return LMData(input_ids, mask, labels, torch.tensor(plens), meta={"source": source})
