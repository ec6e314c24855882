"""Where training sequences come from: the dataset, the teacher (sequence-level KD) or the student (on-policy).

* **Dataset (off-policy):** the :class:`~distill.tasks.causal_lm.LMData` as loaded.
* **Teacher-generated (sequence-level KD, Kim & Rush 2016, arXiv 1606.07947):** :func:`teacher_sequences`
  generates a completion for every prompt ONCE (greedy as an approximation of the beam-search mode, or sampling
  as TRL's ``seq_kd`` and DistiLLM's SeqKD baseline do) and caches the result on disk (safetensors + a JSON
  fingerprint of teacher, data and settings); training then runs on the cached data with CE or any divergence.
* **Student-generated (on-policy, GKD):** the :class:`OnPolicy` method replaces a training batch, with
  probability ``lmbda`` per step (TRL: ``random() <= lmbda``), by completions the student samples (no gradient
  through sampling) from the batch's prompts; the teacher then runs on the new sequences, and whichever divergence
  the run uses is computed on them. It uses only the Method hooks (``setup`` gets the student from
  :class:`~distill.core.outputs.RunInfo`, ``transform_batch`` draws from the step's generator), so the trainer
  knows nothing about it.

Generation is batched: prompts are left-padded and ``model.generate`` runs with the KV cache. The new sequences are
right-padded; their labels are -100 on the prompt, after the first EOS (the EOS itself is kept, as in TRL) and on
padding. Plain-text blocks have no prompt: the first ``prefix_tokens`` tokens of each block serve as one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.tasks.causal_lm import IGNORE, LMData


def prompts_of(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor,
               prefix_tokens: int) -> list[list[int]]:
    """The prompt token lists of right-padded rows (the first ``prefix_tokens`` tokens where a row has none)."""
    out = []
    for i in range(input_ids.shape[0]):
        n = int(prompt_lengths[i]) or min(prefix_tokens, int(attention_mask[i].sum()))
        if n < 1:
            raise ValueError(f"row {i} has an empty prompt: set prefix_tokens >= 1 for plain-text data")
        out.append(input_ids[i, :n].tolist())
    return out


@torch.no_grad()
def generate_completions(model: nn.Module, prompts: list[list[int]], *, pad_id: int, eos_id: int | None,
                         max_new_tokens: int = 128, do_sample: bool = True, temperature: float = 1.0,
                         top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> LMData:
    """Complete every prompt with ``model.generate`` (one left-padded batch, KV cache on) and return right-padded
    sequences with labels -100 on prompt, after the first EOS (kept) and on padding. ``seed`` makes sampling
    reproducible without touching the global RNG."""
    if not prompts:
        raise ValueError("no prompts to complete")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad_id,
                              "use_cache": True}
    if eos_id is not None:
        kwargs["eos_token_id"] = eos_id
    if do_sample:
        kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    model.train(was_training)
    new = out[:, width:].cpu()
    rows, labels, plens = [], [], []
    for i, p in enumerate(prompts):
        gen = new[i].tolist()
        if eos_id is not None and eos_id in gen:
            gen = gen[: gen.index(eos_id) + 1]
        else:
            while gen and gen[-1] == pad_id:  # a finished row is padded (only when pad != eos)
                gen.pop()
        rows.append(p + gen)
        labels.append([IGNORE] * len(p) + gen)
        plens.append(len(p))
    length = max(len(r) for r in rows)
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    lab = torch.full((n, length), IGNORE, dtype=torch.long)
    att = torch.zeros((n, length), dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(r)] = 1
    return LMData(input_ids, att, lab, torch.tensor(plens))


def teacher_sequences(teacher: nn.Module, data: LMData, cache_dir: str | Path, *, pad_id: int, eos_id: int | None,
                      fingerprint: str, max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, prefix_tokens: int = 32, batch_size: int = 16,
                      seed: int = 0, device: str | torch.device | None = None) -> LMData:
    """Sequence-level KD data: the teacher's completion of every prompt of ``data``, generated once and cached
    in ``cache_dir`` (``sequences.safetensors`` + ``meta.json``). ``fingerprint`` identifies the teacher weights
    and tokenizer (e.g. :func:`distill.llm.topk_store.model_fingerprint`); a cache made from another teacher,
    data or settings is regenerated, never silently reused. ``device``: where the teacher generates (it is moved
    there; default: where it is). Under several processes the main process generates while the others wait, then
    they read its files.

    Nothing is lost on a crash: each batch of ``batch_size`` completions is written as it is done
    (``parts-<key>/<first row>.safetensors``, each batch sampled from ``seed`` + its first row), so a run killed
    mid-way generates only the missing batches when started again and gives the same sequences as one that was not
    interrupted. Every file is written to a temporary name and renamed; ``meta.json`` comes last."""
    from distill.train.distributed import main_process_first

    with main_process_first():
        return _teacher_sequences(teacher, data, cache_dir, pad_id=pad_id, eos_id=eos_id, fingerprint=fingerprint,
                                  max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_k=top_k, top_p=top_p, prefix_tokens=prefix_tokens, batch_size=batch_size,
                                  seed=seed, device=device)


def _teacher_sequences(teacher: nn.Module, data: LMData, cache_dir: str | Path, *, pad_id: int, eos_id: int | None,
                       fingerprint: str, max_new_tokens: int, do_sample: bool, temperature: float, top_k: int,
                       top_p: float, prefix_tokens: int, batch_size: int, seed: int,
                       device: str | torch.device | None) -> LMData:
    from distill.cache.store import _write_json_atomic
    from distill.core.safe_pickle import load_safetensors

    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                "top_k": top_k, "top_p": top_p, "prefix_tokens": prefix_tokens, "seed": seed}
    key = hashlib.sha256(json.dumps([fingerprint, data.fingerprint(), settings], sort_keys=True).encode()).hexdigest()
    cache = Path(cache_dir)
    meta_path, file = cache / "meta.json", cache / "sequences.safetensors"
    if meta_path.is_file() and file.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        t = load_safetensors(file)
        return LMData(t["input_ids"], t["attention_mask"], t["labels"], t["prompt_lengths"])
    prompts = prompts_of(data.input_ids, data.attention_mask, data.prompt_lengths, prefix_tokens)
    if device is not None:
        teacher.to(device)
    from distill.train.progress import track

    parts_dir = cache / f"parts-{key[:16]}"
    for stale in cache.glob("parts-*"):  # batches of another teacher, data or settings
        if stale != parts_dir and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)

    def part_file(start: int) -> Path:
        return parts_dir / f"{start:08d}.safetensors"

    todo = [s for s in range(0, len(prompts), batch_size) if not part_file(s).is_file()]
    parts_dir.mkdir(parents=True, exist_ok=True)

    def rows(start: int) -> int:
        return min(batch_size, len(prompts) - start)

    for s in track(todo, "teacher generation", sum(map(rows, todo)), size=rows):
        part = generate_completions(teacher, prompts[s:s + batch_size], pad_id=pad_id, eos_id=eos_id,
                                    max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                    top_k=top_k, top_p=top_p, seed=seed + s)
        _save_atomic(_fields(part), part_file(s))
    parts = []
    for s in range(0, len(prompts), batch_size):
        t = load_safetensors(part_file(s))
        parts.append(LMData(t["input_ids"], t["attention_mask"], t["labels"], t["prompt_lengths"]))
    length = max(p.input_ids.shape[1] for p in parts)

    def cat(name: str, fill: int) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(getattr(p, name), (0, length - p.input_ids.shape[1]), value=fill)
                          for p in parts])

    out = LMData(cat("input_ids", pad_id), cat("attention_mask", 0), cat("labels", IGNORE),
                 torch.cat([p.prompt_lengths for p in parts]))
    _save_atomic(_fields(out), file)
    _write_json_atomic(meta_path, {"key": key, "teacher": fingerprint, "data": data.fingerprint(),
                                   "settings": settings, "rows": len(out)})
    shutil.rmtree(parts_dir, ignore_errors=True)
    return out


def _fields(d: LMData) -> dict[str, torch.Tensor]:
    return {"input_ids": d.input_ids.contiguous(), "attention_mask": d.attention_mask.contiguous(),
            "labels": d.labels.contiguous(), "prompt_lengths": d.prompt_lengths.contiguous()}


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def __getattr__(name: str) -> Any:
    """``OnPolicy`` moved to :mod:`distill.methods.llm.on_policy`; the old path works for one release (imported on
    first use, so this module never imports ``distill.methods``)."""
    if name == "OnPolicy":  # looked up by name at run time: the method module imports this one, not the reverse
        from distill.plugins import moved

        return moved("distill.methods.llm.on_policy", "OnPolicy")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
