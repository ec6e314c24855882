"""Build a ``task: causal_lm`` run from its validated config (the ``lm:`` section).

Example (``distill train run.yaml``)::

    task: causal_lm
    output_dir: runs/shakespeare_fkl
    lm:
      tokenizer: ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
      teacher: ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
      data: {text: ../shared/data/tinyshakespeare/input.txt, block_size: 128, train_blocks: 256, eval_blocks: 16}
      student: {hidden_size: 256, num_layers: 4, num_heads: 4, intermediate_size: 704}
    methods: [{name: fkl}]
    train: {epochs: 1, batch_size: 8, optimizer: adamw, lr: 2.0e-3, weight_decay: 0.01}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distill.config import ConfigError, ExperimentConfig
from distill.core.safe_pickle import config_key, hf_folder_guard
from distill.core.teachers import FrozenTeacher
from distill.llm.models import init_from_teacher, load_gguf_model, load_gguf_tokenizer, small_llama
from distill.llm.topk_store import TopKStore, TopKStoreTeacher
from distill.tasks.causal_lm import CausalLM, LMData, check_same_tokenizer, prompt_response_jsonl, text_blocks
from distill.train.module import DistillModule
from distill.train.trainer import Trainer, seed_everything


def _resolve(value: str, base_dir: str | None) -> Path:
    from distill.experiment import resolve_path

    return resolve_path(value, base_dir)


def load_tokenizer(path: Path) -> Any:
    if path.suffix == ".gguf":
        return load_gguf_tokenizer(path)
    from transformers import AutoTokenizer

    if not path.exists():
        raise ConfigError(f"lm.tokenizer: {path} not found")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: Path, what: str) -> nn.Module:
    if path.suffix == ".gguf":
        return load_gguf_model(path)
    from transformers import AutoModelForCausalLM

    if not path.exists():
        raise ConfigError(f"{what}: {path} not found")
    with config_key(what), hf_folder_guard(path):  # a refused weight file: one line naming the key and the file
        return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def load_lm_data(cfg: ExperimentConfig, tok: Any) -> tuple[LMData, LMData | None]:
    d = cfg.lm.data
    if d.text:
        train, evald = text_blocks(_resolve(d.text, cfg.base_dir), tok, d.block_size, d.val_fraction, d.max_tokens)
    else:
        train = prompt_response_jsonl(_resolve(d.train_jsonl, cfg.base_dir), tok, d.max_length)
        evald = prompt_response_jsonl(_resolve(d.eval_jsonl, cfg.base_dir), tok, d.max_length) if d.eval_jsonl \
            else None
    if d.train_blocks:
        train = train.subset(slice(0, d.train_blocks))
    if d.eval_blocks and evald is not None:
        evald = evald.subset(slice(0, d.eval_blocks))
    return train, evald


def build_lm_experiment(cfg: ExperimentConfig, output_dir: str | Path | None = None):
    from distill.experiment import Experiment, build_methods, train_config

    seed_everything(cfg.seed, cfg.deterministic)
    lm = cfg.lm
    tok = load_tokenizer(_resolve(lm.tokenizer, cfg.base_dir))
    train, evald = load_lm_data(cfg, tok)
    teacher_model = load_causal_lm(_resolve(lm.teacher, cfg.base_dir), "lm.teacher") if lm.teacher else None
    s = lm.student
    if s.path:
        student = load_causal_lm(_resolve(s.path, cfg.base_dir), "lm.student.path")
        student.train()
        if (Path(s.path) / "tokenizer.json").exists() or (Path(s.path) / "tokenizer_config.json").exists():
            check_same_tokenizer(load_tokenizer(_resolve(s.path, cfg.base_dir)), tok)
    else:
        student = small_llama(len(tok), s.hidden_size, s.num_layers, s.num_heads, s.intermediate_size,
                              s.max_positions, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              seed=cfg.seed)
    if s.init_from_teacher:
        if teacher_model is None:
            raise ConfigError("lm.student.init_from_teacher: needs lm.teacher")
        init_from_teacher(student, teacher_model, s.teacher_layers)
    task = CausalLM(len(tok), agreement_teacher=teacher_model if lm.agreement else None)
    if lm.topk_store:
        with config_key("lm.topk_store"):
            store = TopKStore(_resolve(lm.topk_store, cfg.base_dir))
        if len(store) != len(train):
            raise ConfigError(f"lm.topk_store: {len(store)} rows, but the training data has {len(train)}")
        teacher = TopKStoreTeacher(store)
    else:
        teacher = FrozenTeacher(teacher_model) if teacher_model is not None else None
    methods = build_methods(cfg.methods)
    module = DistillModule(student, methods, teacher, task)
    trainer = Trainer(module, train, evald, train_config(cfg), Path(output_dir or cfg.output_dir))
    return Experiment(cfg, task, train, evald, None, student, teacher, methods, module, trainer)
