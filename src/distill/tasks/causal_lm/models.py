"""The causal-LM family's models: a small Llama built for the tokenizer, or a local GGUF / Hugging Face model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distill.config import ConfigError
from distill.core.safe_pickle import config_key, hf_folder_guard
from distill.llm.models import load_gguf_model, load_gguf_tokenizer, small_llama
from distill.tasks.common import call_builder, existing_path, load_model_weights, validate_model_options

ARCHS = ("llama",)
#: what the family passes to the builder itself
SUPPLIED = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "seed")


def load_lm_tokenizer(value: str, base_dir: str | None, key: str = "data.tokenizer") -> Any:
    path = existing_path(value, base_dir, key)
    try:
        if path.suffix == ".gguf":
            return load_gguf_tokenizer(path)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: Path, key: str) -> nn.Module:
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    try:
        with config_key(key):
            if path.suffix == ".gguf":
                return load_gguf_model(path)
            from transformers import AutoModelForCausalLM

            with hf_folder_guard(path):
                return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {path}: {str(e).splitlines()[0]}") from None


def build_lm_model(model_cfg: Any, tokenizer: Any, seed: int, base_dir: str | None, key: str) -> nn.Module:
    if model_cfg.path is not None:
        if model_cfg.arch is not None:
            raise ConfigError(f"{key}.arch: give 'arch' or 'path', not both")
        model = load_causal_lm(existing_path(model_cfg.path, base_dir, f"{key}.path"), f"{key}.path")
    else:
        if model_cfg.arch not in ARCHS:
            raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task causal_lm; allowed: "
                              f"{', '.join(ARCHS)} (or give 'path': a GGUF file or a Hugging Face folder)")
        options = validate_model_options(small_llama, model_cfg.options, f"{key}.options", "llama", SUPPLIED)
        if options.get("hidden_size", 256) % options.get("num_heads", 4):
            raise ConfigError(f"{key}.options.num_heads: hidden_size ({options.get('hidden_size', 256)}) must divide "
                              f"by num_heads ({options.get('num_heads', 4)})")
        model = call_builder(small_llama, key, len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, seed=seed, **options)
    return load_model_weights(model, model_cfg, base_dir, key)
