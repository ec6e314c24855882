"""Causal language models (task: causal_lm): a family folder. The package re-exports the names of its task module
(their import path before families were folders, kept for one release)."""

from distill.tasks.causal_lm.task import (  # noqa: F401
    IGNORE,
    CausalLM,
    LMData,
    LMMetrics,
    align_vocab,
    check_same_tokenizer,
    pad_id,
    prompt_response_jsonl,
    read_jsonl,
    real_vocab_size,
    text_blocks,
    vocab_fingerprint,
)
