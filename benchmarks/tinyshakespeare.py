"""Benchmark: distil SmolLM2-135M-Instruct into a small Llama on tinyshakespeare with the LM divergences.

    python benchmarks/tinyshakespeare.py                 # full run (writes benchmarks/results/tinyshakespeare.*)
    python benchmarks/tinyshakespeare.py --quick         # minutes, a smoke run (writes to a temp folder)

What runs (all arms: the same student init, data order, token budget and seed):

1. The teacher (../shared/models/smollm2-135m-instruct, GGUF Q4_1 dequantised) runs ONCE over the training blocks
   and writes an offline top-k store (k = 64, float16 log-probs with the tail mass kept) plus, in the same pass,
   the dense float16 log-probabilities; the smaller stores (k = 8, 1) are truncations of the k = 64 store.
   A live 135M teacher at every step would cost ~3x the student's step on 2 shared CPU cores, so every KL arm
   trains from the stored teacher; the dense store gives the dense-teacher comparison at no extra teacher cost.
2. The teacher also runs once on the validation blocks: its perplexity and top-1 tokens (for agreement).
3. Arms: CE alone (no teacher); forward KL, reverse KL, generalised JSD (beta 0.5), skew KL
   (alpha 0.1) and TAID (t_start 0.4, alpha 5e-4), all from the k = 64 store; forward KL from k = 1, 8 and
   the dense teacher (the store's perplexity cost).
Metrics: validation perplexity of the student, top-1 agreement with the teacher, training tokens per second, the
store sizes and the teacher's mean tail mass outside the top k. Results are appended to the JSON after every arm,
so an interrupted run resumes where it stopped (stores resume from their last written row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.batch import Batch
from distill.core.compose import Composite
from distill.core.method import METHODS
from distill.core.outputs import ModelOutput, RunInfo
from distill.core.teachers import FrozenTeacher
from distill.llm.generation import teacher_sequences
from distill.llm.models import load_gguf_model, load_gguf_tokenizer, small_llama
from distill.llm.topk_store import (
    TopKStore,
    TopKStoreTeacher,
    build_topk_store,
    model_fingerprint,
    store_fingerprint,
    truncate_store,
)
from distill.tasks.causal_lm import CausalLM, LMData, text_blocks, vocab_fingerprint
from distill.train.evaluate import evaluate_model
from distill.train.module import DistillModule
from distill.train.schedules import lr_factor
from distill.train.trainer import derived_generator, epoch_order

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = SHARED / "data" / "tinyshakespeare" / "input.txt"

ARMS: dict[str, dict[str, Any]] = {  # SRKL and TVD are implemented and tested but left out: CPU budget
    "ce": {"method": {"name": "lm_ce"}, "teacher": None},
    "fkl": {"method": {"name": "fkl"}, "teacher": "k64"},
    "rkl": {"method": {"name": "rkl"}, "teacher": "k64"},
    "gjsd_0.5": {"method": {"name": "gjsd", "beta": 0.5}, "teacher": "k64"},
    "skl_0.1": {"method": {"name": "skl", "alpha": 0.1}, "teacher": "k64"},
    "taid": {"method": {"name": "taid", "t_start": 0.4, "alpha": 5e-4}, "teacher": "k64"},
    "fkl_dense": {"method": {"name": "fkl"}, "teacher": "dense"},
    "fkl_k8": {"method": {"name": "fkl"}, "teacher": "k8"},
    "fkl_k1": {"method": {"name": "fkl"}, "teacher": "k1"},
    # sequence-level KD (Kim & Rush): CE on the teacher's own continuations of each block's first 32 tokens,
    # sampled once at tau 1 (DistiLLM's SeqKD sampling) and cached; no teacher at training time
    "seqkd_ce": {"method": {"name": "lm_ce"}, "teacher": None, "data": "seqkd"},
    # on-policy GKD: with probability 0.5 a step trains on the student's own continuations (64-token prefix,
    # 64 sampled tokens), scored by the live teacher; not in the default list (a live 135M teacher every step)
    "gjsd_on_policy": {"method": {"name": "gjsd", "beta": 0.5}, "teacher": "live",
                       "extra": [{"name": "on_policy", "lmbda": 0.5, "prefix_tokens": 64, "max_new_tokens": 64}]},
}
DEFAULT_ARMS = [a for a in ARMS if a != "gjsd_on_policy"]


class DenseStoreTeacher:
    """Serves the dense float16 teacher log-probabilities (N, L, V) by dataset row, as logits."""

    def __init__(self, path: Path):
        self.arr = np.load(path, mmap_mode="r")

    def to(self, *a: object, **k: object) -> DenseStoreTeacher:
        return self

    def __call__(self, batch: Batch, task: Any, taps: Any = ()) -> ModelOutput:
        rows = self.arr[np.asarray(batch.indices.cpu().numpy())]
        return ModelOutput(torch.from_numpy(np.ascontiguousarray(rows)).float())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_method(spec: dict[str, Any]):
    spec = dict(spec)
    return METHODS.get(spec.pop("name"))(**spec)


def train_arm(name: str, spec: dict[str, Any], args: argparse.Namespace, task: CausalLM, train: LMData,
              val: LMData, teachers: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    student = small_llama(len(tokenizer), hidden_size=args.hidden, num_layers=args.layers, num_heads=4,
                          intermediate_size=args.ffn, max_positions=args.block_size,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, seed=args.seed)
    method = build_method(spec["method"])
    methods = {m["name"]: build_method(m) for m in spec.get("extra", [])}
    methods[spec["method"]["name"]] = method
    teacher = teachers[spec["teacher"]] if spec["teacher"] else None
    if spec.get("data") == "seqkd":
        train = teachers["seqkd_data"]
    module = DistillModule(student, Composite(methods), teacher, task)
    n = len(train)
    per_epoch = n // args.batch_size
    total = args.steps

    def batch_at(step: int) -> Batch:
        epoch, i = divmod(step, per_epoch)
        order = epoch_order(n, args.seed, epoch)
        return task.fetch(train, order[i * args.batch_size:(i + 1) * args.batch_size])

    module.setup(batch_at(0), RunInfo(num_train_examples=n, epochs=math.ceil(total / per_epoch),
                                      steps_per_epoch=per_epoch, batch_size=args.batch_size, student=student,
                                      task=task))
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = max(1, total // 10)
    module.train()
    t_curve = []
    tokens = 0
    start = time.perf_counter()
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor("cosine", step, per_epoch, total, warmup_steps=warm, min_factor=0.1)
        batch = batch_at(step)
        loss, terms, _ = module(batch, progress=step / total, epoch=step // per_epoch, step=step,
                                generator=derived_generator(args.seed, step, 0xB17))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        tokens += int(batch.inputs["attention_mask"].sum())
        if hasattr(method, "t"):
            t_curve.append(round(float(method.t), 6))
        if step % 10 == 0 or step == total - 1:
            log(f"{name} step {step + 1}/{total} loss {float(loss.detach()):.4f}")
    seconds = time.perf_counter() - start
    metrics = evaluate_model(student, task, val, batch_size=8, device="cpu")
    out = {"arm": name, "method": spec["method"], "teacher": spec["teacher"] or "none", "steps": total,
           "train_tokens": tokens, "train_seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1),
           "val_perplexity": round(metrics["perplexity"], 3), "val_nll": round(metrics["nll"], 5),
           "teacher_agreement": round(metrics.get("teacher_agreement", float("nan")), 5)}
    if t_curve:
        out["t_curve"] = t_curve[:: max(1, len(t_curve) // 20)] + [t_curve[-1]]
    return out


def write_markdown(res: dict[str, Any], path: Path, command: str) -> None:
    lines = ["# tinyshakespeare: SmolLM2-135M-Instruct -> small Llama, LM divergences", "",
             f"Command: `{command}`", "", "Setup: " + res["setup_text"], "",
             f"Teacher (SmolLM2-135M-Instruct, dequantised Q4_1) on the same validation blocks: perplexity "
             f"{res['teacher']['val_perplexity']:.2f}.", "",
             "| arm | teacher signal | val perplexity | teacher top-1 agreement | train tokens/s |",
             "|---|---|---|---|---|"]
    for r in res["arms"].values():
        lines.append(f"| {r['arm']} | {r['teacher']} | {r['val_perplexity']:.2f} | {r['teacher_agreement']:.4f} "
                     f"| {r['tokens_per_second']:.0f} |")
    lines += ["", "Offline teacher stores (training blocks):", "",
              "| store | size (MB) | bytes/token | teacher mean tail mass outside top k |", "|---|---|---|---|"]
    for s in res["stores"].values():
        tail = "-" if s["mean_tail_mass"] is None else f"{s['mean_tail_mass']:.4f}"
        lines.append(f"| {s['name']} | {s['megabytes']:.1f} | {s['bytes_per_token']:.0f} | {tail} |")
    if res.get("teacher_store_seconds"):
        lines += ["", f"One teacher pass wrote the k = 64 store and the dense store for {res['teacher_store_rows']} "
                  f"blocks in {res['teacher_store_seconds']:.0f} s (1 thread, shared CPU)."]
    taid = res["arms"].get("taid")
    if taid and "t_curve" in taid:
        lines += ["", f"TAID t over training (sampled): {taid['t_curve']}"]
    lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work" / "tinyshakespeare"),
                    help="where the teacher stores go (large: the dense store is 2 V bytes per token)")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS))
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--train-blocks", type=int, default=64)
    ap.add_argument("--val-blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.train_blocks, args.val_blocks, args.steps, args.block_size = 8, 2, 3, 32
        args.arms = "ce,gjsd_0.5,taid,fkl_dense,fkl_k1,seqkd_ce,gjsd_on_policy"
        args.out = args.work = tempfile.mkdtemp(prefix="tinyshakespeare_")
    out_dir, work = Path(args.out), Path(args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    name = "tinyshakespeare" if not args.quick else "tinyshakespeare_quick"
    json_path = out_dir / f"{name}.json"
    command = "python benchmarks/tinyshakespeare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    setup = {k: getattr(args, k) for k in ("block_size", "train_blocks", "val_blocks", "steps", "batch_size",
                                           "hidden", "layers", "ffn", "lr", "seed")}
    res: dict[str, Any] = {"setup": setup, "arms": {}, "stores": {}}
    if json_path.is_file():
        old = json.loads(json_path.read_text())
        if old.get("setup") == setup:
            res = old
            log(f"resuming: {sorted(res['arms'])} done")

    tok = load_gguf_tokenizer(GGUF)
    vocab = len(tok)
    task = CausalLM(vocab)
    full_train, full_val = text_blocks(TEXT, tok, block_size=args.block_size, val_fraction=0.1)
    train = full_train.subset(slice(0, args.train_blocks))
    val = full_val.subset(slice(0, args.val_blocks))
    train.meta, val.meta = {}, {}
    res["setup_text"] = (
        f"tinyshakespeare tokenised with the SmolLM2 tokenizer (vocab {vocab}); blocks of {args.block_size} tokens; "
        f"fixed split: last 10% of blocks = validation. Train on the first {args.train_blocks} training blocks "
        f"({args.train_blocks * args.block_size} tokens), validate on the first {args.val_blocks} validation blocks "
        f"({args.val_blocks * args.block_size} tokens). Student: Llama, hidden {args.hidden}, {args.layers} layers, "
        f"4 heads, FFN {args.ffn}, tied embeddings, from scratch. AdamW lr {args.lr} (betas 0.9/0.95, wd 0.01), "
        f"cosine with 10% warm-up, clip 1.0, batch {args.batch_size} x {args.block_size} tokens, {args.steps} "
        f"steps (same token budget for every arm), seed {args.seed}, 1 CPU thread.")

    teacher_model: Any = None
    fp_path = work / "fingerprint.txt"
    data_fp = train.fingerprint()
    k64_dir, dense_path = work / "store_k64", work / "dense_logprobs.npy"
    need_build = not (k64_dir / "meta.json").is_file() or json.loads((k64_dir / "meta.json").read_text()).get(
        "rows_done", 0) < len(train) or "teacher" not in res
    if need_build:
        t0 = time.time()
        teacher_model = load_gguf_model(GGUF)
        log(f"teacher loaded in {time.time() - t0:.0f}s")
        fp = store_fingerprint(model_fingerprint(teacher_model), data_fp, vocab_fingerprint(tok))
        fp_path.write_text(fp)
        meta_file = k64_dir / "meta.json"
        rows_before = json.loads(meta_file.read_text())["rows_done"] if meta_file.is_file() else 0
        t0 = time.time()
        build_topk_store(teacher_model, task, train, k64_dir, k=64, batch_size=4, fingerprint=fp,
                         dense_path=dense_path, log=log)
        if rows_before < len(train):  # time only a pass that actually ran the teacher
            res["teacher_store_seconds"] = round(time.time() - t0, 1)
            res["teacher_store_rows"] = len(train) - rows_before
        with torch.no_grad():
            metrics = evaluate_model(teacher_model, task, val, batch_size=4, device="cpu")
            top1 = torch.cat([task.forward(teacher_model, task.fetch(val, torch.arange(i, min(i + 4, len(val)))))
                              .argmax(-1) for i in range(0, len(val), 4)])
        torch.save(top1, work / "val_teacher_top1.pt")
        res["teacher"] = {"val_perplexity": round(metrics["perplexity"], 3), "val_nll": round(metrics["nll"], 5)}
        json_path.write_text(json.dumps(res, indent=1))
    fp = fp_path.read_text()
    val.meta["teacher_top1"] = torch.load(work / "val_teacher_top1.pt", weights_only=True)
    k64 = TopKStore(k64_dir, expected_fingerprint=fp)
    stores = {"k64": k64}
    for k in (8, 1):
        d = work / f"store_k{k}"
        stores[f"k{k}"] = TopKStore(d, fp) if (d / "meta.json").is_file() else truncate_store(k64, d, k)
    ntok = len(train) * args.block_size
    for key, st in stores.items():
        lp = torch.from_numpy(np.asarray(st.logprobs, dtype=np.float32))
        res["stores"][key] = {"name": f"top-{st.k} (int32 ids + float16 log-probs)", "megabytes": st.nbytes() / 1e6,
                              "bytes_per_token": st.nbytes() / ntok,
                              "mean_tail_mass": float((1 - lp.exp().sum(-1)).clamp(0, 1).mean())}
    dense_bytes = os.path.getsize(dense_path)
    res["stores"]["dense"] = {"name": "dense (float16 log-probs)", "megabytes": dense_bytes / 1e6,
                              "bytes_per_token": dense_bytes / ntok, "mean_tail_mass": None}
    teachers: dict[str, Any] = {key: TopKStoreTeacher(st) for key, st in stores.items()}
    teachers["dense"] = DenseStoreTeacher(dense_path)
    todo = [a for a in args.arms.split(",") if a and a not in res["arms"]]
    if any(ARMS.get(a, {}).get("teacher") == "live" or ARMS.get(a, {}).get("data") == "seqkd" for a in todo):
        teacher_model = teacher_model or load_gguf_model(GGUF)
        teachers["live"] = FrozenTeacher(teacher_model)
        t0 = time.time()
        teachers["seqkd_data"] = teacher_sequences(
            teacher_model, train, work / "seqkd", pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, fingerprint=fp,
            max_new_tokens=args.block_size - args.block_size // 4, do_sample=True, temperature=1.0,
            prefix_tokens=args.block_size // 4, batch_size=16, seed=args.seed)
        res["seqkd_generation_seconds"] = round(time.time() - t0, 1)
        kept = teachers["seqkd_data"].labels != -100
        res["seqkd_mean_generated_tokens"] = round(float(kept.sum(1).float().mean()), 1)

    for arm in [a for a in args.arms.split(",") if a]:
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")
        if arm in res["arms"]:
            continue
        log(f"arm {arm}")
        res["arms"][arm] = train_arm(arm, ARMS[arm], args, task, train, val, teachers, tok)
        log(f"arm {arm}: {res['arms'][arm]}")
        json_path.write_text(json.dumps(res, indent=1))
        write_markdown(res, out_dir / f"{name}.md", command)
    write_markdown(res, out_dir / f"{name}.md", command)
    log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
