"""The causal-LM family's models: a small Llama built for the tokenizer, or a local GGUF / Hugging Face model."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from distill.config import ConfigError, resolve_path
from distill.core.safe_pickle import config_key, hf_folder_guard
from distill.llm.models import load_gguf_model, load_gguf_tokenizer, small_llama
from distill.tasks.common import load_model_weights

ARCHS = ("llama",)


def load_lm_tokenizer(value: str, base_dir: str | None, key: str = "data.tokenizer") -> Any:
    path = resolve_path(value, base_dir)
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
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
        model = load_causal_lm(resolve_path(model_cfg.path, base_dir), f"{key}.path")
    else:
        if model_cfg.arch not in ARCHS:
            raise ConfigError(f"{key}.arch: unknown model {model_cfg.arch!r} for task causal_lm; allowed: "
                              f"{', '.join(ARCHS)} (or give 'path': a GGUF file or a Hugging Face folder)")
        allowed = [p for p in inspect.signature(small_llama).parameters
                   if p not in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "seed")]
        unknown = sorted(set(model_cfg.options) - set(allowed))
        if unknown:
            raise ConfigError(f"{key}.options.{unknown[0]}: unknown option for 'llama'; allowed: {', '.join(allowed)}")
        model = small_llama(len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            seed=seed, **model_cfg.options)
    return load_model_weights(model, model_cfg, base_dir, key)
