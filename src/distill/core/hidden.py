"""A language model's final hidden states with its output head: logits on demand, a chunk of tokens at a time.

The logits of a causal LM over a large vocabulary are the biggest tensor of a distillation step (batch x tokens x
vocabulary: 4 x 1,024 x 49,152 float32 values are 805 MB, and a divergence keeps several such tensors for its
backward pass). A task that returns :class:`HiddenStates` instead of logits lets the losses compute the logits of a
few hundred token rows at a time (:mod:`distill.methods.llm.chunked`), so no (batch, tokens, vocabulary) tensor is
ever held.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.core.topk import TopKLogits


@dataclass
class HiddenStates:
    """``hidden`` (B, T, H): the final (normalised) hidden states; ``weight`` (V_model, H) and ``bias`` (V_model,)
    or None: the output head, logits = hidden @ weight.T + bias. ``vocab_size``: the tokenizer's real vocabulary
    (a wider head is cut to it, a narrower one padded with -inf columns, as
    :func:`distill.tasks.causal_lm.align_vocab` does). ``chunk_tokens``: rows per chunk for the losses.
    ``scale`` and ``softcap``: what the model does to its head's output, logits = softcap tanh(scale z / softcap)
    (a logit scale as Cohere's or Granite's, a final soft-cap as Gemma 2's; 1 and None: the head's output is the
    logits)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    vocab_size: int
    chunk_tokens: int
    scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self) -> None:
        if self.hidden.dim() != 3 or self.weight.dim() != 2 or self.hidden.shape[-1] != self.weight.shape[-1]:
            raise ValueError(f"hidden states {tuple(self.hidden.shape)} and head weight {tuple(self.weight.shape)} "
                             "do not fit: (B, T, H) and (V, H) expected")
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the logits these states stand for: (B, T, vocab_size)."""
        b, t, _ = self.hidden.shape
        return b, t, self.vocab_size

    def head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias cut to the vocabulary when the head is wider."""
        v = self.vocab_size
        if self.weight.shape[0] <= v:
            return self.weight, self.bias
        return self.weight[:v], None if self.bias is None else self.bias[:v]

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of a head narrower than the vocabulary padded with -inf columns (ids the model cannot produce)."""
        missing = self.vocab_size - logits.shape[-1]
        if missing <= 0:
            return logits
        return torch.cat([logits, logits.new_full((*logits.shape[:-1], missing), -math.inf)], dim=-1)

    @property
    def transforms(self) -> bool:
        """Whether the model changes its head's output (a logit scale or soft-cap)."""
        return self.scale != 1.0 or self.softcap is not None

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """The model's logits from its head's output ``z``: times ``scale``, then soft-capped (identity by default;
        -inf columns, ids a narrower head cannot produce, stay -inf)."""
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is not None:
            z = torch.where(torch.isinf(z), z, self.softcap * torch.tanh(z / self.softcap))
        return z

    def logits_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits (..., vocab_size) of hidden rows (..., H)."""
        weight, bias = self.head()
        return self.align(self.transform(F.linear(rows, weight, bias)))

    def dense(self) -> torch.Tensor:
        """The full (B, T, vocab_size) logits (what the chunked path avoids; for consumers that need them)."""
        return self.logits_of(self.hidden)

    def chunks(self, rows: torch.Tensor | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """(slice, logits) of ``rows`` (N, H) (default: every position, flattened to B * T rows), chunk by chunk."""
        flat = self.hidden.reshape(-1, self.hidden.shape[-1]) if rows is None else rows
        for lo in range(0, flat.shape[0], self.chunk_tokens):
            part = slice(lo, min(lo + self.chunk_tokens, flat.shape[0]))
            yield part, self.logits_of(flat[part])

    @torch.no_grad()
    def argmax(self) -> torch.Tensor:
        """(B, T) most likely token per position, computed chunk by chunk."""
        out = torch.empty(self.hidden.shape[0] * self.hidden.shape[1], dtype=torch.long, device=self.hidden.device)
        for part, z in self.chunks():
            out[part] = z.argmax(-1)
        return out.view(self.hidden.shape[:2])

    @torch.no_grad()
    def topk(self, k: int) -> TopKLogits:
        """The k most likely tokens per position with their log-probabilities, chunk by chunk."""
        b, t, _ = self.hidden.shape
        idx = torch.empty(b * t, k, dtype=torch.long, device=self.hidden.device)
        val = torch.empty(b * t, k, dtype=torch.float32, device=self.hidden.device)
        for part, z in self.chunks():
            top = TopKLogits.from_logits(z, k)
            idx[part], val[part] = top.indices, top.logprobs
        return TopKLogits(idx.view(b, t, k), val.view(b, t, k), self.vocab_size)

    def detach(self) -> HiddenStates:
        return HiddenStates(self.hidden.detach(), self.weight.detach(),
                            None if self.bias is None else self.bias.detach(), self.vocab_size, self.chunk_tokens,
                            self.scale, self.softcap)
