"""Benchmark: ranking (Margin-MSE) and embedding (LEAF) distillation of all-MiniLM-L6-v2 on Cranfield.

    python benchmarks/cranfield.py            # full run: writes benchmarks/results/cranfield.json and .md
    python benchmarks/cranfield.py --quick    # a smoke run on a few queries, into benchmarks/work/cranfield-quick
    python benchmarks/cranfield.py --student minilm2   # the transformer student: results/cranfield_minilm2.*

Fixed split of the 225 Cranfield queries (seed 0): 150 train, 75 test, committed in benchmarks/data/cranfield/
(``scripts/make_cranfield_splits.py``). Every number is measured on the 75 test queries over all 1,400 documents
(nDCG@10, MAP@100, recall@100 by ir-measures / pytrec_eval).

Every trained student is a recipe of ``configs/cranfield/`` (``--student minilm2``: ``configs/cranfield_minilm2/``)
swept through ``benchmarks/sweep.py`` / ``build_experiment`` (arms x seeds, resumable JSON; several processes may
share one results file, e.g. ``--arms leaf`` beside ``--arms label_only score_mse margin_mse``). What this script
does itself is preparation and evaluation, no training:

- ``bm25``: bm25s (Lucene BM25, k1 1.5, b 0.75, English stopwords, no stemming).
- ``teacher``: the ranking teacher. There is no cross-encoder; candidates built from all-MiniLM-L6-v2 are
  (a) bi-encoder cosine and (b) cosine + beta * BM25 / max BM25 of the query, beta from a grid; the one with the
  best nDCG@10 on the *training* queries is the teacher. Its scores of every (training query or title
  pseudo-query, document) pair go to the score file the ranking recipes read as ``teacher.scores``.
- ``student_untrained``: the student before training (static: a bag of MiniLM's input word embeddings, mean,
  normalised; minilm2: MiniLM's first 2 layers).
- ``label_only``, ``score_mse``, ``margin_mse`` (recipes): the student trained on the same groups (training
  queries with their judged positives and 3 BM25 hard negatives each; static: plus 400 document titles as
  pseudo-queries) with the DPR contrastive loss on labels, pointwise MSE or Margin-MSE on teacher scores.
- ``leaf`` (recipe): the student + Dense 384->384 + normalisation trained to regress the teacher's embeddings of
  unlabelled text (Cranfield document sentences and titles, SST-2 sentences, tinyshakespeare lines; no Cranfield
  query; this script writes the file), evaluated student/student (``leaf_sym``) and student query / teacher
  documents (``leaf_asym``). ``label_only_asym`` is the unaligned control.

``--student minilm2``: 30 of the 150 training queries are a validation split; the recipes keep a checkpoint per
epoch and the epoch with the best validation nDCG@10 (ranking arms: student/student; leaf: student query /
teacher documents) is the one reported; the test queries never take part in a choice.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import Sweep, discover_arms, load_recipe, previous_runs  # noqa: E402

from distill.experiment import Experiment, resolve_path  # noqa: E402
from distill.models.weights import read_state_dict  # noqa: E402
from distill.tasks.embedding.models import build_sentence_student  # noqa: E402
from distill.text.ir_data import RetrievalCollection, load_cranfield  # noqa: E402
from distill.text.retrieval import BM25Index, dense_scores, evaluate_run, top_k  # noqa: E402
from distill.text.st_models import encode, load_sentence_model  # noqa: E402
from distill.text.teacher_sources import write_score_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "data" / "cranfield"
CONFIGS = {"static": REPO / "configs" / "cranfield", "minilm2": REPO / "configs" / "cranfield_minilm2"}
METRICS = ("ndcg@10", "map@100", "recall@100")
DOC_LEN = 256  # teacher documents
BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
RANKING_ARMS = ("label_only", "score_mse", "margin_mse")
ARMS = (*RANKING_ARMS, "leaf")
LEAF_TEXTS = {"static": 5000, "minilm2": 3000}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


#: random rankings averaged for the reference row (LEAF's criterion: the unaligned control is "near random")
RANDOM_DRAWS = 20


def random_reference(coll: RetrievalCollection, qids: list[str], docids: list[str]) -> dict[str, float]:
    """The metrics of a random ranking of every document for each query, the mean of ``RANDOM_DRAWS`` seeded
    draws."""
    g = torch.Generator().manual_seed(0)
    draws = [metrics_of(torch.rand(len(qids), len(docids), generator=g), qids, docids, coll)
             for _ in range(RANDOM_DRAWS)]
    return {m: statistics.mean(d[m] for d in draws) for m in draws[0]}


def read_qids(name: str) -> list[str]:
    return (SPLITS / f"{name}_qids.txt").read_text().split()


ROW_LABELS = {
    "random": f"random ranking (mean of {RANDOM_DRAWS} draws)",
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


def shakespeare_speeches(lines: list[str]) -> list[str]:
    """tinyshakespeare's speeches: the lines after a ``Speaker:`` line up to the blank line, joined."""
    speeches, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
            continue
        if len(current) > 2:  # the speaker's name and at least two lines of verse
            speeches.append(" ".join(current[1:]))
        current = []
    return speeches


