"""Benchmark: multi-aspect KD (MaKD) on SST-2, the text adaptation of its spec.

    python benchmarks/sst2_makd.py --gate-only   # score the first chunks, print the gate (variance, correlation)
    python benchmarks/sst2_makd.py               # score all sentences (resumable, in chunks), then train the arms

The paper asks an image MLLM yes/no questions about every training image. Offline here there is a text LLM only,
so (as ``../shared/methods/logit.md`` prescribes) SmolLM2-135M-Instruct answers 8 hand-written questions
(``benchmarks/data/makd_questions_sst2.json``) about each of ``--sentences`` SST-2 training sentences (a seeded
sample of ``stsa.binary.train``); P(yes) = sigmoid(l_yes - l_no) from the first answer token
(``distill.methods.makd.score_aspects``, shared-prompt key/value cache). Scores are saved per chunk, so an
interrupted run resumes; they are combined into an ``AspectTargets`` file fingerprinted on the sentences.

Gate before any training (the spec's): a question is informative when the variance of its P(yes) over the
sentences is above 0.01; if none is, the result is "teacher uninformative" and no arm is trained. The gate also
reports each question's correlation with the sentiment label.

Arms: the recipes of ``configs/sst2_makd/`` (``data.aspects``; 5 seeds; TextCNN on MiniLM's frozen input
embeddings as in ``sst2.py``; dev accuracy on the 872 dev sentences), swept through ``benchmarks/sweep.py`` /
``build_experiment`` into a resumable JSON: ``ce`` (2 outputs, cross-entropy), ``makd_a1`` and ``makd_a4`` (2 + 8
outputs, CE + alpha * BCE to the answers), ``shuffled_a4`` (the same with the answer rows permuted across
sentences: a control that keeps the answers' distribution but breaks their link to the sentence). The sweep points
the recipes at the sentence sample and the aspect files this script writes in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import Sweep, discover_arms, load_recipe, previous_runs  # noqa: E402

from distill.data.text import load_text_classification  # noqa: E402
from distill.methods.makd import AspectTargets, aspect_report, score_aspects, texts_fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "benchmarks" / "data" / "makd_questions_sst2.json"
CONFIGS = REPO / "configs" / "sst2_makd"
ARMS = ["ce", "makd_a1", "makd_a4", "shuffled_a4"]


def write_subset(args: argparse.Namespace) -> Path:
    """A seeded sample of ``--sentences`` training sentences as ``label<TAB>text`` (what the runs and the
    aspect file's fingerprint refer to)."""
    path = args.work / f"train{args.sentences}.tsv"
    if path.exists():
        return path
    ex = load_text_classification(args.train)
    order = list(range(len(ex)))
    random.Random(0).shuffle(order)
    rows = ["label\ttext"] + [f"{ex.classes[ex.labels[i]]}\t{ex.texts[i]}" for i in order[:args.sentences]]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def score_chunks(args: argparse.Namespace, texts: list[str], questions: list[str], limit: int | None) -> int:
    """Score the sentences chunk by chunk into ``chunks/NNNNN.safetensors``; returns the number of chunks done."""
    from safetensors.torch import load_file, save_file

    folder = args.work / "chunks"
    folder.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(texts) + args.chunk - 1) // args.chunk
    todo = [k for k in range(n_chunks if limit is None else min(limit, n_chunks))
            if not (folder / f"{k:05d}.safetensors").exists()]
    if todo:
        from distill.llm.models import load_gguf_model, load_gguf_tokenizer

        tokenizer, model = load_gguf_tokenizer(args.model), load_gguf_model(args.model)
        for k in todo:
            t0 = time.perf_counter()
            part = texts[k * args.chunk:(k + 1) * args.chunk]
            probs = score_aspects(model, tokenizer, part, questions, reuse_prefix=True)
            save_file({"probs": probs.contiguous()}, str(folder / f"{k:05d}.safetensors"),
                      metadata={"fingerprint": texts_fingerprint(part)})
            print(f"chunk {k + 1}/{n_chunks}: {len(part)} sentences in {time.perf_counter() - t0:.0f}s", flush=True)
    done = [k for k in range(n_chunks) if (folder / f"{k:05d}.safetensors").exists()]
    for k in done:  # a chunk scored on other sentences (another --sentences or subset) is not reused silently
        f = load_file(str(folder / f"{k:05d}.safetensors"))
        if f["probs"].shape[0] != len(texts[k * args.chunk:(k + 1) * args.chunk]):
            raise RuntimeError(f"{folder}/{k:05d}.safetensors does not match the current subset; delete {folder}")
    return len(done) if done == list(range(len(done))) else 0


def load_scores(args: argparse.Namespace, n_chunks: int) -> torch.Tensor:
    from safetensors.torch import load_file

    return torch.cat([load_file(str(args.work / "chunks" / f"{k:05d}.safetensors"))["probs"]
                      for k in range(n_chunks)])


