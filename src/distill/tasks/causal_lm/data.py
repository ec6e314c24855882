"""Loading the causal-LM family's corpus: text blocks or prompt/response JSONL."""

from __future__ import annotations

from typing import Any

from distill.config import ConfigError
from distill.tasks.causal_lm.task import LMData, prompt_response_jsonl, text_blocks
from distill.tasks.common import existing_file


def load_lm_data(cfg: Any, tok: Any) -> tuple[LMData, LMData | None]:
    d = cfg.data
    key = "data.text" if d.text else "data.train_jsonl"
    try:
        if d.text:
            path = existing_file(d.text, cfg.base_dir, "data.text")
            train, evald = text_blocks(path, tok, d.block_size, d.val_fraction, d.max_tokens)
        else:
            train = prompt_response_jsonl(existing_file(d.train_jsonl, cfg.base_dir, "data.train_jsonl"), tok,
                                          d.max_length)
            key = "data.eval_jsonl"
            evald = (prompt_response_jsonl(existing_file(d.eval_jsonl, cfg.base_dir, "data.eval_jsonl"), tok,
                                           d.max_length) if d.eval_jsonl else None)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:  # ConfigError is a ValueError: kept as is
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if d.train_blocks:
        train = train.subset(slice(0, d.train_blocks))
    if d.eval_blocks and evald is not None:
        evald = evald.subset(slice(0, d.eval_blocks))
    if len(train) == 0:
        raise ConfigError("data: the training corpus gives no examples")
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