def leaf_texts(coll: RetrievalCollection, shared: Path, n: int, seed: int, pool: str = "base") -> list[str]:
    """Unlabelled training text for LEAF: Cranfield document sentences and titles, SST-2 sentences and
    tinyshakespeare lines (no Cranfield query), deduplicated, a seeded sample of ``n``.

    ``pool="wide"`` (for the spec's 50-100k texts; 50,285 distinct texts here) adds the SST sentences of every
    split of both SST files, tinyshakespeare lines of 3-4 words and whole speeches (multi-line), and Cranfield
    sentences of 3 words; the base pool (39k) is unchanged, so earlier samples stay reproducible."""
    pool_texts: list[str] = []
    min_words = 4 if pool == "base" else 3
    for doc in coll.docs.values():
        pool_texts += [s.strip() + " ." for s in doc.split(" . ") if len(s.split()) >= min_words]
    pool_texts += [t for t in coll.titles.values() if t]
    sst_files = ["stsa.binary.train"] if pool == "base" else [
        f"stsa.{kind}.{split}" for kind in ("binary", "fine") for split in ("train", "dev", "test")]
    for name in sst_files:
        if (shared / "sst" / name).exists():
            pool_texts += [line.split(" ", 1)[1].strip() for line in (shared / "sst" / name).read_text().splitlines()
                           if " " in line]
    shakespeare = shared / "tinyshakespeare" / "input.txt"
    if shakespeare.exists():
        lines = shakespeare.read_text().splitlines()
        pool_texts += [line.strip() for line in lines if len(line.split()) >= 5 or
                       (pool != "base" and len(line.split()) >= 3)]
        if pool != "base":
            pool_texts += shakespeare_speeches(lines)
    queries = set(coll.queries.values())
    pool_texts = [t for t in dict.fromkeys(pool_texts) if t not in queries]
    random.Random(seed).shuffle(pool_texts)
    if n > len(pool_texts):
        raise SystemExit(f"--leaf-texts {n}: the {pool} pool has {len(pool_texts)} distinct texts"
                         + ("; --leaf-pool wide has more" if pool == "base" else ""))
    return pool_texts[:n]