def overrides(args: argparse.Namespace, subset: Path) -> Any:
    """The sweep's settings of (arm, seed): the seed, the run folder, the sentence sample and the aspect files."""

    def sets(arm: str, seed: int) -> list[str]:
        raw, _ = load_recipe(args.configs / f"{arm}.yaml")
        out = [f"seed={seed}", f"output_dir={args.work.resolve() / 'runs' / f'{arm}-seed{seed}'}",
               f"data.train={subset.resolve()}", f"data.eval={args.dev.resolve()}", f"train.epochs={args.epochs}",
               f"train.eval_every={args.epochs}"]
        if raw["data"].get("aspects"):
            out.append(f"data.aspects={args.work.resolve() / Path(raw['data']['aspects']).name}")
        return out

    return sets


def write_table(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    gate = result["gate"]
    lines = [
        f"Aspect teacher: SmolLM2-135M-Instruct (GGUF Q4_1) answering {len(gate['questions'])} questions about "
        f"{result['scored']} SST-2 training sentences (P(yes) from the first answer token).",
        "",
        "| question | mean P(yes) | variance | informative (> 0.01) | correlation with the label |",
        "|---|---|---|---|---|",
    ]
    for q in gate["questions"]:
        lines.append(f"| {q['question']} | {q['mean']:.3f} | {q['variance']:.4f} | "
                     f"{'yes' if q['informative'] else 'no'} | {q['label_correlation']:+.3f} |")
    if not gate["informative"]:
        lines += ["", "**Teacher uninformative**: no question's answers vary enough over the sentences (variance "
                  "<= 0.01, or all answers near 0.5), so no arm is trained (the spec's gate)."]
    runs = result.get("runs", [])
    if runs:
        base = [r["accuracy"] for r in runs if r["arm"] == "ce"]
        lines += ["", f"TextCNN (frozen MiniLM input embeddings), {args.epochs} epochs, AdamW 2e-3 cosine, batch 64, "
                  f"trained on the {result['scored']} sentences; dev accuracy (872 sentences), mean ± sd over seeds.",
                  "", "| arm | dev accuracy (%) | vs ce | per seed |", "|---|---|---|---|"]
        for arm in ARMS:
            accs = [100 * r["accuracy"] for r in sorted(runs, key=lambda r: r["seed"]) if r["arm"] == arm]
            if not accs:
                continue
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            gain = "" if arm == "ce" or not base else f"{statistics.mean(accs) - 100 * statistics.mean(base):+.2f}"
            lines.append(f"| {arm} | {statistics.mean(accs):.2f} ± {sd:.2f} | {gain} | "
                         f"{', '.join(f'{a:.2f}' for a in accs)} |")
    md = args.out / f"{args.name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--sentences", type=int, default=4000)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--gate-only", action="store_true", help="score only --gate-chunks chunks and print the gate")
    p.add_argument("--gate-chunks", type=int, default=2)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=5, help="the recipes' epochs (5)")
    p.add_argument("--configs", type=Path, default=CONFIGS)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "sst2_makd")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="sst2_makd")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.train = args.shared / "data" / "sst" / "stsa.binary.train"
    args.dev = args.shared / "data" / "sst" / "stsa.binary.dev"
    args.model = args.shared / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    for path in (args.train, args.dev, args.model):
        if not path.exists():
            print(f"not found: {path} (put ../shared beside the repo or pass --shared)", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    questions = json.loads(QUESTIONS.read_text())["questions"]
    subset = write_subset(args)
    ex = load_text_classification(subset)
    n_done = score_chunks(args, ex.texts, questions, args.gate_chunks if args.gate_only else None)
    probs = load_scores(args, n_done)
    labels = torch.tensor(ex.labels[:len(probs)])
    gate = aspect_report(probs, labels, questions)
    result: dict[str, Any] = {"questions": questions, "scored": len(probs), "gate": gate,
                              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    complete = len(probs) == len(ex)
    if complete and gate["informative"] and not args.gate_only:
        fp = texts_fingerprint(ex.texts)
        AspectTargets(probs, questions, fp).save(args.work / "aspects.safetensors")
        perm = torch.randperm(len(probs), generator=torch.Generator().manual_seed(0))
        AspectTargets(probs[perm], questions, fp).save(args.work / "shuffled.safetensors")
        results_path = args.out / f"{args.name}.json"
        result["runs"] = previous_runs(results_path, result, ("sentences", "epochs"))
        arms = discover_arms(args.configs, ARMS)
        Sweep(arms, args.seeds, results_path, overrides(args, subset), match_args=("sentences", "epochs"),
              repo=REPO).run(result)
    write_json(args.out / f"{args.name}.json", result)
    print(write_table(args, result).read_text())
    if not complete:
        print(f"scored {len(probs)} of {len(ex)} sentences; rerun without --gate-only to score the rest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
