"""Teacher and student language models: a GGUF teacher loaded by transformers, a small Llama student.

The teacher (e.g. SmolLM2-135M-Instruct as a Q4_1 GGUF file) is dequantised to float32 by transformers'
GGUF loader, which needs the ``gguf`` package (``pip install distill[llm]``). The student is a small
``LlamaConfig`` model with the teacher's tokenizer and vocabulary, trained from scratch, or initialised from the
teacher when the widths agree (:func:`init_from_teacher`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from distill.models.bounds import Layers, Width


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError("loading a GGUF model needs the 'gguf' package: pip install 'distill[llm]'") from None


def load_gguf_tokenizer(path: str | Path) -> Any:
    """The tokenizer stored in a GGUF file (``path`` is the .gguf file)."""
    from transformers import AutoTokenizer

    _require_gguf()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {p} not found")
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_gguf_model(path: str | Path) -> nn.Module:
    """A causal LM from a GGUF file, dequantised to float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    _require_gguf()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {p} not found")
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return model.eval()


def small_llama(vocab_size: int, hidden_size: Width = 256, num_layers: Layers = 4,
                num_heads: Annotated[int, Field(gt=0, le=256)] = 4,
                intermediate_size: Annotated[int, Field(gt=0, le=32768)] = 704,
                max_positions: Annotated[int, Field(gt=0, le=131072)] = 256, tie_embeddings: bool = True,
                bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None,
                seed: int = 0) -> nn.Module:
    """A small Llama student with the given vocabulary, randomly initialised (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_positions,
                      tie_word_embeddings=tie_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                      pad_token_id=pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def init_from_teacher(student: nn.Module, teacher: nn.Module, layers: list[int] | None = None) -> nn.Module:
    """Copy the teacher's token embedding, final norm, output head and the chosen decoder layers into a student
    of the *same width* (hidden size, heads, FFN size); ``layers`` lists teacher layer indices, one per student
    layer (default: evenly spaced). Other widths are refused: slicing an embedding or a projection to another
    width does not give a meaningful model (a projection would have to be learned), so "initialise from the
    teacher" means only this layer-subset copy."""
    sc, tc = student.config, teacher.config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if getattr(sc, key) != getattr(tc, key):
            raise ValueError(f"init_from_teacher needs equal widths: student {key}={getattr(sc, key)}, teacher "
                             f"{getattr(tc, key)}; train the student from scratch instead")
    n_s, n_t = sc.num_hidden_layers, tc.num_hidden_layers
    if layers is None:
        layers = [round(i * (n_t - 1) / max(n_s - 1, 1)) for i in range(n_s)]
    if len(layers) != n_s or not all(0 <= i < n_t for i in layers):
        raise ValueError(f"layers must list {n_s} teacher layer indices in [0, {n_t}), got {layers}")
    with torch.no_grad():
        student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        student.model.norm.load_state_dict(teacher.model.norm.state_dict())
        if not sc.tie_word_embeddings:
            student.lm_head.weight.copy_(teacher.lm_head.weight)
        for s_i, t_i in enumerate(layers):
            student.model.layers[s_i].load_state_dict(teacher.model.layers[t_i].state_dict())
    return student