class Evaluator:
    """Scores a student on the test queries over the whole collection (and, for epoch selection, on the
    validation queries): student/student (``sym``) and student query / teacher documents (``asym``)."""

    def __init__(self, coll: RetrievalCollection, test_q: list[str], val_q: list[str], t_docs: torch.Tensor,
                 t_query: dict[str, torch.Tensor]):
        self.coll, self.test_q, self.val_q = coll, test_q, val_q
        self.docids = list(coll.docs)
        self.doc_texts = [coll.docs[d] for d in self.docids]
        self.t_docs, self.t_query = t_docs, t_query

    def metrics(self, scores: torch.Tensor, qids: list[str]) -> dict[str, float]:
        return metrics_of(scores, qids, self.docids, self.coll)

    def __call__(self, model: torch.nn.Module, q_len: int, d_len: int, arm: str) -> dict[str, Any]:
        s_docs = encode(model, self.doc_texts, batch_size=32, max_length=d_len)
        qids = self.val_q + self.test_q
        s_q = encode(model, [self.coll.queries[q] for q in qids], batch_size=64, max_length=q_len)
        v, t = s_q[:len(self.val_q)], s_q[len(self.val_q):]
        out: dict[str, Any] = {"sym": self.metrics(dense_scores(t, s_docs), self.test_q),
                               "asym": self.metrics(dense_scores(t, self.t_docs), self.test_q)}
        if self.val_q:
            val_docs = self.t_docs if arm == "leaf" else s_docs
            out["val_ndcg@10"] = self.metrics(dense_scores(v, val_docs), self.val_q)["ndcg@10"]
        if arm == "leaf":
            all_q = list(self.coll.queries)
            s_all = encode(model, [self.coll.queries[q] for q in all_q], batch_size=64, max_length=q_len)
            t_all = torch.stack([self.t_query[q] for q in all_q])
            out["query_cosine_to_teacher"] = round(float(F.cosine_similarity(s_all, t_all).mean()), 4)
        return out


def lengths(exp: Experiment) -> tuple[int, int]:
    """(query, document) lengths of a run: the ranking data's, or the LEAF texts' for both (as before)."""
    d = exp.config.data
    if exp.config.task == "ranking":
        return d.query_length, d.doc_length
    ranking = load_recipe(Path(exp.config.base_dir) / "margin_mse.yaml")[1].data
    return ranking.query_length, ranking.doc_length


