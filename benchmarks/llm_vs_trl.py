"""Benchmark: speed and memory of one live-teacher LM distillation step, distill vs TRL's GKD trainer, same job.

    bash benchmarks/setup_trl_env.sh       # once: TRL in its own git-ignored environment, benchmarks/.venv-trl
    python benchmarks/llm_vs_trl.py        # writes benchmarks/results/llm_vs_trl.{json,md}
    python benchmarks/llm_vs_trl.py --quick   # a smoke run (a tiny random teacher, short rows; a temp folder)

The job: forward KL, KL(p_teacher || q_student) per token, on the data's own sequences (no student or teacher
generation), a live frozen teacher run on every batch, float32, AdamW (lr 1e-4, no weight decay, constant
rate, no gradient clipping), on the CPU. Teacher: SmolLM2-135M-Instruct (../shared/models, the GGUF file
dequantised to float32 and saved once as a Hugging Face folder); student: the small Llama of the tinyshakespeare
benchmark (hidden 192, 4 layers, 4 heads, FFN 512, tied embeddings, SmolLM2's 49,152-token vocabulary), built by
``distill.llm.models.small_llama`` with seed 0 and saved as a Hugging Face folder that every arm loads, so all
arms start from the same weights. Data: tinyshakespeare cut into blocks of ``T`` SmolLM2 tokens; every arm sees
the same batches in the same order.

Arms, each in its own process (its peak resident memory, ``ru_maxrss``, is its own):

* ``trl``: ``trl.experimental.gkd.GKDTrainer`` (TRL 1.16; GKD moved to ``trl.experimental`` there) with
  ``lmbda=0`` (never the student's own samples: ``random.random() <= 0``), ``seq_kd=False`` (no teacher
  samples) and ``beta=0`` (its ``generalized_jsd_loss`` is then ``kl_div(log q, log p, log_target=True)``,
  i.e. KL(p || q): forward KL), temperature 1 in the loss; run in benchmarks/.venv-trl by that environment's
  Python (TRL is not a dependency of distill);
* ``dense``: distill's step (``DistillModule``: the frozen teacher under no-grad, the student, ``fkl``), full
  logits;
* ``chunkN``: the same with ``data.chunk_tokens: N`` (losses from the final hidden states and the output head, N
  token rows at a time; docs/llm.md).

Each process loads its models and batches, runs ``--warmup`` + ``--steps`` optimiser steps and reports the median
time of the timed steps, tokens per second (batch x tokens / median time), the peak resident memory of the
process, and the step's own peak (that peak minus the resident memory just before the first step: activations,
logits, gradients, AdamW state). The arms are interleaved and repeated (``--repeats``; the machine is shared);
the reported figure of an arm is the median over its repeats. Every arm runs with the same number of CPU threads
(``--threads``, OMP_NUM_THREADS and torch.set_num_threads).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from portable import portable, write_json  # noqa: E402

SHARED = REPO.parent / "shared"
GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = SHARED / "data" / "tinyshakespeare" / "input.txt"
TRL_PYTHON = HERE / ".venv-trl" / "bin" / "python"
LR = 1e-4


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def summary(arm: str, times: list[float], cpu: list[float], losses: list[float], before: float, warmup: int,
            batch: int, tokens: int) -> dict[str, Any]:
    """``times``: wall seconds per step; ``cpu``: the process's CPU seconds per step (all its threads), which a
    shared, oversubscribed machine distorts far less than wall time."""
    peak = peak_mb()
    med = statistics.median(times[warmup:])
    return {"arm": arm, "rss_before_step_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "step_peak_mb": round(peak - before, 1), "step_seconds_median": round(med, 3),
            "tokens_per_second": round(batch * tokens / med, 1), "step_seconds": [round(t, 3) for t in times],
            "cpu_seconds_median": round(statistics.median(cpu[warmup:]), 3),
            "cpu_seconds": [round(t, 3) for t in cpu], "losses": losses}


# ----------------------------------------------------------------------------------------------------------------
# set-up (distill's environment): the teacher and student as Hugging Face folders, the batches as safetensors


def prepare(work: Path, args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO / "src"))
    from distill.llm.models import small_llama

    work.mkdir(parents=True, exist_ok=True)
    n_rows = args.batch * (args.warmup + args.steps)
    name = f"blocks_{args.tokens}x{n_rows}.safetensors"
    if (work / "teacher" / "config.json").exists() and (work / "student" / "config.json").exists() \
            and (work / name).exists():
        return
    if args.quick:
        vocab = 512
        teacher = small_llama(vocab, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                              max_positions=args.tokens, seed=1)
        g = torch.Generator().manual_seed(0)
        blocks = torch.randint(0, vocab, (n_rows, args.tokens), generator=g)
        tok = None
    else:
        from distill.llm.models import load_gguf_model, load_gguf_tokenizer
        from distill.tasks.causal_lm.task import text_blocks

        tok = load_gguf_tokenizer(GGUF)
        vocab = len(tok)
        teacher = None if (work / "teacher" / "config.json").exists() else load_gguf_model(GGUF)
        train, _ = text_blocks(TEXT, tok, block_size=args.tokens, val_fraction=0.1,
                               max_tokens=args.tokens * n_rows * 2)
        blocks = train.input_ids[:n_rows]
        if len(blocks) < n_rows:
            raise SystemExit(f"only {len(blocks)} blocks of {args.tokens} tokens, {n_rows} needed")
    if not (work / "teacher" / "config.json").exists():
        if getattr(teacher, "hf_quantizer", None) is not None:  # loaded from GGUF: re-built as a plain model
            from transformers import AutoModelForCausalLM

            cfg = teacher.config
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
            plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            plain.load_state_dict(teacher.state_dict())
            teacher = plain
        teacher.save_pretrained(work / "teacher")
        if tok is not None:
            tok.save_pretrained(work / "teacher")
    if not (work / "student" / "config.json").exists():
        student = small_llama(vocab, hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512,
                              max_positions=1024, seed=0, pad_token_id=None)
        student.save_pretrained(work / "student")
    save_file({"input_ids": blocks.contiguous()}, str(work / name))


def load_blocks(work: Path, args: argparse.Namespace):
    from safetensors.torch import load_file

    n_rows = args.batch * (args.warmup + args.steps)
    return load_file(str(work / f"blocks_{args.tokens}x{n_rows}.safetensors"))["input_ids"]


# ----------------------------------------------------------------------------------------------------------------
# the arms (each in its own process)


def run_distill(arm: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from transformers import AutoModelForCausalLM

    from distill.core.batch import Batch
    from distill.core.compose import Composite
    from distill.core.teachers import FrozenTeacher
    from distill.methods.llm.fkl import ForwardKL
    from distill.tasks.causal_lm import CausalLM
    from distill.train.module import DistillModule

    torch.set_num_threads(args.threads)
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(work / "student", dtype=torch.float32).train()
    blocks = load_blocks(work, args)
    vocab = student.get_output_embeddings().weight.shape[0]
    chunk = None if arm == "dense" else int(arm.removeprefix("chunk"))
    task = CausalLM(vocab, chunk_tokens=chunk)
    module = DistillModule(student, Composite({"fkl": ForwardKL()}, {"fkl": 1.0}), FrozenTeacher(teacher), task)

    def batch(i: int) -> Batch:
        ids = blocks[i * args.batch:(i + 1) * args.batch]
        return Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                      "prompt_lengths": torch.zeros(len(ids), dtype=torch.long)}, ids.clone())

    module.setup(batch(0))
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    before = rss_mb()
    times, cpu, losses = [], [], []
    for i in range(args.warmup + args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss, _, _ = module(batch(i))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        losses.append(float(loss))
    return summary(arm, times, cpu, losses, before, args.warmup, args.batch, args.tokens)


def run_trl(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """TRL's GKD trainer on the same job (runs in benchmarks/.venv-trl: imports nothing of distill)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.set_num_threads(args.threads)
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(work / "student", dtype=torch.float32)
    blocks = load_blocks(work, args)
    if (work / "teacher" / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(work / "teacher")
    else:  # the quick run's random models: a stand-in tokenizer (only its pad id is read)
        from tokenizers import Tokenizer, models

        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, "<pad>")),
                                      pad_token="<pad>")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = Dataset.from_dict({"input_ids": blocks.tolist()})

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    state: dict[str, Any] = {"times": [], "cpu": [], "losses": [], "before": None}

    class Timer(TrainerCallback):
        def on_train_begin(self, a, s, c, **kw):  # type: ignore[no-untyped-def]
            state["before"] = rss_mb()

        def on_step_begin(self, a, s, c, **kw):  # type: ignore[no-untyped-def]
            state["start"], state["start_cpu"] = time.perf_counter(), time.process_time()

        def on_step_end(self, a, s, c, **kw):  # type: ignore[no-untyped-def]
            state["times"].append(time.perf_counter() - state["start"])
            state["cpu"].append(time.process_time() - state["start_cpu"])

        def on_log(self, a, s, c, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                state["losses"].append(float(logs["loss"]))

    config = GKDConfig(output_dir=str(work / "trl_out"), per_device_train_batch_size=args.batch,
                       max_steps=args.warmup + args.steps, learning_rate=LR, weight_decay=0.0,
                       lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, optim="adamw_torch",
                       lmbda=0.0, beta=0.0, seq_kd=False, max_length=args.tokens, logging_steps=1,
                       save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False,
                       dataloader_num_workers=0, disable_dropout=True, seed=0, data_seed=0,
                       gradient_accumulation_steps=1)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data,
                         data_collator=collate, processing_class=tok, callbacks=[Timer()])
    # the same batches in the same order as the other arms
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(data)  # type: ignore[method-assign]
    trainer.train()
    out = summary("trl", state["times"], state["cpu"], state["losses"], state["before"], args.warmup, args.batch,
                  args.tokens)
    out["trl_version"] = trl.__version__
    import transformers

    out["transformers_version"] = transformers.__version__
    return out


