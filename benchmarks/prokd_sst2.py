"""ProKD (text-graph.md row 10) on the spec's analogue: SST-2 with a fixed surface transform as the target domain.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/prokd_sst2.py [--config RECIPE] [--seeds 0 1 2]
    python benchmarks/prokd_sst2.py --report          # the table from the finished seeds

Data (configs/shift/prokd_sst2.yaml): SST-2 (stsa.binary) training sentences cut once (fixed permutation) into a
labelled source part (``source_fraction``) and an unlabelled target part, the latter through the fixed
``target_domain`` transform (``char_noise``: the same word always gets the same character edit, a synthetic
"dialect"); the metric is accuracy on the 1,821 test sentences through the same transform (target labels are never
used for training or selection). Teacher: frozen all-MiniLM-L6-v2 mean-pooled sentence features (computed once,
cached in benchmarks/work/prokd_sst2/) + a trainable adapter and head. Student: a bag of frozen MiniLM word
embeddings + an MLP (:class:`BagStudent`; the spec's MiniLM student is out of reach of the 2 shared CPU cores), which
sees only target text.

Arms (every student arm: the same student, data, batches and ``stage1_epochs + stage2_epochs`` epochs):
  direct          the CE-only teacher on the target test set (direct transfer; its source test accuracy beside it);
  teacher_pa      the teacher trained with CE + contrastive prototype alignment, on the target test set;
  kd              vanilla KD student: KD from the CE-only teacher for all epochs;
  kd_pa           KD from the aligned teacher (+ alignment) for all epochs;
  st_uniform      aligned teacher, stage 1 KD, stage 2 self-training with w = 1 (no prototypes);
  prokd           aligned teacher, stage 1 KD, stage 2 prototypical self-training (full ProKD).
Works if (spec): prokd beats kd by >= 1 point and each component is non-negative: kd_pa - kd >= 0 (alignment) and
prokd - kd_pa >= 0 (prototypical self-training); prokd - st_uniform is reported as the prototypes' own share.
3 seeds (initialisation and batch order; the data cut and the transform are fixed), paired differences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from portable import write_json  # noqa: E402
from sweep import paired_difference  # noqa: E402
from verdicts_families import prokd_verdicts, verdict_text  # noqa: E402

from distill.config import Strict, format_validation_error  # noqa: E402
from distill.methods.continual.prokd import ProKDSettings, train_student, train_teacher  # noqa: E402
from distill.tasks.text_classification.section import SurfaceTransform  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "prokd_sst2"
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "configs" / "shift" / "prokd_sst2.yaml"
STUDENT_ARMS = {"kd": ("ce", "kd"), "kd_pa": ("pa", "kd"), "st_uniform": ("pa", "uniform"), "prokd": ("pa", "proto")}
#: clean test sentences scored to measure the teacher's drop under the shift (the first 600 of the test split)
TEST_SOURCE = 600
ARMS = ("direct", "teacher_pa", *STUDENT_ARMS)


class ProKDData(Strict):
    train: str
    test: str
    source_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    max_length: Annotated[int, Field(ge=8)] = 64


class StudentSpec(Strict):
    hidden: Annotated[int, Field(gt=0)] = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1


class BagStudent(torch.nn.Module):
    """The student (fastText-like, cheap on CPU): the mean of frozen all-MiniLM-L6-v2 word embeddings over the real
    tokens -> Linear -> ReLU (h^S, the input of ``dropout``) -> dropout -> Linear. It reads the target text's own
    word pieces, so the surface transform shifts it as much as the teacher."""

    def __init__(self, classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        from distill.models.text_students import word_embedding_matrix

        self.embedding = torch.nn.Embedding.from_pretrained(word_embedding_matrix("minilm"), freeze=True)
        self.body = torch.nn.Sequential(torch.nn.Linear(self.embedding.embedding_dim, hidden), torch.nn.ReLU())
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].float()
        pooled = (self.embedding(ids) * m).sum(1) / m.sum(1).clamp(min=1)
        return self.classifier(self.dropout(self.body(pooled)))


class ProKDRecipe(Strict):
    pipeline: str
    data: ProKDData
    target_domain: SurfaceTransform
    student: StudentSpec = StudentSpec()
    settings: ProKDSettings = ProKDSettings()


def read_recipe(path: Path) -> ProKDRecipe:
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    try:
        recipe = ProKDRecipe.model_validate(raw)
    except ValidationError as e:
        raise SystemExit(f"{path}: {format_validation_error(e)}") from None
    if recipe.pipeline != "prokd":
        raise SystemExit(f"{path}: pipeline: {recipe.pipeline!r} is not 'prokd'")
    return recipe


def load_data(recipe: ProKDRecipe, base: Path, limit: int = 0) -> dict[str, Any]:
    """Texts and labels of the source, target and test parts, their MiniLM features (cached) and target ids."""
    from distill.data.text import load_text_classification, load_tokenizer
    from distill.streams.transforms import text_transform

    train = load_text_classification((base / recipe.data.train).resolve())
    test = load_text_classification((base / recipe.data.test).resolve())
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(20230118))
    n_src = int(len(order) * recipe.data.source_fraction)
    src, tgt = order[:n_src].tolist(), order[n_src:].tolist()
    td = recipe.target_domain
    shift = text_transform(td.name, **({"rate": td.rate, "seed": td.seed, "min_length": td.min_length}
                                       if td.name == "char_noise" else {}))
    parts = {"source": [train.texts[i] for i in src], "target": [shift(train.texts[i]) for i in tgt],
             "test_source": list(test.texts)[:TEST_SOURCE], "test_target": [shift(t) for t in test.texts]}
    labels = {"source": torch.tensor([train.labels[i] for i in src]),
              "target": torch.tensor([train.labels[i] for i in tgt]), "test": torch.tensor(test.labels),
              "test_source": torch.tensor(test.labels[:TEST_SOURCE])}
    if limit:  # a smoke run: the first ``limit`` rows of each part
        parts = {k: v[:limit] for k, v in parts.items()}
        labels = {k: v[:limit] for k, v in labels.items()}
    tok = load_tokenizer("minilm")
    key = (f"{td.name}_{td.rate}_{td.seed}_{td.min_length}_{recipe.data.source_fraction}_{recipe.data.max_length}"
           f"{'_limit' + str(limit) if limit else ''}")
    cache = WORK / f"features_{key}.safetensors"
    if cache.exists():
        from safetensors.torch import load_file

        feats = load_file(str(cache))
    else:
        from distill.models.text_students import minilm

        enc_model = minilm(num_classes=2).encoder.eval()
        feats = {name: encode(enc_model, texts, tok, recipe.data.max_length) for name, texts in parts.items()}
        from safetensors.torch import save_file

        WORK.mkdir(parents=True, exist_ok=True)
        save_file(feats, str(cache))
    ids = {}
    for name in ("target", "test_target"):
        enc = tok(parts[name], truncation=True, max_length=recipe.data.max_length, padding="longest",
                  return_tensors="pt")
        ids[name] = (enc["input_ids"].long(), enc["attention_mask"].long())
    return {"feats": feats, "labels": labels, "ids": ids, "pad": int(tok.pad_token_id or 0)}


@torch.no_grad()
def encode(enc_model: Any, texts: list[str], tok: Any, max_length: int, batch: int = 128) -> torch.Tensor:
    """Frozen all-MiniLM-L6-v2 mean-pooled sentence features."""
    from distill.models.text_students import masked_mean

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: little padding
    out = torch.zeros(len(texts), enc_model.config.hidden_size)
    for i in range(0, len(order), batch):
        rows = order[i:i + batch]
        enc = tok([texts[r] for r in rows], truncation=True, max_length=max_length, padding="longest",
                  return_tensors="pt")
        h = enc_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        out[rows] = masked_mean(h, enc["attention_mask"])
        print(f"encoded {i + len(rows)}/{len(texts)}", flush=True)
    return out.contiguous()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def run_seed(recipe: ProKDRecipe, data: dict[str, Any], seed: int) -> dict[str, Any]:
    from distill.methods.continual.prokd import pooled_features, student_eval

    s = recipe.settings
    f, lab = data["feats"], data["labels"]
    res: dict[str, Any] = {"seed": seed, "accuracy": {}}
    teachers = {}
    for name, align in (("ce", False), ("pa", True)):
        torch.manual_seed(seed)
        teachers[name] = train_teacher(f["source"], lab["source"], f["target"], s, align,
                                       torch.Generator().manual_seed(seed))
    with torch.no_grad():
        res["accuracy"]["direct"] = accuracy(teachers["ce"](f["test_target"])[1], lab["test"])
        res["accuracy"]["teacher_pa"] = accuracy(teachers["pa"](f["test_target"])[1], lab["test"])
        res["teacher_source_test"] = {k: accuracy(t(f["test_source"])[1], lab["test_source"])
                                      for k, t in teachers.items()}
        res["teacher_target_train"] = {k: accuracy(t(f["target"])[1], lab["target"]) for k, t in teachers.items()}
        probs = {k: torch.softmax(t(f["target"])[1], dim=1) for k, t in teachers.items()}
    print(seed, "teachers", res["accuracy"], res["teacher_source_test"], flush=True)
    ids, mask = data["ids"]["target"]
    tids, tmask = data["ids"]["test_target"]
    st = recipe.student
    for arm, (teacher, stage2) in STUDENT_ARMS.items():
        torch.manual_seed(seed)
        student = BagStudent(s.classes, st.hidden, st.dropout)
        train_student(student, ids, mask, probs[teacher], s, stage2, torch.Generator().manual_seed(seed))
        z, _ = student_eval(student, pooled_features(student), tids, tmask)
        res["accuracy"][arm] = accuracy(z, lab["test"])
        print(seed, arm, res["accuracy"][arm], flush=True)
    return res


def report() -> dict[str, Any]:
    acc: dict[str, dict[int, float]] = {a: {} for a in ARMS}
    extra = {}
    for fpath in sorted((WORK / "results").glob("seed*.json")):
        r = json.loads(fpath.read_text())
        for k, v in r["accuracy"].items():
            acc[k][int(r["seed"])] = v
        extra[int(r["seed"])] = {"teacher_source_test": r["teacher_source_test"],
                                 "teacher_target_train": r["teacher_target_train"]}
    rows = []
    for arm in ARMS:
        xs = list(acc[arm].values())
        row: dict[str, Any] = {"arm": arm, "seeds": len(xs), "mean": statistics.mean(xs) if xs else None,
                               "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "per_seed": acc[arm]}
        if arm in STUDENT_ARMS and arm != "kd":
            m, ci, n = paired_difference(acc[arm], acc["kd"])
            row["vs_kd"] = {"mean": m, "ci95": ci, "seeds": n}
        rows.append(row)
    comps = {}
    for name, (a, b) in {"prokd - kd": ("prokd", "kd"), "alignment: kd_pa - kd": ("kd_pa", "kd"),
                         "self-training: prokd - kd_pa": ("prokd", "kd_pa"),
                         "prototypes: prokd - st_uniform": ("prokd", "st_uniform"),
                         "alignment (teacher): teacher_pa - direct": ("teacher_pa", "direct")}.items():
        m, ci, n = paired_difference(acc[a], acc[b])
        comps[name] = {"mean": m, "ci95": ci, "seeds": n}
    verdict = verdict_text(prokd_verdicts({"rows": rows}))
    src = [e["teacher_source_test"]["ce"] for e in extra.values()]
    out = {"benchmark": "prokd_sst2", "recipe": "configs/shift/prokd_sst2.yaml",
           "metric": "accuracy (%) on the SST-2 test split through the target transform", "rows": rows,
           "components": comps, "teacher": extra, "verdict": verdict}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "prokd_sst2.json", out)

    def fmt(d: dict[str, Any] | None) -> str:
        if not d or d["mean"] is None:
            return "-"
        ci = f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else ""
        return f"{d['mean']:+.2f}{ci}"

    lines = ["# ProKD: SST-2 source -> character-noise target (labels unused), target test accuracy", "",
             "Command: `nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/prokd_sst2.py`; recipe "
             "`configs/shift/prokd_sst2.yaml`.", "",
             f"CE teacher on the clean source test split: {statistics.mean(src):.2f} (mean over seeds)." if src else "",
             "", "| arm | seeds | target accuracy (mean +- sd) | paired vs kd (95% CI) |", "|---|---|---|---|"]
    for r in rows:
        m = "-" if r["mean"] is None else f"{r['mean']:.2f} +- {r['sd']:.2f}"
        m = f"{r['mean']:.2f} (1 seed)" if r["seeds"] == 1 else m
        lines.append(f"| {r['arm']} | {r['seeds']} | {m} | {fmt(r.get('vs_kd'))} |")
    lines += ["", "| component (paired) | mean [95% CI] |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in comps.items()]
    lines += ["", f"Spec: ProKD >= KD + 1 and each component >= 0. {verdict}.", "",
              "Notes: the CE teacher loses about 20 points from the clean test split to the target (the spec asks "
              "for 8-15; char_noise rate 0.7 was set without a sweep, a smaller rate would give a milder shift). "
              "Every student stays below the direct-transfer teacher: the bag-of-embeddings student is much weaker "
              "than MiniLM on noisy word pieces, so the comparison is between students at equal budget. "
              "st_uniform equals kd_pa by construction here (threshold 0 and w = 1 give y~ = p_T, the KD target).",
              ""]
    (RESULTS / "prokd_sst2.md").write_text("\n".join(lines))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--report", action="store_true")
    p.add_argument("--smoke", type=int, default=0, help="N rows per part, one seed, nothing written to results/")
    args = p.parse_args()
    recipe = read_recipe(args.config)
    if args.smoke:
        data = load_data(recipe, args.config.resolve().parent, limit=args.smoke)
        print(run_seed(recipe, data, 0))
        return 0
    if not args.report:
        data = load_data(recipe, args.config.resolve().parent)
        for seed in args.seeds:
            fpath = WORK / "results" / f"seed{seed}.json"
            if fpath.exists():
                continue
            res = run_seed(recipe, data, seed)
            fpath.parent.mkdir(parents=True, exist_ok=True)
            write_json(fpath, res)
            report()
    print(json.dumps(report()["verdict"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