def evaluate_trained(arm: str, exp: Experiment, evaluator: Evaluator, select: bool) -> dict[str, Any]:
    """The test metrics of a trained run; with ``select`` (minilm2), of its epoch checkpoint with the best
    validation nDCG@10 (ties to the earlier epoch)."""
    q_len, d_len = lengths(exp)
    summary = json.loads((exp.trainer.run_dir / "summary.json").read_text())
    if not select:
        out = evaluator(exp.student, q_len, d_len, arm)
        out["train_seconds"] = round(float(summary["wall_time_s"]), 1)
    else:
        stages = []
        ckpts = sorted((exp.trainer.run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
        for ckpt in ckpts:
            exp.student.load_state_dict(read_state_dict(ckpt / "student.safetensors"))
            stages.append(evaluator(exp.student, q_len, d_len, arm))
        best = max(range(len(stages)), key=lambda i: (stages[i]["val_ndcg@10"], -i))
        out = dict(stages[best])
        out.update(epoch_chosen=best + 1, train_seconds=round(float(summary["wall_time_s"]), 1),
                   val_ndcg_by_epoch=[round(s["val_ndcg@10"], 4) for s in stages],
                   test_ndcg_by_epoch_not_used_for_the_choice=[round(s["sym"]["ndcg@10"], 4) for s in stages])
    key = "asym" if arm == "leaf" else "sym"
    return {"ndcg@10": out[key]["ndcg@10"], **out}


def results_rows(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The table's rows: the fixed rows, then each trained arm as its rows (``label_only_asym``, ``leaf_sym``,
    ``leaf_asym``), per seed."""
    rows: dict[str, dict[str, Any]] = {k: dict(v) for k, v in res.get("fixed", {}).items()}
    for r in res["runs"]:
        seed = str(r["seed"])
        extra = {k: r[k] for k in ("train_seconds", "epoch_chosen") if k in r}
        if r["arm"] == "leaf":
            rows.setdefault("leaf_sym", {})[seed] = {**r["sym"], **extra}
            asym = {**r["asym"], **({"query_cosine_to_teacher": r["query_cosine_to_teacher"]}
                                    if "query_cosine_to_teacher" in r else {})}
            rows.setdefault("leaf_asym", {})[seed] = asym
        else:
            rows.setdefault(r["arm"], {})[seed] = {**r["sym"], **extra}
            if r["arm"] == "label_only":
                rows.setdefault("label_only_asym", {})[seed] = r["asym"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", choices=sorted(CONFIGS), default="static",
                   help="static: bag of words (configs/cranfield); minilm2: MiniLM's first 2 layers "
                        "(configs/cranfield_minilm2)")
    p.add_argument("--configs", type=Path, default=None, help="the recipe folder (default: the student's)")
    p.add_argument("--data", default=None, help="a Cranfield folder instead of the recipes' ../shared/data/cranfield")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                   help="train only these students (several processes may share the results file)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/cranfield[_STUDENT].json)")
    p.add_argument("--work", default=None, help="caches and run folders (default benchmarks/work/cranfield[-STUDENT])")
    p.add_argument("--quick", action="store_true", help="a few queries and steps, to check the pipeline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--leaf-texts", type=int, default=None, help="static: 5000; minilm2: 3000")
    p.add_argument("--leaf-pool", choices=["base", "wide"], default="base",
                   help="LEAF's text pool: base (39,233 texts) or wide (50,285: every SST split, speeches; for 50k)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set assignment applied to every recipe, e.g. train.lr=0.0005 or data.title_groups=0")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick, kind = args.quick, args.student
    configs = args.configs or CONFIGS[kind]
    suffix = "" if kind == "static" else f"_{kind}"
    setting = ("quick" if quick else "full") + ("" if kind == "static" else f"-{kind}")
    work = Path(args.work or REPO / "benchmarks" / "work" / f"cranfield{suffix.replace('_', '-')}"
                f"{'-quick' if quick else ''}").resolve()
    out = Path(args.out or (work / "cranfield.json" if quick else
                            REPO / "benchmarks" / "results" / f"cranfield{suffix}.json"))
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    arms = {a: f for a, f in discover_arms(configs, ARMS).items() if a in args.arms}
    sets = list(args.sets) + ([f"data.cranfield={Path(args.data).resolve()}"] if args.data else [])
    ranking_sets = [s for s in sets if not s.startswith("data.cranfield")]
    _, ranking = load_recipe(configs / "margin_mse.yaml", sets)
    data_dir = resolve_path(ranking.data.cranfield, ranking.base_dir)
    coll = load_cranfield(data_dir)
    train_q, test_q = read_qids("train"), read_qids("test")
    fit_q = [q.strip() for q in resolve_path(ranking.data.train_queries, ranking.base_dir).read_text().split()]
    val_q = [q for q in train_q if q not in set(fit_q)]
    if quick:
        fit_q, val_q, test_q = fit_q[:6], val_q[:2], test_q[:8]
        (work / "quick_qids.txt").write_text("".join(f"{q}\n" for q in fit_q))
        sets += [f"data.train_queries={work / 'quick_qids.txt'}", "data.title_groups=20"] if kind == "static" else \
            [f"data.train_queries={work / 'quick_qids.txt'}"]
        sets += ["train.epochs=1"]
    title_n = 20 if quick and ranking.data.title_groups else ranking.data.title_groups
    docids = list(coll.docs)
    doc_texts = [coll.docs[d] for d in docids]
    command = "python benchmarks/cranfield.py" + ("" if kind == "static" else f" --student {kind}") + (
        f" --leaf-texts {args.leaf_texts}" if args.leaf_texts else "") + (
        f" --leaf-pool {args.leaf_pool}" if args.leaf_pool != "base" else "")
    meta = {"setting": setting, "command": command + (" --quick" if quick else ""), "recipes": str(configs),
            "num_test": len(test_q), "num_train": len(train_q), "num_docs": len(docids), "seeds": args.seeds,
            "split": "benchmarks/data/cranfield/{train,test}_qids.txt (split_queries(all 225 query positions, "
                     "num_test=75, seed=0))"}
    if kind != "static":
        meta["student"] = kind
    res: dict[str, Any] = {"args": {"setting": setting, "sets": sets}, "runs": [], "fixed": {}, "info": {},
                           "meta": meta}
    if out.exists() and "runs" not in (on_disk := json.loads(out.read_text())) and on_disk.get("rows"):
        raise SystemExit(f"{out} holds a table of an earlier version of this script (rows only, no runs to resume "
                         "from); it is not overwritten: give another --out (and --work), or move it away")
    res["runs"] = previous_runs(out, res, ("setting", "sets"))
    if out.exists() and res["runs"]:
        old = json.loads(out.read_text())
        res["fixed"], res["info"] = old.get("fixed", {}), old.get("info", {})
        n_asked = 200 if quick else (args.leaf_texts or LEAF_TEXTS[kind])
        had = (res["info"].get("leaf_texts", n_asked), res["info"].get("leaf_pool", "base"))
        if "leaf" in arms and any(r["arm"] == "leaf" for r in res["runs"]) and had != (n_asked, args.leaf_pool):
            raise SystemExit(f"{out}: its LEAF runs trained on {had[0]} texts ({had[1]} pool), not "
                             f"{n_asked} ({args.leaf_pool}): give another --out and --work")
    res["info"]["test_qids"] = ",".join(test_q)

    # -- the teacher's embeddings (evaluation and teacher choice), computed once per setting --------------------
    log("loading teacher")
    teacher_model = load_sentence_model()
    titled = [d for d in coll.docs if coll.titles.get(d)]
    random.Random(ranking.data.title_seed).shuffle(titled)
    title_docs = titled[:title_n]
    emb_path = work / "teacher_embeddings.pt"
    emb = torch.load(emb_path, weights_only=True) if emb_path.exists() else {}
    if set(emb) != {"docs", "queries", "titles"} or emb["titles"].shape[0] != len(title_docs):
        emb = {"docs": encode(teacher_model, doc_texts, batch_size=32, max_length=DOC_LEN),
               "queries": encode(teacher_model, list(coll.queries.values()), batch_size=32, max_length=DOC_LEN),
               "titles": encode(teacher_model, [coll.titles[d] for d in title_docs], batch_size=32,
                                max_length=DOC_LEN)}
        torch.save(emb, emb_path)
    t_docs = emb["docs"]
    t_query = dict(zip(coll.queries, emb["queries"], strict=True))
    t_title = dict(zip([f"title:{d}" for d in title_docs], emb["titles"], strict=True))
    bm25 = BM25Index(coll.docs)

    def teacher_matrix(qids: list[str], texts: list[str], beta: float) -> torch.Tensor:
        q_emb = torch.stack([t_query[q] if q in t_query else t_title[q] for q in qids])
        return dense_scores(q_emb, t_docs) + beta * bm25_normalised(bm25.scores(texts))

    if "random" not in res["fixed"]:
        res["fixed"]["random"] = {"all": random_reference(coll, test_q, docids)}
    if "bm25" not in res["fixed"]:
        res["fixed"]["bm25"] = {"all": metrics_of(bm25.scores([coll.queries[q] for q in test_q]), test_q, docids,
                                                  coll)}
    train_texts = [coll.queries[q] for q in train_q]
    choice = {str(b): metrics_of(teacher_matrix(train_q, train_texts, b), train_q, docids, coll)["ndcg@10"]
              for b in BETAS}
    beta = float(max(choice, key=lambda b: choice[b]))
    res["info"]["teacher_choice"] = {"train_ndcg@10_by_beta": choice, "chosen_beta": beta,
                                     "teacher": "cosine of all-MiniLM-L6-v2 + beta * BM25/max BM25"}
    test_texts = [coll.queries[q] for q in test_q]
    res["fixed"]["teacher"] = {"all": metrics_of(teacher_matrix(test_q, test_texts, beta), test_q, docids, coll)}
    res["fixed"]["teacher_cosine"] = {"all": metrics_of(teacher_matrix(test_q, test_texts, 0.0), test_q, docids,
                                                        coll)}
    log(f"teacher: beta={beta} train nDCG@10 by beta {choice}")

    # -- the teacher score file: every (fit query or title pseudo-query, document) pair --------------------------
    score_path = work / f"teacher_scores-beta{beta}.tsv"
    qkeys = fit_q + [f"title:{d}" for d in title_docs]
    if not score_path.exists():
        mat = teacher_matrix(qkeys, [coll.queries[q] for q in fit_q] + [coll.titles[d] for d in title_docs], beta)
        write_score_file(score_path, {(q, d): float(mat[i, j]) for i, q in enumerate(qkeys)
                                      for j, d in enumerate(docids)})
    # -- LEAF's unlabelled texts ---------------------------------------------------------------------------------
    n_texts = 200 if quick else (args.leaf_texts or LEAF_TEXTS[kind])
    texts_path = work / f"leaf_texts-{n_texts}{'' if args.leaf_pool == 'base' else '-' + args.leaf_pool}.txt"
    if not texts_path.exists():
        texts_path.write_text("".join(t.replace("\n", " ") + "\n" for t in
                                      leaf_texts(coll, data_dir.parent, n_texts, seed=0, pool=args.leaf_pool)))
    res["info"]["leaf_texts"] = n_texts
    res["info"]["leaf_pool"] = args.leaf_pool
    evaluator = Evaluator(coll, test_q, val_q if kind != "static" else [], t_docs, t_query)
    if kind != "static":
        res["info"]["selection"] = {
            "fit_queries": len(fit_q), "val_qids": ",".join(val_q),
            "lr": {"ranking arms": ranking.train.lr, "leaf": load_recipe(configs / "leaf.yaml")[1].train.lr},
            "criterion": "the epoch checkpoint with the best nDCG@10 of the validation queries over all documents "
                         "(ranking arms: student/student; leaf: student query / teacher documents); ties go to the "
                         "earlier epoch"}

    # -- the untrained student and the cost notes ---------------------------------------------------------------
    q_len, d_len = ranking.data.query_length, ranking.data.doc_length
    if "student_untrained" not in res["fixed"]:
        student0 = build_sentence_student(ranking.student, ranking.base_dir, "student")
        ev = evaluator(student0, q_len, d_len, "ranking")
        res["fixed"]["student_untrained"] = {"all": ev["sym"]}
        if kind != "static":
            res["fixed"]["student_untrained_asym"] = {"all": ev["asym"]}
        sample = test_texts + doc_texts[:100]
        lat = {}
        for name, model in (("teacher_6_layers", teacher_model), (f"student_{kind}", student0)):
            start = time.time()
            encode(model, sample, batch_size=32, max_length=DOC_LEN if kind == "static" else d_len)
            lat[name] = round(time.time() - start, 2)
        res["info"]["latency_s"] = {**lat, "texts": len(sample), "threads": args.threads}
        res["info"]["params_M"] = {
            "teacher": round(sum(p.numel() for p in teacher_model.parameters()) / 1e6, 2),
            "student": round(sum(p.numel() for p in student0.parameters()) / 1e6, 2)}
    write_json(out, res, indent=1, sort_keys=True)

    def overrides(arm: str, seed: int) -> list[str]:
        o = [f"seed={seed}", f"output_dir={work / 'runs' / f'{arm}-{seed}'}"]
        if arm == "leaf":
            o += [f"data.train={texts_path}", f"teacher.cache.path={work / 'leaf_teacher_cache'}"]
            return o + [s for s in ranking_sets if not s.startswith("data.")] + \
                (["train.epochs=1"] if quick else [])
        if arm != "label_only":
            o.append(f"teacher.scores={score_path}")
        return o + sets

    sweep = Sweep(arms, args.seeds, out, overrides, metric="ndcg@10", match_args=("setting", "sets"),
                  after_fit=lambda arm, exp: evaluate_trained(arm, exp, evaluator, select=kind != "static"),
                  repo=REPO, log=log)
    sweep.run(res)
    res["rows"] = results_rows(res)
    write_json(out, res, indent=1, sort_keys=True)
    out.with_suffix(".md").write_text(markdown(res))
    log(f"done: {out}")


if __name__ == "__main__":
    sys.exit(main())
