"""Sentence classifiers over token ids: BiLSTM, TextCNN, and a (truncated) MiniLM transformer.

Every model is called as ``model(input_ids, attention_mask)`` with (B, L) long tensors (mask 1 on real tokens,
0 on padding) and returns (B, K) logits. ``feature_taps["pooled"]`` names the sentence vector fed to the
classifier. The BiLSTM and TextCNN read the teacher tokenizer's ids (30,522 wordpieces for MiniLM), so teacher
and student read the same ids; their embeddings are learnt from scratch or, with ``embeddings="minilm"`` (or a
local Hugging Face folder), start from that encoder's 384-d input word-embedding matrix (the "semantic" variant
of the LSF-IDM demonstration).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .bounds import Layers, Rate, Size, Width

MINILM_VOCAB = 30522
#: convolution kernel widths of the TextCNN
Kernels = Annotated[Sequence[Annotated[int, Field(gt=0, le=64)]], Field(min_length=1, max_length=16)]


def word_embedding_matrix(model_dir: str | Path = "minilm") -> torch.Tensor:
    """The (vocab, dim) input word-embedding matrix of a local BERT-like folder (``"minilm"``: the packaged
    all-MiniLM-L6-v2), read from its safetensors weights."""
    from safetensors import SafetensorError, safe_open

    from distill.core.safe_pickle import UnsafeFileError
    from distill.data.text import resolve_model_dir

    path = resolve_model_dir(model_dir) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no safetensors weights to take word embeddings from")
    try:
        with safe_open(str(path), "pt") as f:
            keys = [k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight")]
            if len(keys) != 1:
                raise KeyError(f"{path}: expected one '*embeddings.word_embeddings.weight' tensor, found {keys}")
            return f.get_tensor(keys[0]).float()
    except SafetensorError as e:  # e.g. a pickle named model.safetensors: never handed to a pickle reader
        raise UnsafeFileError(path, f"not a safetensors file ({e})") from None


def make_embedding(vocab_size: int, embed_dim: int, padding_idx: int, embeddings: str | None,
                   freeze: bool) -> nn.Embedding:
    """A learnt embedding table, or one initialised from a pretrained encoder's word embeddings (then
    ``vocab_size`` and ``embed_dim`` follow that matrix; a ``vocab_size`` that disagrees is refused)."""
    if embeddings is None:
        return nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
    matrix = word_embedding_matrix(embeddings)
    if vocab_size not in (MINILM_VOCAB, matrix.shape[0]):
        raise ValueError(f"vocab_size {vocab_size} differs from the {matrix.shape[0]} rows of {embeddings!r}'s "
                         "word embeddings (the student must read the same tokenizer's ids)")
    return nn.Embedding.from_pretrained(matrix.clone(), freeze=freeze, padding_idx=padding_idx)


class BiLSTMClassifier(nn.Module):
    """Embedding -> 1..n-layer bidirectional LSTM -> max (or mean) pooling over real tokens -> dropout -> linear.

    Padding is skipped with packed sequences, so the cost follows the true sentence lengths. The LSF-IDM
    demonstration setting is a 1-layer BiLSTM, hidden 256 per direction, max pooling.
    """

    def __init__(self, num_classes: int = 2, vocab_size: Size = MINILM_VOCAB, embed_dim: Width = 128,
                 hidden_size: Width = 256, num_layers: Layers = 1, pooling: Literal["max", "mean"] = "max",
                 dropout: Rate = 0.5, padding_idx: Annotated[int, Field(ge=0)] = 0, embeddings: str | None = None,
                 freeze_embeddings: bool = False):
        super().__init__()
        if pooling not in ("max", "mean"):
            raise ValueError(f"pooling must be 'max' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.embedding = make_embedding(vocab_size, embed_dim, padding_idx, embeddings, freeze_embeddings)
        embed_dim = self.embedding.embedding_dim
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)
        self.feature_taps = {"pooled": "classifier:input", "embedding": "embedding"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).clamp(min=1)
        x = self.dropout(self.embedding(input_ids))
        if bool((lengths == input_ids.shape[1]).all()):  # no padding (e.g. one sentence): skip the packing
            h, _ = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        valid = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None])[..., None]
        if self.pooling == "max":
            pooled = h.masked_fill(~valid, float("-inf")).amax(1)
        else:
            pooled = (h * valid).sum(1) / lengths[:, None].to(h.dtype)
        return self.classifier(self.dropout(pooled))


class TextCNN(nn.Module):
    """Kim (2014) CNN: embedding -> parallel 1-D convolutions (widths ``kernel_sizes``) -> ReLU -> max over time
    -> concatenation -> dropout -> linear. Padding embeds to zero and windows reaching into the padding are
    ignored by the max (ReLU outputs are >= 0, so masked positions are set to 0); sentences shorter than the
    widest kernel are padded up to it."""

    def __init__(self, num_classes: int = 2, vocab_size: Size = MINILM_VOCAB, embed_dim: Width = 128,
                 kernel_sizes: Kernels = (3, 4, 5), channels: Width = 100, dropout: Rate = 0.5,
                 padding_idx: Annotated[int, Field(ge=0)] = 0,
                 embeddings: str | None = None, freeze_embeddings: bool = False):
        super().__init__()
        self.embedding = make_embedding(vocab_size, embed_dim, padding_idx, embeddings, freeze_embeddings)
        embed_dim = self.embedding.embedding_dim
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k) for k in kernel_sizes)
        self.max_kernel = max(kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * len(kernel_sizes), num_classes)
        self.feature_taps = {"pooled": "classifier:input", "embedding": "embedding"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding(input_ids)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        x = x.transpose(1, 2)  # (B, E, L)
        if x.shape[-1] < self.max_kernel:
            x = nn.functional.pad(x, (0, self.max_kernel - x.shape[-1]))
        lengths = (attention_mask.sum(1) if attention_mask is not None
                   else torch.full((x.shape[0],), input_ids.shape[1], device=x.device))
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # (B, C, L - k + 1)
            k = conv.kernel_size[0]
            # windows that reach into the padding are left out, so a sentence scores the same in any batch
            last = (lengths.clamp(min=k) - k)[:, None, None]
            valid = torch.arange(h.shape[-1], device=h.device)[None, None, :] <= last
            pooled.append(h.masked_fill(~valid, 0.0).amax(-1))
        pooled = torch.cat(pooled, dim=1)
        return self.classifier(self.dropout(pooled))


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over real tokens (sentence-transformers' mean pooling)."""
    m = attention_mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TransformerClassifier(nn.Module):
    """A Hugging Face encoder -> mean pooling over real tokens -> dropout -> linear.

    With all-MiniLM-L6-v2 and all 6 layers this is the teacher; with ``layers=k`` only the embeddings and the
    first ``k`` encoder layers are kept (the truncated-transformer student).
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes)
        layers = getattr(getattr(encoder, "config", None), "num_hidden_layers", 0)
        self.feature_taps = {"pooled": "classifier:input", "embedding": "encoder.embeddings",
                             **{f"layer{i}": f"encoder.encoder.layer.{i}" for i in range(layers)}}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.classifier(self.dropout(masked_mean(hidden, attention_mask)))


def minilm(num_classes: int = 2, layers: Layers | None = None, model_dir: str = "minilm", pretrained: bool = True,
           dropout: Rate = 0.1) -> TransformerClassifier:
    """all-MiniLM-L6-v2 (or another local BERT-like folder) with mean pooling and a linear head.

    ``layers``: keep only the first ``layers`` encoder layers (default: all). ``pretrained``: load the folder's
    weights (else a random initialisation of the same architecture, e.g. before loading a fine-tuned state dict).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel

    from distill.data.text import resolve_model_dir

    path = resolve_model_dir(model_dir)
    config = AutoConfig.from_pretrained(str(path))
    full = config.num_hidden_layers
    if layers is not None:
        if not 1 <= layers <= full:
            raise ValueError(f"layers must be in 1..{full} for {Path(path).name}, got {layers}")
        config.num_hidden_layers = layers
    if pretrained:
        import logging

        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity(logging.ERROR)  # unused deeper layers are expected when truncating
        try:
            from distill.core.safe_pickle import hf_folder_guard

            with hf_folder_guard(path):  # safetensors or torch.load(weights_only=True); refusals in one line
                encoder = AutoModel.from_pretrained(str(path), config=config, add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(level)
    else:
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
    return TransformerClassifier(encoder, config.hidden_size, num_classes, dropout)


def minilm_truncated(num_classes: int = 2, layers: Layers = 2, model_dir: str = "minilm",
                     pretrained: bool = True, dropout: Rate = 0.1) -> TransformerClassifier:
    """The first ``layers`` layers (default 2 of 6) of MiniLM with its embeddings, mean pooling and a linear head."""
    return minilm(num_classes, layers, model_dir, pretrained, dropout)


def bilstm(num_classes: int = 2, **kwargs: object) -> BiLSTMClassifier:
    return BiLSTMClassifier(num_classes=num_classes, **kwargs)  # type: ignore[arg-type]


def textcnn(num_classes: int = 2, **kwargs: object) -> TextCNN:
    return TextCNN(num_classes=num_classes, **kwargs)  # type: ignore[arg-type]


#: text models whose embedding is learnt from scratch and whose ``vocab_size`` follows the tokenizer
VOCAB_MODELS = ("bilstm", "textcnn")
