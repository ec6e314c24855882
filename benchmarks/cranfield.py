"""Benchmark: ranking (Margin-MSE) and embedding (LEAF) distillation of all-MiniLM-L6-v2 on Cranfield.

    python benchmarks/cranfield.py            # full run: writes benchmarks/results/cranfield.json and .md
    python benchmarks/cranfield.py --quick    # a smoke run on a few queries, into benchmarks/work/cranfield-quick
    python benchmarks/cranfield.py --student minilm2   # the transformer student: results/cranfield_minilm2.*

Fixed split of the 225 Cranfield queries (seed 0): 150 train, 75 test. Every number is measured on the 75 test
queries over all 1,400 documents (nDCG@10, MAP@100, recall@100 by ir-measures / pytrec_eval).

Rows:
- ``bm25``: bm25s (Lucene BM25, k1 1.5, b 0.75, English stopwords, no stemming).
- ``teacher``: the ranking teacher. There is no cross-encoder; candidates built from all-MiniLM-L6-v2 are
  (a) bi-encoder cosine and (b) cosine + beta * BM25 / max BM25 of the query, beta from a grid; the one with the
  best nDCG@10 on the *training* queries is the teacher (its scores on every training pair go to a score file).
- ``student_untrained``: the student before training: a static bag of words (``StaticEmbedding`` initialised
  with all-MiniLM-L6-v2's input word embeddings, mean over the text's WordPieces, normalised; scores are dot
  products of unit vectors). No attention, so it encodes the collection in well under a second on one thread.
- ``label_only``, ``score_mse``, ``margin_mse``: that student trained on the same groups (training queries with
  their judged positives and 3 BM25 hard negatives each; plus document titles as pseudo-queries) with the DPR
  contrastive loss on labels, pointwise MSE on teacher scores, or Margin-MSE on teacher scores.
- ``leaf``: the LEAF student (the same static bag + Dense 384->384 + normalisation) trained to regress the
  teacher's embeddings of unlabelled text (Cranfield document sentences and titles, SST-2 sentences,
  tinyshakespeare lines; no Cranfield query), evaluated student/student (``leaf_sym``) and student query /
  teacher documents (``leaf_asym``). ``label_only_asym`` is the unaligned control: a student trained on the
  ranking labels, its queries scored against the teacher's documents.

``--student minilm2`` (second attempt) replaces the bag of words by all-MiniLM-L6-v2's first 2 transformer layers
(embedding tables frozen, mean pooling, normalised; + Dense 384->384 for LEAF) with its own recipe (``RECIPES``):
queries 64 and documents 128 tokens, 2 judged positives per query, no title groups, and early stopping: 30 of the
150 training queries are held out as a validation split, the students train on the other 120 and, after every
epoch, the epoch with the best validation nDCG@10 is the one reported (the 75 test queries never take part in a
choice). Its rows add ``student_untrained_asym`` (the untrained student's queries against the teacher's documents).

Several seeds (student training order and negatives sampling); the table gives mean and standard deviation.
Results are written after every run, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from distill.core.compose import Composite  # noqa: E402
from distill.methods.retrieval import LEAF, MarginMSE, RankingNLL, ScoreMSE  # noqa: E402
from distill.tasks.text_retrieval import TextEmbedding, TextRanking, TextSet  # noqa: E402
from distill.text.groups import query_groups, split_queries, title_groups, to_ranking_groups  # noqa: E402
from distill.text.ir_data import RetrievalCollection, load_cranfield  # noqa: E402
from distill.text.retrieval import BM25Index, dense_scores, evaluate_run, top_k  # noqa: E402
from distill.text.st_models import encode, load_sentence_model, static_student, truncated_student  # noqa: E402
from distill.text.teacher_sources import ScoreFileTeacher, TextEmbeddingCache, write_score_file  # noqa: E402
from distill.train.module import DistillModule  # noqa: E402
from distill.train.trainer import TrainConfig, Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "map@100", "recall@100")
DOC_LEN = 256  # teacher documents (a static student reads whole texts)
STUDENT_DOC_LEN = 256
LABEL_SCALE = 20.0  # DPR loss scale for cosine scores (sentence-transformers' MultipleNegativesRankingLoss)
BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    """The JSON of results, rewritten (with the Markdown table) after every finished run."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if self.data.get("meta", {}).get("setting") not in (None, meta["setting"]):
            raise SystemExit(f"{path} holds results of a different setting; remove it or use another --out")
        self.data["meta"] = meta
        self.data.setdefault("rows", {})
        self.data.setdefault("info", {})

    def has(self, row: str, seed: int | str) -> bool:
        return str(seed) in self.data["rows"].get(row, {})

    def put(self, row: str, seed: int | str, metrics: dict[str, float]) -> None:
        self.data["rows"].setdefault(row, {})[str(seed)] = metrics
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        self.path.with_suffix(".md").write_text(markdown(self.data))


