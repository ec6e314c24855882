"""A teacher that writes text: chat generation and label scoring with a GGUF model, and texts as artefact tables.

The data-generating methods (rationale corpora, PGKD, symbolic KD) need a teacher that *writes*: short sampled
completions of chat prompts, and the log-probabilities of a few label words after a prompt. :class:`GGUFChat`
runs a GGUF file (e.g. SmolLM2-135M-Instruct Q4_1) through llama.cpp (``llama-cpp-python``, the ``served`` extra),
which on a CPU is as fast per sequence as a batched float32 ``transformers`` generate and loads in a second.
Every call is seeded (llama.cpp's sampler takes a seed per request), so a corpus is reproducible from its stage
fingerprint, and a stage that stops mid-way resumes to the same texts.

Any object with the :class:`TextGenerator` methods can stand in for the teacher (the tests use a stub).

Texts are stored in pipeline artefacts (tensor tables) as UTF-8 bytes: :func:`text_columns` gives a padded
``uint8`` matrix and the byte lengths, :func:`texts_of` reads them back.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["GGUFChat", "TextGenerator", "clean_sentence", "text_columns", "texts_of", "chatml"]


class TextGenerator(Protocol):
    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, top_p: float,
             seed: int) -> str: ...

    def label_logprobs(self, prompt: str, words: list[str]) -> list[float]: ...

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float, seed: int,
                 stop: list[str] | None = None, allow_eos: bool = True) -> str: ...


def chatml(messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
    """The ChatML rendering SmolLM2's template uses (``<|im_start|>role\\n...<|im_end|>``), with the assistant
    turn opened and ``assistant_prefix`` already written in it (for scoring the next token)."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n" + assistant_prefix


class GGUFChat:
    """SmolLM2 (or any chat GGUF) through llama.cpp: ``chat`` samples a completion (seeded), ``label_logprobs``
    gives log p(first token of each word | prompt), normalised over the whole vocabulary. :meth:`close` (or the
    end of a ``with`` block) frees the model and its context at once rather than whenever it is collected."""

    def __init__(self, path: str | Path, n_ctx: int = 2048, threads: int = 1):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ImportError("a generating GGUF teacher needs llama-cpp-python: "
                              "pip install 'distill[served]'") from None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} not found")
        self.path = p
        self._llm: Any = Llama(model_path=str(p), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               verbose=False, seed=0)

    @property
    def llm(self) -> Any:
        if self._llm is None:
            raise RuntimeError(f"GGUFChat({self.path.name}) is closed")
        return self._llm

    def close(self) -> None:
        """Free the llama.cpp model and context now; calling it again does nothing."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def __enter__(self) -> GGUFChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 32, temperature: float = 1.0,
             top_p: float = 0.9, seed: int = 0) -> str:
        out = self.llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature,
                                              top_p=top_p, seed=int(seed) % (2**31 - 1))
        return str(out["choices"][0]["message"]["content"] or "")

    def complete(self, prompt: str, *, max_tokens: int = 48, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, stop: list[str] | None = None, allow_eos: bool = True) -> str:
        """Continue a raw prompt (special tokens parsed); ``temperature=0``: greedy. ``allow_eos=False`` bans the
        end-of-turn token (the completion then ends at a ``stop`` string or ``max_tokens``): a small chat model
        often closes its turn at once after a forced prefix such as "Reasoning:"."""
        bias = None if allow_eos else {int(self.llm.token_eos()): -1e4}
        out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                         seed=int(seed) % (2**31 - 1), stop=stop or [], logit_bias=bias)
        return str(out["choices"][0]["text"] or "")

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def label_logprobs(self, prompt: str, words: list[str]) -> list[float]:
        import numpy as np

        toks = self.tokens(prompt)
        self.llm.reset()
        self.llm.eval(toks)  # without logits_all only the last position's logits exist, in the context
        ptr = self.llm._ctx.get_logits_ith(-1)
        z = np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float64)
        logz = z.max() + math.log(float(np.exp(z - z.max()).sum()))
        return [float(z[self.tokens(w)[0]] - logz) for w in words]


_LEAD = re.compile(r"^\s*(?:[-*•]|\d+[.)]|sentence\s*:|review\s*:|example\s*:)\s*", re.IGNORECASE)


def clean_sentence(text: str, lower: bool = True) -> str:
    """The first non-empty line of a generation without list marks, a ``Sentence:`` lead or enclosing quotes;
    lower-cased (as the SST files are) by default. Empty when nothing usable is left."""
    for line in text.splitlines():
        line = line.strip()
        if line.endswith(":"):  # "Here is a new positive sentence:" announces the answer on the next line
            continue
        if re.match(r"^(here|sure|certainly)\b", line, re.IGNORECASE) and ":" in line:
            line = line.split(":", 1)[1]  # "Here's one: \"...\"" -> the part after the colon
        elif ': "' in line:
            line = line.split(': "', 1)[1]
        line = _LEAD.sub("", line.strip()).strip().strip('"\u201c\u201d\'').strip()
        if line:
            return line.lower() if lower else line
    return ""


def text_columns(texts: list[str], name: str = "text") -> dict[str, torch.Tensor]:
    """``{name: uint8 (N, L) UTF-8 bytes padded with 0, name_len: int64 (N,)}`` for an artefact table."""
    raw = [t.encode("utf-8") for t in texts]
    width = max([len(r) for r in raw] + [1])
    mat = torch.zeros((len(raw), width), dtype=torch.uint8)
    for i, r in enumerate(raw):
        if r:
            mat[i, : len(r)] = torch.frombuffer(bytearray(r), dtype=torch.uint8)
    return {name: mat, f"{name}_len": torch.tensor([len(r) for r in raw], dtype=torch.int64)}


def texts_of(table: dict[str, Any], name: str = "text") -> list[str]:
    """The texts :func:`text_columns` stored."""
    mat, lens = table[name], table[f"{name}_len"]
    return [bytes(mat[i, : int(lens[i])].tolist()).decode("utf-8") for i in range(mat.shape[0])]


def gguf_token_embeddings(path: str | Path) -> Any:
    """The token embedding matrix (vocab, hidden) of a GGUF file, dequantised to float32 (numpy) by the ``gguf``
    package, without building the model (seconds instead of a full load)."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            return dequantize(t.data, t.tensor_type)
    raise ValueError(f"{path}: no token_embd.weight tensor")


class GGUFTokenizer:
    """The tokenizer of a GGUF file through llama.cpp (vocabulary only, loads in a second)."""

    def __init__(self, path: str | Path):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.eos_id = int(self.llm.token_eos())

    def __call__(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
