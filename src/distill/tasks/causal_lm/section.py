"""The ``data:`` and ``student:`` sections of ``task: causal_lm``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from distill.config import ModelConfig, Strict, TeacherConfig
from distill.llm.served import ServedSettings
from distill.train.config import Flag


class SequenceKD(Strict):
    """Sequence-level KD data (Kim & Rush 2016): the teacher's own continuation of the first ``prefix_tokens``
    tokens of every training row (``max_new_tokens`` new tokens, sampled at ``temperature`` when ``do_sample``),
    generated once into the folder ``path`` and reused while the teacher, data and settings are the same
    (:func:`distill.llm.generation.teacher_sequences`). The run then trains on these rows (loss on the generated
    tokens); its evaluation split is unchanged."""

    path: str
    prefix_tokens: int = Field(32, ge=1)
    max_new_tokens: int = Field(96, ge=1)
    do_sample: bool = True
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(16, ge=1)


class CrossTokenizer(Strict):
    """The teacher reads and writes another tokenizer than ``data.tokenizer`` (``tokenizer``: its tokenizer, a GGUF
    file or a Hugging Face folder; unset: the one stored with the teacher). Its distributions are placed at the
    student's positions by ``alignment`` (``token_end``: where both tokens end at the same character; ``index``:
    the official ULD code's i-th with i-th), kept as their ``topk`` log-probabilities, and stored once in the folder
    ``cache`` (unset: the teacher runs every step); ``batch_size``: rows per teacher pass.
    Only methods that need no shared vocabulary accept it (``uld``); see
    :mod:`distill.tasks.causal_lm.cross_tokenizer`."""

    tokenizer: str | None = None
    alignment: Literal["token_end", "index"] = "token_end"
    topk: int = Field(128, ge=1)
    cache: str | None = None
    batch_size: int = Field(8, ge=1)


class LMData(Strict):
    """``tokenizer``: a GGUF file or a Hugging Face model folder. The corpus: a plain-text file ``text`` (chunked
    into ``block_size`` blocks, the last ``val_fraction`` held out) or JSONL files (``train_jsonl``, optionally
    ``eval_jsonl``; sequences up to ``max_length`` tokens): prompt/response rows (loss on the response) or chat rows
    ``{"messages": [{"role", "content"}, ...]}`` rendered through the tokenizer's chat template (loss on the
    assistant's turns). Training batches are padded to their own longest row.
    ``train_blocks`` / ``eval_blocks`` keep the first rows only; ``agreement``: also report the student's top-1
    agreement with the live teacher during evaluation; ``sequence_kd``: train on the teacher's continuations of the
    training rows instead (:class:`SequenceKD`). ``chunk_tokens``: compute the losses and metrics from the models'
    final hidden states and output heads, this many token rows at a time, never holding a (batch, tokens,
    vocabulary) tensor (exact; see docs/llm.md); ``auto`` (the default): 256 rows when the vocabulary has at least
    16,384 tokens and every method reads hidden states (no teacher mixture), else full logits; ``null``: always
    full logits. ``text_format``: ``text`` (a plain-text file)
    or a table read with Hugging Face ``datasets`` (``csv``, ``jsonl``, ``parquet``, ``arrow``; docs/data.md) whose
    ``text_column`` rows, joined by newlines, are the corpus. ``tokenizer: chars``: a character-level tokenizer
    built from ``data.text`` (:mod:`distill.llm.char_tokenizer`). ``cross_tokenizer``: the teacher has another
    tokenizer (:class:`CrossTokenizer`)."""

    tokenizer: str
    text: str | None = None
    text_format: Literal["text", "csv", "jsonl", "parquet", "arrow"] = "text"
    text_column: str = "text"
    train_jsonl: str | None = None
    eval_jsonl: str | None = None
    block_size: int = Field(128, ge=2)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    max_tokens: int | None = Field(None, gt=0)
    max_length: int = Field(256, ge=2)
    train_blocks: int | None = Field(None, gt=0)
    eval_blocks: int | None = Field(None, gt=0)
    agreement: Flag = True
    sequence_kd: SequenceKD | None = None
    chunk_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] | None = "auto"
    cross_tokenizer: CrossTokenizer | None = None


class LMStudent(ModelConfig):
    """``arch: llama`` builds a small Llama with the tokenizer's vocabulary (``options``: hidden_size, num_layers,
    num_heads, intermediate_size, max_positions, tie_embeddings); ``path`` loads a Hugging Face causal-LM folder.
    ``init_from_teacher`` copies the teacher's layers ``teacher_layers`` (equal widths only)."""

    init_from_teacher: Flag = False
    teacher_layers: list[int] | None = None


class LMTeacher(TeacherConfig):
    """The causal-LM teacher: a model (the keys of :class:`~distill.config.TeacherConfig`), or ``served``: a teacher
    behind an OpenAI-compatible completions server (:class:`~distill.llm.served.ServedSettings`), asked once for
    the top-k log-probabilities of every training position and stored in ``teacher.cache`` (with ``topk``), which
    training reads; a run then resumes without the server (docs/llm.md)."""

    served: ServedSettings | None = None