ROW_LABELS = {
    "bm25": "BM25 (bm25s)",
    "teacher": "teacher (all-MiniLM-L6-v2, see notes)",
    "teacher_cosine": "all-MiniLM-L6-v2 bi-encoder cosine",
    "student_untrained": "student, untrained (MiniLM input embeddings, mean)",
    "label_only": "student, labels only (DPR contrastive)",
    "score_mse": "student, pointwise MSE on teacher scores",
    "margin_mse": "student, Margin-MSE on teacher scores",
    "student_untrained_asym": "control: untrained student query / teacher docs",
    "label_only_asym": "control: label-only student query / teacher docs",
    "leaf_sym": "LEAF student / student",
    "leaf_asym": "LEAF student query / teacher docs",
}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [f"# Cranfield: ranking and embedding distillation ({meta['setting']})", "",
             f"Command: `{meta['command']}`", "",
             f"{meta['num_test']} test queries (fixed split, seed 0), all {meta['num_docs']} documents. "
             "Mean ± standard deviation over seeds (n = number of seeds finished).", "",
             "| run | n | nDCG@10 | MAP@100 | recall@100 |", "|---|---|---|---|---|"]
    labels = dict(ROW_LABELS)
    if meta.get("student") == "minilm2":
        labels["student_untrained"] = "student, untrained (MiniLM's first 2 layers, mean pooling)"
    for row, label in labels.items():
        runs = data["rows"].get(row)
        if not runs:
            continue
        vals = list(runs.values())
        cells = [fmt([v[m] for v in vals]) for m in METRICS]
        lines.append(f"| {label} | {len(vals)} | " + " | ".join(cells) + " |")
    leaf = data["rows"].get("leaf_asym", {})
    cos = [v["query_cosine_to_teacher"] for v in leaf.values() if "query_cosine_to_teacher" in v]
    if cos:
        lines += ["", f"LEAF: mean cosine between the student's and the teacher's embedding of the 225 Cranfield "
                      f"queries (never seen in training): {fmt(cos)}."]
    secs = {row: [v.get("train_seconds", v.get("train_seconds_with_epoch_evals")) for v in runs.values()
                  if "train_seconds" in v or "train_seconds_with_epoch_evals" in v]
            for row, runs in data["rows"].items()}
    secs = {row: v for row, v in secs.items() if v}
    if secs:
        lines += ["", "Training wall time per run (s, 1 thread on a shared machine): "
                  + ", ".join(f"{row} {statistics.mean(v):.0f}" for row, v in secs.items()) + "."]
    info = dict(data.get("info", {}))
    picked = {row: [v["epoch_chosen"] for v in runs.values() if "epoch_chosen" in v]
              for row, runs in data["rows"].items() if not row.endswith("_asym")}
    picked = {row: v for row, v in picked.items() if v}
    if picked:
        sel = info.get("selection", {})
        lines += ["", f"Epoch reported (early stopping on {len(sel.get('val_qids', '').split(','))} validation "
                  "queries carved from the training queries; one entry per seed): "
                  + ", ".join(f"{row} {v}" for row, v in picked.items()) + f"; lr {sel.get('lr')}."]
    if info:
        lines += ["", "Notes measured by the same run:", ""]
        for key, value in sorted(info.items()):
            lines.append(f"- {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    return "\n".join(lines) + "\n"


def metrics_of(scores: torch.Tensor, qids: list[str], docids: list[str], coll: RetrievalCollection) -> dict:
    return evaluate_run(top_k(scores, qids, docids, 100), coll.qrels)


def bm25_normalised(raw: torch.Tensor) -> torch.Tensor:
    return raw / raw.max(dim=1, keepdim=True).values.clamp_min(1e-9)


def leaf_texts(coll: RetrievalCollection, shared: Path, n: int, seed: int) -> list[str]:
    """Unlabelled training text for LEAF: Cranfield document sentences and titles, SST-2 sentences and
    tinyshakespeare lines (no Cranfield query), deduplicated, a seeded sample of ``n``."""
    pool: list[str] = []
    for doc in coll.docs.values():
        pool += [s.strip() + " ." for s in doc.split(" . ") if len(s.split()) >= 4]
    pool += [t for t in coll.titles.values() if t]
    sst = shared / "sst" / "stsa.binary.train"
    if sst.exists():
        pool += [line.split(" ", 1)[1].strip() for line in sst.read_text().splitlines() if " " in line]
    shakespeare = shared / "tinyshakespeare" / "input.txt"
    if shakespeare.exists():
        pool += [line.strip() for line in shakespeare.read_text().splitlines() if len(line.split()) >= 5]
    queries = set(coll.queries.values())
    pool = [t for t in dict.fromkeys(pool) if t not in queries]
    random.Random(seed).shuffle(pool)
    return pool[:n]


# Per-student recipes. ``static`` is the first attempt, unchanged (its numbers are benchmarks/results/cranfield.*).
# ``minilm2`` fixes lengths and data here; epochs (and lr, when a grid has several values) are chosen per arm on
# a validation split of the *training* queries (early stopping), and the choice is written to the results JSON.
# The grids hold one lr each: on the shared, overloaded 2-core machine a second lr per arm did not fit the budget.
# The ranking lr was first 1e-4; its label-only run stayed at chance on the training loss and flat on validation
# (recorded in the JSON under ``first_lr_runs_discarded``), so all ranking arms use 5e-4.
RECIPES: dict[str, dict[str, Any]] = {
    "static": {"query_len": 64, "doc_len": 256, "leaf_len": 128, "batch": 8, "leaf_batch": 32,
               "title_groups": 400, "max_positives": None, "epochs": 1, "lr": 1e-3, "leaf_texts": 5000},
    "minilm2": {"query_len": 64, "doc_len": 128, "leaf_len": 64, "batch": 8, "leaf_batch": 32,
                "title_groups": 0, "max_positives": 2, "max_epochs": 2, "leaf_max_epochs": 3, "val_queries": 30,
                "lr_grid": [5e-4], "leaf_lr_grid": [2e-4], "leaf_texts": 3000},
}
RANKING_ARMS = ("label_only", "score_mse", "margin_mse")


def make_student(kind: str, leaf: bool) -> torch.nn.Module:
    """The ranking student (unit-normalised embeddings, cosine scores) or, with ``leaf``, the LEAF student (+ a
    Dense 384->384 into the teacher's space, identity-initialised, then normalisation)."""
    proj = 384 if leaf else None
    if kind == "static":
        return static_student(projection_dim=proj, normalize=True)
    return truncated_student(2, projection_dim=proj, normalize=True, freeze_embeddings=True,
                             max_seq_length=RECIPES[kind]["doc_len"])


def train(student: torch.nn.Module, method: torch.nn.Module, teacher: Any, task: Any, data: Any,
          run_dir: Path, seed: int, epochs: int, batch_size: int, lr: float, max_steps: int | None = None,
          callbacks: list | None = None) -> float:
    module = DistillModule(student, Composite({"m": method}, {"m": 1.0}), teacher, task)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adamw", lr=lr, weight_decay=0.01,
                      schedule="cosine", warmup_epochs=0.1 * epochs, seed=seed, progress=False, log_every=50,
                      cpu=True, clip_grad_norm=1.0, max_steps=max_steps)
    start = time.time()
    Trainer(module, data, None, cfg, run_dir, callbacks=callbacks).fit(resume=False)
    return time.time() - start