# ----------------------------------------------------------------------------------------------------------------
# the driver


def ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["step_seconds_median", "tokens_per_second", "peak_rss_mb", "step_peak_mb"]
    if all("cpu_seconds_median" in r for r in runs):
        keys.append("cpu_seconds_median")
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    return {**med, "repeats": len(runs), "first_loss": runs[0]["losses"][0] if runs[0]["losses"] else None}


def summarise(entry: dict[str, Any]) -> None:
    """An entry's per-arm figures (medians over its repeats) and their ratios to the TRL arm, from its runs."""
    entry["arms"] = {a: aggregate(rs) for a, rs in entry["runs"].items() if rs}
    trl = entry["arms"].get("trl")
    if trl:
        for v in entry["arms"].values():
            v["vs_trl"] = {"time": ratio(v["step_seconds_median"], trl["step_seconds_median"]),
                           "peak_rss": ratio(v["peak_rss_mb"], trl["peak_rss_mb"]),
                           "step_peak": ratio(v["step_peak_mb"], trl["step_peak_mb"])}
            if "cpu_seconds_median" in v and "cpu_seconds_median" in trl:
                v["vs_trl"]["cpu_time"] = ratio(v["cpu_seconds_median"], trl["cpu_seconds_median"])


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    rows = ["| tokens x batch | arm | s/step | tokens/s | CPU s/step | peak RSS (MB) | step peak (MB) | time vs TRL "
            "| CPU time vs TRL | peak RSS vs TRL | step peak vs TRL | first loss |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape in result["shapes"]:
        arms = shape["arms"]
        trl = arms.get("trl")
        for name, a in arms.items():
            vs = ("-", "-", "-") if trl is None else (
                f"{a['step_seconds_median'] / trl['step_seconds_median']:.2f}x",
                f"{a['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x", f"{a['step_peak_mb'] / trl['step_peak_mb']:.2f}x")
            loss = "-" if a["first_loss"] is None else f"{a['first_loss']:.4f}"
            cpu = f"{a['cpu_seconds_median']:.1f}" if "cpu_seconds_median" in a else "-"
            cpu_vs = (f"{a['cpu_seconds_median'] / trl['cpu_seconds_median']:.2f}x"
                      if trl is not None and "cpu_seconds_median" in a and "cpu_seconds_median" in trl else "-")
            label = f"{shape['tokens']} x {shape['batch']}" + (f" (run {shape['run']})" if "run" in shape else "")
            rows.append(f"| {label} | {name} | {a['step_seconds_median']:.2f} | "
                        f"{a['tokens_per_second']:.0f} | {cpu} | {a['peak_rss_mb']:.0f} | {a['step_peak_mb']:.0f} | "
                        f"{vs[0]} | {cpu_vs} | {vs[1]} | {vs[2]} | {loss} |")
    head = (f"Teacher {s['teacher']}, student {s['student']}; forward KL, live teacher, fp32, AdamW lr {s['lr']}; "
            f"TRL {s.get('trl_version', '?')} GKDTrainer (lmbda 0, beta 0, seq_kd off) vs distill; median of "
            f"{s['steps']} steps after {s['warmup']} warm-up, median over {s['repeats']} interleaved repeats; "
            f"{s['threads']} CPU threads per arm.\n\n")
    return head + "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256x8,1024x4", help="tokens x batch, comma-separated")
    p.add_argument("--arms", default="trl,chunk256,dense")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--trl-python", default=str(TRL_PYTHON))
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results, or a temp folder)")
    p.add_argument("--work", default=None, help="models and batches (default: benchmarks/work/llm_vs_trl)")
    p.add_argument("--collect-only", action="store_true",
                   help="rewrite the Markdown table from the results JSON (e.g. of an interrupted run)")
    p.add_argument("--merge", nargs="*", default=None,
                   help="with --collect-only: results JSON files of several runs (e.g. one shape each), their "
                        "shapes joined in this order into the results folder's llm_vs_trl.json")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    p.add_argument("--tokens", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work) if args.work else (REPO / "benchmarks" / "work" / ("llm_vs_trl_quick" if args.quick
                                                                             else "llm_vs_trl"))
    if args.prepare:
        prepare(work, args)
        return
    if args.arm is not None:
        res = run_trl(work, args) if args.arm == "trl" else run_distill(args.arm, work, args)
        print("RESULT " + json.dumps(res))
        return
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) if args.quick else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    if args.collect_only:
        if args.merge:
            parts = [json.loads(Path(f).read_text()) for f in args.merge]
            result = {"setup": {**parts[0]["setup"], "commands": [x["setup"]["command"] for x in parts]},
                      "shapes": [{**e, "run": i + 1} for i, x in enumerate(parts) for e in x["shapes"]]}
        else:
            result = json.loads((out / "llm_vs_trl.json").read_text())
        for entry in result["shapes"]:
            summarise(entry)
        write_json(out / "llm_vs_trl.json", result)
        (out / "llm_vs_trl.md").write_text(markdown(result))
        print((out / "llm_vs_trl.md").read_text())
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    arm_names = args.arms.split(",")
    shapes = []
    setup: dict[str, Any] = {
        "teacher": "tiny random Llama (quick)" if args.quick else "SmolLM2-135M-Instruct (GGUF Q4_1 -> float32)",
        "student": "Llama hidden 192, 4 layers, 4 heads, FFN 512, tied embeddings (small_llama seed 0)",
        "vocab": 512 if args.quick else 49152, "lr": LR, "threads": args.threads, "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "arms": arm_names,
        "data": "random ids (quick)" if args.quick else str(TEXT),
        "command": " ".join(["python", "benchmarks/llm_vs_trl.py", *sys.argv[1:]])}
    result: dict[str, Any] = {"setup": setup, "shapes": shapes}
    for shape in args.shapes.split(","):
        tokens, batch = (int(x) for x in shape.split("x"))
        common = ["--tokens", str(tokens), "--batch", str(batch), "--steps", str(args.steps),
                  "--warmup", str(args.warmup), "--threads", str(args.threads), "--work", str(work)] + \
            (["--quick"] if args.quick else [])
        subprocess.run([sys.executable, __file__, "--prepare", *common], check=True, env=env)
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arm_names}
        entry = {"tokens": tokens, "batch": batch, "runs": runs, "arms": {}}
        shapes.append(entry)
        for rep in range(args.repeats):
            order = arm_names if rep % 2 == 0 else arm_names[::-1]
            for arm in order:
                python = args.trl_python if arm == "trl" else sys.executable
                print(f"[{time.strftime('%H:%M:%S')}] {tokens}x{batch} repeat {rep} {arm} ...", flush=True)
                done = subprocess.run([python, __file__, "--arm", arm, *common], capture_output=True, text=True,
                                      env=env)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode != 0 or not line:
                    sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
                    raise SystemExit(f"arm {arm} failed (exit {done.returncode})")
                r = json.loads(line[-1].removeprefix("RESULT "))
                if arm == "trl":
                    setup["trl_version"], setup["trl_transformers"] = r["trl_version"], r["transformers_version"]
                runs[arm].append(r)
                print(f"  {r['step_seconds_median']:.2f} s/step, {r['tokens_per_second']:.0f} tok/s, peak "
                      f"{r['peak_rss_mb']:.0f} MB (step {r['step_peak_mb']:.0f} MB), losses "
                      f"{[round(x, 4) for x in r['losses']]}", flush=True)
                summarise(entry)
                if not args.quick:  # written as it goes
                    write_json(out / "llm_vs_trl.json", result)
    write_json(out / "llm_vs_trl.json", result)
    (out / "llm_vs_trl.md").write_text(markdown(portable(result)))
    print(markdown(portable(result)))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
