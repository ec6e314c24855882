"""``task: causal_lm``: token-level distillation of a causal language model (GGUF or Hugging Face teacher; a small
Llama or Hugging Face student; ``teacher.cache`` with ``topk`` stores the teacher's top-k log-probabilities)."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.errors import ConfigError
from distill.core.family import Family, Loaded, register_family
from distill.llm.models import init_from_teacher, small_llama
from distill.tasks.causal_lm.data import load_lm_data, sequence_kd_data
from distill.tasks.causal_lm.models import build_lm_model, load_lm_tokenizer
from distill.tasks.causal_lm.section import LMData, LMStudent, LMTeacher
from distill.tasks.causal_lm.task import CausalLM
from distill.tasks.causal_lm.vocab_check import check_lm_model

#: ``data.chunk_tokens: auto``: chunks of this many token rows once the vocabulary has AUTO_CHUNK_MIN_VOCAB tokens
#: (benchmarks/llm_vs_trl.py: at SmolLM2's 49,152 tokens chunked steps take less time and a fraction of the memory)
AUTO_CHUNK_TOKENS = 256
AUTO_CHUNK_MIN_VOCAB = 16_384


def dense_only_methods(cfg: Any) -> list[str]:
    """The configured methods that need full logits (not computable from hidden states and the head)."""
    from distill.methods import METHODS

    return [m.name for m in cfg.methods if not getattr(METHODS.get(m.name), "accepts_hidden_states", False)]


def resolve_chunk_tokens(cfg: Any, vocab_size: int) -> int | None:
    """``data.chunk_tokens`` as the task uses it: a number or None as given; ``auto``: AUTO_CHUNK_TOKENS when the
    vocabulary is large and every method reads hidden states (no teacher mixture), else None (full logits)."""
    chunk = cfg.data.chunk_tokens
    if chunk != "auto":
        return chunk
    mixture = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
    if mixture is not None or dense_only_methods(cfg):
        return None
    if hidden_cache(cfg):  # the stored hidden states are read in chunks at any vocabulary size
        return AUTO_CHUNK_TOKENS
    if vocab_size < AUTO_CHUNK_MIN_VOCAB:
        return None
    return AUTO_CHUNK_TOKENS


def hidden_cache(cfg: Any) -> bool:
    """Whether ``teacher.cache.hidden`` is set (the teacher's hidden states and head are stored)."""
    return cfg.teacher is not None and cfg.teacher.cache is not None and bool(cfg.teacher.cache.hidden)


@register_family
class CausalLMFamily(Family):
    name = "causal_lm"
    summary = "token sequences -> next-token logits (plain text blocks or prompt/response JSONL)"
    data_section = LMData
    student_section = LMStudent
    teacher_section = LMTeacher
    lora_students = True
    teacher_mixture = True
    hidden_cache = True

    def model_archs(self) -> list[str]:
        from distill.tasks.causal_lm.models import ARCHS

        return list(ARCHS)

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        from distill.tasks.causal_lm.models import SUPPLIED

        return (small_llama, SUPPLIED) if model_cfg.arch == "llama" and model_cfg.path is None else None

    def check(self, cfg: Any) -> None:
        d = cfg.data
        if not (d.text or d.train_jsonl):
            raise ValueError("data: give 'text' (a plain-text corpus) or 'train_jsonl' (prompt/response lines)")
        if cfg.teacher is not None and cfg.teacher.ensemble:
            raise ValueError("teacher.ensemble: not supported for causal_lm yet; give one teacher")
        if isinstance(d.chunk_tokens, int):
            dense = dense_only_methods(cfg)
            if dense:
                raise ValueError(f"data.chunk_tokens: methods {dense} need full logits; chunked losses are "
                                 "fkl, rkl, gjsd, tvd, skl, srkl, taid, lm_ce (and on_policy beside them)")
        if hidden_cache(cfg):
            if d.chunk_tokens is None:
                raise ValueError("teacher.cache.hidden: the teacher's hidden states are only given by the chunked "
                                 "path; set data.chunk_tokens (a number, or auto) or drop teacher.cache.hidden")
            dense = dense_only_methods(cfg)
            if dense:
                raise ValueError(f"teacher.cache.hidden: methods {dense} need full logits, which the chunked path "
                                 "never forms; store the logits instead (drop teacher.cache.hidden)")
        if cfg.teacher is not None and cfg.teacher.served is not None:
            check_served(cfg)
        if d.cross_tokenizer is not None:
            check_cross_tokenizer(cfg)
        if cfg.student.init_from_teacher and cfg.teacher is None:
            raise ValueError("student.init_from_teacher: needs a teacher")
        mix = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
        if mix is not None:
            if cfg.student.init_from_teacher:
                raise ValueError("student.init_from_teacher: copies one teacher's layers; teacher.mixture has several")
            if d.sequence_kd is not None:
                raise ValueError("data.sequence_kd: generates with one teacher; teacher.mixture has several")
            if isinstance(d.chunk_tokens, int):
                raise ValueError("data.chunk_tokens: a mixture combines its members' logits, and chunked losses "
                                 "never form them; drop chunk_tokens with teacher.mixture")
            if mix.route == "column" and not d.train_jsonl:
                raise ValueError(f"teacher.mixture.column: {mix.column!r} is a field of the data.train_jsonl rows; "
                                 "data.text has no rows (give train_jsonl, or route: learned)")
        if d.sequence_kd is not None:
            if cfg.teacher is None:
                raise ValueError("data.sequence_kd: the continuations are the teacher's; give a teacher section")
            if not d.text:
                raise ValueError("data.sequence_kd: continues the blocks of data.text (prompt/response JSONL has "
                                 "its own responses)")
            if cfg.teacher.cache is not None:
                raise ValueError("teacher.cache: data.sequence_kd trains on generated rows, which a cache of the "
                                 "teacher's outputs on data.text does not cover; drop teacher.cache")

    def load(self, cfg: Any) -> Loaded:
        tok = data_tokenizer(cfg)
        train, evald = load_lm_data(cfg, tok)
        mix = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
        if mix is not None and mix.route == "column":  # each row's member, from its field teacher.mixture.column
            train.meta["route"] = jsonl_routes(cfg, mix, "data.train_jsonl", cfg.data.train_jsonl)[:len(train)]
            if evald is not None and cfg.data.eval_jsonl:
                evald.meta["route"] = jsonl_routes(cfg, mix, "data.eval_jsonl", cfg.data.eval_jsonl,
                                                   required=False)[:len(evald)]
                if not len(evald.meta["route"]):
                    del evald.meta["route"]
        info: dict[str, Any] = {"tokenizer": tok}
        if cfg.data.sequence_kd is not None:  # the teacher writes the training rows; built once, reused below
            teacher = build_lm_model(cfg.teacher, tok, cfg.seed, cfg.base_dir, "teacher")
            check_lm_model(teacher, cfg.teacher, tok, cfg.base_dir, cfg.data.tokenizer, "teacher")
            train = sequence_kd_data(cfg, tok, train, teacher)
            info["sequence_kd_teacher"] = teacher
        chunk = resolve_chunk_tokens(cfg, len(tok))
        return Loaded(CausalLM(len(tok), chunk_tokens=chunk, strict_chunks=cfg.data.chunk_tokens != "auto"),
                      train, evald, info=info)

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> nn.Module:
        if key == "teacher" and loaded.info.get("sequence_kd_teacher") is not None:
            return loaded.info["sequence_kd_teacher"]
        model = build_lm_model(model_cfg, loaded.info["tokenizer"], cfg.seed, cfg.base_dir, key)
        check_lm_model(model, model_cfg, loaded.info["tokenizer"], cfg.base_dir, cfg.data.tokenizer, key)
        return model

    def export_formats(self, cfg: Any) -> list[str]:
        return ["hf", "safetensors"]

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        return {"vocab_size": len(loaded.info["tokenizer"])}

    def export_loaded(self, cfg: Any, facts: dict[str, Any]) -> Loaded:
        """The tokenizer (``data.tokenizer``, a local file or folder: no training text is read, except the corpus's
        characters for ``tokenizer: chars``)."""
        tok = data_tokenizer(cfg)
        return Loaded(task=None, train=None, info={**facts, "tokenizer": tok})

    def export_student(self, cfg: Any, loaded: Loaded) -> nn.Module:
        """No ``init_from_teacher`` (the trained weights replace it) and no teacher."""
        return self.build_model(cfg.student, loaded, cfg, "student")

    def build_teacher(self, cfg: Any, loaded: Loaded) -> Any:
        if cfg.teacher is not None and cfg.teacher.served is not None:  # asked once, into teacher.cache
            from distill.llm.served import ServedTeacher

            loaded.info["teacher_model"] = None
            return ServedTeacher(cfg.teacher.served, loaded.info["tokenizer"], loaded.task.vocab_size,
                                 cfg.teacher.cache.topk)
        if cfg.teacher is not None and cfg.data.cross_tokenizer is not None:
            return cross_tokenizer_teacher(cfg, loaded)
        teacher = super().build_teacher(cfg, loaded)
        model = getattr(teacher, "model", None)  # None for a mixture: no single teacher to agree with
        if model is not None and cfg.data.agreement:
            loaded.task.agreement_teacher = model
        loaded.info["teacher_model"] = model
        return teacher

    def build_student(self, cfg: Any, loaded: Loaded) -> nn.Module:
        student = self.build_model(cfg.student, loaded, cfg, "student")
        student.train()
        return student

    def prepare_student(self, student: Any, teacher: Any, cfg: Any, loaded: Loaded) -> None:
        if cfg.student.init_from_teacher:
            init_from_teacher(student, loaded.info["teacher_model"], cfg.student.teacher_layers)


def data_tokenizer(cfg: Any) -> Any:
    """``data.tokenizer``: a GGUF file or Hugging Face folder, or ``chars`` (one token per character of
    ``data.text``)."""
    if cfg.data.tokenizer == "chars":
        from distill.llm.char_tokenizer import corpus_char_tokenizer
        from distill.tasks.common import existing_file

        if not cfg.data.text or cfg.data.text_format != "text":
            raise ConfigError("data.tokenizer: 'chars' builds its alphabet from a plain-text data.text; give one")
        return corpus_char_tokenizer(existing_file(cfg.data.text, cfg.base_dir, "data.text"))
    return load_lm_tokenizer(cfg.data.tokenizer, cfg.base_dir)


def check_cross_tokenizer(cfg: Any) -> None:
    """``data.cross_tokenizer``: a teacher, and only methods that need no shared vocabulary (the token-level
    divergences keep the shared-vocabulary refusal)."""
    from distill.methods import METHODS
    from distill.tasks.causal_lm.vocab_check import CROSS_TOKENIZER

    if cfg.teacher is None:
        raise ConfigError("data.cross_tokenizer: describes the teacher's tokenizer; give a teacher section")
    for i, m in enumerate(cfg.methods):
        cls = METHODS.get(m.name)
        if getattr(cls, "needs_teacher", False) and not getattr(cls, "cross_tokenizer", False):
            raise ConfigError(f"methods[{i}]: {m.name!r} compares the teacher's and the student's distributions token "
                              f"id by token id, and data.cross_tokenizer says their tokenizers differ: "
                              f"{CROSS_TOKENIZER} (use 'uld')")
    for key, bad in (("teacher.cache", cfg.teacher.cache is not None),
                     ("teacher.ensemble", bool(cfg.teacher.ensemble)),
                     ("teacher.mixture", getattr(cfg.teacher, "mixture", None) is not None),
                     ("data.sequence_kd", cfg.data.sequence_kd is not None),
                     ("student.init_from_teacher", bool(cfg.student.init_from_teacher))):
        if bad:
            hint = " (its outputs are stored in data.cross_tokenizer.cache)" if key == "teacher.cache" else ""
            raise ConfigError(f"{key}: not supported with data.cross_tokenizer{hint}")


def cross_tokenizer_teacher(cfg: Any, loaded: Loaded) -> Any:
    """The teacher model checked against its own tokenizer, wrapped to serve its distributions at the student's
    positions (:class:`~distill.tasks.causal_lm.cross_tokenizer.CrossTokenizerTeacher`), from its store when
    ``data.cross_tokenizer.cache`` is set."""
    from distill.config import resolve_path
    from distill.tasks.causal_lm.cross_tokenizer import CrossTokenizerTeacher
    from distill.tasks.causal_lm.vocab_check import check_shared_vocab, own_tokenizer

    ct = cfg.data.cross_tokenizer
    if ct.tokenizer is not None:
        t_tok = load_lm_tokenizer(ct.tokenizer, cfg.base_dir, "data.cross_tokenizer.tokenizer")
    else:
        t_tok = (own_tokenizer(resolve_path(cfg.teacher.path, cfg.base_dir), "teacher")
                 if cfg.teacher.path is not None else None)
        if t_tok is None:
            raise ConfigError("data.cross_tokenizer.tokenizer: the teacher keeps no tokenizer beside it; give its "
                              "tokenizer here")
    model = build_lm_model(cfg.teacher, t_tok, cfg.seed, cfg.base_dir, "teacher")
    check_shared_vocab(model, t_tok, "teacher")  # the teacher against its own tokenizer
    source = CrossTokenizerTeacher(model, t_tok, loaded.info["tokenizer"], ct.alignment, ct.topk, ct.batch_size)
    if ct.cache is not None:
        source.use_store(resolve_path(ct.cache, cfg.base_dir), loaded.train,
                         log=lambda m: print(m, flush=True))
    loaded.info["teacher_model"] = None  # no top-1 agreement across vocabularies
    return source


def jsonl_routes(cfg: Any, mix: Any, key: str, value: str, required: bool = True) -> Any:
    """The field ``teacher.mixture.column`` of every row of the JSONL file at ``key`` as member indices (an empty
    tensor when no row has it and it is not ``required``)."""
    import torch

    from distill.core.mixture import route_indices
    from distill.tasks.causal_lm.task import read_jsonl
    from distill.tasks.common import existing_file

    rows = read_jsonl(existing_file(value, cfg.base_dir, key))
    missing = [i for i, r in enumerate(rows) if not isinstance(r, dict) or mix.column not in r]
    if missing and (required or len(missing) < len(rows)):
        raise ConfigError(f"teacher.mixture.column: {key} row {missing[0] + 1} has no field {mix.column!r} (every "
                          "row names its teacher)")
    if missing:
        return torch.zeros(0, dtype=torch.long)
    return route_indices([r[mix.column] for r in rows], mix.names(), f"teacher.mixture.column ({key})")


def check_served(cfg: Any) -> None:
    """``teacher.served`` beside the rest of the file: the server is the only teacher, its answers are stored in
    ``teacher.cache`` with ``topk`` (how many log-probabilities it is asked for), and nothing needs its weights."""
    t = cfg.teacher
    for k in ("arch", "path", "weights", "num_classes"):
        if getattr(t, k) is not None:
            raise ValueError(f"teacher.{k}: the served teacher is the server's model; give teacher.served or a "
                             "model, not both")
    if t.ensemble or t.mixture is not None:
        raise ValueError("teacher.served: one served teacher; drop teacher.ensemble / teacher.mixture")
    if t.cache is None or t.cache.topk is None:
        raise ValueError("teacher.cache.topk: required with teacher.served (the server's top-k log-probabilities "
                         "are stored in teacher.cache, which training reads; topk says how many per position)")
    if cfg.student.init_from_teacher:
        raise ValueError("student.init_from_teacher: a served teacher has no weights here to copy")
    if cfg.data.sequence_kd is not None:
        raise ValueError("data.sequence_kd: generates with a local teacher; teacher.served only scores sequences")