def deep_update(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            deep_update(old[key], value)
        else:
            old[key] = value
    return old


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cranfield"))
    p.add_argument("--student", choices=sorted(RECIPES), default="static",
                   help="static: bag of words (first attempt); minilm2: all-MiniLM-L6-v2's first 2 layers")
    p.add_argument("--arms", nargs="+", default=[*RANKING_ARMS, "leaf"], choices=[*RANKING_ARMS, "leaf"],
                   help="train only these students (e.g. to run ranking and LEAF in two processes, then --merge)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/cranfield[_STUDENT].json)")
    p.add_argument("--work", default=None, help="caches and run folders (default benchmarks/work/cranfield[-STUDENT])")
    p.add_argument("--quick", action="store_true", help="a few queries and steps, to check the pipeline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge the rows of these result files (e.g. seeds run in parallel with their own --out and "
                        "--work) into --out, rewrite its Markdown, and exit")
    p.add_argument("--title-groups", type=int, default=None, help="static: 400; minilm2: 0")
    p.add_argument("--max-positives", type=int, default=None, help="judged positives per training query "
                                                                   "(static: all; minilm2: 3)")
    p.add_argument("--leaf-texts", type=int, default=None, help="static: 5000; minilm2: 3000")
    p.add_argument("--epochs", type=int, default=None, help="static only (default 1); minilm2 chooses on validation")
    p.add_argument("--lr", type=float, default=None, help="static only (default 1e-3); minilm2 chooses on validation")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    kind = args.student
    recipe = dict(RECIPES[kind])
    if kind == "static":
        recipe["epochs"] = args.epochs if args.epochs is not None else recipe["epochs"]
        recipe["lr"] = args.lr if args.lr is not None else recipe["lr"]
    elif args.epochs is not None or args.lr is not None:
        raise SystemExit("--epochs/--lr apply to --student static; minilm2 chooses them on the validation split")
    if args.title_groups is not None:
        recipe["title_groups"] = args.title_groups
    if args.max_positives is not None:
        recipe["max_positives"] = args.max_positives
    if args.leaf_texts is not None:
        recipe["leaf_texts"] = args.leaf_texts
    if quick and kind != "static":  # one epoch: a pipeline check
        recipe.update(max_epochs=1, leaf_max_epochs=1)
    suffix = "" if kind == "static" else f"_{kind}"
    setting = ("quick" if quick else "full") + ("" if kind == "static" else f"-{kind}")
    work = Path(args.work or REPO / "benchmarks" / "work" / f"cranfield{suffix.replace('_', '-')}"
                f"{'-quick' if quick else ''}")
    out = Path(args.out or (work / "cranfield.json" if quick else
                            REPO / "benchmarks" / "results" / f"cranfield{suffix}.json"))
    work.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merged = json.loads(out.read_text())
        for other in args.merge:
            extra = json.loads(Path(other).read_text())
            if extra["meta"]["setting"] != merged["meta"]["setting"]:
                raise SystemExit(f"{other}: setting {extra['meta']['setting']!r} differs from {out}'s")
            for row, runs in extra["rows"].items():
                merged["rows"].setdefault(row, {}).update(runs)
            # notes: the later files win (same command, newer code); nested notes (the selection) are merged
            deep_update(merged["info"], extra.get("info", {}))
        merged["meta"]["seeds"] = sorted({int(s) for r in merged["rows"].values() for s in r if s != "all"})
        out.write_text(json.dumps(merged, indent=1, sort_keys=True))
        out.with_suffix(".md").write_text(markdown(merged))
        log(f"merged {len(args.merge)} files into {out}")
        return

    coll = load_cranfield(args.data)
    train_q, test_q = split_queries(list(coll.queries), 75, seed=0)
    title_docs = [d for d in coll.docs if coll.titles.get(d)]
    random.Random(0).shuffle(title_docs)
    title_docs = title_docs[: (min(20, recipe["title_groups"]) if quick else recipe["title_groups"])]
    if quick:
        train_q, test_q = train_q[:6], test_q[:8]
    docids = list(coll.docs)
    doc_texts = [coll.docs[d] for d in docids]
    command = "python benchmarks/cranfield.py" + ("" if kind == "static" else f" --student {kind}")
    meta = {"setting": setting, "command": command + (" --quick" if quick else ""),
            "num_test": len(test_q), "num_train": len(train_q), "num_docs": len(docids), "seeds": args.seeds,
            "split": "split_queries(all 225 cranfield query positions, num_test=75, seed=0)"}
    if kind != "static":
        meta["student"] = kind
        meta["recipe"] = recipe
    res = Results(out, meta)
    res.data["info"]["test_qids"] = ",".join(test_q)
    q_len, d_len, leaf_len = recipe["query_len"], recipe["doc_len"], recipe["leaf_len"]

    # -- teacher embeddings, computed once and cached by text ------------------------------------------------
    log("loading teacher")
    teacher_model = load_sentence_model()
    cache_path = work / "teacher_embeddings.safetensors"
    cache = TextEmbeddingCache.load(cache_path) if cache_path.exists() else TextEmbeddingCache()
    cache.encoder = lambda texts: encode(teacher_model, texts, batch_size=32, max_length=DOC_LEN)
    todo = doc_texts + list(coll.queries.values()) + [coll.titles[d] for d in title_docs]
    if cache.fill(todo):
        cache.save(cache_path)
    t_docs = cache.lookup(doc_texts)
    t_query = {q: e for q, e in zip(coll.queries, cache.lookup(list(coll.queries.values())))}

    bm25 = BM25Index(coll.docs)
    bm25_test = bm25.scores([coll.queries[q] for q in test_q])
    if not res.has("bm25", "all"):
        res.put("bm25", "all", metrics_of(bm25_test, test_q, docids, coll))

    # -- the ranking teacher: pick (cosine [+ beta * normalised BM25]) on the training queries ------------------
    def teacher_matrix(qids: list[str], texts: list[str] | None, beta: float) -> torch.Tensor:
        q_emb = torch.stack([t_query[q] for q in qids]) if texts is None else cache.lookup(texts)
        raw = bm25.scores(texts if texts is not None else [coll.queries[q] for q in qids])
        return dense_scores(q_emb, t_docs) + beta * bm25_normalised(raw)

    choice = {str(b): metrics_of(teacher_matrix(train_q, None, b), train_q, docids, coll)["ndcg@10"] for b in BETAS}
    beta = float(max(choice, key=lambda b: choice[b]))
    res.data["info"]["teacher_choice"] = {"train_ndcg@10_by_beta": choice, "chosen_beta": beta,
                                          "teacher": "cosine of all-MiniLM-L6-v2 + beta * BM25/max BM25"}
    if not res.has("teacher", "all"):
        res.put("teacher", "all", metrics_of(teacher_matrix(test_q, None, beta), test_q, docids, coll))
    if not res.has("teacher_cosine", "all"):
        res.put("teacher_cosine", "all", metrics_of(teacher_matrix(test_q, None, 0.0), test_q, docids, coll))
    log(f"teacher: beta={beta} train nDCG@10 by beta {choice}")

    # -- cheap latency note: encode the test queries + 100 documents with teacher and student ------------------
    sample = [coll.queries[q] for q in test_q] + doc_texts[:100]
    student0 = make_student(kind, leaf=False)
    if "latency_s" not in res.data["info"]:
        lat = {}
        lat_len = DOC_LEN if kind == "static" else d_len
        for name, model in (("teacher_6_layers", teacher_model), (f"student_{kind}", student0)):
            start = time.time()
            encode(model, sample, batch_size=32, max_length=lat_len)
            lat[name] = round(time.time() - start, 2)
        lat["texts"] = len(sample)
        lat["threads"] = args.threads
        if kind != "static":
            lat["max_length"] = lat_len
        res.data["info"]["latency_s"] = lat
        res.data["info"]["params_M"] = {
            "teacher": round(sum(p.numel() for p in teacher_model.parameters()) / 1e6, 2),
            "student": round(sum(p.numel() for p in student0.parameters()) / 1e6, 2),
            "student_outside_embedding_tables": round(sum(
                p.numel() for m in student0.modules() if not isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
                for p in m.parameters(recurse=False)) / 1e6, 3)}
        if kind != "static":
            res.data["info"]["params_M"]["student_trainable"] = round(
                sum(p.numel() for p in student0.parameters() if p.requires_grad) / 1e6, 2)
        res.save()

    def student_eval(model: torch.nn.Module, qids: list[str] = test_q) -> tuple[dict, dict, torch.Tensor]:
        s_docs = encode(model, doc_texts, batch_size=32, max_length=d_len)
        s_q = encode(model, [coll.queries[q] for q in qids], batch_size=64, max_length=q_len)
        sym = metrics_of(dense_scores(s_q, s_docs), qids, docids, coll)
        asym = metrics_of(dense_scores(s_q, t_docs), qids, docids, coll)
        return sym, asym, s_q

    if not res.has("student_untrained", "all") or (kind != "static" and not res.has("student_untrained_asym", "all")):
        sym, asym, _ = student_eval(student0)
        res.put("student_untrained", "all", sym)
        if kind != "static":
            res.put("student_untrained_asym", "all", asym)

    # -- ranking data: (query, positive, 3 BM25 negatives) groups and the teacher's score file of their pairs ----
    def ranking_data(qids: list[str], seed: int, tag: str) -> tuple[Any, Path, list]:
        groups = query_groups(coll, qids, bm25, num_negatives=3, depth=30, seed=seed,
                              max_positives=recipe["max_positives"])
        if title_docs:
            groups += title_groups(coll, title_docs, bm25, num_negatives=3)
        by_query: dict[str, tuple[str, list[str]]] = {}
        for qid, text, ds in groups:
            by_query.setdefault(qid, (text, []))[1].extend(ds)
        qkeys = list(by_query)
        mat = teacher_matrix(qkeys, [by_query[q][0] for q in qkeys], beta)
        col = {d: j for j, d in enumerate(docids)}
        pairs = {(q, d): float(mat[i, col[d]]) for i, q in enumerate(qkeys) for d in by_query[q][1]}
        score_path = work / f"teacher_scores-{tag}.tsv"
        write_score_file(score_path, pairs)
        return to_ranking_groups(groups, coll.docs), score_path, groups

    arms = {"label_only": lambda: RankingNLL(scale=LABEL_SCALE), "score_mse": lambda: ScoreMSE(),
            "margin_mse": lambda: MarginMSE()}
    arms = {a: arms[a] for a in args.arms if a in arms}  # in the order given
    do_leaf = "leaf" in args.arms
    texts = leaf_texts(coll, Path(args.data).parent, 200 if quick else recipe["leaf_texts"], seed=0)
    res.data["info"]["leaf_texts"] = len(texts)
    if cache.fill(texts):
        cache.save(cache_path)

    def train_arm(arm: str, data: Any, score_path: Path | None, run_dir: Path, seed: int, lr: float,
                  epochs: int, max_steps: int | None, holder: dict | None = None,
                  callbacks: list | None = None) -> tuple[torch.nn.Module, float]:
        """Train one student; ``holder["student"]`` is set before training, for ``callbacks`` to read."""
        torch.manual_seed(seed)
        holder = {} if holder is None else holder
        if arm == "leaf":
            student = holder["student"] = make_student(kind, leaf=True)
            leaf_cache = TextEmbeddingCache(table=cache.table)  # the teacher is the cache alone: no live model
            task = TextEmbedding(student, max_length=leaf_len, eval_teacher=leaf_cache)
            secs = train(student, LEAF(), leaf_cache, task, TextSet(texts), run_dir, seed, epochs=epochs,
                         batch_size=recipe["leaf_batch"], lr=lr, max_steps=max_steps, callbacks=callbacks)
            return student, secs
        student = holder["student"] = make_student(kind, leaf=False)
        task = TextRanking(student, query_length=q_len, doc_length=d_len)
        method = arms[arm]()
        teacher = ScoreFileTeacher(score_path) if method.needs_teacher else None
        secs = train(student, method, teacher, task, data, run_dir, seed, epochs=epochs,
                     batch_size=recipe["batch"], lr=lr, max_steps=max_steps, callbacks=callbacks)
        return student, secs

    # -- minilm2: early stopping on a validation split of the training queries -----------------------------------
    # The students train on the other training queries for ``max_epochs`` epochs (cosine schedule); after every
    # epoch the collection is encoded once and both the validation and the test queries are scored; the epoch
    # with the best validation nDCG@10 (ranking arms: student/student; leaf: student query / teacher documents)
    # is the one reported. The test numbers of the other epochs are kept in the JSON, never used for the choice.
    fit_q, val_q = train_q, []
    if kind != "static":
        n_val = 2 if quick else recipe["val_queries"]
        fit_q, val_q = split_queries(train_q, n_val, seed=1)
        res.data["info"]["selection"] = {
            "fit_queries": len(fit_q), "val_qids": ",".join(val_q),
            "split": f"split_queries(the {len(train_q)} training queries, num_test={n_val}, seed=1)",
            "lr": {"ranking arms": recipe["lr_grid"][0], "leaf": recipe["leaf_lr_grid"][0]},
            "criterion": f"early stopping: of the {recipe['max_epochs']} epochs (leaf: {recipe['leaf_max_epochs']}; "
                         "cosine schedule), the one with the "
                         "best nDCG@10 of the validation queries over all documents (ranking arms: student/student; "
                         "leaf: student query / teacher documents); ties go to the earlier epoch"}

    def staged_eval(model: torch.nn.Module, arm: str) -> dict[str, Any]:
        """Validation criterion and test metrics of the current model (one encoding of the collection)."""
        s_docs = encode(model, doc_texts, batch_size=32, max_length=d_len)
        s_q = encode(model, [coll.queries[q] for q in val_q + test_q], batch_size=64, max_length=q_len)
        v, t = s_q[:len(val_q)], s_q[len(val_q):]
        val_docs = t_docs if arm == "leaf" else s_docs
        out = {"val_ndcg@10": metrics_of(dense_scores(v, val_docs), val_q, docids, coll)["ndcg@10"],
               "sym": metrics_of(dense_scores(t, s_docs), test_q, docids, coll),
               "asym": metrics_of(dense_scores(t, t_docs), test_q, docids, coll)}
        if arm == "leaf":
            all_q = list(coll.queries)
            s_all = encode(model, [coll.queries[q] for q in all_q], batch_size=64, max_length=q_len)
            t_all = torch.stack([t_query[q] for q in all_q])
            out["query_cosine_to_teacher"] = round(float(F.cosine_similarity(s_all, t_all).mean()), 4)
        return out

    def run_arm(arm: str, data: Any, score_path: Path | None, seed: int) -> tuple[dict, dict, torch.nn.Module]:
        """Train one arm for one seed; the (sym, asym) test metrics of the reported model, and the model."""
        run_dir = work / "runs" / f"{arm}-{seed}"
        if kind == "static":
            student, secs = train_arm(arm, data, score_path, run_dir, seed, recipe["lr"], recipe["epochs"], None)
            sym, asym, s_q = student_eval(student)
            if arm == "leaf":
                all_q = list(coll.queries)
                s_all = encode(student, [coll.queries[q] for q in all_q], batch_size=64, max_length=q_len)
                t_all = torch.stack([t_query[q] for q in all_q])
                asym["query_cosine_to_teacher"] = round(float(F.cosine_similarity(s_all, t_all).mean()), 4)
            sym["train_seconds"] = round(secs, 1)
            return sym, asym, student
        holder: dict[str, torch.nn.Module] = {}
        stages: list[dict[str, Any]] = []

        def on_epoch(record: dict) -> None:
            stages.append(staged_eval(holder["student"], arm))
            log(f"{arm} seed {seed} epoch {record['epoch']}: val nDCG@10 {stages[-1]['val_ndcg@10']:.4f}")

        lr = recipe["leaf_lr_grid"][0] if arm == "leaf" else recipe["lr_grid"][0]
        start = time.time()
        epochs = recipe["leaf_max_epochs"] if arm == "leaf" else recipe["max_epochs"]
        student, _ = train_arm(arm, data, score_path, run_dir, seed, lr, epochs, None, holder, [on_epoch])
        secs = time.time() - start
        best = max(range(len(stages)), key=lambda i: (stages[i]["val_ndcg@10"], -i))
        sym, asym = dict(stages[best]["sym"]), dict(stages[best]["asym"])
        sym.update({"train_seconds_with_epoch_evals": round(secs, 1), "epoch_chosen": best + 1,
                    "val_ndcg@10_by_epoch": [round(s["val_ndcg@10"], 4) for s in stages],
                    "test_ndcg@10_by_epoch (not used for the choice)": [round(s["sym"]["ndcg@10"], 4) for s in stages]})
        asym["epoch_chosen"] = best + 1
        if arm == "leaf":
            asym["query_cosine_to_teacher"] = stages[best]["query_cosine_to_teacher"]
            asym["test_ndcg@10_by_epoch (not used for the choice)"] = [round(s["asym"]["ndcg@10"], 4) for s in stages]
        return sym, asym, student

    # -- per seed: ranking groups + the teacher's score file, the three ranking students, then LEAF ------------
    for seed in args.seeds:
        if not all(res.has(a, seed) for a in arms):
            data, score_path, groups = ranking_data(fit_q, seed, f"seed{seed}")
            res.data["info"]["ranking_groups"] = {"judged_query_groups": len(groups) - len(title_docs),
                                                  "title_groups": len(title_docs), "negatives": 3,
                                                  "max_positives_per_query": recipe["max_positives"],
                                                  "training_queries": len(fit_q)}
            if kind != "static" and "score_scale" not in res.data["info"]:
                # Margin-MSE is not scale-invariant: record the teacher's and the untrained student's margins
                t_sc = ScoreFileTeacher(score_path)
                t_m = [t_sc.scores[(q, d[0])] - t_sc.scores[(q, n)] for q, _, d in groups for n in d[1:]]
                probe = groups[:100]
                s_q = encode(student0, [g[1] for g in probe], max_length=q_len)
                s_d = encode(student0, [coll.docs[d] for g in probe for d in g[2]], max_length=d_len)
                s_sc = torch.einsum("bd,bgd->bg", s_q, s_d.view(len(probe), 4, -1))
                s_m = (s_sc[:, :1] - s_sc[:, 1:]).flatten().tolist()
                res.data["info"]["score_scale"] = {
                    "teacher_margin_mean_sd": [round(statistics.mean(t_m), 4), round(statistics.stdev(t_m), 4)],
                    "untrained_student_cosine_margin_mean_sd (first 100 groups)":
                        [round(statistics.mean(s_m), 4), round(statistics.stdev(s_m), 4)],
                    "student_score": "cosine (unit-normalised embeddings), no learnt scale; teacher scores raw"}
            for arm in arms:
                if res.has(arm, seed):
                    continue
                log(f"{arm} seed {seed}: training on {len(data)} groups")
                sym, asym, _ = run_arm(arm, data, score_path, seed)
                if arm == "label_only":
                    res.put("label_only_asym", seed, asym)
                res.put(arm, seed, sym)
                log(f"{arm} seed {seed}: {sym}")
        if not do_leaf or (res.has("leaf_sym", seed) and res.has("leaf_asym", seed)):
            continue
        log(f"leaf seed {seed}: training on {len(texts)} texts")
        sym, asym, student = run_arm("leaf", None, None, seed)
        if seed == args.seeds[0]:
            folder = work / f"leaf-student-seed{seed}"
            student.save(str(folder))
            from sentence_transformers import SentenceTransformer

            reloaded = SentenceTransformer(str(folder), device="cpu")
            probe = [coll.queries[q] for q in test_q[:8]]
            diff = (encode(reloaded, probe, max_length=q_len) - encode(student, probe, max_length=q_len)).abs().max()
            res.data["info"]["leaf_saved_folder_roundtrip_max_abs_diff"] = float(diff)
        res.put("leaf_sym", seed, sym)
        res.put("leaf_asym", seed, asym)
        log(f"leaf seed {seed}: sym {sym} asym {asym}")
    log(f"done: {out}")


if __name__ == "__main__":
    sys.exit(main())
